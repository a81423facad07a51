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

/// Starts `python3 -c code args...` as `nobody` with stdin and stdout piped, for a probe that
/// holds something (connections) until the test closes its stdin.
pub fn spawn_python_as_nobody(code: &str, args: &[&str]) -> Result<std::process::Child> {
    Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting python3 as nobody")
}

/// A probe (for [`spawn_python_as_nobody`]) that opens `argv[2]` connections to the Unix socket
/// `argv[1]`, sends the line `argv[3]` on each, waits (at most 30 s) until all but `argv[4]` are
/// answered and closed by the other side, prints `{"held": <still open>, "answers": {<error
/// up to its first ':'>: count}}`, then keeps the open ones until its stdin closes.
pub const SOCKET_HOLDER: &str = r#"
import json, select, socket, sys, time
path, n, req, keep = sys.argv[1], int(sys.argv[2]), (sys.argv[3] + "\n").encode(), int(sys.argv[4])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(req)
    socks.append(s)
bufs = {s: b"" for s in socks}
live = set(socks)
deadline = time.time() + 30
while len(live) > keep and time.time() < deadline:
    ready, _, _ = select.select(list(live), [], [], 1.0)
    for s in ready:
        try:
            chunk = s.recv(65536)
        except OSError:
            chunk = b""
        if chunk:
            bufs[s] += chunk
        else:
            live.discard(s)
answers = {}
for s in socks:
    if s in live:
        continue
    line = bufs[s].split(b"\n")[0]
    try:
        key = (json.loads(line).get("error") or "ok").split(":")[0]
    except ValueError:
        key = "unreadable " + repr(line[:80])
    answers[key] = answers.get(key, 0) + 1
print(json.dumps({"held": len(live), "answers": answers}), flush=True)
sys.stdin.read()
"#;

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
