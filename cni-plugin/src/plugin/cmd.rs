//! ADD, DEL, CHECK, GC and STATUS.
//!
//! The process runs in the node's network namespace (the "host" side); pod-side work runs on a
//! thread that entered the pod's namespace (see [`super::netns`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use palisade_node_api::endpoint::{self, EndpointRecord};
use palisade_node_api::socket::{self, PLUGIN_TIMEOUT, Request};
use palisade_node_api::{HOST_VETH_PREFIX, host_veth_name};
use serde_json::Value;

use super::netlink::{Nl, addr, link, neigh, route};
use super::{netns, sysctl};
use crate::config::{CniEnv, Command, NetConf};
use crate::error::{Error, Result};
use crate::ipam::{Owner, Store};
use crate::result::{AddResult, GATEWAY_V4, GATEWAY_V6, gateway_for, prev_result_ips};

/// Runs `command` (not VERSION); `Some(json)` is printed on stdout.
pub fn dispatch(
    command: Command,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>> {
    let conf = NetConf::parse(stdin)?;
    if matches!(command, Command::Gc | Command::Status) && !conf.cni_version.has_gc_and_status() {
        return Err(Error::VerbNotInVersion {
            command: command.as_str(),
            version: conf.cni_version.as_str(),
        });
    }
    let env = CniEnv::from_env(command, get)?;
    match command {
        Command::Add => add(&env, &conf).map(Some),
        Command::Del => del(&env, &conf).map(|()| None),
        Command::Check => check(&env, &conf).map(|()| None),
        Command::Gc => gc(&conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Version => Ok(Some(crate::version::version_info(Some(
            conf.cni_version.as_str(),
        )))),
    }
}

fn owner(env: &CniEnv) -> Owner {
    Owner {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// `CNI_NETNS`, opened and checked to be a pod's network namespace (a bad one is the
/// caller's error, code 4, naming it).
fn pod_netns(env: &CniEnv) -> Result<(&Path, std::fs::File)> {
    let p = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::invalid_env("CNI_NETNS", "", "is required for this command"))?;
    Ok((p, netns::open(p)?))
}

/// Undoes a partial ADD unless disarmed: deletes the host veth (which takes the pod side and
/// every route through it along), the endpoint record and the allocation.
struct AddRollback<'a> {
    armed: bool,
    nl: &'a Nl,
    store: &'a Store,
    state_dir: &'a Path,
    owner: Owner,
    host_veth: Option<String>,
    record: bool,
    /// Whether the store may hold an allocation of this ADD (not when the lock was never
    /// taken: releasing would wait for it a second time).
    allocated: bool,
}

impl AddRollback<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AddRollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(name) = &self.host_veth
            && let Err(e) = link::delete_by_name(self.nl, name)
        {
            eprintln!("palisade: rollback: {e}");
        }
        if self.record
            && let Err(e) =
                endpoint::remove(self.state_dir, &self.owner.container_id, &self.owner.ifname)
        {
            eprintln!("palisade: rollback: {e}");
        }
        if self.allocated
            && let Err(e) = self.store.release(&self.owner)
        {
            eprintln!("palisade: rollback: {e}");
        }
    }
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<Value> {
    let (netns_p, pod_ns) = pod_netns(env)?;
    let pools = conf.pod_cidrs()?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let nl = Nl::open()?;
    let netns_str = netns_p.display().to_string();

    // Same container + ifname again: answer from what exists.
    if let Some(rec) = endpoint::read(&conf.state_dir, &env.container_id, &env.ifname)?
        && rec.netns == netns_str
        && let Some(host) = link::get(&nl, &host_name)?
        && host.index == rec.host_ifindex
    {
        let ips = rec
            .ips
            .iter()
            .map(|s| s.parse::<IpNetwork>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::invalid_config(
                    "endpoint record ips",
                    format!("{:?}", rec.ips),
                    e.to_string(),
                )
            })?;
        return Ok(AddResult {
            host_veth: host_name,
            host_mac: host.mac,
            ifname: env.ifname.clone(),
            pod_mac: rec.mac,
            netns: netns_str,
            mtu: conf.mtu,
            ips,
            dns: conf.dns.clone(),
        }
        .render(conf.cni_version));
    }

    let store = Store::open(&conf.state_dir)?;
    let mut rollback = AddRollback {
        armed: true,
        nl: &nl,
        store: &store,
        state_dir: &conf.state_dir,
        owner: owner(env),
        host_veth: None,
        record: false,
        allocated: false,
    };
    let mut requested = conf.requested_ips.clone();
    for ip in env.requested_ips()? {
        if !requested.contains(&ip) {
            requested.push(ip);
        }
    }
    let ips = match store.allocate_requested(&rollback.owner, &pools, &requested) {
        Ok(ips) => ips,
        Err(e @ Error::Busy { .. }) => return Err(e),
        Err(e) => {
            rollback.allocated = true;
            return Err(e);
        }
    };
    rollback.allocated = true;
    let has_v4 = ips.iter().any(IpNetwork::is_ipv4);
    let has_v6 = ips.iter().any(IpNetwork::is_ipv6);

    // Node side: forwarding on, a fresh veth pair.
    if has_v4 {
        sysctl::ensure("net/ipv4/ip_forward", "1")?;
    }
    if has_v6 {
        sysctl::ensure("net/ipv6/conf/all/forwarding", "1")?;
    }
    rollback.host_veth = Some(host_name.clone());
    // Leftover of an ADD that died before writing its record: start over.
    link::delete_by_name(&nl, &host_name)?;
    link::create_veth(&nl, &host_name, &env.ifname, pod_ns.as_fd(), conf.mtu)?;
    let host = link::get(&nl, &host_name)?.ok_or_else(|| Error::Netlink {
        op: "getting link",
        object: host_name.clone(),
        errno: Some(libc::ENODEV),
        message: "veth vanished right after creation".into(),
    })?;
    sysctl::host_veth(&host_name, has_v4, has_v6)?;
    link::set_up(&nl, host.index, &host_name)?;
    let host_mac = neigh::parse_mac(&host.mac).ok_or_else(|| Error::Netlink {
        op: "reading MAC of",
        object: host_name.clone(),
        errno: None,
        message: format!("unexpected address {:?}", host.mac),
    })?;

    // Pod side.
    let ifname = env.ifname.as_str();
    let pod_ips = ips.clone();
    let pod_mac = netns::run_in(&pod_ns, netns_p, move || {
        let nl = Nl::open()?;
        sysctl::pod_link(ifname, has_v6)?;
        let pod = link::get(&nl, ifname)?.ok_or_else(|| Error::Netlink {
            op: "getting link",
            object: ifname.to_string(),
            errno: Some(libc::ENODEV),
            message: "pod side of the veth not found in the pod namespace".into(),
        })?;
        for ip in &pod_ips {
            addr::add(&nl, pod.index, *ip)?;
        }
        link::set_up(&nl, pod.index, ifname)?;
        if has_v4 {
            neigh::add_permanent(&nl, pod.index, IpAddr::V4(GATEWAY_V4), &host_mac)?;
            route::add_gateway_v4(&nl, pod.index)?;
        }
        if has_v6 {
            neigh::add_permanent(&nl, pod.index, IpAddr::V6(GATEWAY_V6), &host_mac)?;
            route::add_gateway_v6(&nl, pod.index)?;
        }
        Ok(pod.mac)
    })?;

    let record = EndpointRecord {
        container_id: env.container_id.clone(),
        netns: netns_str.clone(),
        ifname: env.ifname.clone(),
        pod_namespace: env.pod_namespace(),
        pod_name: env.pod_name(),
        ips: ips.iter().map(ToString::to_string).collect(),
        host_veth: host_name.clone(),
        host_ifindex: host.index,
        mac: pod_mac.clone(),
        created_unix_ms: endpoint::now_unix_ms(),
    };
    rollback.record = true;
    record.write(&conf.state_dir)?;
    if let Some(sock) = &conf.agent_socket {
        socket::call_ok(sock, &Request::Add { endpoint: record }, PLUGIN_TIMEOUT)?;
    }
    // Node side: a host route per pod address, only now. Until this route exists nothing can
    // reach the pod (the node has no route to its address), so no packet arrives before the
    // agent has programmed the endpoint's policy and attached its programs.
    for ip in &ips {
        route::add_host_route(&nl, host.index, ip.ip())?;
    }
    rollback.disarm();
    Ok(AddResult {
        host_veth: host_name,
        host_mac: host.mac,
        ifname: env.ifname.clone(),
        pod_mac,
        netns: netns_str,
        mtu: conf.mtu,
        ips,
        dns: conf.dns.clone(),
    }
    .render(conf.cni_version))
}

/// Tells the agent an attachment is gone, best effort (a failure goes to stderr: the agent
/// drops endpoints without a record when it next starts).
///
/// Only after the host veth is deleted: the agent refuses to drop the endpoint of a veth that
/// still exists, so a pod is never left attached without its programs.
fn tell_agent_del(conf: &NetConf, o: &Owner, verb: &str) {
    if let Some(sock) = &conf.agent_socket {
        let req = Request::Del {
            container_id: o.container_id.clone(),
            ifname: o.ifname.clone(),
        };
        if let Err(e) = socket::call_ok(sock, &req, PLUGIN_TIMEOUT) {
            eprintln!("palisade: {verb} continues without the agent: {e}");
        }
    }
}

/// Idempotent: succeeds when the netns, the veth, the allocation or the record are gone.
fn del(env: &CniEnv, conf: &NetConf) -> Result<()> {
    // Deleting the host side removes the pod side and every route through it.
    let nl = Nl::open()?;
    link::delete_by_name(&nl, &host_veth_name(&env.container_id, &env.ifname))?;
    tell_agent_del(conf, &owner(env), "DEL");
    Store::open(&conf.state_dir)?.release(&owner(env))?;
    Ok(endpoint::remove(
        &conf.state_dir,
        &env.container_id,
        &env.ifname,
    )?)
}

fn check_failed(what: String) -> Error {
    Error::CheckFailed { what }
}

/// Verifies that what ADD made (per `prevResult`) is still in place.
fn check(env: &CniEnv, conf: &NetConf) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        Error::invalid_config("prevResult", "(missing)", "CHECK needs the ADD result")
    })?;
    let ips = prev_result_ips(prev, &env.ifname)?;
    let (netns_p, pod_ns) = pod_netns(env)?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let nl = Nl::open()?;
    let host = link::get(&nl, &host_name)?
        .ok_or_else(|| check_failed(format!("host veth {host_name} does not exist")))?;
    if !host.up {
        return Err(check_failed(format!("host veth {host_name} is down")));
    }
    let held: HashSet<IpAddr> = Store::open(&conf.state_dir)?
        .list()?
        .into_iter()
        .filter(|a| a.owner == owner(env))
        .map(|a| a.ip)
        .collect();
    for ip in &ips {
        if !held.contains(&ip.ip()) {
            return Err(check_failed(format!(
                "address {ip} is not allocated to this container"
            )));
        }
    }
    for v4 in [true, false] {
        let routes = route::list(&nl, v4)?;
        for ip in ips.iter().filter(|i| i.is_ipv4() == v4) {
            let full = if v4 { 32 } else { 128 };
            if !routes
                .iter()
                .any(|r| r.dst == Some(ip.ip()) && r.prefix == full && r.oif == Some(host.index))
            {
                return Err(check_failed(format!(
                    "host route {}/{full} dev {host_name} is missing",
                    ip.ip()
                )));
            }
        }
    }
    let ifname = env.ifname.as_str();
    netns::run_in(&pod_ns, netns_p, || {
        let nl = Nl::open()?;
        let pod = link::get(&nl, ifname)?.ok_or_else(|| {
            check_failed(format!(
                "interface {ifname} does not exist in {}",
                netns_p.display()
            ))
        })?;
        if !pod.up {
            return Err(check_failed(format!("interface {ifname} is down")));
        }
        let have = addr::list(&nl, pod.index)?;
        for ip in &ips {
            if !have.contains(&ip.ip()) {
                return Err(check_failed(format!("address {ip} is missing on {ifname}")));
            }
        }
        for v4 in [true, false] {
            if !ips.iter().any(|i| i.is_ipv4() == v4) {
                continue;
            }
            let gw = gateway_for(&if v4 {
                IpAddr::V4(GATEWAY_V4)
            } else {
                IpAddr::V6(GATEWAY_V6)
            });
            let routes = route::list(&nl, v4)?;
            if !routes
                .iter()
                .any(|r| r.prefix == 0 && r.gateway == Some(gw) && r.oif == Some(pod.index))
            {
                return Err(check_failed(format!(
                    "default route via {gw} dev {ifname} is missing"
                )));
            }
        }
        Ok(())
    })
}

/// Releases every allocation, endpoint record and host veth not in
/// `cni.dev/valid-attachments`.
fn gc(conf: &NetConf) -> Result<()> {
    let valid: HashSet<Owner> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            Error::invalid_config(
                "cni.dev/valid-attachments",
                "(missing)",
                "GC needs the list",
            )
        })?
        .iter()
        .cloned()
        .collect();
    let store = Store::open(&conf.state_dir)?;
    let mut stale: HashSet<Owner> = store.gc(&valid)?.into_iter().map(|a| a.owner).collect();
    let records = endpoint::read_all(&conf.state_dir)?;
    for bad in &records.bad {
        eprintln!("palisade: GC skips endpoint record {bad}");
    }
    for rec in records.records.values() {
        let o = Owner {
            container_id: rec.container_id.clone(),
            ifname: rec.ifname.clone(),
        };
        if !valid.contains(&o) {
            stale.insert(o);
        }
    }
    endpoint::remove_tmp_leftovers(&conf.state_dir)?;
    let nl = Nl::open()?;
    for o in &stale {
        link::delete_by_name(&nl, &host_veth_name(&o.container_id, &o.ifname))?;
        tell_agent_del(conf, o, "GC");
        endpoint::remove(&conf.state_dir, &o.container_id, &o.ifname)?;
    }
    // Host veths of attachments no record or allocation remembers (a crash between creating
    // the veth and ... cannot happen, since allocation comes first; this also catches state
    // directories wiped by hand).
    let keep: HashSet<String> = valid
        .iter()
        .map(|o| host_veth_name(&o.container_id, &o.ifname))
        .collect();
    for l in link::list_prefixed(&nl, HOST_VETH_PREFIX)? {
        if l.is_veth && l.name.len() == 15 && !keep.contains(&l.name) {
            link::delete(&nl, l.index, &l.name)?;
        }
    }
    Ok(())
}

/// STATUS: available when the pod CIDRs are known, the store is usable and has room.
fn status(conf: &NetConf) -> Result<()> {
    let na = |reason: String| Error::NotAvailable { reason };
    let pools = conf.pod_cidrs().map_err(|e| na(e.to_string()))?;
    let store = Store::open(&conf.state_dir).map_err(|e| na(e.to_string()))?;
    if !store.has_free(&pools).map_err(|e| na(e.to_string()))? {
        return Err(na(format!("no free address left in {pools:?}")));
    }
    if let Some(sock) = &conf.agent_socket
        && let Err(e) = std::os::unix::net::UnixStream::connect(sock)
    {
        return Err(na(format!(
            "agent socket {}: {e}",
            PathBuf::from(sock).display()
        )));
    }
    Ok(())
}
