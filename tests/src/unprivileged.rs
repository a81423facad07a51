//! Running a probe as a local unprivileged user (`nobody`), for tests whose threat model is
//! "a local user on the node": the probe is a small Python program (Python 3 is on every
//! machine the tests run on) started with the uid and gid of `nobody` and no supplementary
//! groups (std drops them when a root parent sets the uid).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// uid and gid of `nobody` / `nogroup` on Debian.
pub const NOBODY: u32 = 65534;

/// Runs `python3 -c code args...` as `nobody`; returns its stdout parsed as JSON (the probe
/// prints one JSON value describing what it could and could not do).
pub fn python_as_nobody(code: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .context("running python3 as nobody")?;
    ensure!(
        out.status.success(),
        "probe as nobody failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "probe output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A probe (for [`python_as_nobody`]) that sends `argv[2]` as one line to the Unix socket
/// `argv[1]` and prints `{"connect": "ok" | error, "answer": <the agent's JSON line>}`.
pub const SOCKET_PROBE: &str = r#"
import json, socket, sys
out = {}
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sys.argv[1])
    out["connect"] = "ok"
    s.sendall(sys.argv[2].encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    out["answer"] = json.loads(buf) if buf else None
except OSError as e:
    out["connect"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"#;
