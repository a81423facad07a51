//! PL501 split-rule, PL502 ports-without-peers: rules whose shape says something else was
//! meant. In YAML, a `-` before `ports:` starts a new rule, so
//!
//! ```yaml
//! ingress:
//! - from: [{podSelector: {matchLabels: {app: web}}}]
//! - ports: [{port: 80}]
//! ```
//!
//! allows every port from `app=web` and port 80 from everyone, where one rule (peers AND
//! ports) was almost always meant.

use super::{Cx, PORTS_WITHOUT_PEERS, SPLIT_RULE, object};
use crate::validate::Direction;
use crate::wording;

pub(super) fn check(cx: &mut Cx) {
    let mut found = Vec::new();
    for pol in &cx.ev.policies {
        for dir in Direction::BOTH {
            let Some(rules) = pol.rules(dir) else {
                continue;
            };
            let who = match dir {
                Direction::Ingress => "from every source",
                Direction::Egress => "to every destination",
            };
            let peers_only: Vec<usize> = (0..rules.len())
                .filter(|i| rules[*i].peers.is_some() && rules[*i].ports.is_none())
                .collect();
            for (i, r) in rules.iter().enumerate() {
                if r.peers.is_some() || r.ports.is_none() {
                    continue;
                }
                // The nearest rule listing only peers is the other half.
                if let Some(&j) = peers_only.iter().min_by_key(|j| j.abs_diff(i)) {
                    let field = wording::peer_field(dir);
                    found.push((
                        &SPLIT_RULE,
                        object(pol),
                        wording::rule_path(dir, i),
                        format!(
                            "{} allows {} {who} (it lists no {field}), and {} allows every \
                             protocol and port {field} {}. Together they allow more than either \
                             half suggests.",
                            wording::rule_path(dir, i),
                            wording::ports(r),
                            wording::rule_path(dir, j),
                            wording::peers(&pol.namespace, &rules[j]),
                        ),
                        Some(format!(
                            "if you meant {} {field} {} only, write one rule with both `{field}` \
                             and `ports` (no `-` before `ports`)",
                            wording::ports(r),
                            wording::peers(&pol.namespace, &rules[j]),
                        )),
                    ));
                } else if rules.len() > 1
                    && rules
                        .iter()
                        .enumerate()
                        .all(|(k, o)| k == i || o.peers.is_some())
                {
                    found.push((
                        &PORTS_WITHOUT_PEERS,
                        object(pol),
                        wording::rule_path(dir, i),
                        format!(
                            "{} allows {} {who}, hosts outside the cluster included, while the \
                             other rules name their peers",
                            wording::rule_path(dir, i),
                            wording::ports(r),
                        ),
                        Some(format!(
                            "if only some peers should use these ports, list them under `{}` in \
                             this rule",
                            wording::peer_field(dir)
                        )),
                    ));
                }
            }
        }
    }
    for (check, obj, path, msg, sugg) in found {
        cx.report(check, obj, path, msg, sugg);
    }
}
