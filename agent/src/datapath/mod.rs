//! The kernel side as the agent sees it: the eBPF object, its pinned maps, and the TCX links
//! that attach `from_pod` / `to_pod` to each pod's host-side veth.
//!
//! Layout under `--bpffs DIR`:
//! - `DIR/maps/<map name>`: every map, pinned by name (names carry a layout version, see
//!   `palisade_common::maps`), reused by the next agent;
//! - `DIR/links/uplink/<ifindex>-to_uplink`: the node uplinks' TC egress (Service traffic
//!   judged after translation, see `palisade_common::service`);
//! - `DIR/links/<ifindex>-<program>`: one pinned TCX link per hook. A pinned link keeps its
//!   program attached after the agent exits or is killed, so enforcement never depends on the
//!   agent process. A restarted agent swaps its freshly loaded program into the existing link
//!   with `bpf_link_update` (atomic: the hook is never empty).
//!
//! Modules: `bpffs` (mounting one when none is there), `object` (the loader the agent shares
//! with the test harness and the bench), `layout` (pinned maps checked against the object
//! before they are adopted), `links` (links held open as well as pinned) and
//! `integrity` (the periodic check that notices lost pins, a lost bpffs or a detached link,
//! and restores them); `ct_sweep` and `fqdn_sweep` (what expires from the assured conntrack
//! tier and from learnt addresses) and `sweeper` (the periodic pass both run).

mod bpffs;
pub mod ct_sweep;
pub mod fqdn_sweep;
mod integrity;
mod layout;
mod links;
pub mod object;
pub mod sweeper;

pub use bpffs::BpffsError;
pub use integrity::Check;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};

use crate::map_sizes::MapSizes;
use palisade_common::conntrack::{CtKey, CtValue};
use palisade_common::endpoint::EndpointInfo;
use palisade_common::fqdn::{FqdnEndpoint, NameKey};
use palisade_common::maps;
use palisade_common::policy::{PolicyKey, PolicyValue, PortKey, PortValue};
use palisade_common::service::SvcAddrKey;
use palisade_common::stats::{Config, Counter, HostAddrKey, STATS_SLOTS};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("reading eBPF object {path}")]
    ReadObject {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing eBPF object {path}")]
    ParseObject {
        path: PathBuf,
        #[source]
        source: Box<aya_obj::ParseError>,
    },
    #[error("removing pinned map {path}, whose layout does not match the eBPF object")]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening pinned map {path}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("creating pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading eBPF object {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: wrong type")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("loading program {name}")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("putting program {name} in the tail-call array: {message}")]
    Tail { name: &'static str, message: String },
    #[error("attaching {program} to interface {ifname} (ifindex {ifindex})")]
    Attach {
        program: &'static str,
        ifname: String,
        ifindex: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link of {program} on ifindex {ifindex}")]
    Link {
        program: &'static str,
        ifindex: u32,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning link {path}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("interface index {0} does not exist")]
    NoInterface(u32),
    #[error("map {map}: {op}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

pub struct Maps {
    pub endpoints: HashMap<MapData, u32, EndpointInfo>,
    /// `pal_ep_v1`'s generation, bumped after every change of it (`datapath_ops`).
    pub ep_gen: aya::maps::Array<MapData, u64>,
    pub policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    pub ports: LpmTrie<MapData, PortKey, PortValue>,
    pub hosts: HashMap<MapData, HostAddrKey, u32>,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    /// The assured tier (`palisade_common::assured`): copied like `conntrack` when resized.
    pub assured: HashMap<MapData, CtKey, CtValue>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub config: aya::maps::Array<MapData, Config>,
    pub services: HashMap<MapData, SvcAddrKey, u32>,
    /// Egress by domain name (`palisade_common::fqdn`): what the applier writes.
    pub fqdn_endpoints: HashMap<MapData, u32, FqdnEndpoint>,
    pub fqdn_names: LpmTrie<MapData, NameKey, u32>,
    pub dns_servers: HashMap<MapData, HostAddrKey, u32>,
}

pub struct Datapath {
    ebpf: Ebpf,
    // Kept alive: dropping the logger closes the log map (aya-log 0.3).
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// `--bpffs`.
    root: PathBuf,
    maps_dir: PathBuf,
    links_dir: PathBuf,
    uplink_links_dir: PathBuf,
    pub maps: Maps,
    /// Every map the object pins by name, held open to pin it again.
    pinned_maps: Vec<PinnedMap>,
    /// Kernel ids of the loaded programs, by name.
    prog_ids: BTreeMap<&'static str, u32>,
    /// Every link attached or adopted, by pin path.
    links: BTreeMap<PathBuf, links::Held>,
    /// What opening found and did: maps replaced, a bpffs mounted.
    at_start: Vec<crate::status::Problem>,
    /// The periodic check's state (current faults, recent repairs).
    check: integrity::State,
    /// The learnt-address map this agent replaced, until [`Datapath::merge_previous_learnt`].
    previous_learnt: Option<layout::PreviousLearnt>,
}

/// (name, the map, (device, inode) of its pin when last seen to be this map's).
type PinnedMap = (String, aya::maps::MapData, Option<(u64, u64)>);

const HOOKS: [(&str, TcAttachType); 2] = [
    // Packets leaving the pod enter the host-side veth: its TC ingress.
    (maps::PROG_FROM_POD, TcAttachType::Ingress),
    // Packets going to the pod leave through the host-side veth: its TC egress.
    (maps::PROG_TO_POD, TcAttachType::Egress),
];

/// The datapath's programs, each loaded by [`object::load`] at open.
pub const PROGRAMS: [&str; 4] = [
    maps::PROG_FROM_POD,
    maps::PROG_TO_POD,
    maps::PROG_TO_UPLINK,
    maps::PROG_DNS_LEARN,
];

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DatapathError::MapType { name, source })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::LoadProgram { name, source })
}

fn create_dirs(dirs: &[&PathBuf]) -> Result<()> {
    for d in dirs {
        std::fs::create_dir_all(d).map_err(|source| DatapathError::PinDir {
            path: (*d).clone(),
            source,
        })?;
    }
    Ok(())
}

impl Datapath {
    /// Loads the object, reusing maps already pinned under `bpffs/maps` (adopting a previous
    /// agent's state) when their layout is the object's, and pinning new ones there. Mounts a
    /// bpffs on `bpffs` first when none holds it.
    pub fn open(object: &Path, bpffs: &Path) -> Result<Self> {
        Datapath::open_sized(object, bpffs, &MapSizes::default())
    }

    /// [`Datapath::open`], creating the maps not pinned yet with `sizes`.
    pub fn open_sized(object: &Path, bpffs: &Path, sizes: &MapSizes) -> Result<Self> {
        let mut at_start = Vec::new();
        if let Some(at) = bpffs::ensure(bpffs)? {
            tracing::warn!(
                "no bpffs held {}: mounted one on {}",
                bpffs.display(),
                at.display()
            );
            at_start.push(crate::status::Problem {
                object: format!("bpffs {}", bpffs.display()),
                field: "mount".into(),
                message: format!(
                    "at agent start: no bpffs was mounted there; the agent mounted one on {}",
                    at.display()
                ),
            });
        }
        let maps_dir = bpffs.join("maps");
        let links_dir = bpffs.join("links");
        let uplink_links_dir = links_dir.join("uplink");
        create_dirs(&[&maps_dir, &links_dir, &uplink_links_dir])?;
        let object::Loaded {
            mut ebpf,
            pinned,
            replaced,
            previous_learnt,
        } = object::load(object, &maps_dir, sizes, &PROGRAMS)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("no eBPF logger: {e}");
                None
            }
        };
        let mut prog_ids = BTreeMap::new();
        for name in PROGRAMS {
            if let Ok(info) = program(&mut ebpf, name)?.info() {
                prog_ids.insert(name, info.id());
            }
        }
        let mut pinned_maps = Vec::new();
        for name in pinned {
            let path = maps_dir.join(&name);
            let map =
                aya::maps::MapData::from_pin(&path).map_err(|source| DatapathError::OpenPin {
                    path: path.clone(),
                    source,
                })?;
            pinned_maps.push((name, map, links::inode_of(&path)));
        }
        let maps = Maps {
            endpoints: take(&mut ebpf, maps::ENDPOINTS)?,
            ep_gen: take(&mut ebpf, maps::EP_GEN)?,
            policy: take(&mut ebpf, maps::POLICY)?,
            ports: take(&mut ebpf, maps::PORTS)?,
            hosts: take(&mut ebpf, maps::HOST_ADDRS)?,
            conntrack: take(&mut ebpf, maps::CONNTRACK)?,
            assured: take(&mut ebpf, maps::ASSURED)?,
            stats: take(&mut ebpf, maps::STATS)?,
            config: take(&mut ebpf, maps::CONFIG)?,
            services: take(&mut ebpf, maps::SERVICES)?,
            fqdn_endpoints: take(&mut ebpf, maps::FQDN_ENDPOINTS)?,
            fqdn_names: take(&mut ebpf, maps::FQDN_NAMES)?,
            dns_servers: take(&mut ebpf, maps::DNS_SERVERS)?,
        };
        at_start.extend(replaced.iter().map(layout::Replaced::problem));
        Ok(Datapath {
            ebpf,
            _logger: logger,
            root: bpffs.to_path_buf(),
            maps_dir,
            links_dir,
            uplink_links_dir,
            maps,
            pinned_maps,
            prog_ids,
            links: BTreeMap::new(),
            at_start,
            check: integrity::State::default(),
            previous_learnt,
        })
    }

    /// When this agent replaced the learnt-address map (another size): merges what the
    /// previous agent's programs learnt into the old one since the copy at load, and frees
    /// it. Call once this agent's programs are attached on every interface (the previous
    /// agent's no longer run): from then on only the new map is read and written.
    pub fn merge_previous_learnt(&mut self) {
        let Some(previous) = self.previous_learnt.take() else {
            return;
        };
        let Some(new) = self.ebpf.map_mut(maps::FQDN_LEARNT) else {
            return;
        };
        match previous.merge_into(new, sweeper::now_ns()) {
            Some((written, found)) => tracing::info!(
                map = maps::FQDN_LEARNT,
                "programs replaced on every interface: merged {written} of the {found} \
                 addresses the previous map held"
            ),
            None => tracing::warn!(
                map = maps::FQDN_LEARNT,
                "the previous learnt-address map could not be read: nothing merged"
            ),
        }
    }

    /// What opening the datapath found and did (maps replaced, a bpffs mounted).
    pub fn at_start(&self) -> &[crate::status::Problem] {
        &self.at_start
    }

    fn link_path(&self, ifindex: u32, program: &str) -> PathBuf {
        self.links_dir.join(format!("{ifindex}-{program}"))
    }

    /// Attaches both programs to the interface, or, when links are already pinned for it
    /// (a previous agent attached them), swaps this agent's programs into them atomically.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        for (name, attach_type) in HOOKS {
            let path = self.link_path(ifindex, name);
            self.attach_one(ifindex, name, attach_type, path)?;
        }
        Ok(())
    }

    /// Attaches `to_uplink` to the TC egress of a node uplink (or swaps it into the pinned
    /// link), like `attach`.
    pub fn attach_uplink(&mut self, ifindex: u32) -> Result<()> {
        let name = maps::PROG_TO_UPLINK;
        let path = self
            .uplink_links_dir
            .join(format!("{ifindex}-{}", maps::PROG_TO_UPLINK));
        self.attach_one(ifindex, name, TcAttachType::Egress, path)
    }

    /// Removes the pinned `to_uplink` links of interfaces not in `keep`.
    pub fn detach_uplinks_except(&mut self, keep: &[u32]) {
        let held: Vec<PathBuf> = self
            .links
            .iter()
            .filter(|(_, h)| h.program == maps::PROG_TO_UPLINK && !keep.contains(&h.ifindex))
            .map(|(p, _)| p.clone())
            .collect();
        for p in held {
            self.links.remove(&p);
        }
        let Ok(rd) = std::fs::read_dir(&self.uplink_links_dir) else {
            return;
        };
        for e in rd.flatten() {
            let n = e.file_name();
            let Some(ifindex) = n
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(i, _)| i.parse::<u32>().ok())
            else {
                continue;
            };
            if !keep.contains(&ifindex) {
                links::remove_pin(&e.path());
            }
        }
    }

    /// Attaches (or swaps into the pinned link) and holds the link, pinned at `path`.
    fn attach_one(
        &mut self,
        ifindex: u32,
        name: &'static str,
        attach_type: TcAttachType,
        path: PathBuf,
    ) -> Result<()> {
        if self.links.contains_key(&path) {
            // Held already (attached by this agent); the periodic check keeps it attached
            // and pinned.
            return Ok(());
        }
        let ifname = ifname_of(ifindex).ok_or(DatapathError::NoInterface(ifindex))?;
        let link_err = |source| DatapathError::Link {
            program: name,
            ifindex,
            source,
        };
        let fd = match PinnedLink::from_pin(&path) {
            Ok(pinned) => {
                // The pin stays in place: the link lives on through it.
                let fd: FdLink = pinned.into();
                self.swap_into(fd, ifindex, name, &ifname)?
            }
            Err(_) => {
                let fd = self.attach_new(ifindex, name, attach_type, &ifname)?;
                let pinned = fd.pin(&path).map_err(|source| DatapathError::PinLink {
                    path: path.clone(),
                    source,
                })?;
                pinned.into()
            }
        };
        let id = fd.info().map_err(link_err)?.id();
        let own = links::open_by_id(id).map_err(|io_error| {
            link_err(aya::programs::links::LinkError::SyscallError(
                aya::sys::SyscallError {
                    call: "BPF_LINK_GET_FD_BY_ID",
                    io_error,
                },
            ))
        })?;
        // `fd` is dropped here: the pin and `own` keep the link.
        self.links.insert(
            path.clone(),
            links::Held {
                fd: own,
                ifindex,
                program: name,
                attach_type,
                pin_inode: links::inode_of(&path),
            },
        );
        Ok(())
    }

    /// A new TCX link of `name` on the interface (not pinned).
    fn attach_new(
        &mut self,
        ifindex: u32,
        name: &'static str,
        attach_type: TcAttachType,
        ifname: &str,
    ) -> Result<FdLink> {
        let prog = program(&mut self.ebpf, name)?;
        let attach_err = |source| DatapathError::Attach {
            program: name,
            ifname: ifname.to_string(),
            ifindex,
            source,
        };
        let id = prog
            .attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        link.try_into().map_err(|source| DatapathError::Link {
            program: name,
            ifindex,
            source,
        })
    }

    /// Swaps this agent's `name` program into an existing link (`bpf_link_update`).
    fn swap_into(
        &mut self,
        fd: FdLink,
        ifindex: u32,
        name: &'static str,
        ifname: &str,
    ) -> Result<FdLink> {
        let prog = program(&mut self.ebpf, name)?;
        let attach_err = |source| DatapathError::Attach {
            program: name,
            ifname: ifname.to_string(),
            ifindex,
            source,
        };
        let link_err = |source| DatapathError::Link {
            program: name,
            ifindex,
            source,
        };
        let link = fd.try_into().map_err(link_err)?;
        let id = prog.attach_to_link(link).map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        link.try_into().map_err(link_err)
    }

    /// Removes the links of an interface (the interface is gone or no longer ours): their
    /// pins and the agent's own descriptors, so the kernel releases them.
    pub fn detach(&mut self, ifindex: u32) {
        for (name, _) in HOOKS {
            let path = self.link_path(ifindex, name);
            links::remove_pin(&path);
            self.links.remove(&path);
        }
    }

    /// Interfaces that have pod links (pinned, or held by this agent).
    pub fn pinned_ifindexes(&self) -> Vec<u32> {
        let mut out: Vec<u32> = std::fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name();
                let n = n.to_str()?;
                n.split_once('-')?.0.parse().ok()
            })
            .chain(
                self.links
                    .values()
                    .filter(|h| h.program != maps::PROG_TO_UPLINK)
                    .map(|h| h.ifindex),
            )
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Sums the per-CPU counters: (slot index, counter).
    pub fn counters(&self) -> Vec<(u32, Counter)> {
        let mut out = Vec::new();
        for i in 0..STATS_SLOTS {
            if let Ok(v) = self.maps.stats.get(&i, 0) {
                let mut c = Counter::default();
                for cpu in v.iter() {
                    c.packets += cpu.packets;
                    c.bytes += cpu.bytes;
                }
                if c.packets > 0 {
                    out.push((i, c));
                }
            }
        }
        out
    }

    /// The flow-event ring buffer, for the observe reader (once; `None` afterwards or when the
    /// object has none).
    pub fn take_flow_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        let map = self.ebpf.take_map(maps::FLOW_EVENTS)?;
        aya::maps::RingBuf::try_from(map)
            .map_err(|e| tracing::error!("{}: {e}", maps::FLOW_EVENTS))
            .ok()
    }

    /// Flow event counters (`EVSTAT_*` slots, summed over CPUs).
    pub fn event_counts(&self) -> [u64; 3] {
        self.per_cpu_sums(maps::EVENT_STATS)
    }

    /// The assured conntrack tier's counters (`pal_ctst_v1`): promoted, refused (the endpoint's
    /// budget or the tier was full), reaped (`CTST_*` order).
    pub fn assured_counts(&self) -> [u64; 3] {
        self.per_cpu_sums(maps::ASSURED_STATS)
    }

    /// Slots `0..N` of a pinned per-CPU u64 array, each summed over CPUs (zeros if the map
    /// cannot be read: these are reports, never decisions).
    fn per_cpu_sums<const N: usize>(&self, map: &str) -> [u64; N] {
        let mut out = [0; N];
        let Ok(md) = MapData::from_pin(self.maps_dir.join(map)) else {
            return out;
        };
        let Ok(m) = PerCpuArray::<MapData, u64>::try_from(aya::maps::Map::PerCpuArray(md)) else {
            return out;
        };
        for (slot, v) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = m.get(&(slot as u32), 0) {
                *v = per_cpu.iter().sum();
            }
        }
        out
    }

    /// The directory the maps are pinned in.
    pub fn maps_dir(&self) -> &Path {
        &self.maps_dir
    }

    /// Kernel memory of each pinned map, as the kernel accounts it ([`map_memory_bytes`]).
    pub fn map_memory(&self) -> Vec<(&'static str, u64)> {
        let names = maps::PINNED_DATA.into_iter().chain([maps::TAILS]);
        let mut out = Vec::new();
        for name in names {
            let Ok(info) = aya::maps::MapInfo::from_pin(self.maps_dir.join(name)) else {
                continue;
            };
            out.push((name, map_memory_bytes(&info).unwrap_or(0)));
        }
        out
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        self.maps
            .config
            .set(0, cfg, 0)
            .map_err(|source| DatapathError::Map {
                map: maps::CONFIG,
                op: "set",
                source,
            })
    }
}

/// Kernel memory of a map as the kernel accounts it: `memlock` in its fd's fdinfo (since
/// Linux 6.4 the map's actual usage: a preallocated hash's elements, a hash's bucket array,
/// a trie's nodes). aya's `MapInfo` does not expose it.
pub fn map_memory_bytes(info: &aya::maps::MapInfo) -> Option<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = info.fd().ok()?;
    let fdinfo =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd())).ok()?;
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Name of an interface in the agent's network namespace.
pub fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// LPM key helper.
pub fn lpm<K: aya::Pod>(prefix_len: u32, data: K) -> Key<K> {
    Key::new(prefix_len, data)
}
