//! The lab: the upstream NetworkPolicy conformance model (namespaces x, y, z; pods a, b, c;
//! TCP and UDP on 80 and 81) built from network namespaces, wired by the real `palisade` CNI
//! plugin and enforced by `palisade-agent`, probed by pod IP. See docs/lab.md.
//!
//! ```no_run
//! use palisade_tests::lab::{Family, Lab, LabConfig, Protocol, Reachability};
//! let mut lab = Lab::start(LabConfig::default())?;
//! lab.apply_yaml("deny", "kind: NetworkPolicy\n...")?;
//! lab.wait_synced()?;
//! let observed = lab.probe_all(&[80, 81], &Protocol::ALL, Family::V4)?;
//! let mut expected = Reachability::all_reachable_like(&observed);
//! expected.expect_all_ingress("x/a", false).allow_loopback();
//! if let Some(diff) = expected.diff(&observed, true) { panic!("{diff}") }
//! # Ok::<(), palisade_tests::lab::LabError>(())
//! ```
//!
//! Layout of a lab `<id>` (`pltlab<pid>x<n>`):
//! - node `i`: network namespace `<id>-n<i>` (Kubernetes node name `n<i>`), pod CIDRs
//!   `10.244.<i>.0/24` and `fd00:10:244:<i>::/64`; files under `<tmp>/<id>/n<i>/` (CNI state,
//!   agent socket, agent log, private bpffs mount);
//! - pod `ns/name`: network namespace `<id>-<ns>-<name>`, container id the same;
//! - with two or three nodes, an underlay bridge `br0` in namespace `<id>-ul` joins the nodes:
//!   each node's uplink is a veth `eth0` (`192.168.254.<i+1>/24`, `fd00:ffff::<i+1>/64`;
//!   [`Lab::node_uplink`]) whose peer `n<i>` is a bridge port. Enforcing, the lab writes a Node
//!   object per node (`01-nodes.yaml`: podCIDRs, InternalIPs) and the agents route the other
//!   nodes' pod CIDRs (routes of protocol 80); without agents the lab adds those routes itself;
//! - manifests for the agents: `<tmp>/<id>/manifests/` (`00-model.yaml` + one file per
//!   applied user manifest).
//!
//! Nothing is created in the root network namespace.

mod agent;
mod cni;
mod conditions;
pub mod dns;
mod hostnet;
mod hostport;
pub mod kubeproxy;
pub mod model;
pub mod netns;
mod pairs;
mod probe;
pub mod reachability;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use agent::{Agent, AgentBins};
pub use model::{Model, ModelPod, ModelPort, PORTS};
pub use pairs::Pair;
pub use reachability::{Case, Family, Peer, ProbeCase, Protocol, Reachability, TruthTable};

use cni::NodeCni;
use probe::{PodServer, SctpSeen, Target};

/// Every failed lab operation, with the object it concerned.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (network namespaces, bpffs mounts, BPF programs)")]
    NotRoot,
    #[error("running {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}): {output}")]
    Command {
        cmd: String,
        status: String,
        output: String,
    },
    #[error("opening network namespace {}", path.display())]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {}", path.display())]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("thread panicked: {what}")]
    ThreadPanicked { what: String },
    #[error(transparent)]
    Node(palisade_node_api::Error),
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting or unmounting bpffs at {}", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("manifest {what}: {reason}")]
    Manifest { what: String, reason: String },
    #[error("{what} failed ({status}): {output}")]
    Cni {
        what: String,
        status: String,
        output: String,
    },
    #[error("agent of node {node}: {what}\n--- agent log (tail) ---\n{log}")]
    Agent {
        node: String,
        what: String,
        log: String,
    },
    #[error("the agent is required but cannot run: {reason}")]
    AgentUnavailable { reason: String },
    #[error("CNI plugin {} does not work (CNI VERSION failed)", path.display())]
    PluginUnavailable { path: PathBuf },
    #[error("starting servers in {pod_netns}")]
    Server {
        pod_netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("probing from {pod_netns}")]
    Probe {
        pod_netns: String,
        #[source]
        source: nix::Error,
    },
    #[error("pod {pod} has no {family} address")]
    NoAddress { pod: String, family: Family },
    #[error("timed out after {after:?}: {what}")]
    Timeout { what: String, after: Duration },
    #[error("lab configuration: {reason}")]
    Config { reason: String },
}

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
    fn load(&self) -> Result<Vec<(String, String)>, LabError> {
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

struct Node {
    netns: String,
    name: String,
    cni: NodeCni,
}

struct PodRuntime {
    netns: String,
    container_id: String,
    namespace: String,
    name: String,
    node: usize,
    ips: Vec<IpAddr>,
    server: Option<PodServer>,
    /// CNI ADD succeeded, so teardown runs DEL.
    added: bool,
    /// A host-network pod: `netns` is its node's, which teardown leaves alone.
    host_network: bool,
}

/// A host outside the cluster: a namespace behind node 0 (veth `ext0` in the node, `eth0` in
/// the host), serving like a pod.
struct OutsideHost {
    id: String,
    netns: String,
    ips: Vec<IpAddr>,
    server: Option<PodServer>,
}

/// A running lab; dropping it tears everything down (CNI DEL for every pod, agents stopped,
/// bpffs unmounted, namespaces and files removed).
pub struct Lab {
    id: String,
    dir: PathBuf,
    config: LabConfig,
    mode: Mode,
    nodes: Vec<Node>,
    agents: Vec<Agent>,
    base: Model,
    model: Model,
    /// Applied user manifests by name, in name order.
    user: BTreeMap<String, Vec<Value>>,
    /// Pods that exist, by `ns/name`.
    pods: BTreeMap<String, PodRuntime>,
    /// Hosts outside the cluster (conformance mode: `ext`; underlay hosts).
    outside: Vec<OutsideHost>,
    /// Namespace of the underlay bridge (two or three nodes).
    underlay: Option<String>,
    /// SCTP probes the servers received.
    sctp_seen: SctpSeen,
}

/// Pod CIDRs of the conformance model's node (`conformance::pod_addr` lies inside).
pub const CONFORMANCE_POD_CIDR_V4: &str = "10.0.0.0/16";
pub const CONFORMANCE_POD_CIDR_V6: &str = "fd00::/64";

/// The node's addresses on the link to the outside hosts.
const OUTSIDE_GW_V4: &str = "192.168.1.254";
const OUTSIDE_GW_V6: &str = "2001:db8::fe";

/// Subnet of the multi-node underlay.
const UNDERLAY_V4: &str = "192.168.254";
const UNDERLAY_V6: &str = "fd00:ffff:";
/// The cluster's pod CIDRs (every node's `10.244.<i>.0/24`, `fd00:10:244:<i>::/64`) and
/// Service CIDRs (kind's defaults), passed to the agents (`--cluster-cidr`, `--service-cidr`).
pub const CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:10:244::/48"];
pub const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/12", "fd00:10:96::/112"];
/// `rtm_protocol` of the agent's routes (`palisade_agent::node::routing::RTPROT_PALISADE`).
pub const ROUTE_PROTOCOL: &str = "80";

impl Lab {
    /// Builds the model (see the module doc) and waits until it is enforced.
    pub fn start(config: LabConfig) -> Result<Lab, LabError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(LabError::NotRoot);
        }
        raise_fd_limit();
        let swept = netns::sweep_orphans(&config.base_dir);
        if config.verbose && !swept.is_empty() {
            eprintln!("lab: swept leftovers of dead labs: {}", swept.join(", "));
        }
        let id = crate::unique_name("lab");
        let dir = config.base_dir.join(&id);
        let nodes_n = config
            .base_model
            .as_ref()
            .map_or(config.nodes, |m| m.nodes)
            .clamp(1, 3);
        let plugin = config
            .cni_plugin
            .clone()
            .unwrap_or_else(|| config.bin_dir.join("palisade"));
        if !cni::plugin_works(&plugin) {
            return Err(LabError::PluginUnavailable { path: plugin });
        }
        let bins = AgentBins::in_dir(&config.bin_dir, config.bpf_object.clone());
        let mode = match config.agent {
            AgentMode::Off => Mode::NoAgent("--no-agent".into()),
            AgentMode::Auto => match bins.unusable_reason() {
                None => Mode::Enforcing,
                Some(r) => Mode::NoAgent(r),
            },
            AgentMode::Required => match bins.unusable_reason() {
                None => Mode::Enforcing,
                Some(reason) => return Err(LabError::AgentUnavailable { reason }),
            },
        };
        if config.conformance_addresses && nodes_n != 1 {
            return Err(LabError::Config {
                reason: format!(
                    "conformance_addresses needs one node (the model's addresses are not split by node), not {nodes_n}"
                ),
            });
        }
        let base = if let Some(m) = &config.base_model {
            m.clone()
        } else if config.conformance_addresses {
            Model::conformance()
        } else {
            Model::upstream(nodes_n)
        };
        let mut lab = Lab {
            id: id.clone(),
            dir: dir.clone(),
            mode,
            nodes: Vec::new(),
            agents: Vec::new(),
            model: base.clone(),
            base,
            user: BTreeMap::new(),
            pods: BTreeMap::new(),
            outside: Vec::new(),
            underlay: None,
            sctp_seen: SctpSeen::default(),
            config,
        };
        // From here on, an error drops `lab`, which removes what was built so far.
        lab.log(format_args!("lab {id}: {}", lab.mode));
        mkdir(&lab.manifests_dir())?;
        for i in 0..nodes_n {
            let netns_name = format!("{id}-n{i}");
            let node_dir = dir.join(model::node_name(i));
            let state_dir = node_dir.join("state");
            mkdir(&state_dir)?;
            netns::add(&netns_name)?;
            let enforcing = lab.mode == Mode::Enforcing;
            lab.nodes.push(Node {
                netns: netns_name.clone(),
                name: model::node_name(i),
                cni: NodeCni {
                    plugin: plugin.clone(),
                    node_netns: netns_name.clone(),
                    pod_cidrs: if lab.config.conformance_addresses {
                        vec![
                            CONFORMANCE_POD_CIDR_V4.into(),
                            CONFORMANCE_POD_CIDR_V6.into(),
                        ]
                    } else {
                        vec![format!("10.244.{i}.0/24"), format!("fd00:10:244:{i}::/64")]
                    },
                    state_dir,
                    agent_socket: enforcing.then(|| node_dir.join("agent.sock")),
                },
            });
            netns::in_netns(&netns_name, || -> Result<(), LabError> {
                netns::write_sysctl("net.ipv4.ip_forward", "1")?;
                netns::write_sysctl("net.ipv6.conf.all.forwarding", "1")
            })??;
        }
        if nodes_n >= 2 {
            lab.build_underlay()?;
        }
        if lab.config.conformance_addresses {
            lab.add_outside_host("ext")?;
        }
        lab.write_model()?;
        if lab.mode == Mode::Enforcing {
            let multi = nodes_n >= 2;
            if multi {
                lab.write_nodes(&lab.node_objects())?;
            }
            let mut network_args = Vec::new();
            if !lab.config.conformance_addresses {
                for c in CLUSTER_CIDRS {
                    network_args.extend(["--cluster-cidr".to_string(), c.to_string()]);
                }
            }
            for c in SERVICE_CIDRS {
                network_args.extend(["--service-cidr".to_string(), c.to_string()]);
            }
            network_args.extend(lab.config.agent_args.iter().cloned());
            for i in 0..lab.nodes.len() {
                let node_dir = dir.join(&lab.nodes[i].name);
                let agent = Agent::start(
                    &bins,
                    &lab.nodes[i].netns,
                    &lab.nodes[i].name,
                    &node_dir,
                    &lab.manifests_dir(),
                    &lab.nodes[i].cni.state_dir,
                    &network_args,
                )?;
                lab.agents.push(agent);
            }
            lab.wait_synced()?;
            if multi {
                let want = lab.expected_pod_routes();
                lab.wait_pod_routes(&want)?;
            }
        }
        lab.reconcile_pods()?;
        lab.wait_synced()?;
        lab.log(format_args!(
            "lab {id}: {} pods on {} node(s) ready",
            lab.pods.len(),
            lab.nodes.len()
        ));
        Ok(lab)
    }

    fn log(&self, args: fmt::Arguments<'_>) {
        if self.config.verbose {
            eprintln!("{args}");
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn enforcing(&self) -> bool {
        self.mode == Mode::Enforcing
    }

    /// The directory the agents read (`--source dir:`).
    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model as currently applied (user Namespace/Pod objects folded in).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// `ns/name` of every pod, in table order.
    pub fn pod_ids(&self) -> Vec<String> {
        self.model.pod_ids()
    }

    /// Addresses the CNI plugin gave a pod.
    pub fn pod_ips(&self, id: &str) -> Option<&[IpAddr]> {
        self.pods.get(id).map(|p| p.ips.as_slice())
    }

    /// Network namespace name of a pod.
    pub fn pod_netns(&self, id: &str) -> Option<&str> {
        self.pods.get(id).map(|p| p.netns.as_str())
    }

    /// Network namespace names of the nodes.
    pub fn node_netns(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.netns.as_str()).collect()
    }

    /// The uplink of node `i` (its link to the underlay bridge, in the node's namespace):
    /// `eth0`; `None` with one node (no underlay) or no such node.
    pub fn node_uplink(&self, i: usize) -> Option<&'static str> {
        (self.underlay.is_some() && i < self.nodes.len()).then_some("eth0")
    }

    /// Node `i`'s underlay addresses (its InternalIPs): `192.168.254.<i+1>`, `fd00:ffff::<i+1>`.
    pub fn node_addrs(i: usize) -> [IpAddr; 2] {
        [
            format!("{UNDERLAY_V4}.{}", i + 1).parse().expect("IPv4"),
            format!("{UNDERLAY_V6}:{}", i + 1).parse().expect("IPv6"),
        ]
    }

    /// Pod CIDRs of node `i` (what its CNI plugin allocates from).
    pub fn node_pod_cidrs(&self, i: usize) -> Option<&[String]> {
        self.nodes.get(i).map(|n| n.cni.pod_cidrs.as_slice())
    }

    /// The Node objects the lab writes for the agents (multi-node, enforcing): name,
    /// spec.podCIDRs, status.addresses (InternalIP of each family, Hostname).
    pub fn node_objects(&self) -> Vec<serde_json::Value> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let [v4, v6] = Self::node_addrs(i);
                let labels = self.model.node_labels.get(i).cloned().unwrap_or_default();
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": n.name, "labels": labels},
                    "spec": {"podCIDR": n.cni.pod_cidrs.first(), "podCIDRs": n.cni.pod_cidrs},
                    "status": {"addresses": [
                        {"type": "InternalIP", "address": v4.to_string()},
                        {"type": "InternalIP", "address": v6.to_string()},
                        {"type": "Hostname", "address": n.name},
                    ]},
                })
            })
            .collect()
    }

    /// Replaces the Node objects in the manifests directory (`01-nodes.yaml`); the agents pick
    /// them up like any manifest change.
    pub fn write_nodes(&self, nodes: &[serde_json::Value]) -> Result<(), LabError> {
        let docs: Vec<Value> = nodes
            .iter()
            .map(|n| {
                serde_json::to_value(n).map_err(|e| LabError::Manifest {
                    what: "Node".into(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        write_atomic(
            &self.manifests_dir().join("01-nodes.yaml"),
            &model::join_documents(&docs),
        )
    }

    /// Palisade's routes (protocol 80) in node `i`, as `(destination, gateway)` pairs of both
    /// families, sorted.
    pub fn palisade_routes(&self, i: usize) -> Result<Vec<(String, String)>, LabError> {
        let ns = &self.nodes[i].netns;
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let text = netns::ip(&["-n", ns, fam, "route", "show", "proto", ROUTE_PROTOCOL])?;
            for line in text.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                if let Some(p) = w.iter().position(|x| *x == "via") {
                    out.push((w[0].to_string(), w[p + 1].to_string()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// For every node: the routes the agents should hold, from the default Node objects
    /// (every other node's pod CIDRs via its underlay address of the same family).
    pub fn expected_pod_routes(&self) -> Vec<Vec<(String, String)>> {
        (0..self.nodes.len())
            .map(|i| {
                let mut want: Vec<(String, String)> = (0..self.nodes.len())
                    .filter(|&j| j != i)
                    .flat_map(|j| {
                        let [v4, v6] = Self::node_addrs(j);
                        self.nodes[j].cni.pod_cidrs.iter().map(move |c| {
                            let via = if c.contains(':') { v6 } else { v4 };
                            (canonical_cidr(c), via.to_string())
                        })
                    })
                    .collect();
                want.sort();
                want
            })
            .collect()
    }

    /// Waits (bounded by the sync timeout) until node `i`'s Palisade routes are `want[i]`,
    /// for every node.
    pub fn wait_pod_routes(&self, want: &[Vec<(String, String)>]) -> Result<(), LabError> {
        let start = Instant::now();
        let limit = self.config.sync_timeout;
        for (i, w) in want.iter().enumerate() {
            loop {
                let got = self.palisade_routes(i)?;
                if &got == w {
                    break;
                }
                if start.elapsed() > limit {
                    let status = self
                        .agents
                        .get(i)
                        .map(|a| a.status().unwrap_or_else(|e| e.to_string()))
                        .unwrap_or_default();
                    return Err(LabError::Timeout {
                        what: format!(
                            "routes of node {}: want {w:?}, have {got:?}; agent status: {status}",
                            self.nodes[i].name
                        ),
                        after: limit,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Adds a host outside the cluster on the underlay (two or three nodes): namespace
    /// `<lab>-<id>`, `eth0` on the bridge with `192.168.254.<host>/24` and `fd00:ffff::<host>/64`
    /// and no route to the pod CIDRs (so only masqueraded pod traffic can be answered),
    /// serving like a pod. Returns its addresses.
    pub fn add_underlay_host(&mut self, id: &str, host: u8) -> Result<Vec<IpAddr>, LabError> {
        let Some(ul) = self.underlay.clone() else {
            return Err(LabError::Config {
                reason: "an underlay host needs two or three nodes".into(),
            });
        };
        let netns_name = format!("{}-{id}", self.id);
        netns::add(&netns_name)?;
        let ips: Vec<IpAddr> = vec![
            format!("{UNDERLAY_V4}.{host}").parse().expect("IPv4"),
            format!("{UNDERLAY_V6}:{host}").parse().expect("IPv6"),
        ];
        self.outside.push(OutsideHost {
            id: id.to_string(),
            netns: netns_name.clone(),
            ips: ips.clone(),
            server: None,
        });
        let port = format!("h-{id}");
        netns::ip(&[
            "-n",
            &ul,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns_name,
        ])?;
        netns::ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
        netns::in_netns(&netns_name, || {
            netns::write_sysctl("net.ipv6.conf.eth0.accept_dad", "0")
        })??;
        for (addr, len) in [(ips[0], 24), (ips[1], 64)] {
            netns::ip(&[
                "-n",
                &netns_name,
                "addr",
                "add",
                &format!("{addr}/{len}"),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        netns::ip(&["-n", &netns_name, "link", "set", "eth0", "up"])?;
        allow_ping(&netns_name)?;
        let server = PodServer::start(&netns_name, id, &PORTS, &self.sctp_seen)?;
        if let Some(o) = self.outside.iter_mut().find(|o| o.id == id) {
            o.server = Some(server);
        }
        self.log(format_args!(
            "lab: underlay host {id} ({netns_name}): {ips:?}"
        ));
        Ok(ips)
    }

    /// Network namespace of an outside host.
    pub fn outside_netns(&self, id: &str) -> Option<&str> {
        self.outside
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.netns.as_str())
    }

    /// Paths of the agents' logs.
    pub fn agent_logs(&self) -> Vec<&Path> {
        self.agents.iter().map(|a| a.log_path()).collect()
    }

    /// `palisadectl status` of every node.
    pub fn agent_status(&self) -> Result<Vec<String>, LabError> {
        self.agents.iter().map(Agent::status).collect()
    }

    /// Applies user manifests: Namespace and Pod objects change the model (labels, added
    /// pods, which are created right away); every other object goes to the agents. Call
    /// [`Lab::wait_synced`] before probing.
    pub fn apply(&mut self, manifests: impl Into<Manifests>) -> Result<(), LabError> {
        for (name, text) in manifests.into().load()? {
            let docs = model::split_documents(&name, &text)?;
            self.user.insert(sanitize(&name), docs);
        }
        self.sync()
    }

    /// [`Lab::apply`] of inline YAML under `name`.
    pub fn apply_yaml(&mut self, name: &str, yaml: &str) -> Result<(), LabError> {
        self.apply(Manifests::yaml(name, yaml))
    }

    /// Removes the user manifest applied under `name` (a file's stem for files).
    pub fn remove(&mut self, name: &str) -> Result<(), LabError> {
        self.user.remove(&sanitize(name));
        self.sync()
    }

    /// Removes every user manifest: back to the bare model.
    pub fn clear(&mut self) -> Result<(), LabError> {
        self.user.clear();
        self.sync()
    }

    /// Blocks until every agent enforces the current manifests (`palisadectl wait`); a no-op
    /// without agents.
    pub fn wait_synced(&self) -> Result<(), LabError> {
        for a in &self.agents {
            a.wait_synced(self.config.sync_timeout)?;
        }
        Ok(())
    }

    /// Probes every pod to every pod (itself included) on every (port, protocol), by the
    /// destination's address of `family`, all in parallel.
    pub fn probe_all(
        &self,
        ports: &[u16],
        protocols: &[Protocol],
        family: Family,
    ) -> Result<Reachability, LabError> {
        let cases: Vec<Case> = ports
            .iter()
            .flat_map(|&port| {
                protocols
                    .iter()
                    .map(move |&protocol| Case { port, protocol })
            })
            .collect();
        self.probe_cases(&self.pod_ids(), &cases, family)
    }

    /// Ids of the hosts outside the cluster (`ext` in conformance mode).
    pub fn outside_ids(&self) -> Vec<String> {
        self.outside.iter().map(|o| o.id.clone()).collect()
    }

    /// Addresses of an outside host.
    pub fn outside_ips(&self, id: &str) -> Option<&[IpAddr]> {
        self.outside
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.ips.as_slice())
    }

    /// Every endpoint (pods, then outside hosts) to every endpoint, on every case (port and
    /// protocol: TCP, UDP, SCTP, ICMP with port 0), by the destination's address of
    /// `family`, all in parallel: a round costs the probe timeout once when anything is
    /// blocked. The table's ids are `ns/name` for pods and the outside hosts' names.
    pub fn probe_everything(
        &self,
        cases: &[Case],
        family: Family,
    ) -> Result<Reachability, LabError> {
        let mut ids = self.pod_ids();
        ids.extend(self.outside_ids());
        self.probe_cases(&ids, cases, family)
    }

    /// Network namespace and addresses of a pod or outside host.
    fn endpoint(&self, id: &str) -> Option<(&str, &[IpAddr])> {
        if let Some(p) = self.pods.get(id) {
            return Some((p.netns.as_str(), p.ips.as_slice()));
        }
        self.outside
            .iter()
            .find(|o| o.id == id)
            .map(|o| (o.netns.as_str(), o.ips.as_slice()))
    }

    fn probe_cases(
        &self,
        ids: &[String],
        cases: &[Case],
        family: Family,
    ) -> Result<Reachability, LabError> {
        let mut targets = Vec::new();
        for id in ids {
            let addr = self
                .endpoint(id)
                .and_then(|(_, ips)| {
                    ips.iter().copied().find(|a| match family {
                        Family::V4 => a.is_ipv4(),
                        Family::V6 => a.is_ipv6(),
                    })
                })
                .ok_or_else(|| LabError::NoAddress {
                    pod: id.clone(),
                    family,
                })?;
            targets.push(Target {
                id: id.clone(),
                addr,
            });
        }
        self.wait_links_ready(family)?;
        let mut reach = Reachability::with_cases(ids, cases, family, None);
        let timeout = self.config.probe_timeout;
        let seen = &self.sctp_seen;
        let results: Vec<Result<(String, Vec<probe::Outcome>), LabError>> =
            std::thread::scope(|s| {
                let handles: Vec<_> = ids
                    .iter()
                    .map(|from| {
                        let netns = self.endpoint(from).map(|(n, _)| n).unwrap_or_default();
                        let targets = &targets;
                        s.spawn(move || {
                            probe::probe_from(netns, from, targets, cases, timeout, seen)
                                .map(|o| (from.clone(), o))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(LabError::ThreadPanicked {
                                what: "probe".into(),
                            })
                        })
                    })
                    .collect()
            });
        for r in results {
            let (from, outcomes) = r?;
            for o in outcomes {
                reach.observe(o.case, &from, &o.to, o.reachable);
            }
        }
        Ok(reach)
    }

    /// Builds an outside host `id` (conformance mode): a namespace `<lab>-<id>` joined to node
    /// 0 by a veth (`ext0` in the node, `eth0` in the host), with the model's addresses
    /// (`conformance::external_addr`) on `eth0` and the node's `192.168.1.254` /
    /// `2001:db8::fe` on `ext0`, so the node reaches the host through the connected routes
    /// 192.168.1.0/24 and 2001:db8::/64; the host routes only the pod CIDRs back via the node
    /// (no default route). The host serves like a pod.
    fn add_outside_host(&mut self, id: &str) -> Result<(), LabError> {
        let netns_name = format!("{}-{id}", self.id);
        let node = self.nodes[0].netns.clone();
        netns::add(&netns_name)?;
        let ips = vec![
            palisade_policy::conformance::external_addr(id, false),
            palisade_policy::conformance::external_addr(id, true),
        ];
        // Recorded first: teardown removes the namespace (and the veth with it).
        self.outside.push(OutsideHost {
            id: id.to_string(),
            netns: netns_name.clone(),
            ips: ips.clone(),
            server: None,
        });
        netns::ip(&[
            "-n",
            &node,
            "link",
            "add",
            "ext0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns_name,
        ])?;
        for (ns, dev) in [(node.as_str(), "ext0"), (netns_name.as_str(), "eth0")] {
            netns::in_netns(ns, || {
                netns::write_sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0")
            })??;
        }
        let (v4, v6) = (ips[0].to_string(), ips[1].to_string());
        netns::ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("{OUTSIDE_GW_V4}/24"),
            "dev",
            "ext0",
        ])?;
        netns::ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("{OUTSIDE_GW_V6}/64"),
            "dev",
            "ext0",
            "nodad",
        ])?;
        netns::ip(&[
            "-n",
            &netns_name,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            "eth0",
        ])?;
        netns::ip(&[
            "-n",
            &netns_name,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        netns::ip(&["-n", &node, "link", "set", "ext0", "up"])?;
        netns::ip(&["-n", &netns_name, "link", "set", "eth0", "up"])?;
        for cidr in &self.nodes[0].cni.pod_cidrs {
            let via = if cidr.contains(':') {
                OUTSIDE_GW_V6
            } else {
                OUTSIDE_GW_V4
            };
            netns::ip(&[
                "-n",
                &netns_name,
                "route",
                "add",
                cidr,
                "via",
                via,
                "dev",
                "eth0",
            ])?;
        }
        allow_ping(&netns_name)?;
        let server = PodServer::start(&netns_name, id, &PORTS, &self.sctp_seen)?;
        if let Some(o) = self.outside.iter_mut().find(|o| o.id == id) {
            o.server = Some(server);
        }
        self.log(format_args!(
            "lab: outside host {id} ({netns_name}): {ips:?}"
        ));
        Ok(())
    }

    /// Waits (bounded) until every pod's link is usable, so first-contact delays are not
    /// mistaken for blocked traffic:
    /// 1. the pod's `eth0` has carrier (`state UP`): the kernel reports a veth's carrier change
    ///    through linkwatch, which batches events for up to a second, and IPv6 is not started
    ///    on a device before it;
    /// 2. for IPv6, `eth0` has a link-local address and no address of a pod or node namespace
    ///    is tentative (duplicate address detection): a node-side veth whose link-local
    ///    address is tentative sends no neighbour solicitation.
    fn wait_links_ready(&self, family: Family) -> Result<(), LabError> {
        let start = Instant::now();
        let limit = Duration::from_secs(10);
        let wait = |ns: &str, ready: &dyn Fn() -> Result<Option<String>, LabError>| loop {
            match ready()? {
                None => return Ok(()),
                Some(why) if start.elapsed() > limit => {
                    return Err(LabError::Timeout {
                        what: format!("links of {ns} not ready: {why}"),
                        after: limit,
                    });
                }
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        for p in self.pods.values().filter(|p| !p.host_network) {
            let ns = p.netns.as_str();
            wait(ns, &|| {
                let link = netns::ip(&["-n", ns, "-o", "link", "show", "dev", "eth0"])?;
                if !link.contains("state UP") {
                    return Ok(Some(link));
                }
                if family == Family::V6 {
                    let ll = netns::ip(&[
                        "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
                    ])?;
                    if ll.trim().is_empty() || ll.contains("tentative") {
                        return Ok(Some(format!("link-local address: {ll:?}")));
                    }
                }
                Ok(None)
            })?;
        }
        if family == Family::V6 {
            let all = self
                .pods
                .values()
                .filter(|p| !p.host_network)
                .map(|p| p.netns.as_str())
                .chain(self.nodes.iter().map(|n| n.netns.as_str()));
            for ns in all {
                wait(ns, &|| {
                    let out = netns::ip(&["-n", ns, "-6", "addr", "show", "tentative"])?;
                    Ok((!out.trim().is_empty()).then_some(out))
                })?;
            }
        }
        Ok(())
    }

    /// The underlay: a bridge `br0` in namespace `<id>-ul`; per node a veth `eth0` (node) /
    /// `n<i>` (bridge port). Without agents the lab routes the pod CIDRs itself; with agents
    /// the agents do (from the Node objects).
    fn build_underlay(&mut self) -> Result<(), LabError> {
        let ul = format!("{}-ul", self.id);
        netns::add(&ul)?;
        // Recorded first: teardown removes it (and the bridge ports with it).
        self.underlay = Some(ul.clone());
        netns::ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        netns::ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes.len() {
            let ns = self.nodes[i].netns.clone();
            let port = format!("n{i}");
            netns::ip(&[
                "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            netns::ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
            let [v4, v6] = Self::node_addrs(i);
            netns::ip(&["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
            netns::ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            netns::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        if self.mode == Mode::Enforcing {
            return Ok(());
        }
        for (i, want) in self.expected_pod_routes().into_iter().enumerate() {
            let ns = self.nodes[i].netns.clone();
            for (cidr, via) in want {
                netns::ip(&["-n", &ns, "route", "add", &cidr, "via", &via, "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// Recomputes the model from the base and the user manifests, rewrites the manifests
    /// directory, and creates or removes pods.
    fn sync(&mut self) -> Result<(), LabError> {
        let mut model = self.base.clone();
        for docs in self.user.values() {
            model.overlay(docs)?;
        }
        self.model = model;
        self.write_user_files()?;
        self.reconcile_pods()
    }

    fn write_user_files(&self) -> Result<(), LabError> {
        let dir = self.manifests_dir();
        let wanted: BTreeSet<String> = self
            .user
            .keys()
            .map(|n| format!("50-user-{n}.yaml"))
            .collect();
        let entries = std::fs::read_dir(&dir).map_err(|source| LabError::Io {
            op: "listing",
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with("50-user-") && !wanted.contains(&f) {
                std::fs::remove_file(e.path()).map_err(|source| LabError::Io {
                    op: "removing",
                    path: e.path(),
                    source,
                })?;
            }
        }
        for (name, docs) in &self.user {
            let rest: Vec<Value> = docs
                .iter()
                .filter(|d| !model::is_model_object(d))
                .cloned()
                .collect();
            write_atomic(
                &dir.join(format!("50-user-{name}.yaml")),
                &model::join_documents(&rest),
            )?;
        }
        Ok(())
    }

    fn write_model(&self) -> Result<(), LabError> {
        let ips: BTreeMap<String, Vec<IpAddr>> = self
            .pods
            .iter()
            .map(|(id, p)| (id.clone(), p.ips.clone()))
            .collect();
        write_atomic(
            &self.manifests_dir().join("00-model.yaml"),
            &self.model.to_yaml(&ips),
        )
    }

    /// Makes the running pods match the model: removes pods that left it (or moved node),
    /// creates the new ones (model written and agents synced first: the plugin asks the
    /// agent about the pod), then writes the model again with the new pods' addresses.
    fn reconcile_pods(&mut self) -> Result<(), LabError> {
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(id, p)| self.model.pod(id).is_none_or(|m| m.node != p.node))
            .map(|(id, _)| id.clone())
            .collect();
        let new: Vec<ModelPod> = self
            .model
            .pods
            .iter()
            .filter(|m| self.pods.get(&m.id()).is_none_or(|p| p.node != m.node))
            .cloned()
            .collect();
        for id in &stale {
            if let Some(p) = self.pods.remove(id) {
                self.teardown_pod(p)?;
            }
        }
        self.write_model()?;
        if new.is_empty() {
            return Ok(());
        }
        self.wait_synced()?;
        for m in new {
            self.add_pod(&m)?;
        }
        self.write_model()
    }

    fn add_pod(&mut self, m: &ModelPod) -> Result<(), LabError> {
        if m.host_network {
            return self.add_host_network_pod(m);
        }
        let name = format!("{}-{}-{}", self.id, m.namespace, m.name);
        netns::add(&name)?;
        let mut rt = PodRuntime {
            netns: name.clone(),
            container_id: name.clone(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            node: m.node,
            ips: Vec::new(),
            server: None,
            added: false,
            host_network: false,
        };
        let id = m.id();
        // Recorded first, so a failure below still tears down what exists.
        let node = &self.nodes[m.node];
        let result = allow_ping(&name).and_then(|()| {
            node.cni.add(
                &rt.container_id,
                &rt.netns,
                (&m.namespace, &m.name),
                &m.requested_ips,
            )
        });
        match result {
            Ok(ips) => {
                rt.ips = ips;
                rt.added = true;
            }
            Err(e) => {
                self.pods.insert(id, rt);
                return Err(e);
            }
        }
        match PodServer::start(&name, &id, &self.model.serve, &self.sctp_seen) {
            Ok(s) => rt.server = Some(s),
            Err(e) => {
                self.pods.insert(id, rt);
                return Err(e);
            }
        }
        self.log(format_args!(
            "lab: pod {id} on {} ({name}): {:?}",
            node.name, rt.ips
        ));
        self.pods.insert(id, rt);
        Ok(())
    }

    fn teardown_pod(&self, mut p: PodRuntime) -> Result<(), LabError> {
        p.server = None;
        if p.host_network {
            // Its namespace is its node's.
            return Ok(());
        }
        if p.added {
            self.nodes[p.node]
                .cni
                .del(&p.container_id, &p.netns, (&p.namespace, &p.name))?;
        }
        netns::del(&p.netns)
    }

    fn teardown(&mut self) -> Vec<LabError> {
        let mut errors = Vec::new();
        let pods = std::mem::take(&mut self.pods);
        for (_, p) in pods {
            let ns = p.netns.clone();
            let host_network = p.host_network;
            if let Err(e) = self.teardown_pod(p) {
                errors.push(e);
                // The namespace goes anyway (a node's goes with the node).
                if !host_network && let Err(e) = netns::del(&ns) {
                    errors.push(e);
                }
            }
        }
        for mut o in self.outside.drain(..) {
            o.server = None;
            if let Err(e) = netns::del(&o.netns) {
                errors.push(e);
            }
        }
        for mut a in self.agents.drain(..) {
            if let Err(e) = a.stop() {
                errors.push(e);
            }
        }
        for n in self.nodes.drain(..) {
            if let Err(e) = netns::del(&n.netns) {
                errors.push(e);
            }
        }
        if let Some(ul) = self.underlay.take()
            && let Err(e) = netns::del(&ul)
        {
            errors.push(e);
        }
        if self.dir.exists()
            && let Err(source) = std::fs::remove_dir_all(&self.dir)
        {
            errors.push(LabError::Io {
                op: "removing lab directory",
                path: self.dir.clone(),
                source,
            });
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("lab {}: teardown: {e}", self.id);
        }
    }
}

/// A CIDR as `ip route` prints it (`fd00:10:244:0::/64` -> `fd00:10:244::/64`); unparsable
/// text is returned as is.
pub fn canonical_cidr(s: &str) -> String {
    match s.split_once('/') {
        Some((a, len)) => match a.parse::<IpAddr>() {
            Ok(ip) => format!("{ip}/{len}"),
            Err(_) => s.to_string(),
        },
        None => s.to_string(),
    }
}

fn mkdir(p: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(p).map_err(|source| LabError::Io {
        op: "creating directory",
        path: p.to_path_buf(),
        source,
    })
}

/// The node contract's atomic writer: a watcher never reads a half-written manifest.
fn write_atomic(path: &Path, text: &str) -> Result<(), LabError> {
    palisade_node_api::file::write_atomic(path, text.as_bytes()).map_err(LabError::Node)
}

/// Lets every group open ICMP ping sockets in namespace `netns` (the ICMP probes use them;
/// `net.ipv4.ping_group_range` is per namespace and covers IPv6 ping sockets too).
fn allow_ping(netns: &str) -> Result<(), LabError> {
    netns::in_netns(netns, || {
        netns::write_sysctl("net.ipv4.ping_group_range", "0 2147483647")
    })?
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// 9 pods x 36 probes each are open at once; lift the soft descriptor limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("lab: raising RLIMIT_NOFILE: {e}");
    }
}
