//! PL100 object-not-read, PL101 invalid-policy, PL102 except-outside-cidr: what is not
//! enforced at all.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};

use super::{Cx, EXCEPT_OUTSIDE_CIDR, INVALID_POLICY, OBJECT_NOT_READ};
use crate::prefix::Prefix;
use crate::validate::{policy_object_name, validate};

const NOT_ENFORCED: &str = "The API server rejects such a policy, and Palisade enforces none of it (an agent keeps \
     the last valid version it had).";

pub(super) fn check(cx: &mut Cx) {
    for p in cx.input.read_problems {
        cx.report(
            &OBJECT_NOT_READ,
            p.object.clone(),
            p.field.clone(),
            format!(
                "{}. What it holds is not known here (and not enforced by an agent reading it).",
                p.message
            ),
            None,
        );
    }
    for np in &cx.cluster().policies {
        let obj = policy_object_name(np);
        let excepts = excepts_outside(cx, np, &obj);
        for p in validate(np) {
            if excepts.contains(&p.field) {
                continue;
            }
            cx.report(
                &INVALID_POLICY,
                obj.clone(),
                p.field,
                format!("{}. {NOT_ENFORCED}", p.message),
                None,
            );
        }
    }
}

/// Reports every `except` not strictly inside its `cidr`; returns their field paths.
fn excepts_outside(cx: &mut Cx, np: &NetworkPolicy, obj: &str) -> BTreeSet<String> {
    let mut reported = BTreeSet::new();
    let Some(spec) = &np.spec else {
        return reported;
    };
    let ingress = spec.ingress.iter().flatten().map(|r| r.from.as_deref());
    let egress = spec.egress.iter().flatten().map(|r| r.to.as_deref());
    let lists = ingress
        .enumerate()
        .map(|(i, l)| (format!("spec.ingress[{i}].from"), l))
        .chain(
            egress
                .enumerate()
                .map(|(i, l)| (format!("spec.egress[{i}].to"), l)),
        );
    for (field, peers) in lists {
        for (j, peer) in peers.into_iter().flatten().enumerate() {
            let NetworkPolicyPeer {
                ip_block: Some(b), ..
            } = peer
            else {
                continue;
            };
            let Ok(cidr) = Prefix::parse(&b.cidr) else {
                continue;
            };
            for (k, e) in b.except.iter().flatten().enumerate() {
                let Ok(ex) = Prefix::parse(e) else { continue };
                if cidr.contains(&ex) && ex.len > cidr.len {
                    continue;
                }
                let path = format!("{field}[{j}].ipBlock.except[{k}]");
                let (what, meant) = if ex.is_v4() != cidr.is_v4() {
                    (
                        format!("except {ex} and cidr {cidr} are of different address families"),
                        format!("put {ex} in an ipBlock whose cidr is of its own family"),
                    )
                } else if ex == cidr {
                    (
                        format!("except {ex} is the whole cidr: the ipBlock would match nothing"),
                        "remove this peer, or the except".to_string(),
                    )
                } else if ex.contains(&cidr) {
                    (
                        format!(
                            "except {ex} contains all of cidr {cidr}: the ipBlock would match nothing"
                        ),
                        format!("did you mean cidr {ex} except {cidr}?"),
                    )
                } else {
                    (
                        format!("except {ex} lies outside cidr {cidr}: it would remove nothing"),
                        format!(
                            "remove it (an except only removes addresses from its own cidr), or \
                             if {ex} should be allowed too, give it its own ipBlock peer"
                        ),
                    )
                };
                cx.report(
                    &EXCEPT_OUTSIDE_CIDR,
                    obj,
                    path.clone(),
                    format!("{what}. {NOT_ENFORCED}"),
                    Some(meant),
                );
                reported.insert(path);
            }
        }
    }
    reported
}
