//! Egress by domain name (issue 14, docs/fqdn.md) end to end in the lab: the real CNI plugin,
//! agent and eBPF object, kube-dns (dnsmasq behind the kube-dns Service's ClusterIPs, see
//! tests/src/lab/dns.rs) answering names of addresses that the outside host `ext` serves
//! (198.18.0.0/15 and 2001:db8:ff::/64, tests/src/lab/outside_prefix.rs), lookups made from
//! inside the pods and TCP connections to the answered addresses right after.
//!
//! Policy: namespace x denies all egress (NetworkPolicy); a ClusterNetworkPolicy (Admin tier,
//! which decides before NetworkPolicy) accepts DNS from x to the kube-dns pods; x/a and x/c
//! may reach `api.example.com` and `*.cdn.example.com`, x/b `www.example.org` (Accept rules
//! with `domainNames` peers). y has no policy (the lookup latency without name rules).
//!
//! Threat model: a pod whose egress is limited to names tries to reach other addresses: by
//! address without a lookup, through names its rules do not allow (`example.com`,
//! `x.notcdn.example.com`), through a CNAME from a name it may not use, through another
//! pod's allowed lookups, by asking another resolver (the kube-dns pod directly) whose answers
//! must teach nothing, and after the answer's TTL. The agent may die (`kill -9`) at any
//! moment: lookups and first connections must not fail, nor anything open that must not.
//! Tests wait on conditions (agent synced, a connection refused), never on fixed sleeps.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use palisade_tests::lab::Lab;
use palisade_tests::lab::dns::{KUBE_DNS_POD, QType, Transport, Zone};
use palisade_tests::lab::lookups::{dropped_since, drops, listen_drops, lookups_and_connects};
use palisade_tests::netns::wait_for;

#[path = "common/metrics.rs"]
mod metrics;
#[path = "common/tcp_echo.rs"]
mod tcp_echo;
use tcp_echo::{Conn, Echo};
#[path = "common/fqdn.rs"]
mod fqdn;
use fqdn::*;

/// The cases of a, b, d and e, in this order (x/a's lookups teach x/a only).
const CASES: &str = "
x/a -                    -        198.18.0.1     refused a: api.example.com's address, no lookup
x/a api.example.com      A/udp    198.18.0.1     passes  a: exact name
x/a WWW.Cdn.Example.COM. A/udp    198.18.0.2     passes  a: wildcard, case and trailing dot
x/a -                    -        198.18.0.5     refused a: hidden.cdn.example.com, never resolved
x/a -                    -        192.168.1.1    refused a: ext's own address
x/a example.com          A/udp    198.18.0.3     refused a: the wildcard's parent
x/a x.notcdn.example.com A/udp    198.18.0.4     refused a: a partial label
x/a shop.cdn.example.com A/udp    198.18.0.6     passes  b: CNAME from an allowed name to edge.provider.net
x/a alias.other.org      A/udp    198.18.0.7     refused b: CNAME from a disallowed alias to deep.cdn.example.com
x/a deep.cdn.example.com A/udp    198.18.0.7     passes  b: the alias's target asked directly
x/a tcp.cdn.example.com  A/tcp    198.18.0.8     passes  d: A over TCP
x/a v6.cdn.example.com   AAAA/udp 2001:db8:ff::2 passes  d: AAAA over UDP, v6 ClusterIP
x/a api.example.com      AAAA/tcp 2001:db8:ff::1 passes  d: AAAA over TCP, v6 ClusterIP
x/b api.example.com      A/udp    198.18.0.1     refused e: x/a's name asked by x/b
x/b www.example.org      A/udp    198.18.0.9     passes  e: x/b's own name
x/a www.example.org      A/udp    198.18.0.9     refused e: x/b's name asked by x/a
";

fn names_zone() -> Zone {
    Zone::default()
        .local_ttl(300)
        .record("api.example.com", ip("198.18.0.1"))
        .record("api.example.com", ip("2001:db8:ff::1"))
        .record("www.cdn.example.com", ip("198.18.0.2"))
        .record("example.com", ip("198.18.0.3"))
        .record("x.notcdn.example.com", ip("198.18.0.4"))
        .record("hidden.cdn.example.com", ip("198.18.0.5"))
        .cname("shop.cdn.example.com", "edge.provider.net")
        .record("edge.provider.net", ip("198.18.0.6"))
        .cname("alias.other.org", "deep.cdn.example.com")
        .record("deep.cdn.example.com", ip("198.18.0.7"))
        .record("tcp.cdn.example.com", ip("198.18.0.8"))
        .record("v6.cdn.example.com", ip("2001:db8:ff::2"))
        .record("www.example.org", ip("198.18.0.9"))
        .record("direct.cdn.example.com", ip("198.18.0.10"))
        .record_ttl("short.cdn.example.com", ip("198.18.0.11"), 1)
}

/// Names, CNAMEs, TCP DNS, AAAA, two pods with different rules, another resolver and TTL
/// expiry, with the metrics that count them (threat model: the module header).
#[test]
fn privileged_fqdn_names_cnames_tcp_aaaa_two_pods_other_resolver_and_ttl() -> Result<()> {
    let test = "privileged_fqdn_names_cnames_tcp_aaaa_two_pods_other_resolver_and_ttl";
    let Some((lab, _dns)) = lab(test, &names_zone())? else {
        return Ok(());
    };
    let mut c = Checks::default();
    let before = counters(&lab);

    // a, b, d, e (CASES): allowed names connect right after the lookup; addresses never
    // resolved, names not allowed, a CNAME from a disallowed alias (the datapath follows
    // chains from allowed questions only) and another pod's names do not.
    for line in CASES.lines().filter(|l| !l.trim().is_empty()) {
        case(&mut c, &lab, line)?;
    }

    // h. Another resolver: the kube-dns pod asked directly answers, and teaches nothing.
    let dns_pod = lab
        .pod_ips(KUBE_DNS_POD)
        .and_then(|ips| ips.iter().copied().find(IpAddr::is_ipv4))
        .context("kube-dns pod address")?;
    let got = lab.dns_lookup(
        "x/a",
        SocketAddr::new(dns_pod, 53),
        "direct.cdn.example.com",
        QType::A,
        Transport::Udp,
        LOOKUP_TIMEOUT,
    )?;
    c.check(
        got == Some(vec![ip("198.18.0.10")]),
        format!("the kube-dns pod answers x/a directly ({got:?})"),
    );
    c.check(
        !connects(&lab, "x/a", ip("198.18.0.10"))?,
        "other resolver: x/a -> direct.cdn.example.com's address is refused",
    );

    // The metrics count what happened (node 0's agent; a lookup may be answered twice when
    // its UDP query was resent, so lower bounds).
    let after = counters(&lab);
    eprintln!("fqdn counters before {before:?}\nafter {after:?}");
    c.check(
        after.answers - before.answers >= 13.0,
        "palisade_fqdn_answers_total rose by the answers read (>= 13)",
    );
    c.check(
        after.learnt - before.learnt >= 8.0,
        "palisade_fqdn_learnt_total rose by the addresses learnt (>= 8)",
    );
    c.check(
        after.entries >= 8.0,
        "palisade_fqdn_learnt_entries counts the learnt entries (>= 8)",
    );
    c.check(
        after.not_allowed - before.not_allowed >= 5.0,
        "refused{reason=not_allowed} rose by the disallowed questions (>= 5)",
    );
    c.check(
        after.other_server - before.other_server >= 1.0,
        "refused{reason=other_server} rose by the direct answer (>= 1)",
    );

    // c. TTL expiry: 1 s, clamped to 5 s. A connection opened before keeps working after
    // new ones are refused; a new lookup allows again.
    let short = ip("198.18.0.11");
    let echo = Echo::start(lab.outside_netns("ext").context("ext")?, 8080)?;
    let asked = Instant::now();
    let short_case = "x/a short.cdn.example.com A/udp 198.18.0.11 passes c: short TTL";
    case(&mut c, &lab, short_case)?;
    let established = Conn::open(
        ns(&lab, "x/a")?,
        SocketAddr::new(short, 8080),
        CONNECT_TIMEOUT,
    );
    c.check(
        established.is_ok(),
        "a connection to the short-TTL address opens before expiry",
    );
    let refused_after = wait_for("new connections refused", Duration::from_secs(20), || {
        Ok((!connects(&lab, "x/a", short)?).then(|| asked.elapsed()))
    })
    .ok();
    eprintln!(
        "figure: TTL 1 s (clamped to 5 s): new connections refused {refused_after:?} after the lookup"
    );
    c.check(
        refused_after.is_some_and(|t| t >= Duration::from_secs(4)),
        format!(
            "new connections are refused after the clamped TTL, not before ({refused_after:?})"
        ),
    );
    c.check(
        established.is_ok_and(|mut e| e.roundtrip()),
        "the connection opened before expiry still echoes",
    );
    case(&mut c, &lab, &format!("{short_case}, looked up again"))?;
    drop(echo);
    c.finish(&lab)
}

/// f and g: `kill -9` of the agent between a lookup and its connection and during a burst of
/// lookups (no failed lookup, no refused connection, nothing unresolved admitted), the
/// respawned agent's node still learning, then 1,000 lookups each followed at once by a
/// connection: zero refused. Prints the lookup latency with and without name rules and the
/// 1,000-lookup run time. Threat model: the module header; the agent's death must open
/// nothing and drop nothing.
#[test]
fn privileged_fqdn_kill_9_during_lookups_and_1000_lookups_then_connect() -> Result<()> {
    let test = "privileged_fqdn_kill_9_during_lookups_and_1000_lookups_then_connect";
    // x/a learns the burst's names, x/c the 1,000: each stays under the per-pod limit
    // (`--fqdn-max-per-pod`, 1,024 by default).
    let burst = numbered("b", [198, 19], 800);
    let thousand = numbered("n", [198, 18], 1000);
    let zone = burst
        .iter()
        .chain(&thousand)
        .fold(names_zone(), |z, (name, addr)| z.record(name, *addr));
    let Some((mut lab, _dns)) = lab(test, &zone)? else {
        return Ok(());
    };
    let mut c = Checks::default();
    let unresolved = ip("198.19.250.1");

    // Latency of a lookup through the ClusterIP (no connection): from a pod with name rules
    // (x/a: the answer is read and learnt before delivery) and from one without (y/a).
    let names: Vec<(String, IpAddr)> = vec![("api.example.com".into(), ip("198.18.0.1")); 300];
    for (pod, what) in [
        ("y/a", "no name rules"),
        ("x/a", "name rules: answer learnt"),
    ] {
        let run = lookups_and_connects(
            ns(&lab, pod)?,
            names.iter(),
            false,
            PORT,
            &AtomicUsize::new(0),
        )?;
        eprintln!("figure: UDP lookup latency through the ClusterIP from {pod} ({what}): {run}");
        c.check(
            run.failed_lookups.is_empty(),
            format!("{pod} latency run: {run}"),
        );
    }

    // f1. kill -9 between the lookup and the connection.
    case(
        &mut c,
        &lab,
        "x/a www.cdn.example.com A/udp 198.18.0.2 passes f: before the kill",
    )?;
    let got = resolve(&lab, "x/a", "tcp.cdn.example.com", QType::A, Transport::Udp)?;
    lab.agent_mut(0).context("agent")?.kill_hard()?;
    c.check(
        got == [ip("198.18.0.8")],
        format!("lookup answered ({got:?})"),
    );
    c.check(
        connects(&lab, "x/a", ip("198.18.0.8"))?,
        "agent killed after the lookup: the connection opens",
    );
    c.check(
        !connects(&lab, "x/a", unresolved)?,
        "agent killed: an unresolved address stays refused",
    );
    lab.agent_mut(0).context("agent")?.respawn()?;
    lab.wait_synced()?;

    // f2. kill -9 during a burst of lookups, each followed by a connection (`burst_through_restart`).
    let (first, fresh) = burst.split_at(400);
    let b = burst_through_restart(&mut lab, "x/a", first, fresh, &[], unresolved, &[])?;
    check_burst(&mut c, &b, "killed", fresh.len(), 0);
    c.check(
        !connects(&lab, "x/a", unresolved)?,
        "after the respawn an unresolved address stays refused",
    );

    // g. 1,000 lookups, each followed at once by a connection, from x/c on the respawned
    // agent's node: zero refused, and the agent counts what the datapath learnt.
    let (before, drops_before, listen) = (counters(&lab), drops(&lab)?, listen_drops(&lab, "ext")?);
    let run = lookups_and_connects(
        ns(&lab, "x/c")?,
        thousand.iter(),
        true,
        PORT,
        &AtomicUsize::new(0),
    )?;
    let (after, denied) = (counters(&lab), dropped_since(&drops_before, &drops(&lab)?));
    let listen = listen_drops(&lab, "ext")? - listen;
    eprintln!(
        "figure: 1,000 lookups each followed at once by a connect: {run}; {:?} per pair; packets dropped: {denied:?}",
        run.took / run.done.max(1) as u32
    );
    c.check(
        run.done == 1000 && run.failed_lookups.is_empty(),
        format!("1,000 lookups answered: {:?}", run.failed_lookups),
    );
    c.check(
        run.refused.is_empty() && denied.is_empty(),
        format!(
            "zero refused of 1,000 first connections: {:?}, dropped {denied:?}",
            run.refused
        ),
    );
    c.check(
        run.slow.len() as u64 <= listen,
        format!("every slow connection is a SYN ext's accept queue dropped ({listen})"),
    );
    c.check(
        after.learnt - before.learnt >= 1000.0,
        format!("the respawned agent counts 1,000 more learnt ({before:?} -> {after:?})"),
    );
    c.check(
        after.answers - before.answers >= 1000.0,
        "and 1,000 more answers read",
    );
    c.check(after.entries >= 1000.0, "learnt_entries holds them");
    c.finish(&lab)
}

/// The per-pod limit end to end (`--fqdn-max-per-pod 2`): x/a learns two addresses; the third
/// name's address is refused (the new name fails closed, counted `pod_full`) while the two
/// learnt still connect, and `palisadectl status` names the pod at its limit. x/c, under the
/// same rule, still learns (the limit is per pod). An answer from another resolver says so in
/// the flows (`dns_not_learnt: other_server`).
#[test]
fn privileged_fqdn_per_pod_limit_is_reported_and_fails_closed_for_new_names_only() -> Result<()> {
    let test = "privileged_fqdn_per_pod_limit_is_reported_and_fails_closed_for_new_names_only";
    let zone = Zone::default()
        .local_ttl(300)
        .record("api.example.com", ip("198.18.0.1"))
        .record("www.cdn.example.com", ip("198.18.0.2"))
        .record("img.cdn.example.com", ip("198.18.0.3"))
        .record("direct.cdn.example.com", ip("198.18.0.10"));
    let Some((lab, _dns)) = lab_with(test, &zone, &["--fqdn-max-per-pod", "2"])? else {
        return Ok(());
    };
    let mut c = Checks::default();
    let pod_full = |lab: &Lab| {
        let s = metrics::scrape(lab);
        metrics::value(&s, "palisade_fqdn_refused_total", &[("reason", "pod_full")])
    };
    let before = pod_full(&lab);
    for line in [
        "x/a api.example.com     A/udp 198.18.0.1 passes  first of two",
        "x/a www.cdn.example.com A/udp 198.18.0.2 passes  second of two",
        "x/a img.cdn.example.com A/udp 198.18.0.3 refused third: past the pod's limit",
        "x/a -                   -     198.18.0.1 passes  the first still connects",
        "x/a -                   -     198.18.0.2 passes  the second still connects",
        "x/c img.cdn.example.com A/udp 198.18.0.3 passes  another pod under the same rule learns",
    ] {
        case(&mut c, &lab, line)?;
    }
    c.check(
        pod_full(&lab) - before >= 1.0,
        "palisade_fqdn_refused_total{reason=pod_full} rose",
    );
    let status = lab.agent_status()?.join("\n");
    c.check(
        status.contains("Pod x/a") && status.contains("--fqdn-max-per-pod"),
        "palisadectl status names x/a at its limit",
    );
    c.check(!status.contains("Pod x/c"), "and not x/c, under its limit");

    // Another resolver: the answer is delivered, teaches nothing, and the flow says why.
    let dns_pod = lab
        .pod_ips(KUBE_DNS_POD)
        .and_then(|ips| ips.iter().copied().find(IpAddr::is_ipv4))
        .context("kube-dns pod address")?;
    let got = lab.dns_lookup(
        "x/c",
        SocketAddr::new(dns_pod, 53),
        "direct.cdn.example.com",
        QType::A,
        Transport::Udp,
        LOOKUP_TIMEOUT,
    )?;
    c.check(got.is_some(), "the kube-dns pod answers x/c directly");
    let agent = lab.agent(0).context("no agent")?;
    let flow = wait_for("an other_server flow", Duration::from_secs(10), || {
        Ok(agent
            .flows(&[])?
            .into_iter()
            .find(|f| f["flow"]["dns_not_learnt"] == "other_server"))
    })
    .ok();
    c.check(
        flow.as_ref().is_some_and(|f| {
            f["flow"]["verdict"] == "FORWARDED"
                && f["flow"]["destination"]["pod_name"] == "c"
                && f["flow"]["Summary"]
                    .as_str()
                    .is_some_and(|s| s.contains("not from the cluster DNS service"))
        }),
        format!("a flow says the direct answer taught nothing: {flow:?}"),
    );
    c.finish(&lab)
}

/// The node's table full, then upgrades to larger ones ("an upgraded agent keeps enforcing
/// them and goes on learning"). With `--map-size pal_fqaddr_v1=4`, four learnt addresses fill
/// the node's table: a fifth name fails closed (counted `node_full`), the four still connect,
/// and `palisadectl status` says the table is full. The agent is then restarted with a larger
/// table (the operator's remedy, and the path of any upgrade whose learnt-address map changes
/// layout): the pinned map is replaced, its entries copied (status says so), the four connect
/// without a new lookup, the fifth name is learnt, an unresolved address stays refused. Then
/// a second such upgrade in the middle of a burst of lookups, each followed by a connection,
/// with 300 new names asked while the agent is dead and 300 more between the moment the new
/// agent replaced the pinned table and the moment it had attached its programs: no lookup
/// fails, no connection is refused, nothing is dropped but the unresolved probe (the previous
/// agent's programs learn into the old map through their own program array, held open, until
/// this agent's replace them; then that is merged: `datapath::layout::PreviousLearnt`), and
/// every address learnt in the burst connects afterwards without a new lookup.
#[test]
fn privileged_fqdn_full_node_table_then_upgrades_to_larger_ones_keep_what_was_learnt() -> Result<()>
{
    let test = "privileged_fqdn_full_node_table_then_upgrades_to_larger_ones_keep_what_was_learnt";
    let burst = numbered("u", [198, 19], 900);
    let zone = burst
        .iter()
        .fold(names_zone(), |z, (name, addr)| z.record(name, *addr));
    let table = |n: u32| format!("pal_fqaddr_v1={n}");
    let Some((mut lab, _dns)) = lab_with(test, &zone, &["--map-size", &table(4)])? else {
        return Ok(());
    };
    let mut c = Checks::default();
    let node_full = |lab: &Lab| {
        let s = metrics::scrape(lab);
        metrics::value(
            &s,
            "palisade_fqdn_refused_total",
            &[("reason", "node_full")],
        )
    };
    let before = node_full(&lab);
    for line in [
        "x/a api.example.com      A/udp 198.18.0.1 passes  first of four",
        "x/a www.cdn.example.com  A/udp 198.18.0.2 passes  second",
        "x/c tcp.cdn.example.com  A/udp 198.18.0.8 passes  third, another pod",
        "x/b www.example.org      A/udp 198.18.0.9 passes  fourth, another pod and rule",
        "x/a deep.cdn.example.com A/udp 198.18.0.7 refused a fifth name: the node's table is full",
        "x/a -                    -     198.18.0.1 passes  full: the first still connects",
        "x/b -                    -     198.18.0.9 passes  full: the fourth still connects",
    ] {
        case(&mut c, &lab, line)?;
    }
    c.check(
        node_full(&lab) - before >= 1.0,
        "palisade_fqdn_refused_total{reason=node_full} rose",
    );
    let status = lab.agent_status()?.join("\n");
    c.check(
        status.contains("pal_fqaddr_v1") && status.contains("full (4 learnt addresses)"),
        "palisadectl status says the node's table is full",
    );

    // Upgrade 1: a larger table; what was learnt is copied, learning goes on.
    let agent = lab.agent_mut(0).context("agent")?;
    agent.respawn_with(&["--map-size", &table(1024)])?;
    lab.wait_synced()?;
    let status = lab.agent_status()?.join("\n");
    for needle in [
        "max_entries 4,",
        "max_entries 1024,",
        "its 4 entries copied",
    ] {
        c.check(
            status.contains(needle),
            format!("status lists the replaced table: {needle:?}"),
        );
    }
    c.check(
        !status.contains("full (4 learnt addresses)"),
        "status no longer says the table is full",
    );
    for line in [
        "x/a -                    -     198.18.0.1 passes  upgraded: the first connects, no new lookup",
        "x/b -                    -     198.18.0.9 passes  upgraded: the fourth too",
        "x/a -                    -     198.18.0.5 refused upgraded: an address never resolved",
        "x/a deep.cdn.example.com A/udp 198.18.0.7 passes  upgraded: the fifth name is learnt now",
    ] {
        case(&mut c, &lab, line)?;
    }

    // Upgrade 2, in the middle of a burst from x/c.
    let (first, rest) = burst.split_at(300);
    let (fresh, at_load) = rest.split_at(300);
    let unresolved = ip("198.19.250.1");
    let b = burst_through_restart(
        &mut lab,
        "x/c",
        first,
        fresh,
        at_load,
        unresolved,
        &["--map-size", &table(2048)],
    )?;
    let how = "upgraded (table 1024 -> 2048)";
    check_burst(&mut c, &b, how, fresh.len(), at_load.len());
    let status = lab.agent_status()?.join("\n");
    c.check(
        status.contains("max_entries 2048,") && status.contains("entries copied"),
        "status lists the second replacement",
    );
    let log = std::fs::read_to_string(lab.agent(0).context("agent")?.log_path())?;
    c.check(
        log.contains("programs replaced on every interface: merged"),
        "the agent merged the previous table once its programs were attached",
    );
    let not_kept: Vec<IpAddr> = burst
        .iter()
        .map(|(_, addr)| *addr)
        .filter(|addr| !connects(&lab, "x/c", *addr).unwrap_or(false))
        .collect();
    c.check(
        not_kept.is_empty(),
        format!("every address learnt in the burst connects without a new lookup: {not_kept:?}"),
    );
    c.check(
        !connects(&lab, "x/c", unresolved)?,
        "an unresolved address stays refused",
    );
    c.finish(&lab)
}
