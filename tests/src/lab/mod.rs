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

//!
//! Modules: `config` (what a lab starts with), `error`, `nodes` (underlay, Node objects,
//! routes), `pods` (the model's pods made real), `outside` (hosts outside the cluster),
//! `probing` and `pairs` (probe rounds), `conditions` (waiting on what the agents report),
//! `agent` and `cni` (the processes a node runs), `hostnet`, `hostport`, `dns`, `kubeproxy`,
//! `outside_prefix` (address prefixes served by an outside host), `lookups` (lookups and
//! connections in bulk).

mod agent;
mod cni;
mod conditions;
mod config;
pub mod dns;
mod error;
mod hostnet;
mod hostport;
pub mod kubeproxy;
pub mod lookups;
pub mod model;
pub mod netns;
mod nodes;
mod outside;
mod outside_prefix;
mod pairs;
mod pods;
mod probe;
mod probing;
pub mod reachability;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use agent::{Agent, AgentBins};
pub use config::{AgentMode, LabConfig, Manifests, Mode, plugin_works, stub_plugin};
pub use error::LabError;
pub use model::{Model, ModelPod, ModelPort, PORTS};
pub use pairs::Pair;
pub use reachability::{Case, Family, Peer, ProbeCase, Protocol, Reachability, TruthTable};

use cni::NodeCni;
use probe::{PodServer, SctpSeen};

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
