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

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use palisade_tests::lab::dns::{KUBE_DNS_POD, KubeDns, QType, Transport, Zone};
use palisade_tests::lab::lookups::{dropped_since, drops, listen_drops, lookups_and_connects};
use palisade_tests::lab::{Lab, LabConfig};

#[path = "common/metrics.rs"]
mod metrics;
#[path = "common/tcp_echo.rs"]
mod tcp_echo;
use tcp_echo::{Conn, Echo, can_connect};

const PREFIX_V4: &str = "198.18.0.0/15";
const PREFIX_V6: &str = "2001:db8:ff::/64";
/// The port the outside host's lab server accepts TCP on.
const PORT: u16 = 80;
/// How long a connection attempt may take before it counts as refused (a dropped SYN).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: x-dns}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - name: dns
    action: Accept
    to: [{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}]
    protocols: [{udp: {destinationPort: {number: 53}}}, {tcp: {destinationPort: {number: 53}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: x-a-names}
spec:
  tier: Admin
  priority: 20
  subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}}}
  egress:
  - {name: names, action: Accept, to: [{domainNames: [api.example.com, '*.cdn.example.com']}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: x-b-names}
spec:
  tier: Admin
  priority: 20
  subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: b}}}}
  egress:
  - {name: names, action: Accept, to: [{domainNames: [www.example.org]}]}
";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address literal")
}

/// The lab: one node with the conformance addresses (outside host `ext`), `ext` serving the
/// test prefixes, kube-dns serving `zone`, the policies above applied and synced.
fn lab(test: &str, zone: &Zone) -> Result<Option<(Lab, KubeDns)>> {
    lab_with(test, zone, &[])
}

/// [`lab`] with extra agent arguments.
fn lab_with(test: &str, zone: &Zone, agent_args: &[&str]) -> Result<Option<(Lab, KubeDns)>> {
    let Some(mut lab) = Lab::start_enforcing(
        test,
        LabConfig {
            verbose: true,
            conformance_addresses: true,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            ..LabConfig::default()
        },
    )?
    else {
        return Ok(None);
    };
    lab.serve_prefix_outside("ext", PREFIX_V4)?;
    lab.serve_prefix_outside("ext", PREFIX_V6)?;
    let dns = lab.start_kube_dns_zone("n0", zone)?;
    lab.apply_yaml("fqdn-policies", POLICIES)?;
    lab.wait_synced()?;
    Ok(Some((lab, dns)))
}

fn ns<'a>(lab: &'a Lab, pod: &str) -> Result<&'a str> {
    lab.pod_netns(pod).with_context(|| format!("no pod {pod}"))
}

/// Looks `name` up from `pod` through the kube-dns ClusterIP of the family of `qtype`.
fn resolve(lab: &Lab, pod: &str, name: &str, qtype: QType, t: Transport) -> Result<Vec<IpAddr>> {
    let server = Lab::kube_dns_addr(qtype == QType::Aaaa);
    lab.dns_lookup(pod, server, name, qtype, t, LOOKUP_TIMEOUT)?
        .with_context(|| format!("{pod}: no answer for {name} {qtype:?} over {t:?}"))
}

/// Whether a new TCP connection from `pod` to `addr`:[`PORT`] opens (within 700 ms).
fn connects(lab: &Lab, pod: &str, addr: IpAddr) -> Result<bool> {
    Ok(can_connect(ns(lab, pod)?, SocketAddr::new(addr, PORT)))
}

/// The fqdn counters of node 0's agent.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    answers: f64,
    learnt: f64,
    entries: f64,
    not_allowed: f64,
    other_server: f64,
}

fn counters(lab: &Lab) -> Counters {
    let s = metrics::scrape(lab);
    let refused = |reason| metrics::value(&s, "palisade_fqdn_refused_total", &[("reason", reason)]);
    Counters {
        answers: metrics::value(&s, "palisade_fqdn_answers_total", &[]),
        learnt: metrics::value(&s, "palisade_fqdn_learnt_total", &[]),
        entries: metrics::value(&s, "palisade_fqdn_learnt_entries", &[]),
        not_allowed: refused("not_allowed"),
        other_server: refused("other_server"),
    }
}

/// Collects failed checks, so one run reports all of them.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl std::fmt::Display) {
        eprintln!("{} {what}", if ok { "ok:  " } else { "FAIL:" });
        if !ok {
            self.0.push(what.to_string());
        }
    }

    fn finish(self, lab: &Lab) -> Result<()> {
        ensure!(
            self.0.is_empty(),
            "{} checks failed:\n  {}\nstatus:\n{}\nagent log: {}",
            self.0.len(),
            self.0.join("\n  "),
            lab.agent_status()
                .map(|s| s.join("\n"))
                .unwrap_or_else(|e| format!("(status failed: {e})")),
            lab.agent(0).map(|a| a.log_tail()).unwrap_or_default()
        );
        Ok(())
    }
}

/// One case: `pod name type/transport address verdict what...`: a lookup of `name` (`-`:
/// none) through the ClusterIP, which must answer `address`, then a new connection to it,
/// which `passes` or is `refused`.
fn case(c: &mut Checks, lab: &Lab, line: &str) -> Result<()> {
    let mut f = line.split_whitespace();
    let mut field = || f.next().with_context(|| format!("case {line:?}"));
    let (pod, name, how, addr, verdict) = (field()?, field()?, field()?, field()?, field()?);
    let what: Vec<&str> = f.collect();
    let want: IpAddr = addr.parse().with_context(|| format!("case {line:?}"))?;
    if name != "-" {
        let (qtype, t) = match how {
            "A/udp" => (QType::A, Transport::Udp),
            "A/tcp" => (QType::A, Transport::Tcp),
            "AAAA/udp" => (QType::Aaaa, Transport::Udp),
            "AAAA/tcp" => (QType::Aaaa, Transport::Tcp),
            _ => anyhow::bail!("case {line:?}: unknown {how}"),
        };
        let got = resolve(lab, pod, name, qtype, t)?;
        c.check(
            got.contains(&want),
            format!("{pod} {name} {how} answers {want} (got {got:?})"),
        );
    }
    let passes = verdict == "passes";
    c.check(
        connects(lab, pod, want)? == passes,
        format!("{}: {pod} -> {want} ({name}) {verdict}", what.join(" ")),
    );
    Ok(())
}

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
    let refused_after = loop {
        if !connects(&lab, "x/a", short)? {
            break Some(asked.elapsed());
        }
        if asked.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
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

/// `n` names under `label`.cdn.example.com, each with an address of its own in `base`/16.
fn numbered(label: &str, base: [u8; 2], n: usize) -> Vec<(String, IpAddr)> {
    (0..n)
        .map(|i| {
            let addr = [base[0], base[1], 10 + (i / 200) as u8, 1 + (i % 200) as u8];
            (format!("{label}{i}.cdn.example.com"), IpAddr::from(addr))
        })
        .collect()
}

/// Waits (bounded) until `progress` reaches `n` or the `worker` ended.
fn wait_progress<T>(
    progress: &AtomicUsize,
    n: usize,
    worker: &std::thread::ScopedJoinHandle<'_, T>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::Relaxed) < n && !worker.is_finished() {
        ensure!(
            Instant::now() < deadline,
            "the burst did not reach {n} lookups in 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
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

    // f2. kill -9 during a burst of lookups, each followed by a connection: the first 400
    // names round and round until the agent is dead, then 400 new names (learnt while it is
    // dead), then all round and round through its respawn. The datapath drops nothing but
    // the probe of an unresolved address made while the agent is dead.
    let (first, fresh) = burst.split_at(400);
    let (progress, killed, stop) = (
        AtomicUsize::new(0),
        AtomicBool::new(false),
        AtomicBool::new(false),
    );
    let names = first
        .iter()
        .cycle()
        .take_while(|_| !killed.load(Ordering::Relaxed))
        .chain(fresh)
        .chain(
            burst
                .iter()
                .cycle()
                .take_while(|_| !stop.load(Ordering::Relaxed)),
        );
    let netns = ns(&lab, "x/a")?.to_string();
    let (drops_before, listen_before) = (drops(&lab)?, listen_drops(&lab, "ext")?);
    let (run, killed_at, respawned_at) = std::thread::scope(|s| -> Result<_> {
        let worker = s.spawn(|| lookups_and_connects(&netns, names, true, PORT, &progress));
        let during = (|| -> Result<_> {
            wait_progress(&progress, 100, &worker)?;
            lab.agent_mut(0).context("agent")?.kill_hard()?;
            killed.store(true, Ordering::Relaxed);
            let killed_at = progress.load(Ordering::Relaxed);
            ensure!(
                !connects(&lab, "x/a", unresolved)?,
                "agent dead mid-burst: an unresolved address opened"
            );
            lab.agent_mut(0).context("agent")?.respawn()?;
            lab.wait_synced()?;
            let respawned_at = progress.load(Ordering::Relaxed);
            wait_progress(&progress, respawned_at + 100, &worker)?;
            Ok((killed_at, respawned_at))
        })();
        killed.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let run = worker
            .join()
            .map_err(|_| anyhow::anyhow!("burst thread panicked"))??;
        let (k, r) = during?;
        Ok((run, k, r))
    })?;
    let denied = dropped_since(&drops_before, &drops(&lab)?);
    let listen = listen_drops(&lab, "ext")? - listen_before;
    eprintln!(
        "figure: burst of {run}; agent killed after {killed_at} (then 400 new names), respawned (synced) after {respawned_at}; packets dropped meanwhile: {denied:?}; SYNs dropped by ext's full accept queue: {listen}"
    );
    c.check(
        respawned_at > killed_at + fresh.len(),
        format!("the new names were learnt while the agent was dead ({killed_at}, {respawned_at})"),
    );
    c.check(
        run.failed_lookups.is_empty(),
        format!("no failed lookup in the burst: {:?}", run.failed_lookups),
    );
    c.check(
        run.refused.is_empty(),
        format!("no refused connection in the burst: {:?}", run.refused),
    );
    c.check(
        denied == BTreeMap::from([("egress/default_deny".to_string(), 1)]),
        format!("the datapath dropped only the unresolved probe's SYN in the burst: {denied:?}"),
    );
    c.check(
        run.slow.len() as u64 <= listen,
        format!("every slow connection is a SYN ext's accept queue dropped ({listen})"),
    );
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
    let start = Instant::now();
    let flow = loop {
        let flows = agent.flows(&[])?;
        let found = flows
            .into_iter()
            .find(|f| f["flow"]["dns_not_learnt"] == "other_server");
        if found.is_some() || start.elapsed() > Duration::from_secs(10) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
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
