//! Reading and writing the datapath's maps by name: endpoints, policy and port entries, host
//! and Service addresses, configuration, both conntrack tiers, flow events (drained, or waited
//! on with [`RingWaiter`]), event limits and counters.

use std::os::fd::AsFd;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{
    Array, HashMap, MapData, PerCpuArray, RingBuf,
    lpm_trie::{Key, LpmTrie},
};
use palisade_common::{
    conntrack::{CtKey, CtValue},
    endpoint::EndpointInfo,
    events::{EVSTAT_SLOTS, EventLimit, FlowEvent},
    maps,
    policy::{PolicyKey, PolicyValue, PortKey, PortValue},
    stats::{Config, Counter, HostAddrKey, stats_index},
    verdict::Reason,
};

use super::Datapath;

impl Datapath {
    pub(crate) fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    pub(crate) fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    pub fn set_endpoint(&mut self, ifindex: u32, ep: EndpointInfo) -> Result<()> {
        self.set_endpoint_keeping_generation(ifindex, ep)?;
        self.bump_ep_gen()
    }

    /// Writes `pal_ep_v1` without bumping `pal_epgen_v1`: what a writer that skipped the bump
    /// would leave (for the tests of `ebpf/src/ep_cache.rs`).
    pub fn set_endpoint_keeping_generation(
        &mut self,
        ifindex: u32,
        ep: EndpointInfo,
    ) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, EndpointInfo> =
            HashMap::try_from(self.map_mut(maps::ENDPOINTS)?)?;
        m.insert(ifindex, ep, 0).context("writing pal_ep_v1")?;
        Ok(())
    }

    /// Sets `pal_epgen_v1` (0 turns the programs' endpoint copies off).
    pub fn set_ep_gen(&mut self, generation: u64) -> Result<()> {
        let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::EP_GEN)?)?;
        m.set(0, generation, 0).context("writing pal_epgen_v1")?;
        Ok(())
    }

    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, EndpointInfo> =
            HashMap::try_from(self.map_mut(maps::ENDPOINTS)?)?;
        m.remove(&ifindex).context("deleting from pal_ep_v1")?;
        self.bump_ep_gen()
    }

    /// Adds one to `pal_epgen_v1` after a `pal_ep_v1` change, as the agent does: the
    /// programs' per-CPU copies of endpoint entries (`ebpf/src/ep_cache.rs`) are not used
    /// again.
    fn bump_ep_gen(&mut self) -> Result<()> {
        if self.ebpf.map(maps::EP_GEN).is_none() {
            // An object from before the copies (`bench prog` timing an older build).
            return Ok(());
        }
        let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::EP_GEN)?)?;
        let g = m.get(&0, 0).context("reading pal_epgen_v1")?;
        m.set(0, g + 1, 0).context("writing pal_epgen_v1")?;
        Ok(())
    }

    /// Adds a `pal_pol_v1` entry; `prefixlen` is the full LPM prefix length
    /// (`policy_prefixlen(addr_bits)`).
    pub fn add_policy(&mut self, prefixlen: u32, key: PolicyKey, value: PolicyValue) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, PolicyKey, PolicyValue> =
            LpmTrie::try_from(self.map_mut(maps::POLICY)?)?;
        m.insert(&Key::new(prefixlen, key), value, 0)
            .context("writing pal_pol_v1")?;
        Ok(())
    }

    pub fn add_port(&mut self, prefixlen: u32, key: PortKey, value: PortValue) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, PortKey, PortValue> =
            LpmTrie::try_from(self.map_mut(maps::PORTS)?)?;
        m.insert(&Key::new(prefixlen, key), value, 0)
            .context("writing pal_port_v1")?;
        Ok(())
    }

    pub fn add_host(&mut self, key: HostAddrKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, HostAddrKey, u32> =
            HashMap::try_from(self.map_mut(maps::HOST_ADDRS)?)?;
        m.insert(key, 1, 0).context("writing pal_host_v1")?;
        Ok(())
    }

    /// Adds a Service address to `pal_svc_v1`.
    pub fn add_service(&mut self, key: HostAddrKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, HostAddrKey, u32> =
            HashMap::try_from(self.map_mut(maps::SERVICES)?)?;
        m.insert(key, 1, 0).context("writing pal_svc_v1")?;
        Ok(())
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        let mut m: Array<&mut MapData, Config> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        m.set(0, cfg, 0).context("writing pal_cfg_v1")?;
        Ok(())
    }

    /// Writes a conntrack entry directly (to stage flows of a given age).
    pub fn set_conntrack(&mut self, key: CtKey, value: CtValue) -> Result<()> {
        let mut m: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.map_mut(maps::CONNTRACK)?)?;
        m.insert(key, value, 0).context("writing pal_ct_v1")?;
        Ok(())
    }

    /// Writes an entry of the assured conntrack tier (`pal_cta_v1`) directly. The per-endpoint
    /// counts (`pal_ctcnt_v1`) are left as they are.
    pub fn set_assured(&mut self, key: CtKey, value: CtValue) -> Result<()> {
        let mut m: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.map_mut(maps::ASSURED)?)?;
        m.insert(key, value, 0).context("writing pal_cta_v1")?;
        Ok(())
    }

    /// Empties both conntrack tiers (`pal_ct_v1`, `pal_cta_v1`); the per-endpoint counts of
    /// the assured tier are left as they are.
    pub fn clear_conntrack(&mut self) -> Result<()> {
        for name in [maps::CONNTRACK, maps::ASSURED] {
            let mut m: HashMap<&mut MapData, CtKey, CtValue> =
                HashMap::try_from(self.map_mut(name)?)?;
            let keys = m
                .keys()
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {name}"))?;
            for k in keys {
                m.remove(&k)
                    .with_context(|| format!("deleting from {name}"))?;
            }
        }
        Ok(())
    }

    /// CPU `cpu`'s entry of `pal_scratch`, the programs' working state (laid out by
    /// `ebpf/src/maps.rs::Scratch`, which this crate cannot name), as bytes: for the tests that
    /// look at what an evaluation left there.
    pub fn scratch_bytes(&self, cpu: usize) -> Result<Vec<u8>> {
        let aya::maps::Map::PerCpuArray(m) = self.map(maps::SCRATCH)? else {
            bail!("{} is not a per-CPU array", maps::SCRATCH);
        };
        let size = m.info().context("pal_scratch info")?.value_size() as usize;
        let stride = size.next_multiple_of(8);
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let all = super::syscalls::lookup_bytes(m.fd(), &0u32.to_ne_bytes(), stride * cpus)?;
        all.get(cpu * stride..cpu * stride + size)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| anyhow!("no CPU {cpu} among {cpus}"))
    }

    /// Moves every stamp in the LRU tier (`pal_ct_v1`) `by_ns` into the past, as if each flow
    /// had been quiet that long: the next packet of a flow that has seen its reply refreshes
    /// the stamp and moves it to the assured tier (`palisade_common::assured`). Returns how
    /// many entries it aged.
    pub fn age_lru(&mut self, by_ns: u64) -> Result<usize> {
        let mut m: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.map_mut(maps::CONNTRACK)?)?;
        let all = m
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading pal_ct_v1")?;
        for (k, v) in &all {
            let aged = CtValue {
                last_seen_ns: v.last_seen_ns.saturating_sub(by_ns),
                ..*v
            };
            m.insert(*k, aged, 0).context("writing pal_ct_v1")?;
        }
        Ok(all.len())
    }

    /// Every conntrack entry, of both tiers (`pal_ct_v1`, then the assured `pal_cta_v1`).
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>> {
        let m: HashMap<&MapData, CtKey, CtValue> = HashMap::try_from(self.map(maps::CONNTRACK)?)?;
        let mut out = m
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading pal_ct_v1")?;
        out.extend(self.assured()?);
        Ok(out)
    }

    /// The entries of the assured conntrack tier (`pal_cta_v1`) only.
    pub fn assured(&self) -> Result<Vec<(CtKey, CtValue)>> {
        let m: HashMap<&MapData, CtKey, CtValue> = HashMap::try_from(self.map(maps::ASSURED)?)?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading pal_cta_v1")
    }

    /// Every flow event the programs emitted since the last call (drains `pal_flow_v1`).
    pub fn flow_events(&mut self) -> Result<Vec<FlowEvent>> {
        let mut rb = RingBuf::try_from(self.map_mut(maps::FLOW_EVENTS)?)?;
        let mut out = Vec::new();
        while let Some(item) = rb.next() {
            if item.len() != std::mem::size_of::<FlowEvent>() {
                bail!("a flow event of {} bytes", item.len());
            }
            // SAFETY: a `FlowEvent`-sized record; every bit pattern is a valid `FlowEvent`.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const FlowEvent) });
        }
        Ok(out)
    }

    /// A wait on `pal_flow_v1` as the agent's reader waits: edge-triggered epoll on its fd,
    /// so only the datapath's wake-ups (never records submitted without one) make it ready.
    pub fn flow_events_waiter(&mut self) -> Result<RingWaiter> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
        let aya::maps::Map::RingBuf(m) = self.map_mut(maps::FLOW_EVENTS)? else {
            bail!("{} is not a ring buffer", maps::FLOW_EVENTS);
        };
        let fd = m.fd().as_fd().try_clone_to_owned()?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            &fd,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
        )?;
        Ok(RingWaiter { epoll, _fd: fd })
    }

    /// `pal_evstat_v1` slot `slot` (`EVSTAT_*`) summed over CPUs.
    pub fn event_stat(&self, slot: u32) -> Result<u64> {
        anyhow::ensure!(slot < EVSTAT_SLOTS, "no event counter {slot}");
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(maps::EVENT_STATS)?)?;
        Ok(m.get(&slot, 0)
            .context("reading pal_evstat_v1")?
            .iter()
            .sum())
    }

    /// Every entry of the drop-event rate limit (`pal_evrl_v1`).
    pub fn event_limits(&self) -> Result<Vec<(CtKey, EventLimit)>> {
        let m: HashMap<&MapData, CtKey, EventLimit> =
            HashMap::try_from(self.map(maps::EVENT_LIMIT)?)?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading pal_evrl_v1")
    }

    /// Writes a drop-event rate-limit entry (to stage one whose interval has passed).
    pub fn set_event_limit(&mut self, key: CtKey, value: EventLimit) -> Result<()> {
        let mut m: HashMap<&mut MapData, CtKey, EventLimit> =
            HashMap::try_from(self.map_mut(maps::EVENT_LIMIT)?)?;
        m.insert(key, value, 0).context("writing pal_evrl_v1")?;
        Ok(())
    }

    /// The (direction, reason) counter summed over CPUs.
    pub fn counter(&self, dir: u8, reason: Reason) -> Result<Counter> {
        let m: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(self.map(maps::STATS)?)?;
        let per_cpu = m
            .get(&stats_index(dir, reason.0), 0)
            .context("reading pal_stat_v1")?;
        Ok(per_cpu.iter().fold(Counter::default(), |a, c| Counter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        }))
    }
}

/// `Datapath::flow_events_waiter`.
pub struct RingWaiter {
    epoll: nix::sys::epoll::Epoll,
    _fd: std::os::fd::OwnedFd,
}

impl RingWaiter {
    /// Whether a wake-up came (since the last call, or the registration: a ring that already
    /// held records when registered counts as one), waiting at most `timeout_ms`.
    pub fn woken(&self, timeout_ms: u16) -> Result<bool> {
        let mut ev = [nix::sys::epoll::EpollEvent::empty()];
        Ok(self.epoll.wait(&mut ev, timeout_ms)? > 0)
    }
}
