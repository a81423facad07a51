//! The lab of the domain-name tests (tests/tests/fqdn_lab.rs; its header has the policy and
//! the threat model) and what its tests share: cases, checks, bursts of lookups through an
//! agent restart.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use palisade_tests::lab::dns::{KubeDns, QType, Transport, Zone};
use palisade_tests::lab::lookups::{Run, dropped_since, drops, listen_drops, lookups_and_connects};
use palisade_tests::lab::{Lab, LabConfig};

use super::metrics;
use super::tcp_echo::can_connect;

pub const PREFIX_V4: &str = "198.18.0.0/15";
pub const PREFIX_V6: &str = "2001:db8:ff::/64";
/// The port the outside host's lab server accepts TCP on.
pub const PORT: u16 = 80;
/// How long a connection attempt may take before it counts as refused (a dropped SYN).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub const POLICIES: &str = "
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

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address literal")
}

/// The lab: one node with the conformance addresses (outside host `ext`), `ext` serving the
/// test prefixes, kube-dns serving `zone`, the policies above applied and synced.
pub fn lab(test: &str, zone: &Zone) -> Result<Option<(Lab, KubeDns)>> {
    lab_with(test, zone, &[])
}

/// [`lab`] with extra agent arguments.
pub fn lab_with(test: &str, zone: &Zone, agent_args: &[&str]) -> Result<Option<(Lab, KubeDns)>> {
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

pub fn ns<'a>(lab: &'a Lab, pod: &str) -> Result<&'a str> {
    lab.pod_netns(pod).with_context(|| format!("no pod {pod}"))
}

/// Looks `name` up from `pod` through the kube-dns ClusterIP of the family of `qtype`.
pub fn resolve(
    lab: &Lab,
    pod: &str,
    name: &str,
    qtype: QType,
    t: Transport,
) -> Result<Vec<IpAddr>> {
    let server = Lab::kube_dns_addr(qtype == QType::Aaaa);
    lab.dns_lookup(pod, server, name, qtype, t, LOOKUP_TIMEOUT)?
        .with_context(|| format!("{pod}: no answer for {name} {qtype:?} over {t:?}"))
}

/// Whether a new TCP connection from `pod` to `addr`:[`PORT`] opens (within 700 ms).
pub fn connects(lab: &Lab, pod: &str, addr: IpAddr) -> Result<bool> {
    Ok(can_connect(ns(lab, pod)?, SocketAddr::new(addr, PORT)))
}

/// The fqdn counters of node 0's agent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub answers: f64,
    pub learnt: f64,
    pub entries: f64,
    pub not_allowed: f64,
    pub other_server: f64,
}

pub fn counters(lab: &Lab) -> Counters {
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
pub struct Checks(Vec<String>);

impl Checks {
    pub fn check(&mut self, ok: bool, what: impl std::fmt::Display) {
        eprintln!("{} {what}", if ok { "ok:  " } else { "FAIL:" });
        if !ok {
            self.0.push(what.to_string());
        }
    }

    pub fn finish(self, lab: &Lab) -> Result<()> {
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
pub fn case(c: &mut Checks, lab: &Lab, line: &str) -> Result<()> {
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

/// `n` names under `label`.cdn.example.com, each with an address of its own in `base`/16.
pub fn numbered(label: &str, base: [u8; 2], n: usize) -> Vec<(String, IpAddr)> {
    (0..n)
        .map(|i| {
            let addr = [base[0], base[1], 10 + (i / 200) as u8, 1 + (i % 200) as u8];
            (format!("{label}{i}.cdn.example.com"), IpAddr::from(addr))
        })
        .collect()
}

/// Waits (bounded) until `progress` reaches `n` or the `worker` ended.
pub fn wait_progress<T>(
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

/// What a burst of lookups, each followed at once by a connection, saw through an agent restart.
pub struct Burst {
    pub run: Run,
    /// Lookups done when the agent was killed, when its successor had replaced the learnt
    /// map (or synced), and when it had synced.
    pub killed_at: usize,
    pub loaded_at: usize,
    pub respawned_at: usize,
    /// Packets the datapath dropped during the burst, by `direction/reason`.
    pub denied: BTreeMap<String, u64>,
    /// SYNs the outside host's full accept queue dropped during the burst.
    pub listen: u64,
}

/// A burst from `pod` through a `kill -9` of the agent and its respawn with `respawn_args`
/// added (none: the same agent; `--map-size`: an upgrade whose maps change size). The names of
/// `first` round and round until the agent is dead, then those of `fresh` (learnt while it is
/// dead), then the names so far round and round until the new agent has replaced the pinned
/// learnt-address map (an upgrade; else until it synced), then those of `at_load` (learnt
/// while the new agent loads its programs: the previous agent's programs still run), then all
/// round and round until 100 lookups after it synced. While the agent is dead a probe of
/// `unresolved` must be refused: the datapath drops nothing else ([`check_burst`]).
pub fn burst_through_restart(
    lab: &mut Lab,
    pod: &str,
    first: &[(String, IpAddr)],
    fresh: &[(String, IpAddr)],
    at_load: &[(String, IpAddr)],
    unresolved: IpAddr,
    respawn_args: &[&str],
) -> Result<Burst> {
    let (progress, killed, loaded, stop) = (
        AtomicUsize::new(0),
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicBool::new(false),
    );
    let loaded_at = AtomicUsize::new(usize::MAX);
    let so_far = || first.iter().chain(fresh).cycle();
    let names = first
        .iter()
        .cycle()
        .take_while(|_| !killed.load(Ordering::Relaxed))
        .chain(fresh)
        .chain(so_far().take_while(|_| !loaded.load(Ordering::Relaxed)))
        .chain(at_load)
        .chain(
            so_far()
                .chain(at_load)
                .take_while(|_| !stop.load(Ordering::Relaxed)),
        );
    // The new agent has loaded when the pin holds another learnt-address map (its size).
    let learnt_pin = lab
        .agent_bpffs(0)
        .context("agent bpffs")?
        .join("maps")
        .join(palisade_common::maps::FQDN_LEARNT);
    let size = || {
        aya::maps::MapInfo::from_pin(&learnt_pin)
            .map(|i| i.max_entries())
            .ok()
    };
    let size_before = size();
    let mark_loaded = || {
        if !loaded.swap(true, Ordering::Relaxed) {
            loaded_at.store(progress.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    };
    let netns = ns(lab, pod)?.to_string();
    let (drops_before, listen_before) = (drops(lab)?, listen_drops(lab, "ext")?);
    let (run, killed_at, respawned_at) = std::thread::scope(|s| -> Result<_> {
        let worker = s.spawn(|| lookups_and_connects(&netns, names, true, PORT, &progress));
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) && !loaded.load(Ordering::Relaxed) {
                if killed.load(Ordering::Relaxed) && size().is_some_and(|n| Some(n) != size_before)
                {
                    mark_loaded();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let during = (|| -> Result<_> {
            wait_progress(&progress, 100, &worker)?;
            lab.agent_mut(0).context("agent")?.kill_hard()?;
            killed.store(true, Ordering::Relaxed);
            let killed_at = progress.load(Ordering::Relaxed);
            ensure!(
                !connects(lab, pod, unresolved)?,
                "agent dead mid-burst: an unresolved address opened"
            );
            lab.agent_mut(0)
                .context("agent")?
                .respawn_with(respawn_args)?;
            lab.wait_synced()?;
            let respawned_at = progress.load(Ordering::Relaxed);
            mark_loaded();
            wait_progress(&progress, respawned_at + 100, &worker)?;
            Ok((killed_at, respawned_at))
        })();
        killed.store(true, Ordering::Relaxed);
        mark_loaded();
        stop.store(true, Ordering::Relaxed);
        let run = worker
            .join()
            .map_err(|_| anyhow::anyhow!("burst thread panicked"))??;
        let (k, r) = during?;
        Ok((run, k, r))
    })?;
    Ok(Burst {
        run,
        killed_at,
        loaded_at: loaded_at.load(Ordering::Relaxed),
        respawned_at,
        denied: dropped_since(&drops_before, &drops(lab)?),
        listen: listen_drops(lab, "ext")? - listen_before,
    })
}

/// The checks of a [`burst_through_restart`] (`how`: what happened to the agent): no failed
/// lookup, no refused connection, the `fresh` new names learnt while it was dead and the
/// `at_load` ones while its successor loaded, nothing
/// dropped by the datapath but the unresolved probe's SYN, every slow connection a SYN the
/// stalled server dropped.
pub fn check_burst(c: &mut Checks, b: &Burst, how: &str, fresh: usize, at_load: usize) {
    let Burst {
        run,
        killed_at,
        loaded_at,
        respawned_at,
        denied,
        listen,
    } = b;
    eprintln!(
        "figure: burst of {run}; agent {how} after {killed_at} (then {fresh} new names), new agent's maps loaded after {loaded_at} (then {at_load} new names), respawned (synced) after {respawned_at}; packets dropped meanwhile: {denied:?}; SYNs dropped by ext's full accept queue: {listen}"
    );
    c.check(
        *respawned_at > killed_at + fresh,
        format!("the new names were learnt while the agent was dead ({killed_at}, {respawned_at})"),
    );
    if at_load > 0 {
        c.check(
            loaded_at + at_load <= *respawned_at,
            format!(
                "{at_load} new names were asked between the new agent's load and its attach ({loaded_at}, {respawned_at})"
            ),
        );
    }
    c.check(
        run.failed_lookups.is_empty(),
        format!("no failed lookup in the burst: {:?}", run.failed_lookups),
    );
    c.check(
        run.refused.is_empty(),
        format!("no refused connection in the burst: {:?}", run.refused),
    );
    c.check(
        *denied == BTreeMap::from([("egress/default_deny".to_string(), 1)]),
        format!("the datapath dropped only the unresolved probe's SYN in the burst: {denied:?}"),
    );
    c.check(
        run.slow.len() as u64 <= *listen,
        format!("every slow connection is a SYN ext's accept queue dropped ({listen})"),
    );
}
