//! The plugin's configuration as the container runtime will pass it, checked against the
//! agent's own flags.
//!
//! The plugin finds the agent only through its conflist (`stateDir`, `agentSocket`,
//! `podCIDRFile`); nothing else ties the two. A conflist that names another state directory or
//! socket than the agent uses breaks the node quietly (pods the agent never sees, or every ADD
//! failing with "try again later"), so the agent reads the runtime's CNI config directory and
//! reports each mismatch as a problem in `palisadectl status`.

use std::path::{Path, PathBuf};

use palisade_node_api::podcidr;
use serde_json::Value;

use crate::status::Problem;

/// Where container runtimes read CNI configs by default (`--cni-conf-dir`).
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// The plugin's `stateDir` when its config has none.
const PLUGIN_DEFAULT_STATE_DIR: &str = "/var/lib/palisade";
/// Largest config file read.
const MAX_CONF_BYTES: u64 = 1024 * 1024;

/// What the plugin's config must agree with.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    pub state_dir: &'a Path,
    pub socket: &'a Path,
}

/// Problems of every `palisade` plugin entry in the `.conflist`, `.conf` and `.json` files of
/// `dir` (none when the directory does not exist: the runtime may not be set up yet).
pub fn check(dir: &Path, want: &Expect<'_>) -> Vec<Problem> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(Some(bytes)) = palisade_node_api::file::read_bounded(&f, MAX_CONF_BYTES) else {
            continue;
        };
        // Not ours to judge: the runtime reports configs it cannot parse.
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let object = format!("CNI config {}", f.display());
        match v.get("plugins").and_then(Value::as_array) {
            Some(plugins) => {
                for (i, p) in plugins.iter().enumerate() {
                    check_plugin(p, &format!("plugins[{i}]."), &object, want, &mut out);
                }
            }
            None => check_plugin(&v, "", &object, want, &mut out),
        }
    }
    out
}

fn check_plugin(p: &Value, at: &str, object: &str, want: &Expect<'_>, out: &mut Vec<Problem>) {
    if p.get("type").and_then(Value::as_str) != Some("palisade") {
        return;
    }
    let path = |k: &str| p.get(k).and_then(Value::as_str).map(PathBuf::from);
    let mut problem = |field: &str, message: String| {
        out.push(Problem {
            object: object.to_string(),
            field: format!("{at}{field}"),
            message,
        });
    };
    let state_dir = path("stateDir").unwrap_or_else(|| PLUGIN_DEFAULT_STATE_DIR.into());
    if state_dir != want.state_dir {
        problem(
            "stateDir",
            format!(
                "is {} but the agent's --state-dir is {}: the agent never sees the pods this \
                 plugin wires (their endpoint records)",
                state_dir.display(),
                want.state_dir.display()
            ),
        );
    }
    match path("agentSocket") {
        None => problem(
            "agentSocket",
            format!(
                "is not set: ADD does not wait for the agent, so a pod may start before its \
                 policy is enforced (set it to {})",
                want.socket.display()
            ),
        ),
        Some(s) if s != want.socket => problem(
            "agentSocket",
            format!(
                "is {} but the agent listens on {}: every ADD fails with \"try again later\"",
                s.display(),
                want.socket.display()
            ),
        ),
        Some(_) => {}
    }
    if p.get("podCIDRs").is_none_or(Value::is_null) {
        let file = path("podCIDRFile").unwrap_or_else(|| podcidr::DEFAULT_PATH.into());
        let ours = podcidr::path(want.state_dir);
        if file != ours {
            problem(
                "podCIDRFile",
                format!(
                    "is {} but the agent writes this node's pod CIDRs to {} (and the config \
                     has no podCIDRs)",
                    file.display(),
                    ours.display()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> Expect<'static> {
        Expect {
            state_dir: Path::new("/var/lib/palisade"),
            socket: Path::new("/run/palisade/agent.sock"),
        }
    }

    #[test]
    fn the_example_conflist_agrees_with_the_agents_defaults() {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/10-palisade.conflist"
            ),
            d.path().join("10-palisade.conflist"),
        )
        .unwrap();
        assert_eq!(check(d.path(), &want()), []);
        assert_eq!(check(&d.path().join("none"), &want()), []);
    }

    #[test]
    fn a_mismatched_state_dir_socket_or_pod_cidr_file_is_a_problem_naming_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("10-p.conflist"),
            r#"{"cniVersion":"1.1.0","name":"p","plugins":[
                {"type":"palisade","stateDir":"/srv/pal","podCIDRFile":"/tmp/x.json"},
                {"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-p.conf"),
            r#"{"cniVersion":"1.1.0","name":"p","type":"palisade","podCIDRs":["10.0.0.0/16"],
                "agentSocket":"/run/other.sock"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("30-junk.json"), "not json").unwrap();
        let got = check(d.path(), &want());
        let fields: Vec<(&str, &str)> = got
            .iter()
            .map(|p| (p.object.rsplit('/').next().unwrap(), p.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("10-p.conflist", "plugins[0].stateDir"),
                ("10-p.conflist", "plugins[0].agentSocket"),
                ("10-p.conflist", "plugins[0].podCIDRFile"),
                ("20-p.conf", "agentSocket"),
            ]
        );
        assert!(got[0].message.contains("/srv/pal"), "{:?}", got[0]);
        assert!(got[3].message.contains("/run/other.sock"), "{:?}", got[3]);
    }
}
