//! [`LabError`]: every failed lab operation, with the object it concerned.

use std::path::PathBuf;
use std::time::Duration;

use super::Family;

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
