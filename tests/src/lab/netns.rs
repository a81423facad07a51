//! Network namespace mechanics for the lab: named namespaces (`ip netns add`, so the CNI
//! plugin and the agent can be given `/var/run/netns/<name>`), work inside a namespace on a
//! fresh OS thread, and the sweep of leftovers from labs whose process died.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::sched::{CloneFlags, setns};

use super::LabError;

/// Where `ip netns add` bind-mounts namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Prefix of every lab: `unique_name("lab")` yields `pltlab<pid>x<n>`.
pub const LAB_PREFIX: &str = "pltlab";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs a command, mapping a spawn failure or a non-zero exit to [`LabError::Command`].
pub fn run(cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd.output().map_err(|source| LabError::Spawn {
        cmd: format!("{cmd:?}"),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{cmd:?}"),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` (e.g. `ip netns exec <node> iptables-restore --noflush`) with `input` on its
/// standard input, mapping a failure to [`LabError::Command`] (with the input).
pub fn run_with_input(mut cmd: Command, input: &str) -> Result<(), LabError> {
    let what = format!("{cmd:?}");
    let out = output_with_input(&mut cmd, &what, input)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: what,
            status: out.status.to_string(),
            output: format!(
                "{}\n--- input ---\n{input}",
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

/// Runs `cmd` with `input` on its standard input (closed after it) and returns its output
/// whatever its exit status; `what` names the command in a [`LabError::Spawn`].
pub fn output_with_input(cmd: &mut Command, what: &str, input: &str) -> Result<Output, LabError> {
    let spawn_error = |source| LabError::Spawn {
        cmd: what.to_string(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_error)?;
    }
    child.wait_with_output().map_err(spawn_error)
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(args))
}

/// `ip -n <ns> addr add <cidr> dev <dev>`, with `nodad` for IPv6: the lab's addresses are
/// usable at once, never tentative.
pub fn add_addr(ns: &str, dev: &str, cidr: &str) -> Result<(), LabError> {
    let mut args = vec!["-n", ns, "addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ip(&args).map(|_| ())
}

/// A veth `name` in namespace `ns` whose peer, `peer`, is moved to namespace `peer_ns`.
pub fn add_veth(ns: &str, name: &str, peer_ns: &str, peer: &str) -> Result<(), LabError> {
    ip(&[
        "-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns,
    ])
    .map(|_| ())
}

/// Creates the named namespace and brings its `lo` up.
pub fn add(name: &str) -> Result<(), LabError> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes the named namespace; a namespace that does not exist is not an error.
pub fn del(name: &str) -> Result<(), LabError> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name]).map(|_| ())
}

/// Runs `f` on a fresh OS thread that has joined namespace `name` and exits afterwards, so
/// the caller's thread never changes namespace. Sockets opened in `f` stay in that namespace.
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = netns_path(name);
    let file = File::open(&path).map_err(|source| LabError::OpenNetns {
        path: path.clone(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| LabError::Setns {
                path: path.clone(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| LabError::ThreadPanicked {
            what: format!("work in namespace {name}"),
        })?
    })
}

/// Writes a sysctl of the current thread's network namespace (call inside [`in_netns`]).
pub fn write_sysctl(key: &str, value: &str) -> Result<(), LabError> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|source| LabError::Io {
        op: "writing sysctl",
        path,
        source,
    })
}

/// The pid embedded in a lab name `pltlab<pid>x<n>...`, if the name is one.
pub fn lab_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(LAB_PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if n.is_empty() || !matches!(rest[n.len()..].chars().next(), None | Some('-')) {
        return None;
    }
    pid.parse().ok()
}

/// True when a lab name belongs to a process that no longer runs (its leftovers may go).
/// Labs of live processes are left alone: other test binaries run labs in parallel.
pub fn is_orphan(name: &str) -> bool {
    match lab_pid(name) {
        Some(pid) => !pid_alive_mod(pid),
        None => false,
    }
}

/// `unique_name` keeps `pid % 10000`: a lab is alive when any live process has that residue
/// and is a plausible owner. We stay conservative: any live pid with that residue counts.
fn pid_alive_mod(pid_mod: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_some_and(|p| p % 10_000 == pid_mod)
    })
}

/// Removes what labs of dead processes left behind: bpffs mounts and directories under the
/// temp dir, and namespaces. Returns what it removed (for a log line).
pub fn sweep_orphans(base: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    // Mounts first (a mounted directory cannot be removed).
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        let mut points: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| {
                Path::new(p)
                    .strip_prefix(base)
                    .ok()
                    .and_then(|r| r.iter().next())
                    .and_then(|c| c.to_str())
                    .is_some_and(is_orphan)
            })
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                removed.push(format!("mount {p}"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_orphan(&name) && std::fs::remove_dir_all(e.path()).is_ok() {
                removed.push(format!("dir {}", e.path().display()));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_orphan(&name) && del(&name).is_ok() {
                removed.push(format!("netns {name}"));
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_pid_parses_lab_names_only() {
        assert_eq!(lab_pid("pltlab1234x0"), Some(1234));
        assert_eq!(lab_pid("pltlab1234x12-n0-x-a"), Some(1234));
        assert_eq!(lab_pid("pltlab1234x12n"), None);
        assert_eq!(lab_pid("pltlnk1234x0"), None);
        assert_eq!(lab_pid("pltcni12x0"), None);
    }
}
