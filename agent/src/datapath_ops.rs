//! The applier's map operations on the real pinned maps, reading them back for adoption, and
//! their capacities.

use aya::maps::MapError;
use palisade_common::endpoint::EndpointInfo;
use palisade_common::fqdn::{FqdnEndpoint, NameKey};
use palisade_common::maps;
use palisade_common::policy::{PolicyKey, PolicyValue, PortKey, PortValue};
use palisade_common::stats::{Config, HostAddrKey};

use crate::applier::{AddrMap, Capacity, MapOps, PinnedState};
use crate::datapath::{Datapath, DatapathError, Maps, lpm};

pub struct Ops<'a>(pub &'a mut Maps);

fn e(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, op, source }
}

/// Deleting what is already gone is fine (idempotent cleanup).
pub fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

/// Adds one to `pal_epgen_v1` after a change of `pal_ep_v1`: the programs' per-CPU copies of
/// endpoint entries made before it (`ebpf/src/ep_cache.rs`) are not used again. An error
/// fails the endpoint's write, which the applier retries (the entry is written again, then
/// the generation).
///
/// A program reads the generation before the entry. x86 does not reorder two loads; a weakly
/// ordered CPU may, and could then copy the older entry under the newer generation. There the
/// generation is bumped a second time once every program run that started before the first
/// bump has ended (`membarrier(MEMBARRIER_CMD_GLOBAL)` waits for an RCU grace period, and BPF
/// programs run inside RCU read-side sections), which retires such a copy.
fn bump_ep_gen(m: &mut Maps) -> Result<(), DatapathError> {
    bump(m)?;
    // `cfg!`, not `#[cfg]`: the weakly ordered path is compiled (and type-checked) on x86 too.
    if !cfg!(target_arch = "x86_64") {
        wait_for_running_programs()?;
        bump(m)?;
    }
    Ok(())
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL)`: returns after an RCU grace period.
fn wait_for_running_programs() -> Result<(), DatapathError> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: the membarrier syscall with a command, no flags and no pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r == 0 {
        return Ok(());
    }
    Err(DatapathError::Map {
        map: maps::EP_GEN,
        op: "membarrier",
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "membarrier",
            io_error: std::io::Error::last_os_error(),
        }),
    })
}

fn bump(m: &mut Maps) -> Result<(), DatapathError> {
    let g = m.ep_gen.get(&0, 0).map_err(e(maps::EP_GEN, "read"))?;
    m.ep_gen
        .set(0, g.wrapping_add(1).max(1), 0)
        .map_err(e(maps::EP_GEN, "set"))
}

impl MapOps for Ops<'_> {
    type Error = DatapathError;
    fn put_policy(&mut self, p: u32, k: PolicyKey, v: PolicyValue) -> Result<(), DatapathError> {
        self.0
            .policy
            .insert(&lpm(p, k), v, 0)
            .map_err(e(maps::POLICY, "insert"))
    }
    fn del_policy(&mut self, p: u32, k: PolicyKey) -> Result<(), DatapathError> {
        ignore_missing(self.0.policy.remove(&lpm(p, k))).map_err(e(maps::POLICY, "remove"))
    }
    fn put_port(&mut self, p: u32, k: PortKey, v: PortValue) -> Result<(), DatapathError> {
        self.0
            .ports
            .insert(&lpm(p, k), v, 0)
            .map_err(e(maps::PORTS, "insert"))
    }
    fn del_port(&mut self, p: u32, k: PortKey) -> Result<(), DatapathError> {
        ignore_missing(self.0.ports.remove(&lpm(p, k))).map_err(e(maps::PORTS, "remove"))
    }
    fn put_endpoint(&mut self, i: u32, v: EndpointInfo) -> Result<(), DatapathError> {
        self.0
            .endpoints
            .insert(i, v, 0)
            .map_err(e(maps::ENDPOINTS, "insert"))?;
        bump_ep_gen(self.0)
    }
    fn del_endpoint(&mut self, i: u32) -> Result<(), DatapathError> {
        ignore_missing(self.0.endpoints.remove(&i)).map_err(e(maps::ENDPOINTS, "remove"))?;
        bump_ep_gen(self.0)
    }
    fn put_addr(&mut self, map: AddrMap, k: HostAddrKey) -> Result<(), DatapathError> {
        self.set(map)
            .insert(k, 1, 0)
            .map_err(e(map.name(), "insert"))
    }
    fn del_addr(&mut self, map: AddrMap, k: HostAddrKey) -> Result<(), DatapathError> {
        ignore_missing(self.set(map).remove(&k)).map_err(e(map.name(), "remove"))
    }
    fn put_config(&mut self, c: Config) -> Result<(), DatapathError> {
        self.0.config.set(0, c, 0).map_err(e(maps::CONFIG, "set"))
    }
    fn put_fqdn_endpoint(&mut self, ep_id: u32, v: FqdnEndpoint) -> Result<(), DatapathError> {
        self.0
            .fqdn_endpoints
            .insert(ep_id, v, 0)
            .map_err(e(maps::FQDN_ENDPOINTS, "insert"))
    }
    fn del_fqdn_endpoint(&mut self, ep_id: u32) -> Result<(), DatapathError> {
        ignore_missing(self.0.fqdn_endpoints.remove(&ep_id))
            .map_err(e(maps::FQDN_ENDPOINTS, "remove"))
    }
    fn put_name(&mut self, p: u32, k: NameKey, mask: u32) -> Result<(), DatapathError> {
        self.0
            .fqdn_names
            .insert(&aya::maps::lpm_trie::Key::new(p, k), mask, 0)
            .map_err(e(maps::FQDN_NAMES, "insert"))
    }
    fn del_name(&mut self, p: u32, k: NameKey) -> Result<(), DatapathError> {
        ignore_missing(
            self.0
                .fqdn_names
                .remove(&aya::maps::lpm_trie::Key::new(p, k)),
        )
        .map_err(e(maps::FQDN_NAMES, "remove"))
    }
    fn grace_period(&mut self) -> Result<(), DatapathError> {
        rcu_grace_period();
        Ok(())
    }
}

impl Ops<'_> {
    fn set(
        &mut self,
        map: AddrMap,
    ) -> &mut aya::maps::HashMap<aya::maps::MapData, HostAddrKey, u32> {
        match map {
            AddrMap::Services => &mut self.0.services,
            AddrMap::HostAddrs => &mut self.0.hosts,
            AddrMap::DnsServers => &mut self.0.dns_servers,
        }
    }
}

/// Waits until every eBPF program run that started before the call has finished.
///
/// TC programs run inside RCU read-side sections (softirq, or `rcu_read_lock_bh` on transmit),
/// and `membarrier(MEMBARRIER_CMD_GLOBAL)` returns only after an RCU grace period
/// (`synchronize_rcu`), which waits for every such section that had begun: the one syscall that
/// gives this guarantee to user space. Kernels with `nohz_full` refuse the command; there a
/// sleep far longer than any program run (microseconds) stands in for it.
pub fn rcu_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: the syscall takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `max_entries` of the maps the applier fills, as the kernel created them.
pub fn capacity(m: &Maps) -> Result<Capacity, DatapathError> {
    use aya::maps::IterableMap;
    fn max(map: &aya::maps::MapData, name: &'static str) -> Result<u32, DatapathError> {
        Ok(map.info().map_err(e(name, "info"))?.max_entries())
    }
    Ok(Capacity {
        endpoints: max(m.endpoints.map(), maps::ENDPOINTS)?,
        policy: max(m.policy.map(), maps::POLICY)?,
        ports: max(m.ports.map(), maps::PORTS)?,
        services: max(m.services.map(), maps::SERVICES)?,
        host_addrs: max(m.hosts.map(), maps::HOST_ADDRS)?,
        dns_servers: max(m.dns_servers.map(), maps::DNS_SERVERS)?,
        fqdn_names: max(m.fqdn_names.map(), maps::FQDN_NAMES)?,
    })
}

pub fn read_pinned(dp: &Datapath) -> Result<PinnedState, DatapathError> {
    let m = &dp.maps;
    let mut st = PinnedState::default();
    for r in m.endpoints.iter() {
        st.endpoints.push(r.map_err(e(maps::ENDPOINTS, "iterate"))?);
    }
    for r in m.policy.iter() {
        let (k, v) = r.map_err(e(maps::POLICY, "iterate"))?;
        st.policy.push((k.prefix_len(), k.data(), v));
    }
    for r in m.ports.iter() {
        let (k, v) = r.map_err(e(maps::PORTS, "iterate"))?;
        st.ports.push((k.prefix_len(), k.data(), v));
    }
    for k in m.services.keys() {
        st.services.push(k.map_err(e(maps::SERVICES, "iterate"))?);
    }
    for k in m.hosts.keys() {
        st.host_addrs
            .push(k.map_err(e(maps::HOST_ADDRS, "iterate"))?);
    }
    for k in m.dns_servers.keys() {
        st.dns_servers
            .push(k.map_err(e(maps::DNS_SERVERS, "iterate"))?);
    }
    for r in m.fqdn_endpoints.iter() {
        st.fqdn_endpoints
            .push(r.map_err(e(maps::FQDN_ENDPOINTS, "iterate"))?);
    }
    for r in m.fqdn_names.iter() {
        let (k, v) = r.map_err(e(maps::FQDN_NAMES, "iterate"))?;
        st.fqdn_names.push((k.prefix_len(), k.data(), v));
    }
    st.config = Some(m.config.get(&0, 0).map_err(e(maps::CONFIG, "get"))?);
    Ok(st)
}

#[cfg(test)]
mod tests {
    /// The wait a weakly ordered CPU needs between the two bumps works on this kernel (the
    /// x86 build never calls it, so it is exercised here).
    #[test]
    fn membarrier_global_returns_after_a_grace_period() {
        super::wait_for_running_programs().expect("membarrier(MEMBARRIER_CMD_GLOBAL)");
    }
}
