//! An explanation in plain words.

use std::fmt::Write as _;

use super::{Connection, DirectionExplanation, Explanation, RuleAction, RuleExplanation, Verdict};

/// The explanation as text for a terminal. Connections that differ only in their addresses
/// (a pod's IPv4 and IPv6 address, say) are shown once.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let port = e.port.as_ref().map(|p| format!(" {p}")).unwrap_or_default();
    let verdict = match e.verdict {
        Verdict::Allowed => "ALLOWED",
        Verdict::Denied => "DENIED",
        Verdict::Partly => "PARTLY ALLOWED",
    };
    let _ = writeln!(out, "{} -> {}{port}: {verdict}", e.from.given, e.to.given);
    let mut shown: Vec<(&Connection, Vec<String>, Vec<String>)> = Vec::new();
    for c in &e.connections {
        match shown.iter_mut().find(|(s, _, _)| same_but_addresses(s, c)) {
            Some((_, srcs, dsts)) => {
                push_new(srcs, c.src.address.to_string());
                push_new(dsts, c.dst.address.to_string());
            }
            None => shown.push((
                c,
                vec![c.src.address.to_string()],
                vec![c.dst.address.to_string()],
            )),
        }
    }
    for (c, srcs, dsts) in shown {
        let end = |pod: &Option<String>, addrs: &[String]| match pod {
            Some(p) => format!("{p} ({})", addrs.join(", ")),
            None => addrs.join(", "),
        };
        let what = match (&c.probe, &c.allowed_ports) {
            (_, Some(r)) if c.allowed => format!("allowed on {r}"),
            (_, Some(_)) => "denied on every port".into(),
            (Some(q), None) => format!("{q} {}", if c.allowed { "allowed" } else { "denied" }),
            (None, None) => String::new(),
        };
        let svc = c
            .service_port
            .as_ref()
            .map(|s| format!(" via {s}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} -> {}{svc}: {what}",
            end(&c.src.pod, &srcs),
            end(&c.dst.pod, &dsts)
        );
        let name = |e: &super::End| e.pod.clone().unwrap_or_else(|| e.address.to_string());
        if c.egress.is_none() {
            let _ = writeln!(
                out,
                "    egress: {} is not a pod; no policy judges its egress",
                srcs.join(", ")
            );
        }
        if let Some(d) = &c.egress {
            direction(&mut out, d, &name(&c.dst), c.probe.is_none());
        }
        if let Some(d) = &c.ingress {
            direction(&mut out, d, &name(&c.src), c.probe.is_none());
        }
        if c.ingress.is_none() {
            let _ = writeln!(
                out,
                "    ingress: {} is not a pod; no policy judges its ingress",
                dsts.join(", ")
            );
        }
    }
    if !e.notes.is_empty() {
        let _ = writeln!(out, "notes:");
        for n in &e.notes {
            let _ = writeln!(out, "  {n}");
        }
    }
    out
}

fn push_new(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn same_but_addresses(a: &Connection, b: &Connection) -> bool {
    a.src.pod.is_some()
        && a.src.pod == b.src.pod
        && a.dst.pod == b.dst.pod
        && a.service_port == b.service_port
        && a.probe == b.probe
        && a.allowed == b.allowed
        && a.allowed_ports == b.allowed_ports
        && a.egress == b.egress
        && a.ingress == b.ingress
}

fn direction(out: &mut String, d: &DirectionExplanation, peer: &str, every: bool) {
    let at = format!("{} at {}", d.direction.name(), d.pod);
    if !d.isolated {
        let why = match &d.note {
            Some(n) => n.clone(),
            None => format!(
                "no NetworkPolicy or ClusterNetworkPolicy selects {} for {}",
                d.pod,
                d.direction.name()
            ),
        };
        let _ = writeln!(out, "    {at}: allowed, not isolated ({why})");
        return;
    }
    let titles: Vec<String> = d.policies.iter().map(|p| p.title()).collect();
    // The rules that decide, split by what they decide: NetworkPolicy rules and Accept rules
    // let the connection through, Deny rules drop it.
    let deciding = |deny: bool| -> Vec<String> {
        d.policies
            .iter()
            .flat_map(|p| {
                p.rules
                    .iter()
                    .filter(move |r| r.decides && (r.action == RuleAction::Deny) == deny)
                    .map(move |r| match r.action {
                        RuleAction::Allow => format!("{} {}", p.title(), r.path),
                        a => format!("{} {} ({})", p.title(), r.path, action_name(a)),
                    })
            })
            .collect()
    };
    let (allowing, denying) = (deciding(false), deciding(true));
    let mut by = allowing.join(", ");
    if d.default_allow {
        if !by.is_empty() {
            by.push_str(", and ");
        }
        by.push_str(
            "the default allow (ClusterNetworkPolicies select the pod, none decides, \
             no NetworkPolicy isolates it)",
        );
    }
    let denied = if denying.is_empty() {
        format!("no rule allows {peer}")
    } else {
        format!("denied by {}", denying.join(", "))
    };
    let verdict = match (&d.allowed_ports, d.allowed) {
        (Some(r), true) if denying.is_empty() => format!("allows {r} by {by}"),
        (Some(r), true) => format!("allows {r} by {by}; the rest {denied}"),
        (Some(_), false) => format!("DENIES every port: {denied}"),
        (None, true) => format!("allowed by {by}"),
        (None, false) if denying.is_empty() => format!("DENIED: {denied}"),
        (None, false) => format!("DENIED by {}", denying.join(", ")),
    };
    let _ = writeln!(
        out,
        "    {at}: {verdict}; isolated by {}",
        titles.join(", ")
    );
    for p in &d.policies {
        if p.rules.is_empty() {
            let _ = writeln!(
                out,
                "      {}: no {} rules (isolates, allows nothing)",
                p.title(),
                d.direction.name()
            );
            continue;
        }
        let _ = writeln!(out, "      {}:", p.title());
        for r in &p.rules {
            let _ = writeln!(out, "        {}", rule(r, peer, every));
        }
    }
}

fn action_name(a: RuleAction) -> &'static str {
    match a {
        RuleAction::Allow => "Allow",
        RuleAction::Accept => "Accept",
        RuleAction::Deny => "Deny",
        RuleAction::Pass => "Pass",
    }
}

/// One rule's line. A NetworkPolicy rule allows (`ALLOWS`, or `would allow ... but an
/// Admin-tier rule decided first`); a ClusterNetworkPolicy rule says what it did (`DENIES`,
/// `ACCEPTS`, `PASSES to the next tier`, or that it matched after another decided) and carries
/// its action where it does not match.
fn rule(r: &RuleExplanation, peer_name: &str, every: bool) -> String {
    let action = action_name(r.action);
    let np = r.action == RuleAction::Allow;
    // (with every port asked, with one port asked, tag of a non-matching rule, verb for peers)
    let (every_verb, one_verb, tag, names) = if np {
        let one = if r.decides {
            "ALLOWS".to_string()
        } else {
            "would allow".to_string()
        };
        ("allows".to_string(), one, String::new(), "names")
    } else {
        let outcome = match (r.decides, r.action) {
            (true, RuleAction::Deny) => "DENIES".to_string(),
            (true, _) => "ACCEPTS".to_string(),
            (false, RuleAction::Pass) => "PASSES to the next tier".into(),
            (false, _) => format!("matches ({action}), but an earlier rule decided first"),
        };
        (
            format!("{outcome} on"),
            outcome,
            format!(" ({action})"),
            "includes",
        )
    };
    let overridden = if np && !r.decides {
        "; but an Admin-tier rule decided first"
    } else {
        ""
    };
    match (&r.peer_match, r.matches) {
        (Some(peer), true) if every => format!(
            "{} {every_verb} {}: {peer}; ports: {}",
            r.path,
            r.allowed_ports
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            r.ports
        ),
        (Some(peer), true) => format!(
            "{} {one_verb}: {peer}; port: {}{overridden}",
            r.path,
            r.port_match.as_deref().unwrap_or("")
        ),
        (Some(peer), false) => format!(
            "{}{tag} does not match: {peer}, but its ports ({}) do not include this one",
            r.path, r.ports
        ),
        (None, _) => format!(
            "{}{tag} does not match: no peer {names} {peer_name} (peers: {})",
            r.path, r.peers
        ),
    }
}
