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
//!
//! The parts: [`BpffsMount`] (`bpffs.rs`); the map accessors of [`Datapath`] (`map_access.rs`);
//! running frames, timing and sizing the programs (`run.rs`); [`frame`], the frame builder;
//! the clocks of the datapath's stamps (`clock.rs`); raw `bpf(2)` calls on pinned objects
//! (`syscalls.rs`). This file loads the object and attaches it.

mod bpffs;
mod clock;
pub mod frame;
mod map_access;
mod run;
mod syscalls;

pub use bpffs::BpffsMount;
pub use clock::{coarse_now_ns, ktime_now_ns};
pub use map_access::RingWaiter;
pub use syscalls::{create_pinned_map, detach_pinned_link};

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::MapData,
    programs::{SchedClassifier, TcAttachType},
};
use palisade_agent::map_sizes::MapSizes;
use palisade_common::{
    DIR_EGRESS, DIR_INGRESS,
    maps::{self, PROG_DNS_LEARN, PROG_FROM_POD, PROG_PASS, PROG_TO_POD, PROG_TO_UPLINK},
    verdict::Reason,
};

/// `skb->ifindex` seen by a program run through `BPF_PROG_TEST_RUN` without a context: the
/// loopback device of the caller's namespace.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// TC actions the programs return.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

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
            ep_gen: open(dir, maps::EP_GEN)?,
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
