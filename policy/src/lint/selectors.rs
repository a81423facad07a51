//! PL201 policy-selects-no-pod, PL202 peer-selects-no-pod, PL203
//! namespace-selector-matches-nothing, PL204 namespace-label-unknown: selectors that match
//! nothing in the cluster state.
//!
//! A namespace with no pod in the state says nothing (the state may simply not hold its
//! pods), so pod checks only judge namespaces that have pods; namespace checks need the
//! Namespace objects themselves (their labels).

use std::collections::BTreeSet;

use super::{
    Cx, NAMESPACE_LABEL_UNKNOWN, NAMESPACE_SELECTOR_MATCHES_NOTHING, PEER_SELECTS_NO_POD,
    POLICY_SELECTS_NO_POD, object,
};
use crate::manifest::NAMESPACE_NAME_LABEL;
use crate::model::Labels;
use crate::selector::{Requirement, Selector};
use crate::validate::{Direction, Peer};
use crate::wording;

pub(super) fn check(cx: &mut Cx) {
    if !cx.has_pods() {
        cx.note("pod selector checks (PL201, PL202) skipped: the state has no pods");
    }
    if !cx.input.namespaces_known {
        cx.note(
            "namespace selector checks (PL203, PL204) skipped: the state has no Namespace \
             objects (their labels are not known)",
        );
    }
    let mut found = Vec::new();
    for (pi, pol) in cx.ev.policies.iter().enumerate() {
        if cx.ns_has_pods(&pol.namespace) && cx.selected[pi].is_empty() {
            let pods: Vec<&Labels> = pods_of(cx, &pol.namespace).map(|p| &p.labels).collect();
            found.push((
                &POLICY_SELECTS_NO_POD,
                object(pol),
                "spec.podSelector".to_string(),
                format!(
                    "selects no pod: none of the {} pods of namespace {} has {}, so the policy \
                     isolates and allows nothing",
                    pods.len(),
                    pol.namespace,
                    wording::selector(&pol.selector)
                ),
                present_labels(&pol.selector, pods.into_iter())
                    .map(|l| format!("pods there have {l}")),
            ));
        }
        for dir in Direction::BOTH {
            for (ri, rule) in pol.rules(dir).into_iter().flatten().enumerate() {
                for (k, peer) in rule.peers.iter().flatten().enumerate() {
                    let Peer::Pods { namespaces, pods } = peer else {
                        continue;
                    };
                    let path = format!(
                        "{}.{}[{k}]",
                        wording::rule_path(dir, ri),
                        wording::peer_field(dir)
                    );
                    let ns: Vec<&str> = match namespaces {
                        None => vec![pol.namespace.as_str()],
                        Some(sel) => {
                            if !cx.input.namespaces_known {
                                continue;
                            }
                            let ns = matching_namespaces(cx, sel);
                            if ns.is_empty() {
                                found.push(no_namespace(cx, &object(pol), &path, sel));
                                continue;
                            }
                            ns
                        }
                    };
                    let with_pods: Vec<&str> =
                        ns.iter().copied().filter(|n| cx.ns_has_pods(n)).collect();
                    if with_pods.is_empty() {
                        continue;
                    }
                    let any = !cx.peer_pods(pi, peer).is_empty();
                    if !any {
                        let labels = with_pods
                            .iter()
                            .flat_map(|n| cx.pods_by_ns[n].iter())
                            .map(|i| &cx.pod(*i).labels);
                        found.push((
                            &PEER_SELECTS_NO_POD,
                            object(pol),
                            path,
                            format!(
                                "{} matches no pod (namespaces with pods looked at: {}), so it \
                                 allows nothing",
                                wording::peer(&pol.namespace, peer),
                                with_pods.join(", ")
                            ),
                            present_labels(pods, labels).map(|l| format!("pods there have {l}")),
                        ));
                    }
                }
            }
        }
    }
    for (check, obj, path, msg, sugg) in found {
        cx.report(check, obj, path, msg, sugg);
    }
}

type Found = (
    &'static super::Check,
    String,
    String,
    String,
    Option<String>,
);

fn pods_of<'c>(cx: &'c Cx<'c>, ns: &str) -> impl Iterator<Item = &'c crate::PodInfo> + 'c {
    cx.pods_by_ns
        .get(ns)
        .into_iter()
        .flatten()
        .map(|i| cx.pod(*i))
        .filter(|p| !p.host_network)
}

fn matching_namespaces<'c>(cx: &Cx<'c>, sel: &Selector) -> Vec<&'c str> {
    cx.cluster()
        .namespaces
        .iter()
        .filter(|(_, l)| sel.matches(l))
        .map(|(n, _)| n.as_str())
        .collect()
}

/// A namespaceSelector matching no namespace: PL204 when it requires a label key no
/// namespace has (the `name: team-a` mistake), else PL203.
fn no_namespace(cx: &Cx, obj: &str, path: &str, sel: &Selector) -> Found {
    let nss = &cx.cluster().namespaces;
    let unknown: Vec<&Requirement> = sel
        .reqs
        .iter()
        .filter(|r| match r {
            Requirement::In(k, _) | Requirement::Exists(k) => {
                !nss.values().any(|l| l.contains_key(k))
            }
            _ => false,
        })
        .collect();
    let path = format!("{path}.namespaceSelector");
    if let Some(r) = unknown.first() {
        let (Requirement::In(key, _) | Requirement::Exists(key)) = r else {
            unreachable!("filtered above");
        };
        let names: Vec<&String> = match r {
            Requirement::In(_, vs) => vs.iter().filter(|v| nss.contains_key(*v)).collect(),
            _ => Vec::new(),
        };
        let suggestion = match names.as_slice() {
            [] => format!(
                "to select namespaces by name use the label every namespace carries, \
                 {NAMESPACE_NAME_LABEL}; labels namespaces have here: {}",
                all_keys(nss.values())
            ),
            [one] => format!(
                "namespaceSelector: {{matchLabels: {{{NAMESPACE_NAME_LABEL}: {one}}}}} (the \
                 label every namespace carries)"
            ),
            many => format!(
                "namespaceSelector: {{matchExpressions: [{{key: {NAMESPACE_NAME_LABEL}, \
                 operator: In, values: [{}]}}]}} (the label every namespace carries)",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return (
            &NAMESPACE_LABEL_UNKNOWN,
            obj.into(),
            path,
            format!(
                "requires label {key:?}, which no namespace has: this peer matches no namespace \
                 and allows nothing"
            ),
            Some(suggestion),
        );
    }
    (
        &NAMESPACE_SELECTOR_MATCHES_NOTHING,
        obj.into(),
        path,
        format!(
            "{} matches no namespace, so this peer allows nothing",
            wording::selector(sel)
        ),
        present_labels(sel, nss.values()).map(|l| format!("namespaces have {l}")),
    )
}

/// `key=value` pairs present on `objects` for the keys `sel` requires (at most 8), to show
/// what the selector could have said.
fn present_labels<'l>(sel: &Selector, objects: impl Iterator<Item = &'l Labels>) -> Option<String> {
    let keys: BTreeSet<&str> = sel
        .reqs
        .iter()
        .map(|r| match r {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k.as_str(),
        })
        .collect();
    let mut seen = BTreeSet::new();
    for l in objects {
        for (k, v) in l {
            if keys.contains(k.as_str()) {
                seen.insert(format!("{k}={v}"));
            }
        }
    }
    if seen.is_empty() {
        return None;
    }
    let v: Vec<String> = seen.into_iter().collect();
    Some(wording::list(&v, 8))
}

fn all_keys<'l>(objects: impl Iterator<Item = &'l Labels>) -> String {
    let keys: BTreeSet<&str> = objects.flat_map(|l| l.keys().map(String::as_str)).collect();
    keys.into_iter().collect::<Vec<_>>().join(", ")
}
