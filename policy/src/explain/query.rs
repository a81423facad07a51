//! The words of an `explain` question: FROM and TO (`NS/POD`, an IP address,
//! `svc:NS/NAME[:PORT]`) and the optional `PORT[/PROTO]`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ExplainError;
use crate::model::{PodKey, Protocol};

/// FROM or TO, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectSpec {
    Pod(PodKey),
    Addr(IpAddr),
    /// `svc:NS/NAME[:PORT]`; `port` is a Service port number or name.
    Service {
        namespace: String,
        name: String,
        port: Option<String>,
    },
}

impl SubjectSpec {
    pub fn parse(s: &str) -> Result<Self, ExplainError> {
        let bad = |why: &str| ExplainError::BadSubject {
            given: s.to_string(),
            why: why.to_string(),
        };
        if let Some(rest) = s.strip_prefix("svc:") {
            let (ns, rest) = rest
                .split_once('/')
                .ok_or_else(|| bad("a Service is svc:NAMESPACE/NAME[:PORT]"))?;
            let (name, port) = match rest.split_once(':') {
                Some((n, p)) => (n, Some(p.to_string())),
                None => (rest, None),
            };
            if ns.is_empty() || name.is_empty() || port.as_deref() == Some("") {
                return Err(bad("a Service is svc:NAMESPACE/NAME[:PORT]"));
            }
            return Ok(SubjectSpec::Service {
                namespace: ns.into(),
                name: name.into(),
                port,
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(SubjectSpec::Addr(ip));
        }
        match s.split_once('/') {
            Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
                Ok(SubjectSpec::Pod(PodKey::new(ns, pod)))
            }
            _ => Err(bad(
                "expected NAMESPACE/POD, an IP address or svc:NAMESPACE/NAME[:PORT]",
            )),
        }
    }
}

/// The port asked about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortQuery {
    /// `TCP`, `UDP`, `SCTP`, or `ICMP` (every protocol without ports).
    pub protocol: String,
    /// `None` for ICMP.
    pub port: Option<u16>,
}

impl PortQuery {
    /// `80` (TCP), `80/UDP`, `UDP/80`, `icmp` (case does not matter).
    pub fn parse(s: &str) -> Result<Self, ExplainError> {
        let bad = |why: String| ExplainError::BadPort {
            given: s.to_string(),
            why,
        };
        let upper = s.to_ascii_uppercase();
        if upper == "ICMP" || upper == "ICMPV6" {
            return Ok(PortQuery {
                protocol: "ICMP".into(),
                port: None,
            });
        }
        let (a, b) = match upper.split_once('/') {
            Some((a, b)) => (a.to_string(), Some(b.to_string())),
            None => (upper.clone(), None),
        };
        let (port, proto) = match (a.parse::<u32>(), b) {
            (Ok(n), p) => (n, p.unwrap_or_else(|| "TCP".into())),
            (Err(_), Some(p)) => (
                p.parse::<u32>()
                    .map_err(|_| bad(format!("{p:?} is not a port number")))?,
                a,
            ),
            (Err(_), None) => {
                return Err(bad(
                    "expected PORT[/PROTOCOL] (e.g. 80, 53/UDP) or ICMP".into()
                ));
            }
        };
        let protocol = Protocol::from_k8s(&proto).ok_or_else(|| {
            bad(format!(
                "unknown protocol {proto:?} (TCP, UDP, SCTP or ICMP)"
            ))
        })?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("port {port} is not in 1..=65535")))?;
        Ok(PortQuery {
            protocol: protocol.k8s_name().into(),
            port: Some(port),
        })
    }

    /// The protocol, when it is one with ports.
    pub fn port_protocol(&self) -> Option<Protocol> {
        Protocol::from_k8s(&self.protocol)
    }
}

impl std::fmt::Display for PortQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{} {p}", self.protocol),
            None => f.write_str(&self.protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            SubjectSpec::parse("x/a").unwrap(),
            SubjectSpec::Pod(PodKey::new("x", "a"))
        );
        assert_eq!(
            SubjectSpec::parse("fd00::1").unwrap(),
            SubjectSpec::Addr("fd00::1".parse().unwrap())
        );
        assert_eq!(
            SubjectSpec::parse("svc:kube-system/kube-dns:dns").unwrap(),
            SubjectSpec::Service {
                namespace: "kube-system".into(),
                name: "kube-dns".into(),
                port: Some("dns".into())
            }
        );
        for bad in ["a", "x/", "/a", "x/a/b", "svc:x", "svc:x/a:", "10.0.0.256"] {
            let e = SubjectSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn ports_parse_in_either_order_and_bad_ones_are_named() {
        let q = |s: &str| PortQuery::parse(s).map(|q| q.to_string());
        assert_eq!(q("80").unwrap(), "TCP 80");
        assert_eq!(q("53/udp").unwrap(), "UDP 53");
        assert_eq!(q("SCTP/9000").unwrap(), "SCTP 9000");
        assert_eq!(q("icmp").unwrap(), "ICMP");
        for bad in ["0", "70000", "80/GRE", "http", "x/80"] {
            let e = q(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
