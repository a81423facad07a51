//! Map names, declared once. BPF object names are at most 15 characters.
//!
//! The version suffix is part of the pinned path. A layout change bumps the suffix, so an agent
//! of one version never misreads maps pinned by another: it finds no map of its own name and
//! creates fresh ones (and the operator-visible `palisadectl status` shows both).

pub const ENDPOINTS: &str = "pal_ep_v1";
/// The generation of `pal_ep_v1` (one `u64`): every writer of `pal_ep_v1` adds one to it after
/// each change, so the programs' per-CPU copies of endpoint entries (`ep_cache`) made under
/// an older generation are never used again.
pub const EP_GEN: &str = "pal_epgen_v1";
pub const POLICY: &str = "pal_pol_v1";
pub const PORTS: &str = "pal_port_v1";
pub const CONNTRACK: &str = "pal_ct_v1";
/// The assured conntrack tier, its per-endpoint counts and its counters (`crate::assured`).
pub const ASSURED: &str = "pal_cta_v1";
pub const ASSURED_COUNT: &str = "pal_ctcnt_v1";
pub const ASSURED_STATS: &str = "pal_ctst_v1";
pub const HOST_ADDRS: &str = "pal_host_v1";
pub const FRAGMENTS: &str = "pal_frag_v1";
pub const STATS: &str = "pal_stat_v1";
pub const CONFIG: &str = "pal_cfg_v1";
pub const SERVICES: &str = "pal_svc_v1";
/// Flow events (`events`): the ring buffer, its counters, the drop-event rate limit and the
/// Service address of translated flows.
pub const FLOW_EVENTS: &str = "pal_flow_v1";
pub const EVENT_STATS: &str = "pal_evstat_v1";
pub const EVENT_LIMIT: &str = "pal_evrl_v1";
pub const SVC_FLOWS: &str = "pal_svcfl_v1";
/// Egress by domain name (`fqdn`): endpoints with name rules, their patterns, the learnt
/// addresses, the cluster DNS service's addresses, counters.
pub const FQDN_ENDPOINTS: &str = "pal_fqep_v1";
pub const FQDN_NAMES: &str = "pal_fqname_v1";
pub const FQDN_LEARNT: &str = "pal_fqaddr_v1";
pub const DNS_SERVERS: &str = "pal_dnssrv_v1";
pub const FQDN_STATS: &str = "pal_fqst_v1";
pub const FQDN_COUNTS: &str = "pal_fqcnt_v1";

/// Every pinned data map (the program array `TAILS` apart), in one list for what reports on
/// them: `/metrics` (entries, capacity, memory), the memory figures, their tests.
pub const PINNED_DATA: [&str; 22] = [
    ENDPOINTS,
    EP_GEN,
    POLICY,
    PORTS,
    HOST_ADDRS,
    SERVICES,
    CONNTRACK,
    ASSURED,
    ASSURED_COUNT,
    FRAGMENTS,
    EVENT_LIMIT,
    SVC_FLOWS,
    FQDN_ENDPOINTS,
    FQDN_NAMES,
    FQDN_LEARNT,
    FQDN_COUNTS,
    DNS_SERVERS,
    STATS,
    EVENT_STATS,
    ASSURED_STATS,
    FQDN_STATS,
    CONFIG,
];

/// Program names (ELF section function names) in the eBPF object.
pub const PROG_TO_POD: &str = "to_pod";
pub const PROG_FROM_POD: &str = "from_pod";
/// TC egress of the node's uplink: judges Service traffic translated to a remote backend.
pub const PROG_TO_UPLINK: &str = "to_uplink";
/// Returns `TC_ACT_OK` and nothing else: the fixed cost of a TC program, for the benchmarks.
/// The agent never attaches it.
pub const PROG_PASS: &str = "pass";
/// Reads a DNS answer `to_pod` passed to a pod with name rules (`fqdn`): reached by a tail
/// call from `to_pod` through `TAILS` (verified apart: the reader's loops would not fit in
/// `to_pod`'s verification). The loader puts it in `TAILS` at `TAIL_DNS_LEARN`.
pub const PROG_DNS_LEARN: &str = "dns_learn";
/// Program array of the tail calls. Pinned, so the entry outlives the agent that set it
/// (a killed agent's programs go on learning); its version changes with `Scratch`, which the
/// tail-called program reads.
pub const TAILS: &str = "pal_tail_v1";
/// The programs' per-CPU working state (`ebpf/src/maps.rs::Scratch`): not pinned, not ABI;
/// named here for the tests that look at what an evaluation left in it.
pub const SCRATCH: &str = "pal_scratch";
pub const TAIL_DNS_LEARN: u32 = 0;
pub const TAILS_MAX: u32 = 4;

/// Default capacities (`max_entries` in the eBPF object). The agent sizes the flow-state
/// tables (`pal_ct_v1`, `pal_cta_v1`, `pal_frag_v1`, `pal_evrl_v1`, `pal_svcfl_v1`) from its
/// `--max-pods` (the agent's `map_sizes::for_max_pods`, docs/datapath.md "Map sizes"); the
/// defaults below are that formula at Kubernetes' default of 110 pods (a unit test there
/// keeps them equal). `palisade-agent --map-size` may create maps of other sizes (a map
/// pinned with another size is replaced, see the agent's `datapath::layout`), so the agent's
/// applier checks every change against the loaded maps' real `max_entries`
/// (`applier::Capacity`) before writing, and reports what does not fit instead of writing
/// part of it.
///
/// Memory: an LRU hash is always preallocated (the kernel refuses `BPF_F_NO_PREALLOC` for
/// it), so its `max_entries` is paid for on an idle node (~136 B per conntrack entry). Every
/// other hash is `BPF_F_NO_PREALLOC` (its entries are allocated as written) and costs 16 B
/// per bucket (`max_entries` rounded up to a power of two) while empty; LPM tries allocate
/// per entry.
pub const ENDPOINTS_MAX: u32 = 16_384;
pub const POLICY_MAX: u32 = 1_048_576;
pub const PORTS_MAX: u32 = 262_144;
/// New, unreplied and short flows (LRU, preallocated): 128 per pod at 110 pods; a replied flow
/// moves to `pal_cta_v1` when a packet refreshes it a second on.
pub const CONNTRACK_MAX: u32 = 16_384;
/// Assured flows per node (`BPF_F_NO_PREALLOC`: memory is used per entry, not reserved):
/// 512 per pod at 110 pods.
pub const ASSURED_MAX: u32 = 65_536;
/// Endpoints with a count (ep_ids are never reused: the agent's sweep removes the counts of
/// endpoints that no longer exist).
pub const ASSURED_COUNT_MAX: u32 = ENDPOINTS_MAX;
pub const HOST_ADDRS_MAX: u32 = 256;
/// Datagrams being reassembled (LRU, preallocated): 8 per pod at 110 pods.
pub const FRAGMENTS_MAX: u32 = 1_024;
pub const SERVICES_MAX: u32 = 65_536;
/// Endpoints with name rules (`BPF_F_NO_PREALLOC`, as the two below; a hash still allocates
/// its buckets, 16 bytes per entry rounded to a power of two, so the sizes stay modest).
pub const FQDN_ENDPOINTS_MAX: u32 = 4_096;
/// Patterns of all pattern sets (LPM trie: allocated per entry).
pub const FQDN_NAMES_MAX: u32 = 65_536;
/// Learnt (endpoint, address) entries per node: the node limit (docs/fqdn.md).
pub const FQDN_LEARNT_MAX: u32 = 16_384;
pub const DNS_SERVERS_MAX: u32 = 16;
