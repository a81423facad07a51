//! Privileged test: a local unprivileged user against the CNI plugin's state (issue 9 §4).
//!
//! Threat model: a local user on the node (here `nobody`, run from the test with its uid and
//! gid) who can reach the state directory (`/var/lib/palisade` is usually 0755). They try to
//! read the endpoint records and IPAM allocations (pod names and addresses of every pod on the
//! node) and to take the IPAM lock and keep it, which stalled every CNI ADD and DEL forever.
//! What must hold: the records and IPAM directories are 0700 and their files 0600, so every
//! attempt fails with a permission error; the plugin keeps working.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use palisade_tests::netns::{Netns, Node};
use palisade_tests::unprivileged::python_as_nobody;
use serde_json::json;

#[path = "common/cni.rs"]
mod harness;
use harness::*;

/// Tries, as the probe's user, to list and read every file below each directory given and to
/// take the lock file's flock; prints what happened to each.
const STATE_PROBE: &str = r#"
import fcntl, json, os, sys
out = {}
for d in sys.argv[2:]:
    try:
        names = os.listdir(d)
        out[d] = "listed " + ",".join(names)
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.join(d, n)] = "read %d bytes" % len(f.read())
    except OSError as e:
        out[d] = type(e).__name__
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    out["lock"] = "held"
except OSError as e:
    out["lock"] = type(e).__name__
print(json.dumps(out))
"#;

fn mode(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

#[test]
fn privileged_a_local_user_can_neither_read_the_state_nor_hold_the_ipam_lock() -> Result<()> {
    if !setup("privileged_a_local_user_can_neither_read_the_state_nor_hold_the_ipam_lock") {
        return Ok(());
    }
    let node = Node::new()?;
    // As /var/lib/palisade usually is: anyone may traverse it.
    std::fs::set_permissions(node.state_dir(), std::fs::Permissions::from_mode(0o755))?;
    let pod = Netns::new("c")?;
    let cfg = conf(&node, "1.1.0", json!({}));
    let bound = Duration::from_secs(20);
    ok_json(&run_bounded(
        &inv(&node, "ADD", "user1", Some(&pod.path)),
        &cfg,
        bound,
    )?)?;

    let ipam = node.state_dir().join("ipam");
    let endpoints = node.state_dir().join("endpoints");
    let lock = ipam.join("lock");
    let probe = python_as_nobody(
        STATE_PROBE,
        &[
            lock.to_str().unwrap_or_default(),
            ipam.to_str().unwrap_or_default(),
            endpoints.to_str().unwrap_or_default(),
        ],
    )?;
    eprintln!("as nobody: {probe}");
    for (what, got) in probe.as_object().into_iter().flatten() {
        ensure!(
            got == "PermissionError",
            "nobody could {what}: {got} (the state must be 0700/0600)"
        );
    }
    for d in [&ipam, &endpoints] {
        ensure!(mode(d)? == 0o700, "{} is {:o}", d.display(), mode(d)?);
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            ensure!(mode(&p)? == 0o600, "{} is {:o}", p.display(), mode(&p)?);
        }
    }
    ok_empty(&run_bounded(
        &inv(&node, "DEL", "user1", Some(&pod.path)),
        &cfg,
        bound,
    )?)?;
    assert_clean(&node)
}
