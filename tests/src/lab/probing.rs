//! Probe rounds over the whole table: every endpoint to every endpoint on every case, all at
//! once (one thread per source), so a round costs the probe timeout once when anything is
//! blocked; and the wait for usable links that comes before any round.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::probe::{self, Target};
use super::{Case, Family, Lab, LabError, Protocol, Reachability, netns};

impl Lab {
    /// Probes every pod to every pod (itself included) on every (port, protocol), by the
    /// destination's address of `family`, all in parallel.
    pub fn probe_all(
        &self,
        ports: &[u16],
        protocols: &[Protocol],
        family: Family,
    ) -> Result<Reachability, LabError> {
        let cases: Vec<Case> = ports
            .iter()
            .flat_map(|&port| {
                protocols
                    .iter()
                    .map(move |&protocol| Case { port, protocol })
            })
            .collect();
        self.probe_cases(&self.pod_ids(), &cases, family)
    }

    /// Every endpoint (pods, then outside hosts) to every endpoint, on every case (port and
    /// protocol: TCP, UDP, SCTP, ICMP with port 0), by the destination's address of
    /// `family`, all in parallel: a round costs the probe timeout once when anything is
    /// blocked. The table's ids are `ns/name` for pods and the outside hosts' names.
    pub fn probe_everything(
        &self,
        cases: &[Case],
        family: Family,
    ) -> Result<Reachability, LabError> {
        let mut ids = self.pod_ids();
        ids.extend(self.outside_ids());
        self.probe_cases(&ids, cases, family)
    }

    /// Network namespace and addresses of a pod or outside host.
    pub(super) fn endpoint(&self, id: &str) -> Option<(&str, &[IpAddr])> {
        if let Some(p) = self.pods.get(id) {
            return Some((p.netns.as_str(), p.ips.as_slice()));
        }
        self.outside
            .iter()
            .find(|o| o.id == id)
            .map(|o| (o.netns.as_str(), o.ips.as_slice()))
    }

    /// The address of `family` of a pod or outside host.
    pub(super) fn endpoint_addr(&self, id: &str, family: Family) -> Result<IpAddr, LabError> {
        self.endpoint(id)
            .and_then(|(_, ips)| {
                ips.iter().copied().find(|a| match family {
                    Family::V4 => a.is_ipv4(),
                    Family::V6 => a.is_ipv6(),
                })
            })
            .ok_or_else(|| LabError::NoAddress {
                pod: id.to_string(),
                family,
            })
    }

    pub(super) fn probe_cases(
        &self,
        ids: &[String],
        cases: &[Case],
        family: Family,
    ) -> Result<Reachability, LabError> {
        let targets = ids
            .iter()
            .map(|id| {
                Ok(Target {
                    id: id.clone(),
                    addr: self.endpoint_addr(id, family)?,
                })
            })
            .collect::<Result<Vec<_>, LabError>>()?;
        self.wait_links_ready(family)?;
        let (timeout, seen) = (self.config.probe_timeout, &self.sctp_seen);
        self.probe_round(ids, cases, family, "probe", |netns, from| {
            probe::probe_from(netns, from, &targets, cases, timeout, seen)
        })
    }

    /// A table of `ids` (rows) x `cases`, filled by `probe(netns, from)` run for every `from`
    /// in `ids` at once, each returning the outcomes of the probes from `from`.
    pub(super) fn probe_round(
        &self,
        ids: &[String],
        cases: &[Case],
        family: Family,
        what: &str,
        probe: impl Fn(&str, &str) -> Result<Vec<probe::Outcome>, LabError> + Sync,
    ) -> Result<Reachability, LabError> {
        let sources: Vec<(&str, &str)> = ids
            .iter()
            .map(|from| {
                let netns = self.endpoint(from).map(|(n, _)| n).unwrap_or_default();
                (netns, from.as_str())
            })
            .collect();
        let outcomes = in_parallel(&sources, what, |(netns, from)| probe(netns, from))?;
        let mut reach = Reachability::with_cases(ids, cases, family, None);
        for ((_, from), outcomes) in sources.iter().zip(outcomes) {
            for o in outcomes {
                reach.observe(o.case, from, &o.to, o.reachable);
            }
        }
        Ok(reach)
    }

    /// Waits (bounded) until every pod's link is usable, so first-contact delays are not
    /// mistaken for blocked traffic:
    /// 1. the pod's `eth0` has carrier (`state UP`): the kernel reports a veth's carrier change
    ///    through linkwatch, which batches events for up to a second, and IPv6 is not started
    ///    on a device before it;
    /// 2. for IPv6, `eth0` has a link-local address and no address of a pod or node namespace
    ///    is tentative (duplicate address detection): a node-side veth whose link-local
    ///    address is tentative sends no neighbour solicitation.
    pub(super) fn wait_links_ready(&self, family: Family) -> Result<(), LabError> {
        let start = Instant::now();
        let limit = Duration::from_secs(10);
        let wait = |ns: &str, ready: &dyn Fn() -> Result<Option<String>, LabError>| loop {
            match ready()? {
                None => return Ok(()),
                Some(why) if start.elapsed() > limit => {
                    return Err(LabError::Timeout {
                        what: format!("links of {ns} not ready: {why}"),
                        after: limit,
                    });
                }
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        for p in self.pods.values().filter(|p| !p.host_network) {
            let ns = p.netns.as_str();
            wait(ns, &|| {
                let link = netns::ip(&["-n", ns, "-o", "link", "show", "dev", "eth0"])?;
                if !link.contains("state UP") {
                    return Ok(Some(link));
                }
                if family == Family::V6 {
                    let ll = netns::ip(&[
                        "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
                    ])?;
                    if ll.trim().is_empty() || ll.contains("tentative") {
                        return Ok(Some(format!("link-local address: {ll:?}")));
                    }
                }
                Ok(None)
            })?;
        }
        if family == Family::V6 {
            let all = self
                .pods
                .values()
                .filter(|p| !p.host_network)
                .map(|p| p.netns.as_str())
                .chain(self.nodes.iter().map(|n| n.netns.as_str()));
            for ns in all {
                wait(ns, &|| {
                    let out = netns::ip(&["-n", ns, "-6", "addr", "show", "tentative"])?;
                    Ok((!out.trim().is_empty()).then_some(out))
                })?;
            }
        }
        Ok(())
    }
}

/// Runs `f` on every item at once, one scoped thread each, and returns the results in the
/// items' order (or the first error in that order); a thread that panicked is
/// [`LabError::ThreadPanicked`] naming `what`.
pub(super) fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    what: &str,
    f: impl Fn(&T) -> Result<R, LabError> + Sync,
) -> Result<Vec<R>, LabError> {
    let joined: Vec<Result<R, LabError>> = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = items.iter().map(|item| s.spawn(move || f(item))).collect();
        // Every thread is joined here (one that panicked and was left unjoined would make the
        // scope panic).
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(LabError::ThreadPanicked {
                        what: what.to_string(),
                    })
                })
            })
            .collect()
    });
    joined.into_iter().collect()
}
