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

use std::io;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use palisade_common::conntrack::{CtKey, CtValue};
use palisade_common::endpoint::EndpointInfo;
use palisade_common::maps;
use palisade_common::policy::{PolicyKey, PolicyValue, PortKey, PortValue};
use palisade_common::service::SvcAddrKey;
use palisade_common::stats::{Config, Counter, HostAddrKey, STATS_SLOTS};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
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
    pub policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    pub ports: LpmTrie<MapData, PortKey, PortValue>,
    pub hosts: HashMap<MapData, HostAddrKey, u32>,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub config: aya::maps::Array<MapData, Config>,
    pub services: HashMap<MapData, SvcAddrKey, u32>,
}

pub struct Datapath {
    ebpf: Ebpf,
    // Kept alive: dropping the logger closes the log map (aya-log 0.3).
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    maps_dir: PathBuf,
    links_dir: PathBuf,
    uplink_links_dir: PathBuf,
    pub maps: Maps,
}

const HOOKS: [(&str, TcAttachType); 2] = [
    // Packets leaving the pod enter the host-side veth: its TC ingress.
    (maps::PROG_FROM_POD, TcAttachType::Ingress),
    // Packets going to the pod leave through the host-side veth: its TC egress.
    (maps::PROG_TO_POD, TcAttachType::Egress),
];

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DatapathError::MapType { name, source })
}

impl Datapath {
    /// Loads the object, reusing maps already pinned under `bpffs/maps` (adopting a previous
    /// agent's state) and pinning new ones there.
    pub fn open(object: &Path, bpffs: &Path) -> Result<Self> {
        let maps_dir = bpffs.join("maps");
        let links_dir = bpffs.join("links");
        let uplink_links_dir = links_dir.join("uplink");
        for d in [&maps_dir, &links_dir, &uplink_links_dir] {
            std::fs::create_dir_all(d).map_err(|source| DatapathError::PinDir {
                path: d.clone(),
                source,
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load_file(object)
            .map_err(|source| DatapathError::Load {
                path: object.to_path_buf(),
                source: Box::new(source),
            })?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("no eBPF logger: {e}");
                None
            }
        };
        for name in HOOKS.iter().map(|h| h.0).chain([maps::PROG_TO_UPLINK]) {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()
                .map_err(|source| DatapathError::LoadProgram { name, source })?;
            prog.load()
                .map_err(|source| DatapathError::LoadProgram { name, source })?;
        }
        let maps = Maps {
            endpoints: take(&mut ebpf, maps::ENDPOINTS)?,
            policy: take(&mut ebpf, maps::POLICY)?,
            ports: take(&mut ebpf, maps::PORTS)?,
            hosts: take(&mut ebpf, maps::HOST_ADDRS)?,
            conntrack: take(&mut ebpf, maps::CONNTRACK)?,
            stats: take(&mut ebpf, maps::STATS)?,
            config: take(&mut ebpf, maps::CONFIG)?,
            services: take(&mut ebpf, maps::SERVICES)?,
        };
        Ok(Datapath {
            ebpf,
            _logger: logger,
            maps_dir,
            links_dir,
            uplink_links_dir,
            maps,
        })
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
            if !keep.contains(&ifindex)
                && let Err(err) = std::fs::remove_file(e.path())
            {
                tracing::warn!("removing link pin {}: {err}", e.path().display());
            }
        }
    }

    fn attach_one(
        &mut self,
        ifindex: u32,
        name: &'static str,
        attach_type: TcAttachType,
        path: PathBuf,
    ) -> Result<()> {
        let ifname = ifname_of(ifindex).ok_or(DatapathError::NoInterface(ifindex))?;
        {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()
                .map_err(|source| DatapathError::LoadProgram { name, source })?;
            let attach_err = |source| DatapathError::Attach {
                program: name,
                ifname: ifname.clone(),
                ifindex,
                source,
            };
            match PinnedLink::from_pin(&path) {
                Ok(pinned) => {
                    // The pin stays in place: the link lives on through it.
                    let fd: FdLink = pinned.into();
                    let link = fd.try_into().map_err(|source| DatapathError::Link {
                        program: name,
                        ifindex,
                        source,
                    })?;
                    let id = prog.attach_to_link(link).map_err(attach_err)?;
                    // Dropping our handle only closes our fd; the pin keeps the link.
                    drop(prog.take_link(id).map_err(attach_err)?);
                }
                Err(_) => {
                    let id = prog
                        .attach_with_options(
                            &ifname,
                            attach_type,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(attach_err)?;
                    let link = prog.take_link(id).map_err(attach_err)?;
                    let fd: FdLink = link.try_into().map_err(|source| DatapathError::Link {
                        program: name,
                        ifindex,
                        source,
                    })?;
                    fd.pin(&path)
                        .map_err(|source| DatapathError::PinLink { path, source })?;
                }
            }
        }
        Ok(())
    }

    /// Removes the pinned links of an interface (the interface is gone or no longer ours).
    pub fn detach(&mut self, ifindex: u32) {
        for (name, _) in HOOKS {
            let path = self.link_path(ifindex, name);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!("removing link pin {}: {e}", path.display());
            }
        }
    }

    /// Interfaces that have pinned links (attached by this or an earlier agent).
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

    /// Kernel memory of each pinned map, as the kernel accounts it (`memlock` in the map fd's
    /// fdinfo; since Linux 6.4 this is the map's actual usage, e.g. the trie's nodes).
    pub fn map_memory(&self) -> Vec<(&'static str, u64)> {
        use std::os::fd::{AsFd, AsRawFd};
        let names = [
            maps::ENDPOINTS,
            maps::POLICY,
            maps::PORTS,
            maps::CONNTRACK,
            maps::FRAGMENTS,
            maps::HOST_ADDRS,
            maps::STATS,
            maps::CONFIG,
            maps::SERVICES,
        ];
        let mut out = Vec::new();
        for name in names {
            let Ok(info) = aya::maps::MapInfo::from_pin(self.maps_dir.join(name)) else {
                continue;
            };
            let Ok(fd) = info.fd() else { continue };
            let fdinfo = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            let bytes = std::fs::read_to_string(&fdinfo)
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("memlock:").map(|v| v.trim().parse().ok()))
                        .flatten()
                })
                .unwrap_or(0);
            out.push((name, bytes));
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
