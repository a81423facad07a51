//! Masquerade (SNAT to the node's address) for pod traffic leaving the cluster.
//!
//! Rule: source in this node's pod CIDRs, destination neither in the cluster's pod CIDRs nor in
//! the service CIDRs -> `masquerade` (the address of the interface the packet leaves by: the
//! node's address on that network). Pod-to-pod traffic, on this node or another, is never
//! translated: policy on the receiving node needs the real source.
//!
//! Implemented with nftables: one table `inet palisade`, replaced atomically with
//! `nft -f -` (one transaction: create if missing, delete, define), so there is never a moment
//! without the rule or with two versions of it. With masquerading off the table is deleted.
//! The table outlives the agent (like its pinned programs); `deploy/uninstall/uninstall.sh`
//! deletes it.

use std::io::Write;
use std::process::{Command, Stdio};

use super::routing::Cidr;

/// nftables table (family `inet`) that holds Palisade's NAT rules.
pub const TABLE: &str = "palisade";

/// What to masquerade. Overlapping prefixes are fine (the sets merge them: `auto-merge`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasqueradeSpec {
    /// This node's pod CIDRs (sources to translate).
    pub pod_cidrs: Vec<Cidr>,
    /// Destinations never translated: cluster pod CIDRs and service CIDRs.
    pub no_masquerade: Vec<Cidr>,
}

/// The `nft -f -` script that replaces the table with the rules of `spec`, or deletes it when
/// `spec` is `None` (masquerading off). Pure.
pub fn ruleset(spec: Option<&MasqueradeSpec>) -> String {
    // `table` first: `delete` of a missing table would fail the whole transaction.
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    let Some(spec) = spec else {
        return s;
    };
    s.push_str(&format!("table inet {TABLE} {{\n"));
    for (fam, ty, v4) in [("v4", "ipv4_addr", true), ("v6", "ipv6_addr", false)] {
        for (set, cidrs) in [("pods", &spec.pod_cidrs), ("no_masq", &spec.no_masquerade)] {
            let elems: Vec<String> = cidrs
                .iter()
                .filter(|c| c.is_ipv4() == v4)
                .map(|c| c.to_string())
                .collect();
            s.push_str(&format!(
                "  set {set}_{fam} {{\n    type {ty}\n    flags interval\n    auto-merge\n"
            ));
            if !elems.is_empty() {
                s.push_str(&format!("    elements = {{ {} }}\n", elems.join(", ")));
            }
            s.push_str("  }\n");
        }
    }
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    s.push_str("    ip saddr @pods_v4 ip daddr != @no_masq_v4 masquerade\n");
    s.push_str("    ip6 saddr @pods_v6 ip6 daddr != @no_masq_v6 masquerade\n");
    s.push_str("  }\n}\n");
    s
}

#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    #[error("running nft -f - (is nftables installed?)")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("nft -f - rejected the {TABLE} table ({status}): {stderr}")]
    Rejected { status: String, stderr: String },
}

/// Applies the script of `spec` (see [`ruleset`]) in the current network namespace.
pub fn apply(spec: Option<&MasqueradeSpec>) -> Result<(), MasqueradeError> {
    run_nft(&ruleset(spec))
}

fn run_nft(script: &str) -> Result<(), MasqueradeError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| MasqueradeError::Spawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| MasqueradeError::Spawn { source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| MasqueradeError::Spawn { source })?;
    if !out.status.success() {
        return Err(MasqueradeError::Rejected {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(l: &[&str]) -> Vec<Cidr> {
        l.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    #[test]
    fn rules_translate_own_pods_to_outside_destinations_only() {
        let spec = MasqueradeSpec {
            pod_cidrs: cidrs(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
            no_masquerade: cidrs(&["10.244.0.0/16", "10.96.0.0/12", "fd00:10:244::/48"]),
        };
        let s = ruleset(Some(&spec));
        assert_eq!(
            s,
            "table inet palisade
delete table inet palisade
table inet palisade {
  set pods_v4 {
    type ipv4_addr
    flags interval
    auto-merge
    elements = { 10.244.1.0/24 }
  }
  set no_masq_v4 {
    type ipv4_addr
    flags interval
    auto-merge
    elements = { 10.244.0.0/16, 10.96.0.0/12 }
  }
  set pods_v6 {
    type ipv6_addr
    flags interval
    auto-merge
    elements = { fd00:10:244:1::/64 }
  }
  set no_masq_v6 {
    type ipv6_addr
    flags interval
    auto-merge
    elements = { fd00:10:244::/48 }
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @pods_v4 ip daddr != @no_masq_v4 masquerade
    ip6 saddr @pods_v6 ip6 daddr != @no_masq_v6 masquerade
  }
}
"
        );
    }

    #[test]
    fn empty_family_gives_an_empty_set_that_matches_nothing() {
        let spec = MasqueradeSpec {
            pod_cidrs: cidrs(&["10.244.1.0/24"]),
            no_masquerade: Vec::new(),
        };
        let s = ruleset(Some(&spec));
        assert!(s.contains(
            "  set pods_v6 {\n    type ipv6_addr\n    flags interval\n    auto-merge\n  }\n"
        ));
        assert!(s.contains(
            "  set no_masq_v4 {\n    type ipv4_addr\n    flags interval\n    auto-merge\n  }\n"
        ));
    }

    #[test]
    fn off_deletes_the_table_without_failing_when_it_is_missing() {
        assert_eq!(
            ruleset(None),
            "table inet palisade\ndelete table inet palisade\n"
        );
    }
}
