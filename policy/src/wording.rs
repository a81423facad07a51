//! Policy parts in plain words, for `explain` and `lint`: selectors in kubectl's selector
//! syntax, peers, ports, and the field paths users find in their YAML.

use std::collections::BTreeSet;

use crate::selector::{Requirement, Selector};
use crate::validate::{Direction, NormRule, Peer, PortMatch, PortSpec};

/// `app=web,tier in (a,b),!legacy` (kubectl's syntax); `everything` for `{}`.
pub(crate) fn selector(sel: &Selector) -> String {
    if sel.reqs.is_empty() {
        return "everything".into();
    }
    let set = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
    sel.reqs
        .iter()
        .map(|r| match r {
            Requirement::In(k, vs) if vs.len() == 1 => format!("{k}={}", set(vs)),
            Requirement::In(k, vs) => format!("{k} in ({})", set(vs)),
            Requirement::NotIn(k, vs) if vs.len() == 1 => format!("{k}!={}", set(vs)),
            Requirement::NotIn(k, vs) => format!("{k} notin ({})", set(vs)),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One peer: `pods app=web in namespace x`, `every pod in namespaces team=a`,
/// `addresses in 10.0.0.0/8 except 10.1.0.0/16`.
pub(crate) fn peer(policy_ns: &str, p: &Peer) -> String {
    match p {
        Peer::Pods { namespaces, pods } => {
            let who = if pods.reqs.is_empty() {
                "every pod".to_string()
            } else {
                format!("pods {}", selector(pods))
            };
            let where_ = match namespaces {
                None => format!("namespace {policy_ns}"),
                Some(s) if s.reqs.is_empty() => "every namespace".into(),
                Some(s) => format!("namespaces {}", selector(s)),
            };
            format!("{who} in {where_}")
        }
        Peer::Block { cidr, except } if except.is_empty() => format!("addresses in {cidr}"),
        Peer::Block { cidr, except } => format!(
            "addresses in {cidr} except {}",
            except
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Every peer of a rule.
pub(crate) fn peers(policy_ns: &str, rule: &NormRule) -> String {
    match &rule.peers {
        None => "every source or destination (no peers listed)".into(),
        Some(ps) => ps
            .iter()
            .map(|p| peer(policy_ns, p))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// One port entry: `TCP 80`, `TCP 8000-8080`, `every UDP port`, `TCP port named http`.
pub(crate) fn port(p: &PortSpec) -> String {
    let proto = p.proto.k8s_name();
    match &p.port {
        PortMatch::All => format!("every {proto} port"),
        PortMatch::Range(lo, hi) if lo == hi => format!("{proto} {lo}"),
        PortMatch::Range(lo, hi) => format!("{proto} {lo}-{hi}"),
        PortMatch::Named(n) => format!("{proto} port named {n}"),
    }
}

/// Every port entry of a rule.
pub(crate) fn ports(rule: &NormRule) -> String {
    match &rule.ports {
        None => "every protocol and port".into(),
        Some(ps) => ps.iter().map(port).collect::<Vec<_>>().join(", "),
    }
}

/// `spec.ingress[2]`.
pub(crate) fn rule_path(dir: Direction, index: usize) -> String {
    format!("spec.{}[{index}]", dir.name())
}

/// `from` at ingress, `to` at egress.
pub(crate) fn peer_field(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

/// A list for a message: at most `max` items, then `and N more`.
pub(crate) fn list<T: std::fmt::Display>(items: &[T], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn sel(yaml: &str) -> Selector {
        let ls: LabelSelector = serde_saphyr::from_str(yaml).expect("selector YAML");
        Selector::parse(&ls, "test", "sel", &mut Vec::new()).expect("valid selector")
    }

    #[test]
    fn selectors_read_like_kubectl_selectors() {
        assert_eq!(selector(&sel("{}")), "everything");
        assert_eq!(
            selector(&sel(
                "{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [a, b]}, {key: old, operator: DoesNotExist}, {key: t, operator: NotIn, values: [x]}]}"
            )),
            "app=web,tier in (a,b),!old,t!=x"
        );
        let p = Peer::Pods {
            namespaces: Some(sel("{}")),
            pods: sel("{matchLabels: {app: web}}"),
        };
        assert_eq!(peer("x", &p), "pods app=web in every namespace");
        let p = Peer::Pods {
            namespaces: None,
            pods: sel("{}"),
        };
        assert_eq!(peer("x", &p), "every pod in namespace x");
        assert_eq!(list(&[1, 2, 3], 2), "1, 2 and 1 more");
    }
}
