//! The object's maps. Names and capacities come from `palisade_common::maps`; every map is
//! pinned by name (`PinningType::ByName`), so an agent that loads the object with
//! `EbpfLoader::default_map_pin_directory` reuses the maps a previous agent pinned there
//! (endpoints, policies and tracked flows survive an agent restart).
//! The meaning of each key and value is documented on its type in `palisade_common`.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key,
    },
};
use palisade_common::{
    assured::CTST_SLOTS,
    conntrack::{CtKey, CtValue, FragKey, FragValue},
    endpoint::EndpointInfo,
    events::{EVENT_LIMIT_MAX, EVSTAT_SLOTS, EventLimit, FLOW_RING_BYTES, SVC_FLOWS_MAX, SvcOrig},
    fqdn::{FQST_SLOTS, FqdnEndpoint, LearntKey, LearntValue, NameKey},
    maps::{
        ASSURED_COUNT_MAX, ASSURED_MAX, CONNTRACK_MAX, DNS_SERVERS_MAX, ENDPOINTS_MAX,
        FQDN_ENDPOINTS_MAX, FQDN_LEARNT_MAX, FQDN_NAMES_MAX, FRAGMENTS_MAX, HOST_ADDRS_MAX,
        POLICY_MAX, PORTS_MAX, SERVICES_MAX, TAILS_MAX,
    },
    policy::{PolicyKey, PolicyValue, PortKey, PortValue},
    stats::{Config, Counter, HostAddrKey, STATS_SLOTS},
};

use crate::parse::Packet;

/// `BPF_F_NO_PREALLOC`: entries are allocated as they are inserted (an idle node pays only
/// the bucket array, 16 B per entry of capacity, for the maps that have it); the kernel's
/// value for the flag. Lookups cost the same; only an insert allocates, and the programs
/// insert into none of these but `pal_cta_v1` / `pal_ctcnt_v1` (once per promoted flow).
/// LRU maps cannot have it (the kernel requires them preallocated): their size is the
/// memory they take (`palisade_common::maps`).
const NO_PREALLOC: u32 = 1;

/// Host-side veth ifindex -> endpoint. Written by the agent.
#[map(name = "pal_ep_v1")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX, NO_PREALLOC);

/// `pal_ep_v1`'s generation (`palisade_common::maps::EP_GEN`, `crate::ep_cache`). Written by
/// the agent.
#[map(name = "pal_epgen_v1")]
pub static EP_GEN: Array<u64> = Array::pinned(1, 0);

/// (policy_id, dir, family, peer prefix) -> what is allowed with that peer. Written by the agent.
#[map(name = "pal_pol_v1")]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(POLICY_MAX, 0);

/// (portset_id, proto, port prefix) -> first rule allowing it. Written by the agent.
#[map(name = "pal_port_v1")]
pub static PORTS: LpmTrie<PortKey, PortValue> = LpmTrie::pinned(PORTS_MAX, 0);

/// Tracked flows. Written by the programs; LRU so a full table evicts the idlest flow.
#[map(name = "pal_ct_v1")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CONNTRACK_MAX, 0);

/// Assured flows (`palisade_common::assured`): moved here from `pal_ct_v1` at their first
/// reply. A plain hash: nothing evicts from it.
#[map(name = "pal_cta_v1")]
pub static ASSURED: HashMap<CtKey, CtValue> = HashMap::pinned(ASSURED_MAX, NO_PREALLOC);

/// ep_id -> assured entries charged to that endpoint.
#[map(name = "pal_ctcnt_v1")]
pub static ASSURED_COUNT: HashMap<u32, u64> = HashMap::pinned(ASSURED_COUNT_MAX, NO_PREALLOC);

/// `CTST_*` counters of the assured tier.
#[map(name = "pal_ctst_v1")]
pub static ASSURED_STATS: PerCpuArray<u64> = PerCpuArray::pinned(CTST_SLOTS, 0);

/// Ports of fragmented datagrams, recorded from their first fragment.
#[map(name = "pal_frag_v1")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGMENTS_MAX, 0);

/// Addresses of this node. Written by the agent.
#[map(name = "pal_host_v1")]
pub static HOST_ADDRS: HashMap<HostAddrKey, u32> = HashMap::pinned(HOST_ADDRS_MAX, NO_PREALLOC);

/// Service addresses (ClusterIPs, external IPs, load balancer IPs): egress to them is judged
/// after translation (`palisade_common::service`). Written by the agent.
#[map(name = "pal_svc_v1")]
pub static SERVICES: HashMap<HostAddrKey, u32> = HashMap::pinned(SERVICES_MAX, NO_PREALLOC);

/// Packets and bytes per `stats_index(dir, reason)`.
#[map(name = "pal_stat_v1")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_SLOTS, 0);

/// Datapath settings (one entry). Written by the agent.
#[map(name = "pal_cfg_v1")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Flow events for the agent (`crate::events`). Not pinned: a restarted agent reads the
/// buffer of the object it loaded (its programs replace the old ones in the pinned links).
#[map(name = "pal_flow_v1")]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_RING_BYTES, 0);

/// `EVSTAT_*` counters: events emitted, lost (ring buffer full), suppressed (rate limit).
#[map(name = "pal_evstat_v1")]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(EVSTAT_SLOTS, 0);

/// Per-flow drop-event rate limit.
#[map(name = "pal_evrl_v1")]
pub static EVENT_LIMIT: LruHashMap<CtKey, EventLimit> = LruHashMap::pinned(EVENT_LIMIT_MAX, 0);

/// Service address of a client's new flow, for the event of its judgement after translation.
#[map(name = "pal_svcfl_v1")]
pub static SVC_FLOWS: LruHashMap<CtKey, SvcOrig> = LruHashMap::pinned(SVC_FLOWS_MAX, 0);

/// Endpoints with name rules (`palisade_common::fqdn`). Written by the agent.
#[map(name = "pal_fqep_v1")]
pub static FQDN_ENDPOINTS: HashMap<u32, FqdnEndpoint> =
    HashMap::pinned(FQDN_ENDPOINTS_MAX, NO_PREALLOC);

/// (pattern set, encoded name) -> rule mask. Written by the agent.
#[map(name = "pal_fqname_v1")]
pub static FQDN_NAMES: LpmTrie<NameKey, u32> = LpmTrie::pinned(FQDN_NAMES_MAX, 0);

/// (endpoint, address) -> until when, through which name rules. Written by the programs
/// (`crate::fqdn`); expired entries deleted by the agent.
#[map(name = "pal_fqaddr_v1")]
pub static FQDN_LEARNT: HashMap<LearntKey, LearntValue> =
    HashMap::pinned(FQDN_LEARNT_MAX, NO_PREALLOC);

/// The cluster DNS service's addresses. Written by the agent.
#[map(name = "pal_dnssrv_v1")]
pub static DNS_SERVERS: HashMap<HostAddrKey, u32> = HashMap::pinned(DNS_SERVERS_MAX, 0);

/// Tail calls (`palisade_common::maps::TAILS`): `TAIL_DNS_LEARN` -> `dns_learn`. Set by the
/// loader.
#[map(name = "pal_tail_v1")]
pub static TAILS: ProgramArray = ProgramArray::pinned(TAILS_MAX, 0);

/// Learnt entries per endpoint (the per-pod limit): incremented here when an entry is added,
/// recounted by the agent's sweep.
#[map(name = "pal_fqcnt_v1")]
pub static FQDN_COUNTS: HashMap<u32, u64> = HashMap::pinned(FQDN_ENDPOINTS_MAX, NO_PREALLOC);

/// `FQST_*` counters.
#[map(name = "pal_fqst_v1")]
pub static FQDN_STATS: PerCpuArray<u64> = PerCpuArray::pinned(FQST_SLOTS, 0);

/// Per-CPU scratch space for the packet being evaluated. Not part of the ABI and not pinned.
/// It keeps the large structures off the 512-byte BPF stack, and the verifier does not track
/// map memory contents per path, which keeps verification short.
#[repr(C)]
pub struct Scratch {
    /// This CPU's coarse clock, read once per jiffy (`crate::clock`).
    pub clock: crate::clock::Clock,
    pub ep: EndpointInfo,
    pub pkt: Packet,
    pub key: CtKey,
}

#[map(name = "pal_scratch")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space of the DNS answer reader (`crate::fqdn`). Not part of the ABI and not
/// pinned.
#[repr(C)]
pub struct FqScratch {
    /// Offsets of the question's labels.
    pub labels: [u16; crate::fqdn::MAX_LABELS],
    /// The question, as a `pal_fqname_v1` lookup key.
    pub key: Key<NameKey>,
    /// Room for a label copied at the end of `key` as far as the verifier can tell (it knows
    /// the position and the label's length apart, not their sum).
    pub slack: [u8; 64],
}

#[map(name = "pal_fqscr")]
pub static FQ_SCRATCH: PerCpuArray<FqScratch> = PerCpuArray::with_max_entries(1, 0);
