//! Which flows a client asked for (`palisadectl flows` filters, as `hubble observe` has
//! them). Applied by the agent, so a follower receives only what it asked for.
//!
//! Values of one filter are alternatives (`--pod a --pod b`: either); different filters must
//! all hold. Values are checked by `FlowQuery::validate` before the agent sees them.

use std::net::IpAddr;

use palisade_policy::Prefix;

use palisade_node_api::flow::{FlowQuery, FlowRecord};

/// A `--ip` value: a CIDR, or an address alone (its host prefix).
pub fn parse_cidr(s: &str) -> Result<Prefix, String> {
    match s.parse::<IpAddr>() {
        Ok(a) => Ok(Prefix::host(a)),
        Err(_) => Prefix::parse(s),
    }
}

fn pod_ok(s: &str) -> Result<(), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(()),
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

const VERDICTS: [&str; 3] = ["FORWARDED", "DROPPED", "AUDIT"];
const PROTOCOLS: [&str; 6] = ["TCP", "UDP", "SCTP", "ICMP", "ICMPV4", "ICMPV6"];

/// What the agent makes of a query.
pub trait QueryExt {
    /// Every bad value, naming the option and the value.
    fn validate(&self) -> Result<(), String>;
    /// Whether `r` passes every filter (and `since`).
    fn matches(&self, r: &FlowRecord, unix_ns: Option<i128>) -> bool;
}

impl QueryExt for FlowQuery {
    fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        for (opt, vals) in [
            ("--pod", &self.pod),
            ("--from-pod", &self.from_pod),
            ("--to-pod", &self.to_pod),
            ("--policy", &self.policy),
        ] {
            for v in vals {
                if let Err(e) = pod_ok(v) {
                    bad.push(format!("{opt} {e}"));
                }
            }
        }
        for v in &self.ip {
            if let Err(e) = parse_cidr(v) {
                bad.push(format!("--ip {e}"));
            }
        }
        for v in &self.verdict {
            if !VERDICTS.contains(&v.to_ascii_uppercase().as_str()) {
                bad.push(format!("--verdict {v:?} is not one of {VERDICTS:?}"));
            }
        }
        for v in &self.protocol {
            if !PROTOCOLS.contains(&v.to_ascii_uppercase().as_str()) {
                bad.push(format!(
                    "--protocol {v:?} is not one of TCP, UDP, SCTP, ICMP, ICMPv4, ICMPv6"
                ));
            }
        }
        for v in &self.reason {
            let known = palisade_common::verdict::Reason::ALL.iter().any(|r| {
                r.name().eq_ignore_ascii_case(v)
                    || super::names::drop_reason_desc(*r).eq_ignore_ascii_case(v)
            });
            if !known {
                bad.push(format!(
                    "--reason {v:?} is not a reason (docs/datapath.md#reasons)"
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }

    fn matches(&self, r: &FlowRecord, unix_ns: Option<i128>) -> bool {
        let f = &r.flow;
        let any = |vals: &[String], ok: &dyn Fn(&str) -> bool| {
            vals.is_empty() || vals.iter().any(|v| ok(v))
        };
        let (src, dst) = (f.source.pod(), f.destination.pod());
        let (sport, dport, proto) = f.l4_parts();
        let addrs: Vec<IpAddr> =
            f.ip.iter()
                .flat_map(|ip| [ip.source.parse().ok(), ip.destination.parse().ok()])
                .flatten()
                .collect();
        if let (Some(since), Some(t)) = (self.since_unix_ns, unix_ns)
            && t < since
        {
            return false;
        }
        any(&self.pod, &|v| v == src || v == dst)
            && any(&self.from_pod, &|v| v == src)
            && any(&self.to_pod, &|v| v == dst)
            && any(&self.namespace, &|v| {
                v == f.source.namespace || v == f.destination.namespace
            })
            && any(&self.ip, &|v| {
                parse_cidr(v).is_ok_and(|c| addrs.iter().any(|a| c.contains_addr(*a)))
            })
            && (self.port.is_empty()
                || self
                    .port
                    .iter()
                    .any(|p| sport == Some(*p) || dport == Some(*p)))
            && any(&self.protocol, &|v| {
                let v = v.to_ascii_uppercase();
                let p = proto.to_ascii_uppercase();
                v == p || (v == "ICMP" && p.starts_with("ICMP"))
            })
            && any(&self.verdict, &|v| v.eq_ignore_ascii_case(&f.verdict))
            && any(&self.reason, &|v| {
                v.eq_ignore_ascii_case(&f.reason)
                    || f.drop_reason_desc
                        .as_deref()
                        .is_some_and(|d| v.eq_ignore_ascii_case(d))
            })
            && any(&self.policy, &|v| f.policies().any(|p| p.key() == v))
    }
}
