//! Lookups in bulk from inside a pod, each followed at once by a connection to the answered
//! address (the domain-name tests' "first connection after a lookup" under load), and the
//! counters that say who dropped what: the datapath (`palisadectl status` counters by reason)
//! or a stalled server (the outside host's `ListenDrops`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use palisade_common::verdict::Reason;

use super::Lab;
use super::dns::{QType, Transport, lookup_here};
use super::netns::in_netns;

/// How long one lookup of a run may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What a run of lookups, each followed at once by a connection, saw.
#[derive(Debug, Default)]
pub struct Run {
    pub done: usize,
    pub failed_lookups: Vec<String>,
    pub refused: Vec<String>,
    /// Connections that took longer than a resent SYN.
    pub slow: Vec<String>,
    pub lookup_time: Vec<Duration>,
    pub took: Duration,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut t = self.lookup_time.clone();
        write!(
            f,
            "{} lookups in {:?} (lookup median {:?}, p99 {:?}), failed lookups {:?}, refused {:?}, slow {:?}",
            self.done,
            self.took,
            percentile(&mut t, 50),
            percentile(&mut t, 99),
            self.failed_lookups,
            self.refused,
            self.slow
        )
    }
}

/// How long a connection of a run may take: a SYN the policy drops is dropped again when it is
/// resent (after 1 s), so a longer wait cannot turn a refusal into a pass; it only keeps a
/// connection slowed by load (a core busy verifying the respawned agent's programs) from
/// counting as refused. Whether anything was dropped is read from the datapath's counters
/// ([`drops`]), and connections slower than a resent SYN are reported.
pub const RUN_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// From inside `netns`: for each (name, address) of `names` a UDP lookup through the v4
/// ClusterIP, then (`connect`) a TCP connection to the answered address at `port`; `progress`
/// counts. Stops after 5 refusals (each costs the connect timeout).
pub fn lookups_and_connects<'a>(
    netns: &str,
    names: impl Iterator<Item = &'a (String, IpAddr)> + Send,
    connect: bool,
    port: u16,
    progress: &AtomicUsize,
) -> Result<Run> {
    let server = Lab::kube_dns_addr(false);
    Ok(in_netns(netns, || -> std::io::Result<Run> {
        let mut run = Run::default();
        let start = Instant::now();
        for (name, want) in names {
            let t = Instant::now();
            let got = lookup_here(server, name, QType::A, Transport::Udp, LOOKUP_TIMEOUT)?;
            run.lookup_time.push(t.elapsed());
            let t = Instant::now();
            if got.as_deref() != Some(&[*want][..]) {
                run.failed_lookups.push(format!("{name}: {got:?}"));
            } else if connect {
                let to = SocketAddr::new(*want, port);
                if TcpStream::connect_timeout(&to, RUN_CONNECT_TIMEOUT).is_err() {
                    run.refused.push(format!("{name} ({want})"));
                } else if t.elapsed() > Duration::from_millis(900) {
                    run.slow.push(format!("{name} ({want}) {:?}", t.elapsed()));
                }
            }
            run.done += 1;
            progress.fetch_add(1, Ordering::Relaxed);
            if run.refused.len() >= 5 {
                break;
            }
        }
        run.took = start.elapsed();
        Ok(run)
    })??)
}

/// Packets node 0's datapath dropped, by `direction/reason` (all pods).
pub fn drops(lab: &Lab) -> Result<BTreeMap<String, u64>> {
    let status: serde_json::Value = serde_json::from_str(&lab.agent_status()?.join(""))?;
    let drop_reasons: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| r.is_drop())
        .map(|r| r.name())
        .collect();
    Ok(status["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| drop_reasons.iter().any(|r| c["reason"] == *r))
        .map(|c| {
            let key = format!(
                "{}/{}",
                c["direction"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("?")
            );
            (key, c["packets"].as_u64().unwrap_or(0))
        })
        .collect())
}

/// `TcpExt: ListenDrops` of outside host `id`: SYNs its servers' full accept queues dropped
/// (a stalled server under a burst, not a verdict: a slow connection's cause).
pub fn listen_drops(lab: &Lab, id: &str) -> Result<u64> {
    let host = lab
        .outside_netns(id)
        .with_context(|| format!("no outside host {id}"))?;
    let text = in_netns(host, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat")
    })??;
    let tcp_ext: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("TcpExt:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let (names, values) = (
        tcp_ext.first().context("TcpExt")?,
        tcp_ext.get(1).context("TcpExt")?,
    );
    let i = names
        .iter()
        .position(|n| *n == "ListenDrops")
        .context("ListenDrops")?;
    Ok(values.get(i).and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// What was dropped between two [`drops`] readings.
pub fn dropped_since(
    before: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The `p`th percentile of `times` (sorted in place).
pub fn percentile(times: &mut [Duration], p: usize) -> Duration {
    times.sort();
    times
        .get((times.len() * p / 100).min(times.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}
