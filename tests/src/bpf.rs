//! Loading the datapath object, seeding its maps, running crafted frames through it
//! (`BPF_PROG_TEST_RUN`) and attaching it to a veth.
//!
//! Tier 1 (no namespace): [`Datapath::load`] loads `target/bpf/palisade.bpf.o` through the
//! agent's own loader (`palisade_agent::datapath::object`) with its maps pinned in a private
//! bpffs instance ([`BpffsMount`], unmounted on drop), so parallel tests never share a map. [`Datapath::run`] runs `to_pod`/`from_pod` on a frame and returns the
//! TC action and the reason the program counted. `BPF_PROG_TEST_RUN` without a context runs
//! the program on an skb whose device is the caller's loopback (the kernel's
//! `bpf_prog_test_run_skb` only looks a device up when `ctx_in.ifindex > 1`), so
//! `skb->ifindex` is [`TEST_RUN_IFINDEX`]: seed the endpoint under that key.
//!
//! Tier 2: [`attach_pod_programs`] attaches both programs to a host-side veth inside a
//! network namespace, with the same hooks as the agent. It is not the agent's attach
//! (`palisade_agent::datapath::Datapath::attach`) because that one belongs to the agent's
//! `Datapath`, which takes the typed maps out of the object (the harness reads and writes
//! every map by name) and pins each link under its bpffs so that it outlives the process (a
//! test's links must go with the test's object), and it names interfaces in the caller's
//! namespace (the harness attaches from a thread inside the node's). The agent's attach is
//! proven by the lab tests, which run the agent itself.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions},
};
use palisade_agent::map_sizes::MapSizes;
use palisade_common::{
    DIR_EGRESS, DIR_INGRESS,
    conntrack::{CtKey, CtValue},
    endpoint::EndpointInfo,
    events::{EVSTAT_SLOTS, EventLimit, FlowEvent},
    maps::{self, PROG_DNS_LEARN, PROG_FROM_POD, PROG_PASS, PROG_TO_POD, PROG_TO_UPLINK},
    policy::{PolicyKey, PolicyValue, PortKey, PortValue},
    stats::{Config, Counter, HostAddrKey, stats_index},
    verdict::Reason,
};

/// `skb->ifindex` seen by a program run through `BPF_PROG_TEST_RUN` without a context: the
/// loopback device of the caller's namespace.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// TC actions the programs return.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

/// A private bpffs instance mounted on a temporary directory; unmounted (lazily, so an open
/// pin never blocks it) and removed on drop.
pub struct BpffsMount {
    dir: tempfile::TempDir,
}

impl BpffsMount {
    /// Mounts a fresh instance on `<tmp>/pltbpf<pid>x<random>`, after unmounting instances
    /// left by test processes that died.
    pub fn new() -> Result<Self> {
        sweep_stale_bpffs();
        let dir = tempfile::Builder::new()
            .prefix(&format!(
                "{}{BPFFS_TAG}{}x",
                crate::TEST_PREFIX,
                std::process::id()
            ))
            .tempdir()
            .context("creating a temp dir for bpffs")?;
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs on {}", dir.path().display()))?;
        Ok(BpffsMount { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

const BPFFS_TAG: &str = "bpf";

/// Unmounts and removes `<tmp>/pltbpf<pid>x*` bpffs mounts whose process is gone.
fn sweep_stale_bpffs() {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let tmp = std::env::temp_dir();
    let prefix = format!("{}{BPFFS_TAG}", crate::TEST_PREFIX);
    for line in mountinfo.lines() {
        // Field 5 is the mount point; the filesystem type follows the " - " separator.
        let Some(mount_point) = line.split(' ').nth(4) else {
            continue;
        };
        if !line.contains(" - bpf ") {
            continue;
        }
        let path = Path::new(mount_point);
        if path.parent() != Some(tmp.as_path()) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("sweeping stale bpffs {mount_point}");
        if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting {mount_point}: {e}");
            continue;
        }
        if let Err(e) = std::fs::remove_dir(path) {
            eprintln!("removing {mount_point}: {e}");
        }
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting bpffs {}: {e}", self.dir.path().display());
        }
    }
}

/// Which program a frame runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    /// `to_pod`, `DIR_INGRESS`.
    ToPod,
    /// `from_pod`, `DIR_EGRESS`.
    FromPod,
    /// `to_uplink`: judges only Service traffic after translation, as `DIR_EGRESS`.
    ToUplink,
}

impl Prog {
    pub fn name(self) -> &'static str {
        match self {
            Prog::ToPod => PROG_TO_POD,
            Prog::FromPod => PROG_FROM_POD,
            Prog::ToUplink => PROG_TO_UPLINK,
        }
    }
    pub fn dir(self) -> u8 {
        match self {
            Prog::ToPod => DIR_INGRESS,
            Prog::FromPod | Prog::ToUplink => DIR_EGRESS,
        }
    }
}

/// What a program run returned: the TC action and the reason it counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub reason: Reason,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.action == TC_ACT_OK
    }
}

/// The loaded object with both programs loaded into the kernel (verified) and its maps.
/// Field order matters: the object (maps, programs) is dropped before the bpffs it pins in.
pub struct Datapath {
    pub ebpf: Ebpf,
    pins: BpffsMount,
}

/// Smaller preallocated tables than production, so parallel tests stay light.
pub const TEST_CT_ENTRIES: u32 = 4096;
const TEST_FRAG_ENTRIES: u32 = 1024;

impl Datapath {
    /// Loads the object at [`crate::bpf_object`] with maps pinned in a fresh private bpffs.
    pub fn load() -> Result<Self> {
        let pins = BpffsMount::new()?;
        Self::load_pinned(pins)
    }

    /// Loads the object pinning its maps in `pins` (maps already pinned there are reused, as
    /// across agent restarts), through the agent's own loader
    /// ([`palisade_agent::datapath::object::load`]: same pinning, same layout check of pinned
    /// maps, sizes set the way `--map-size` sets them). Unlike the agent's
    /// [`palisade_agent::datapath::Datapath::open`] it attaches nothing, starts no logger and
    /// leaves the maps in the object: a tier-1 test runs the programs on crafted frames and
    /// reads or writes any map by name.
    pub fn load_pinned(pins: BpffsMount) -> Result<Self> {
        let object = crate::bpf_object();
        let sizes = MapSizes::new([
            (maps::CONNTRACK.to_string(), TEST_CT_ENTRIES),
            (maps::FRAGMENTS.to_string(), TEST_FRAG_ENTRIES),
        ]);
        let loaded = palisade_agent::datapath::object::load(
            &object,
            pins.path(),
            &sizes,
            &[
                PROG_TO_POD,
                PROG_FROM_POD,
                PROG_TO_UPLINK,
                PROG_PASS,
                PROG_DNS_LEARN,
            ],
        )
        .with_context(|| {
            format!(
                "loading {} (built by `cargo xtask build-ebpf`)",
                object.display()
            )
        })?;
        Ok(Datapath {
            ebpf: loaded.ebpf,
            pins,
        })
    }

    /// The bpffs the maps are pinned in.
    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// The agent's own typed maps ([`palisade_agent::datapath::Maps`]), opened again from
    /// this object's pins: the agent's one `MapOps` implementation
    /// ([`palisade_agent::datapath_ops::Ops`]) then writes the maps these programs read, so a
    /// test drives the agent's write path rather than a copy of it.
    pub fn agent_maps(&self) -> Result<palisade_agent::datapath::Maps> {
        fn open<T>(dir: &Path, name: &str) -> Result<T>
        where
            T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
        {
            let data = MapData::from_pin(dir.join(name))
                .with_context(|| format!("opening the pinned map {name}"))?;
            let map = aya::maps::Map::from_map_data(data)
                .with_context(|| format!("reading the type of {name}"))?;
            T::try_from(map).with_context(|| format!("{name} has an unexpected type"))
        }
        let dir = self.pin_dir();
        Ok(palisade_agent::datapath::Maps {
            endpoints: open(dir, maps::ENDPOINTS)?,
            policy: open(dir, maps::POLICY)?,
            ports: open(dir, maps::PORTS)?,
            hosts: open(dir, maps::HOST_ADDRS)?,
            conntrack: open(dir, maps::CONNTRACK)?,
            assured: open(dir, maps::ASSURED)?,
            stats: open(dir, maps::STATS)?,
            config: open(dir, maps::CONFIG)?,
            services: open(dir, maps::SERVICES)?,
            fqdn_endpoints: open(dir, maps::FQDN_ENDPOINTS)?,
            fqdn_names: open(dir, maps::FQDN_NAMES)?,
            dns_servers: open(dir, maps::DNS_SERVERS)?,
        })
    }

    /// Unloads the object and hands back its bpffs (with the pinned maps still in it).
    pub fn into_pins(self) -> BpffsMount {
        let Datapath { ebpf, pins } = self;
        drop(ebpf);
        pins
    }

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
        let mut m: HashMap<&mut MapData, u32, EndpointInfo> =
            HashMap::try_from(self.map_mut(maps::ENDPOINTS)?)?;
        m.insert(ifindex, ep, 0).context("writing pal_ep_v1")?;
        Ok(())
    }

    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, EndpointInfo> =
            HashMap::try_from(self.map_mut(maps::ENDPOINTS)?)?;
        m.remove(&ifindex).context("deleting from pal_ep_v1")?;
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

    fn packet_counts(&self, dir: u8) -> Result<Vec<u64>> {
        Reason::ALL
            .iter()
            .map(|r| self.counter(dir, *r).map(|c| c.packets))
            .collect()
    }

    /// Runs `frame` through `prog` once: the returned TC action, and the one reason whose
    /// counter moved (an error if none or several did).
    pub fn run(&self, prog: Prog, frame: &[u8]) -> Result<Outcome> {
        let before = self.packet_counts(prog.dir())?;
        let action = self.run_raw(prog, frame)?;
        let after = self.packet_counts(prog.dir())?;
        let moved: Vec<Reason> = Reason::ALL
            .iter()
            .zip(before.iter().zip(after.iter()))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, _)| *r)
            .collect();
        match moved.as_slice() {
            [reason] => Ok(Outcome {
                action,
                reason: *reason,
            }),
            _ => bail!(
                "{} counted {:?} for one frame (action {action})",
                prog.name(),
                moved.iter().map(|r| r.name()).collect::<Vec<_>>()
            ),
        }
    }

    /// Runs `frame` through `prog` once and returns the TC action only.
    pub fn run_raw(&self, prog: Prog, frame: &[u8]) -> Result<u32> {
        let p: &SchedClassifier = self
            .ebpf
            .program(prog.name())
            .ok_or_else(|| anyhow!("program {} missing", prog.name()))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let res = p
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.name()))?;
        Ok(res.return_value)
    }

    /// Runs `frame` through `prog` once on an skb with `mark` and `ingress_ifindex` set (the
    /// kernel copies both from the test run's `__sk_buff` context): the TC action and the
    /// mark the program left.
    pub fn run_with_mark(
        &self,
        prog: Prog,
        frame: &[u8],
        mark: u32,
        ingress_ifindex: u32,
    ) -> Result<(u32, u32)> {
        let p: &SchedClassifier = self
            .ebpf
            .program(prog.name())
            .ok_or_else(|| anyhow!("program {} missing", prog.name()))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        // `struct __sk_buff` up to and including `ifindex`: mark at byte 8,
        // ingress_ifindex at 36; every other field zero, as the kernel requires.
        let mut ctx = [0u8; 44];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        // The kernel copies the whole `__sk_buff` back (ENOSPC if the buffer is smaller).
        let mut ctx_out = [0u8; 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        };
        let res = p
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.name()))?;
        let out_mark = u32::from_ne_bytes([ctx_out[8], ctx_out[9], ctx_out[10], ctx_out[11]]);
        Ok((res.return_value, out_mark))
    }

    /// Runs `frame` through `prog` `repeat` times in the kernel and returns the mean time
    /// of one run, as `BPF_PROG_TEST_RUN` measures it.
    pub fn time_per_run(&self, prog: Prog, frame: &[u8], repeat: u32) -> Result<Duration> {
        self.time_named(prog.name(), frame, repeat)
    }

    /// [`Self::time_per_run`] of the object's empty `pass` program (returns `TC_ACT_OK`,
    /// counts nothing): the fixed cost of a TC program, for `cargo xtask bench prog`.
    pub fn pass_time_per_run(&self, frame: &[u8], repeat: u32) -> Result<Duration> {
        self.time_named(PROG_PASS, frame, repeat)
    }

    fn time_named(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Duration> {
        let p: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let res = p
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?;
        Ok(res.duration)
    }

    /// (verified instructions, translated bytes) of a loaded program, as the kernel reports.
    pub fn program_size(&self, prog: Prog) -> Result<(Option<u32>, Option<u32>)> {
        let p: &SchedClassifier = self
            .ebpf
            .program(prog.name())
            .ok_or_else(|| anyhow!("program {} missing", prog.name()))?
            .try_into()?;
        let info = p.info()?;
        Ok((info.verified_instruction_count(), info.size_translated()))
    }
}

/// Attaches `to_pod` (TC egress) and `from_pod` (TC ingress) of a loaded [`Datapath`] object
/// to the host-side veth `host_veth`, which lives in the network namespace at `netns`
/// (`/run/netns/<name>`, or `/proc/<pid>/ns/net`).
///
/// The attachment runs on a fresh OS thread that enters `netns` and exits afterwards, so the
/// caller's namespace is untouched. On Linux >= 6.6 aya attaches through TCX links (no
/// qdisc needed): the links belong to the programs, are detached when `ebpf` is dropped, and
/// dropping them does not depend on the dropping thread's namespace. On older kernels aya
/// falls back to netlink, which needs the `clsact` qdisc, added here first.
pub fn attach_pod_programs(ebpf: &mut Ebpf, netns: &Path, host_veth: &str) -> Result<()> {
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let netns_shown = netns.display().to_string();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {netns_shown}"))?;
            let tcx = aya::util::KernelVersion::current()
                .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                .unwrap_or(false);
            if !tcx {
                aya::programs::tc::qdisc_add_clsact(host_veth)
                    .with_context(|| format!("adding clsact to {host_veth}"))?;
            }
            for (name, hook) in [
                (PROG_TO_POD, TcAttachType::Egress),
                (PROG_FROM_POD, TcAttachType::Ingress),
            ] {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .ok_or_else(|| anyhow!("program {name} missing"))?
                    .try_into()?;
                prog.attach(host_veth, hook)
                    .with_context(|| format!("attaching {name} to {host_veth} {hook:?}"))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("attach thread panicked"))?
    })
}

/// Crafting frames. Checksums are left zero: the datapath never checks them.
pub mod frame {
    use palisade_common::packet::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6};

    pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    /// Ethernet frame around `payload`.
    pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&GW_MAC);
        f.extend_from_slice(&POD_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        h
    }
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_ACK: u8 = 0x10;
    pub const TCP_FIN: u8 = 0x01;

    pub fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
        let mut h = vec![0u8; 8 + payload_len];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        h
    }

    pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
        let mut h = vec![0u8; 12];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h
    }

    /// ICMP (`v6 == false`) or ICMPv6 echo request/reply.
    pub fn echo(v6: bool, request: bool, id: u16) -> Vec<u8> {
        let ty = match (v6, request) {
            (false, true) => 8,
            (false, false) => 0,
            (true, true) => 128,
            (true, false) => 129,
        };
        let mut h = vec![ty, 0, 0, 0];
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&1u16.to_be_bytes());
        h
    }

    /// ICMP/ICMPv6 message of `ty` whose body is `embedded` (an IP packet for errors).
    pub fn icmp(ty: u8, code: u8, embedded: &[u8]) -> Vec<u8> {
        let mut h = vec![ty, code, 0, 0, 0, 0, 0, 0];
        h.extend_from_slice(embedded);
        h
    }

    /// IPv4 header fields that tests vary.
    #[derive(Clone, Debug)]
    pub struct V4 {
        pub src: [u8; 4],
        pub dst: [u8; 4],
        pub proto: u8,
        pub id: u16,
        /// Fragment offset in 8-byte units.
        pub frag_offset: u16,
        pub more_fragments: bool,
        /// IHL in 32-bit words (5 without options).
        pub ihl: u8,
        /// Overrides the computed total length.
        pub total_len: Option<u16>,
    }

    impl V4 {
        pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> Self {
            V4 {
                src,
                dst,
                proto,
                id: 0x1234,
                frag_offset: 0,
                more_fragments: false,
                ihl: 5,
                total_len: None,
            }
        }

        /// The IPv4 packet (no Ethernet header) carrying `l4`.
        pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
            let hlen = (self.ihl.max(5) as usize) * 4;
            let mut h = vec![0u8; hlen];
            h[0] = 0x40 | (self.ihl & 0x0f);
            let total = self.total_len.unwrap_or((hlen + l4.len()) as u16);
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[4..6].copy_from_slice(&self.id.to_be_bytes());
            let frag = (self.frag_offset & 0x1fff) | if self.more_fragments { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&frag.to_be_bytes());
            h[8] = 64;
            h[9] = self.proto;
            h[12..16].copy_from_slice(&self.src);
            h[16..20].copy_from_slice(&self.dst);
            h.extend_from_slice(l4);
            h
        }

        /// The Ethernet frame carrying `l4`.
        pub fn frame(&self, l4: &[u8]) -> Vec<u8> {
            eth(ETH_P_IP, &self.packet(l4))
        }
    }

    /// An IPv6 extension header: `kind` is its protocol number (0 hop-by-hop, 43 routing,
    /// 60 destination options, 51 AH); `len8` its length in 8-byte units beyond the first.
    #[derive(Clone, Copy, Debug)]
    pub struct Ext {
        pub kind: u8,
        pub len8: u8,
    }

    /// IPv6 fragment header fields.
    #[derive(Clone, Copy, Debug)]
    pub struct V6Frag {
        pub offset: u16,
        pub more: bool,
        pub id: u32,
    }

    #[derive(Clone, Debug)]
    pub struct V6 {
        pub src: [u8; 16],
        pub dst: [u8; 16],
        pub proto: u8,
        pub ext: Vec<Ext>,
        /// A fragment header after `ext`.
        pub frag: Option<V6Frag>,
        /// Overrides the computed payload length.
        pub payload_len: Option<u16>,
    }

    impl V6 {
        pub fn new(src: [u8; 16], dst: [u8; 16], proto: u8) -> Self {
            V6 {
                src,
                dst,
                proto,
                ext: Vec::new(),
                frag: None,
                payload_len: None,
            }
        }

        pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
            // Chain: ext..., [fragment], upper layer.
            let mut kinds: Vec<u8> = self.ext.iter().map(|e| e.kind).collect();
            if self.frag.is_some() {
                kinds.push(44);
            }
            kinds.push(self.proto);
            let mut body = Vec::new();
            for (i, e) in self.ext.iter().enumerate() {
                let next = kinds[i + 1];
                let (len_field, total) = if e.kind == 51 {
                    // AH: length in 4-byte units minus 2.
                    let total = 8 * (e.len8 as usize + 1);
                    ((total / 4 - 2) as u8, total)
                } else {
                    (e.len8, 8 * (e.len8 as usize + 1))
                };
                let mut h = vec![0u8; total];
                h[0] = next;
                h[1] = len_field;
                body.extend_from_slice(&h);
            }
            if let Some(f) = self.frag {
                let mut h = vec![0u8; 8];
                h[0] = self.proto;
                let fo = (f.offset << 3) | u16::from(f.more);
                h[2..4].copy_from_slice(&fo.to_be_bytes());
                h[4..8].copy_from_slice(&f.id.to_be_bytes());
                body.extend_from_slice(&h);
            }
            body.extend_from_slice(l4);
            let mut p = vec![0u8; 40];
            p[0] = 0x60;
            let plen = self.payload_len.unwrap_or(body.len() as u16);
            p[4..6].copy_from_slice(&plen.to_be_bytes());
            p[6] = kinds[0];
            p[7] = 64;
            p[8..24].copy_from_slice(&self.src);
            p[24..40].copy_from_slice(&self.dst);
            p.extend_from_slice(&body);
            p
        }

        pub fn frame(&self, l4: &[u8]) -> Vec<u8> {
            eth(ETH_P_IPV6, &self.packet(l4))
        }
    }

    /// An ARP request from `sender` asking for `target`.
    pub fn arp(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        a.extend_from_slice(&POD_MAC);
        a.extend_from_slice(&sender);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target);
        eth(ETH_P_ARP, &a)
    }

    /// An IPv6 neighbour solicitation (ICMPv6 type 135) from `src`.
    pub fn neighbour_solicitation(src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
        let mut body = vec![0u8; 4];
        body.extend_from_slice(&target);
        let l4 = icmp(135, 0, &body);
        let dst = [
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, target[13], target[14], target[15],
        ];
        V6::new(src, dst, IPPROTO_ICMPV6).frame(&l4)
    }

    /// Shorthand: an IPv4 frame with an ICMP echo request.
    pub fn ping4(src: [u8; 4], dst: [u8; 4], id: u16) -> Vec<u8> {
        V4::new(src, dst, IPPROTO_ICMP).frame(&echo(false, true, id))
    }
}

/// `bpf_ktime_get_ns()` as user space sees it (`CLOCK_MONOTONIC`), to stage conntrack ages.
pub fn ktime_now_ns() -> Result<u64> {
    clock_ns(libc::CLOCK_MONOTONIC).context("clock_gettime(CLOCK_MONOTONIC)")
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of the datapath's stamps (`ebpf/src/clock.rs`).
pub fn coarse_now_ns() -> Result<u64> {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE).context("clock_gettime(CLOCK_MONOTONIC_COARSE)")
}

fn clock_ns(clock: libc::clockid_t) -> std::io::Result<u64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

/// `bpf(cmd, attr)` for the few commands aya has no public call for; returns the result
/// (a new descriptor for the commands that make one).
fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A, what: &str) -> Result<i64> {
    // SAFETY: `attr` is a valid, initialised `union bpf_attr` prefix for `cmd`, and every
    // pointer it holds outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(rc)
}

/// `union bpf_attr` for BPF_OBJ_GET / BPF_OBJ_PIN.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

fn owned(fd: i64) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// Creates a map with exactly this layout (`BPF_MAP_CREATE`) and pins it at `path`: a map as
/// another build or version of Palisade could have left it.
pub fn create_pinned_map(
    path: &Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let mut create = CreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
    };
    let fd = owned(sys_bpf(BPF_MAP_CREATE, &mut create, "BPF_MAP_CREATE")?);
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut pin = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    sys_bpf(
        BPF_OBJ_PIN,
        &mut pin,
        &format!("BPF_OBJ_PIN {}", path.display()),
    )?;
    Ok(())
}

/// Detaches the link pinned at `path` as another root process could (`bpftool link detach`):
/// `BPF_OBJ_GET` then `BPF_LINK_DETACH`. The link object lives on, attached to nothing.
pub fn detach_pinned_link(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct DetachAttr {
        link_fd: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut get = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = owned(sys_bpf(
        BPF_OBJ_GET,
        &mut get,
        &format!("BPF_OBJ_GET {}", path.display()),
    )?);
    let mut detach = DetachAttr {
        link_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
    };
    sys_bpf(
        BPF_LINK_DETACH,
        &mut detach,
        &format!("BPF_LINK_DETACH {}", path.display()),
    )?;
    Ok(())
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
