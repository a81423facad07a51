//! Flow events: one record per datapath *decision*, from the TC programs to the agent.
//!
//! - `pal_flow_v1` (ring buffer, not pinned): `FlowEvent` records. Written by the TC programs
//!   (`bpf_ringbuf_reserve` + submit, never waiting: when the buffer is full the event is
//!   dropped and counted), read by the agent (`agent/src/observe`), which turns numbers into
//!   names. Emitted for: the first packet of every new flow (allowed or denied), every dropped
//!   packet (at most one event per flow per `EVENT_DROP_INTERVAL_NS`; the next event of that
//!   flow says how many were suppressed), and every audit verdict. Packets of tracked flows,
//!   host traffic (`HOST`, untracked: per packet it would flood) and neighbour discovery emit
//!   nothing.
//! - `pal_evstat_v1` (per-CPU array, pinned): `EVSTAT_*` counters (u64), summed by the agent.
//! - `pal_evrl_v1` (LRU hash, pinned): per-flow drop-event rate limit. Key: `CtKey` of the
//!   dropped packet (its own tuple; the endpoint's interface index in `ep_id` when there is no
//!   endpoint); value `EventLimit`. Written and read by the TC programs only.
//! - `pal_svcfl_v1` (LRU hash, pinned): the Service address a client's new flow was sent to,
//!   so that the event of its judgement after translation names both the Service and the
//!   backend. Key: `CtKey` of the untranslated flow at the client's `from_pod` with the
//!   destination address and port zeroed; value `SvcOrig`. Written by `from_pod`, read by
//!   `to_pod` / `to_uplink` (only when they emit an event).
//!
//! Events are off when `pal_cfg_v1` has `CFG_NO_FLOW_EVENTS` (for `cargo xtask bench`).

/// `FlowEvent.verdict`. Names and meanings follow Hubble's `Verdict`.
pub const VERDICT_FORWARDED: u8 = 1;
pub const VERDICT_DROPPED: u8 = 2;
/// The packet passed, but the enforced and audited policies together would have dropped it.
pub const VERDICT_AUDIT: u8 = 3;

/// `FlowEvent.flags`: the packet is a reply of a tracked flow (`POLICY_CHANGED` drops), or
/// of the flow restored by it (`CT_RESTORED`): the rule named is that flow's, in the other
/// direction, on the packet's source port.
pub const EV_REPLY: u8 = 1 << 0;
/// `svc_addr_be` / `svc_port_be` hold the Service address the client sent this flow to (the
/// event is its judgement after translation, or, at a client whose egress is not isolated,
/// the untranslated flow itself).
pub const EV_SERVICE: u8 = 1 << 1;
/// Judged as the sender's egress after translation (`to_pod` of a backend, `to_uplink`).
pub const EV_DEFERRED: u8 = 1 << 2;
/// The packet's L3/L4 headers were not (fully) parsed (`NO_ENDPOINT`, `UNKNOWN_L3`,
/// `BAD_HEADER`, ...): the tuple may be partly or wholly zero.
pub const EV_PARTIAL: u8 = 1 << 3;
/// A DNS answer to a pod with `domainNames` rules that taught nothing because it does not
/// come from the cluster DNS service (`pal_dnssrv_v1`): the pod asked another resolver. A
/// forwarded `CT_REPLY` event (egress by domain name, docs/fqdn.md).
pub const EV_DNS_OTHER_SERVER: u8 = 1 << 4;

/// One decision. Addresses and ports in network byte order (IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC); the agent converts it to wall-clock time.
    pub time_ns: u64,
    /// `EndpointInfo.ep_id` of the judged endpoint (0: no endpoint, see `ifindex`).
    pub ep_id: u32,
    /// Interface of the judged endpoint (its host veth; for a judgement after translation,
    /// the sender's host veth).
    pub ifindex: u32,
    /// `Reason` of the decision (for `VERDICT_AUDIT`: the would-be drop reason).
    pub reason: u32,
    /// The rule that allowed the flow (`POLICY_ALLOW`), or for `VERDICT_AUDIT` and a
    /// forwarded flow at an audited endpoint, the audited rule that allows it (0 when none:
    /// the audited policies isolate the pod and no rule of theirs allows it).
    pub rule_ref: u32,
    /// Drops of this flow not reported since its previous event (rate limit).
    pub suppressed: u32,
    /// `EndpointInfo.policy_gen` at the decision (tells the agent whether its names are
    /// those of the policy that decided).
    pub policy_gen: u32,
    /// Packet length (bytes, as counted in `pal_stat_v1`).
    pub len: u32,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `DIR_INGRESS` / `DIR_EGRESS` (of the judged endpoint).
    pub dir: u8,
    /// `FAMILY_V4` / `FAMILY_V6` (0 when not parsed).
    pub family: u8,
    pub proto: u8,
    /// `EV_*`.
    pub flags: u8,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type and code (0 for other protocols).
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub saddr_be: [u8; 16],
    pub daddr_be: [u8; 16],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    /// Service port (`EV_SERVICE`).
    pub svc_port_be: [u8; 2],
    pub _pad: [u8; 2],
    /// Service address (`EV_SERVICE`).
    pub svc_addr_be: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 104);

/// `pal_evrl_v1` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventLimit {
    /// When this flow's last drop event was emitted.
    pub last_ns: u64,
    /// Drops since then that emitted nothing.
    pub suppressed: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EventLimit>() == 16);

/// `pal_svcfl_v1` value: where the client sent the flow before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SvcOrig {
    pub addr_be: [u8; 16],
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SvcOrig>() == 20);

/// At most one drop event per flow per this interval (1 s).
pub const EVENT_DROP_INTERVAL_NS: u64 = 1_000_000_000;

/// `pal_evstat_v1` slots.
/// Events submitted to the ring buffer.
pub const EVSTAT_EMITTED: u32 = 0;
/// Events lost: the ring buffer was full (the agent did not keep up).
pub const EVSTAT_LOST: u32 = 1;
/// Drop events not emitted because of the per-flow rate limit.
pub const EVSTAT_SUPPRESSED: u32 = 2;
pub const EVSTAT_SLOTS: u32 = 4;

/// Ring buffer size (bytes; a power of two multiple of the page size): ~10,000 events.
pub const FLOW_RING_BYTES: u32 = 1 << 20;

/// The datapath wakes the agent's reader only once this much is pending in the ring buffer
/// (a sixteenth: ~650 events); below it, records are submitted without a wake-up and the
/// agent drains the ring every `FLOW_DRAIN_INTERVAL_MS`. A wake-up per record (the ring
/// buffer's default whenever the reader has caught up, i.e. at any moderate rate) costs the
/// packet's CPU an `irq_work` interrupt and a scheduler wake-up, several microseconds in a VM:
/// with every new flow an event, it cost 13% of the connections per second in `bench
/// datapath` (docs/performance.md "Flow events: wake-ups in batches").
pub const FLOW_RING_WAKE_BYTES: u64 = FLOW_RING_BYTES as u64 / 16;

/// How often the agent drains the ring buffer without a wake-up: the most an event waits
/// before the agent names it (`palisadectl flows`, the metrics), and, with
/// `FLOW_RING_WAKE_BYTES`, what bounds the ring's fill between drains.
pub const FLOW_DRAIN_INTERVAL_MS: u64 = 50;
/// Flows with a drop-event rate limit, and client flows to a Service address awaiting the
/// event of their judgement (both LRU, preallocated): 32 per pod at 110 pods (the agent sizes
/// them from `--max-pods`, see `crate::maps`).
pub const EVENT_LIMIT_MAX: u32 = 4_096;
pub const SVC_FLOWS_MAX: u32 = 4_096;
