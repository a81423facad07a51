//! What a DNS response teaches: the addresses a pod may connect to because of its
//! `domainNames` patterns, and until when.
//!
//! Rules (docs/fqdn.md):
//! - Only a response with RCODE 0 that is not truncated teaches anything (a truncated UDP
//!   answer is asked again over TCP, whose full answer teaches).
//! - An address record teaches only if its owner is the question's name or is reached from it
//!   by the answer's CNAME chain (at most [`MAX_CHAIN`] links); records for other names in the
//!   same message are ignored, so an answer cannot smuggle in addresses for names nobody
//!   asked about.
//! - It teaches when some name on that chain (the question, a CNAME target, the owner) matches
//!   one of the pod's patterns: asking `api.example.com` (allowed) which is a CNAME of
//!   `edge.cdn.net` allows edge.cdn.net's addresses; asking `alias.other.org` which is a CNAME
//!   of `api.example.com` allows api.example.com's addresses (the same addresses the pod would
//!   get by asking for the allowed name itself).
//! - For the smallest TTL along the chain, clamped to [`MIN_TTL_SECS`]..=[`MAX_TTL_SECS`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::DomainPattern;
use super::dns::{RecordData, Response};

/// The TTL bounds and the grace period, shared with the datapath (which applies them).
pub use palisade_common::fqdn::{GRACE_SECS, MAX_TTL_SECS, MIN_TTL_SECS};
/// CNAME links followed from the question.
pub const MAX_CHAIN: usize = 8;

/// One learnt address: allowed for `ttl` seconds because `name` matched `pattern`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learnt {
    pub addr: IpAddr,
    pub ttl: u32,
    /// The name on the chain that matched (the first from the question).
    pub name: String,
    pub pattern: DomainPattern,
}

/// The addresses `resp` teaches a pod whose rules allow `patterns`; one entry per address
/// (the longest TTL if an address is reached twice).
pub fn learn(resp: &Response, patterns: &[DomainPattern]) -> Vec<Learnt> {
    if resp.rcode != 0 || resp.truncated || patterns.is_empty() {
        return Vec::new();
    }
    let first = &resp.question.0;
    let mut chain = vec![Step {
        name: first.clone(),
        ttl: u32::MAX,
        matched: matching(first, patterns),
    }];
    let mut out: BTreeMap<IpAddr, Learnt> = BTreeMap::new();
    let mut i = 0;
    while i < chain.len() {
        let Step { name, ttl, matched } = chain[i].clone();
        for rec in resp.answers.iter().filter(|r| r.name == name) {
            let ttl = ttl.min(rec.ttl);
            match &rec.data {
                RecordData::Addr(addr) => {
                    let Some((name, pattern)) = matched.clone() else {
                        continue;
                    };
                    let ttl = palisade_common::fqdn::clamp_ttl(ttl);
                    let e = out.entry(*addr).or_insert(Learnt {
                        addr: *addr,
                        ttl,
                        name,
                        pattern,
                    });
                    e.ttl = e.ttl.max(ttl);
                }
                RecordData::Cname(target) => {
                    if chain.len() > MAX_CHAIN || chain.iter().any(|s| &s.name == target) {
                        continue;
                    }
                    chain.push(Step {
                        name: target.clone(),
                        ttl,
                        matched: matched.clone().or_else(|| matching(target, patterns)),
                    });
                }
            }
        }
        i += 1;
    }
    out.into_values().collect()
}

/// A name on the CNAME chain from the question, with the smallest TTL on the way to it and the
/// first (name, pattern) match on the way to it.
#[derive(Clone)]
struct Step {
    name: String,
    ttl: u32,
    matched: Option<(String, DomainPattern)>,
}

fn matching(name: &str, patterns: &[DomainPattern]) -> Option<(String, DomainPattern)> {
    patterns
        .iter()
        .find(|p| p.matches(name))
        .map(|p| (name.to_string(), p.clone()))
}

#[cfg(test)]
mod tests {
    use super::super::dns::{Record, TYPE_A, build_response, parse_response};
    use super::*;

    fn pats(ps: &[&str]) -> Vec<DomainPattern> {
        ps.iter()
            .map(|p| DomainPattern::parse(p).expect("pattern"))
            .collect()
    }

    fn taught(q: &str, answers: &[Record], patterns: &[&str]) -> Vec<(String, u32)> {
        let msg = build_response(1, q, TYPE_A, answers);
        let resp = parse_response(&msg).expect("parses");
        learn(&resp, &pats(patterns))
            .into_iter()
            .map(|l| (l.addr.to_string(), l.ttl))
            .collect()
    }

    #[test]
    fn an_allowed_name_teaches_its_addresses_for_their_ttl() {
        let ans = [
            Record::addr("api.example.com", 300, "192.0.2.1"),
            Record::addr("api.example.com", 30, "192.0.2.2"),
        ];
        assert_eq!(
            taught("api.example.com", &ans, &["api.example.com"]),
            vec![("192.0.2.1".into(), 300), ("192.0.2.2".into(), 30)]
        );
        assert!(taught("api.example.com", &ans, &["*.example.com.x"]).is_empty());
        assert!(taught("api.example.com", &ans, &["other.example.com"]).is_empty());
    }

    #[test]
    fn a_cname_chain_teaches_from_its_first_allowed_name_with_the_smallest_ttl() {
        // Allowed name -> disallowed target: the target's addresses are taught.
        let ans = [
            Record::cname("api.example.com", 20, "edge.cdn.net"),
            Record::addr("edge.cdn.net", 600, "192.0.2.9"),
        ];
        assert_eq!(
            taught("api.example.com", &ans, &["api.example.com"]),
            vec![("192.0.2.9".into(), 20)]
        );
        // Disallowed name -> allowed target: the allowed name's addresses.
        let ans = [
            Record::cname("alias.other.org", 600, "x.cdn.example.com"),
            Record::addr("x.cdn.example.com", 40, "192.0.2.10"),
        ];
        assert_eq!(
            taught("alias.other.org", &ans, &["*.cdn.example.com"]),
            vec![("192.0.2.10".into(), 40)]
        );
        // Neither allowed: nothing.
        assert!(taught("alias.other.org", &ans, &["api.example.com"]).is_empty());
    }

    #[test]
    fn records_off_the_chain_teach_nothing() {
        let ans = [
            Record::addr("api.example.com", 60, "192.0.2.1"),
            // An extra record for an allowed name nobody asked about.
            Record::addr("other.example.com", 60, "198.51.100.66"),
            // A CNAME from a name not on the chain.
            Record::cname("x.example.com", 60, "y.example.com"),
            Record::addr("y.example.com", 60, "198.51.100.67"),
        ];
        assert_eq!(
            taught(
                "api.example.com",
                &ans,
                &["*.example.com", "api.example.com"]
            ),
            vec![("192.0.2.1".into(), 60)]
        );
    }

    #[test]
    fn ttls_are_clamped_and_errors_or_truncation_teach_nothing() {
        let ans = [
            Record::addr("api.example.com", 0, "192.0.2.1"),
            Record::addr("api.example.com", u32::MAX, "192.0.2.2"),
        ];
        assert_eq!(
            taught("api.example.com", &ans, &["api.example.com"]),
            vec![
                ("192.0.2.1".into(), MIN_TTL_SECS),
                ("192.0.2.2".into(), MAX_TTL_SECS)
            ]
        );
        let msg = build_response(1, "api.example.com", TYPE_A, &ans);
        let mut resp = parse_response(&msg).expect("parses");
        resp.truncated = true;
        assert!(learn(&resp, &pats(&["api.example.com"])).is_empty());
        resp.truncated = false;
        resp.rcode = 3;
        assert!(learn(&resp, &pats(&["api.example.com"])).is_empty());
    }

    #[test]
    fn cname_loops_and_long_chains_end() {
        let mut ans = vec![
            Record::cname("a.example.com", 60, "b.example.com"),
            Record::cname("b.example.com", 60, "a.example.com"),
        ];
        assert!(taught("a.example.com", &ans, &["*.example.com"]).is_empty());
        // A chain longer than MAX_CHAIN stops: the address at its end is not taught.
        ans.clear();
        for i in 0..12 {
            ans.push(Record::cname(
                &format!("n{i}.example.com"),
                60,
                &format!("n{}.example.com", i + 1),
            ));
        }
        ans.push(Record::addr("n12.example.com", 60, "192.0.2.1"));
        assert!(taught("n0.example.com", &ans, &["n0.example.com"]).is_empty());
        // Within the bound it is.
        let short: Vec<Record> = ans[7..].to_vec();
        assert_eq!(
            taught("n7.example.com", &short, &["n7.example.com"]).len(),
            1
        );
    }
}
