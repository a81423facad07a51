//! What the agent reports on its socket and `palisadectl` shows: health, generations, problems
//! (naming object, field and value), endpoints and datapath counters.

use serde::{Deserialize, Serialize};

/// Something the agent could not use, named precisely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// e.g. "NetworkPolicy x/allow-web" or "file /etc/palisade/p.yaml document 2 (Pod)".
    pub object: String,
    /// e.g. "spec.ingress[0].from[1].ipBlock.cidr".
    pub field: String,
    /// Names the bad value.
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub healthy: bool,
    pub node: String,
    /// Generation of the source's latest content the agent has seen.
    pub source_generation: u64,
    /// Generation whose content is enforced in the datapath.
    pub applied_generation: u64,
    pub endpoints: usize,
    pub policies: usize,
    pub problems: Vec<Problem>,
    /// Datapath verdict counters: (direction, reason, packets, bytes).
    pub counters: Vec<CounterRow>,
    /// Last error applying state to the datapath, if the last attempt failed.
    pub last_error: Option<String>,
    /// Flow events of the datapath (docs/observability.md).
    #[serde(default)]
    pub flow_events: FlowEventCounts,
    /// The assured conntrack tier (docs/security.md, "Conntrack eviction").
    #[serde(default)]
    pub conntrack: ConntrackCounts,
}

/// What the assured conntrack tier did since the maps were created: flows that saw their
/// first reply move there, where no other pod's flood can evict them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackCounts {
    pub assured_promoted: u64,
    /// Promotions refused because the endpoint's budget (or the tier) was full: those flows
    /// stay in the shared table, where a flood can evict them. Above zero, some pod holds many
    /// long-lived flows; see `palisade_conntrack_assured_refused_total`.
    pub assured_refused: u64,
    /// Expired assured entries the datapath deleted when it met them.
    pub assured_reaped: u64,
}

/// What became of the datapath's flow events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEventCounts {
    /// Off with `--flow-events=false`.
    pub enabled: bool,
    pub emitted: u64,
    /// Lost because the ring buffer was full (the agent did not keep up).
    pub lost: u64,
    /// Drop events held back by the per-flow rate limit.
    pub suppressed: u64,
    /// Flows in the agent's history.
    pub history: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CounterRow {
    pub direction: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointRow {
    pub pod: String,
    pub ifname: String,
    pub host_veth: String,
    pub ifindex: u32,
    pub ep_id: u32,
    pub policy_id: u32,
    pub ips: Vec<String>,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// The pod is not (yet) in the source: enforced as deny-all except the node.
    pub pod_unknown: bool,
}
