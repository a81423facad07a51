//! First contact with `palisadectl` and `palisade-agent` as a new user drives them by hand
//! (issue 11 §5): options after the subcommand, durations with units, a wrong socket path
//! named at once, the agent's `--help` saying where the build puts the eBPF object and how the
//! node name is chosen. Tier 0: the binaries and a stand-in agent on a socket, no root.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CTL: &str = env!("CARGO_BIN_EXE_palisadectl");
const AGENT: &str = env!("CARGO_BIN_EXE_palisade-agent");

/// A stand-in agent answering `n` requests with `answer`; returns the request lines.
fn stand_in(
    sock: &std::path::Path,
    n: usize,
    answer: &'static str,
) -> std::thread::JoinHandle<Vec<String>> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        (0..n)
            .map(|_| {
                let (s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                (&s).write_all(format!("{answer}\n").as_bytes()).unwrap();
                line
            })
            .collect()
    })
}

#[test]
fn global_options_work_after_the_subcommand_and_timeouts_take_units() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("agent.sock");
    let agent = stand_in(&sock, 2, r#"{"ok":true,"generation":7}"#);
    for args in [
        vec![
            "wait",
            "--socket",
            sock.to_str().unwrap(),
            "--timeout",
            "1m30s",
        ],
        vec!["--socket", sock.to_str().unwrap(), "wait", "--timeout", "2"],
    ] {
        let out = Command::new(CTL).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "enforced generation 7"
        );
    }
    assert!(agent.join().unwrap().iter().all(|l| l.contains("\"wait\"")));
    let out = Command::new(CTL)
        .args(["wait", "--timeout", "3parsecs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"3parsecs\" is not a duration"), "{err}");
}

#[test]
fn a_socket_where_no_agent_listens_is_named_at_once() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("wrong.sock");
    let mut child = Command::new(CTL)
        .args([
            "wait",
            "--socket",
            sock.to_str().unwrap(),
            "--timeout",
            "60s",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let took = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        first.contains(&format!("no agent listens on {}", sock.display())),
        "{first}"
    );
    assert!(first.contains("no socket file there"), "{first}");
    // "At once": long before the 60 s timeout (generous for a loaded machine).
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn agent_help_says_where_the_build_puts_the_bpf_object_and_how_the_node_is_named() {
    let out = Command::new(AGENT).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "target/bpf/palisade.bpf.o",
        "$NODE_NAME, else the host name",
        "--socket-group",
        "--cni-conf-dir",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}: {help}");
    }
}
