//! A flow as the agent serves it: one decision of the datapath with names, in JSON whose field
//! names follow Hubble's `Flow` where the meaning is the same (`time`, `verdict`,
//! `drop_reason_desc`, `IP.source`/`IP.destination`, `l4`, `source`/`destination` with
//! `namespace`, `pod_name`, `labels`, `traffic_direction`, `is_reply`, `*_allowed_by`,
//! `*_denied_by`, `destination_service`, `Summary`), so jq and Loki queries written for
//! `hubble observe -o json` carry over. Palisade's own fields (`reason`, `suppressed`,
//! `interface`, the rule of a policy) are added beside them. The schema is documented in
//! docs/observability.md.
//!
//! Also the `flows` request's query ([`FlowQuery`]); its meaning (validation, matching) is
//! the agent's (`observe::filter`).

use serde::{Deserialize, Serialize};

/// One line of `palisadectl flows -o json`, like one `GetFlowsResponse` of Hubble.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub flow: Flow,
    pub node_name: String,
    pub time: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// RFC 3339, nanoseconds.
    pub time: String,
    /// `FORWARDED`, `DROPPED` or `AUDIT` (passed; the enforced and audited policies together
    /// would have dropped it).
    pub verdict: String,
    /// Drops and audits: Hubble's name where the meaning is the same (`POLICY_DENIED`,
    /// `INVALID_SOURCE_IP`, ...), else Palisade's reason in capitals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<String>,
    /// Palisade's reason (stable names, docs/datapath.md#reasons).
    pub reason: String,
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ip>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<L4>,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// The Service the client sent the flow to (traffic judged after translation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<Service>,
    pub node_name: String,
    /// `INGRESS` / `EGRESS`, of the judged pod (`interface`).
    pub traffic_direction: String,
    pub is_reply: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_allowed_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allowed_by: Vec<Policy>,
    /// A default deny (or, for `AUDIT`, the would-be deny): the policies that isolate the pod
    /// in this direction, none of whose rules allowed the flow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<Policy>,
    /// The judged endpoint's host interface.
    pub interface: Interface,
    /// Drops of this flow not reported before this one (the datapath's per-flow rate limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u32,
    /// Egress by domain name: why this DNS answer to a pod with `domainNames` rules taught it
    /// nothing (`other_server`: it does not come from the cluster DNS service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_not_learnt: Option<String>,
    #[serde(rename = "Summary")]
    pub summary: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ip {
    pub source: String,
    pub destination: String,
    /// `IPv4` / `IPv6`.
    #[serde(rename = "ipVersion")]
    pub ip_version: String,
}

/// One of its fields is set, as in Hubble (`{"TCP": {...}}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct L4 {
    #[serde(rename = "TCP", default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Tcp>,
    #[serde(rename = "UDP", default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<Ports>,
    #[serde(rename = "SCTP", default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<Ports>,
    #[serde(rename = "ICMPv4", default, skip_serializing_if = "Option::is_none")]
    pub icmpv4: Option<Icmp>,
    #[serde(rename = "ICMPv6", default, skip_serializing_if = "Option::is_none")]
    pub icmpv6: Option<Icmp>,
    /// Another IP protocol (Palisade only): its number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tcp {
    pub source_port: u16,
    pub destination_port: u16,
    pub flags: TcpFlags,
}

/// Set flags only (`{"SYN": true}`), as Hubble writes them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub struct TcpFlags {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fin: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub syn: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rst: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub psh: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urg: bool,
}

impl TcpFlags {
    pub fn from_bits(b: u8) -> Self {
        TcpFlags {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            psh: b & 0x08 != 0,
            ack: b & 0x10 != 0,
            urg: b & 0x20 != 0,
        }
    }

    /// `SYN, ACK`.
    pub fn names(&self) -> String {
        [
            (self.syn, "SYN"),
            (self.ack, "ACK"),
            (self.fin, "FIN"),
            (self.rst, "RST"),
            (self.psh, "PSH"),
            (self.urg, "URG"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ports {
    pub source_port: u16,
    pub destination_port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Icmp {
    #[serde(rename = "type")]
    pub ty: u8,
    pub code: u8,
}

/// One end of a flow. A pod has `namespace` and `pod_name`; anything else only labels
/// (`reserved:host` for this node's addresses, `reserved:world` otherwise), as Hubble.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// `k8s:key=value`, sorted.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The node the pod runs on, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
}

impl Endpoint {
    /// `ns/name`, or `""` when not a pod.
    pub fn pod(&self) -> String {
        if self.pod_name.is_empty() {
            String::new()
        } else {
            format!("{}/{}", self.namespace, self.pod_name)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The Service address and port the client used (`10.96.0.10:53`, `[fd00::a]:53`).
    pub address: String,
}

/// A policy that allowed the flow, isolates the pod without allowing it (no `rule`), or
/// denied it with a Deny rule (a ClusterNetworkPolicy's, with `rule`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// `NetworkPolicy` or `ClusterNetworkPolicy` (cluster-scoped: no namespace).
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// The policy is in audit mode (it decides nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// The deciding rule (`spec.ingress[0]`), with the peer and port entry that matched (for
    /// NetworkPolicy rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
}

impl Policy {
    /// `ns/name`, or `name` for cluster-scoped kinds.
    pub fn key(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// `spec.ingress[0]`.
    pub path: String,
    /// Index of the rule within its direction.
    pub index: usize,
    /// e.g. `from[1] (pods pod=b in namespace x) names x/b as a pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// e.g. `ports[0] (TCP 80)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub index: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Flow {
    /// Source port, destination port and protocol name (`TCP`, `UDP`, `SCTP`, `ICMPv4`,
    /// `ICMPv6`, or the number).
    pub fn l4_parts(&self) -> (Option<u16>, Option<u16>, String) {
        let Some(l4) = &self.l4 else {
            return (None, None, String::new());
        };
        if let Some(t) = &l4.tcp {
            return (Some(t.source_port), Some(t.destination_port), "TCP".into());
        }
        if let Some(p) = &l4.udp {
            return (Some(p.source_port), Some(p.destination_port), "UDP".into());
        }
        if let Some(p) = &l4.sctp {
            return (Some(p.source_port), Some(p.destination_port), "SCTP".into());
        }
        if l4.icmpv4.is_some() {
            return (None, None, "ICMPv4".into());
        }
        if l4.icmpv6.is_some() {
            return (None, None, "ICMPv6".into());
        }
        (
            None,
            None,
            l4.protocol.map(|p| p.to_string()).unwrap_or_default(),
        )
    }

    /// The policies named for this flow, allowing or denying, in either direction.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.ingress_allowed_by
            .iter()
            .chain(&self.egress_allowed_by)
            .chain(&self.ingress_denied_by)
            .chain(&self.egress_denied_by)
    }
}

/// A flows request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Keep streaming new flows after the history.
    #[serde(default)]
    pub follow: bool,
    /// At most this many flows of the history (the most recent); `None`: all it holds
    /// (with `follow`, none unless asked).
    #[serde(default)]
    pub last: Option<usize>,
    /// Only flows at or after this time (Unix nanoseconds).
    #[serde(default)]
    pub since_unix_ns: Option<i128>,
    /// `namespace/name` at either end.
    #[serde(default)]
    pub pod: Vec<String>,
    #[serde(default)]
    pub from_pod: Vec<String>,
    #[serde(default)]
    pub to_pod: Vec<String>,
    /// Either end's namespace.
    #[serde(default)]
    pub namespace: Vec<String>,
    /// CIDR (or address) containing either end's address.
    #[serde(default)]
    pub ip: Vec<String>,
    /// Either end's port.
    #[serde(default)]
    pub port: Vec<u16>,
    /// `TCP`, `UDP`, `SCTP`, `ICMPv4`, `ICMPv6` (any case; `ICMP` is either ICMP).
    #[serde(default)]
    pub protocol: Vec<String>,
    /// `FORWARDED`, `DROPPED`, `AUDIT` (any case).
    #[serde(default)]
    pub verdict: Vec<String>,
    /// Palisade reason (`default_deny`) or Hubble drop reason (`POLICY_DENIED`), any case.
    #[serde(default)]
    pub reason: Vec<String>,
    /// `namespace/name` of a policy the flow names (allowing or denying).
    #[serde(default)]
    pub policy: Vec<String>,
}
