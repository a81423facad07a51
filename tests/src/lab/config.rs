//! What a lab is started with ([`LabConfig`], [`AgentMode`]), what it runs as ([`Mode`]), and the
//! manifests it is given ([`Manifests`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{LabError, Model, cni};

/// The stand-in CNI plugin (`stub_cni.py`) for lab tests while the real `palisade` binary does
/// not work yet: same wiring contract, no agent call. `cargo xtask lab` never uses it.
pub fn stub_plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/lab/stub_cni.py")
}

/// True when `plugin` answers CNI VERSION (exists and is more than a skeleton).
pub fn plugin_works(plugin: &Path) -> bool {
    cni::plugin_works(plugin)
}

/// Whether the lab runs the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentMode {
    /// Run it when the binaries look usable, otherwise say why and run without.
    #[default]
    Auto,
    /// Never: nothing is enforced, everything is reachable.
    Off,
    /// Run it; fail when it cannot run.
    Required,
}

#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Simulated nodes (1 to 3).
    pub nodes: usize,
    pub agent: AgentMode,
    /// Where `palisade`, `palisade-agent` and `palisadectl` are.
    pub bin_dir: PathBuf,
    pub bpf_object: PathBuf,
    /// The CNI plugin; `None` = `<bin_dir>/palisade`.
    pub cni_plugin: Option<PathBuf>,
    /// A probe that has not completed after this long counts as blocked.
    pub probe_timeout: Duration,
    /// Bound of `palisadectl wait`.
    pub sync_timeout: Duration,
    /// Parent of the lab's directory.
    pub base_dir: PathBuf,
    /// Progress lines on stderr.
    pub verbose: bool,
    /// Build the policy crate's conformance model instead of the default one
    /// ([`Model::conformance`]): pods at exactly `conformance::pod_addr` (pod CIDRs
    /// `10.0.0.0/16` and `fd00::/64`, addresses requested through the plugin's `ips`
    /// capability), the model's named ports (SCTP and the per-pod `web` port included), and
    /// the outside host `ext` (192.168.1.1, 2001:db8::1) behind the node. One node only.
    pub conformance_addresses: bool,
    /// More `palisade-agent` arguments for every node (`--audit-mode`, `--flow-history N`,
    /// `--map-size pal_svc_v1=64`).
    pub agent_args: Vec<String>,
    /// Build this model instead of the upstream NetworkPolicy one (e.g.
    /// [`Model::cluster_network_policy`]); its node count replaces `nodes`.
    pub base_model: Option<Model>,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nodes: 1,
            agent: AgentMode::Auto,
            bin_dir: crate::bin_dir(),
            bpf_object: crate::bpf_object(),
            cni_plugin: None,
            probe_timeout: Duration::from_millis(1000),
            sync_timeout: Duration::from_secs(30),
            base_dir: std::env::temp_dir(),
            verbose: false,
            conformance_addresses: false,
            agent_args: Vec::new(),
            base_model: None,
        }
    }
}

/// What the lab enforces with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `palisade-agent` runs on every node.
    Enforcing,
    /// No agent: nothing is enforced. Carries the reason.
    NoAgent(String),
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Enforcing => f.write_str("enforcing: palisade-agent runs on every node"),
            Mode::NoAgent(why) => write!(
                f,
                "NO AGENT ({why}): policies are not enforced, everything is reachable"
            ),
        }
    }
}

/// A set of user manifests to apply.
#[derive(Clone, Debug)]
pub enum Manifests {
    /// Every `*.yaml` / `*.yml` file of a directory (each one named by its file stem).
    Dir(PathBuf),
    /// One file (named by its stem).
    File(PathBuf),
    /// Inline YAML under a name (applying the same name again replaces it).
    Yaml { name: String, text: String },
}

impl Manifests {
    pub fn yaml(name: &str, text: &str) -> Self {
        Manifests::Yaml {
            name: name.to_string(),
            text: text.to_string(),
        }
    }

    /// (name, text) of every manifest file this stands for.
    pub(super) fn load(&self) -> Result<Vec<(String, String)>, LabError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| LabError::Io {
                op: "reading manifest",
                path: p.to_path_buf(),
                source,
            })
        };
        let stem = |p: &Path| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "manifest".into())
        };
        match self {
            Manifests::Yaml { name, text } => Ok(vec![(name.clone(), text.clone())]),
            Manifests::File(p) => Ok(vec![(stem(p), read(p)?)]),
            Manifests::Dir(d) => {
                let entries = std::fs::read_dir(d).map_err(|source| LabError::Io {
                    op: "listing manifests",
                    path: d.clone(),
                    source,
                })?;
                let mut files: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_file()
                            && matches!(
                                p.extension().and_then(|e| e.to_str()),
                                Some("yaml" | "yml")
                            )
                    })
                    .collect();
                files.sort();
                files.iter().map(|p| Ok((stem(p), read(p)?))).collect()
            }
        }
    }
}

impl From<&Path> for Manifests {
    fn from(p: &Path) -> Self {
        if p.is_dir() {
            Manifests::Dir(p.to_path_buf())
        } else {
            Manifests::File(p.to_path_buf())
        }
    }
}

impl From<PathBuf> for Manifests {
    fn from(p: PathBuf) -> Self {
        Manifests::from(p.as_path())
    }
}
