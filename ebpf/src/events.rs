//! Flow events: after each verdict, `report` decides whether the packet was a *decision*
//! worth an event and, if so, writes one `FlowEvent` to the ring buffer
//! (`palisade_common::events` documents the record and the maps).
//!
//! Which verdicts emit:
//! 1. Packets of tracked flows, host traffic and neighbour discovery: nothing (the first
//!    test, so the bulk of the traffic pays two comparisons).
//! 2. `POLICY_ALLOW`, and `NOT_ISOLATED` from `decide` (both only for the first packet of a
//!    new flow): a forwarded event; at an endpoint that audited policies isolate in this
//!    direction, the audited rules are looked up and `decide::audit` says whether it is an
//!    audit event instead.
//!    `CT_RESTORED` (a mid-stream TCP segment of a flow whose entry was lost, once per
//!    restore): a forwarded event with `EV_REPLY`, naming the rule that admits the flow it
//!    replies to.
//! 3. `SERVICE_DEFERRED` (the first packet of a client's new flow to a Service address): at a
//!    client whose egress is judged after translation (isolated or audited), the Service
//!    address is recorded for that judgement's event; otherwise a forwarded `NOT_ISOLATED`
//!    event naming the Service address.
//! 4. Drops: a dropped event, at most one per flow per `EVENT_DROP_INTERVAL_NS`; the next one
//!    says how many were suppressed.
//!
//! The datapath never waits: a full ring buffer loses the event and counts it.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    programs::TcContext,
};
use palisade_common::{
    DIR_AUDIT, DIR_EGRESS, DIR_INGRESS,
    conntrack::CtKey,
    decide::{CtMatch, Facts, audit},
    endpoint::{
        EP_AUDIT_EGRESS_ISOLATED, EP_AUDIT_INGRESS_ISOLATED, EP_EGRESS_ISOLATED, EndpointInfo,
    },
    events::{
        EV_DEFERRED, EV_DNS_OTHER_SERVER, EV_PARTIAL, EV_REPLY, EV_SERVICE, EVENT_DROP_INTERVAL_NS,
        EVSTAT_EMITTED, EVSTAT_LOST, EVSTAT_SUPPRESSED, EventLimit, FLOW_RING_WAKE_BYTES,
        FlowEvent, SvcOrig, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED,
    },
    stats::CFG_NO_FLOW_EVENTS,
    verdict::{Reason, Verdict},
};

use crate::{
    clock,
    conntrack::{self, CT_NEW},
    maps::{CONFIG, EVENT_LIMIT, EVENT_STATS, FLOW_EVENTS, SCRATCH, SVC_FLOWS, Scratch},
    parse::{FRAG_LATER, Packet},
    policy,
};

/// Whether audited policies isolate `ep` in `dir`.
#[inline(always)]
pub fn audited(ep: &EndpointInfo, dir: u8) -> bool {
    let bit = if dir == DIR_INGRESS {
        EP_AUDIT_INGRESS_ISOLATED
    } else {
        EP_AUDIT_EGRESS_ISOLATED
    };
    ep.flags & bit != 0
}

/// Emits the event of this verdict, if it is a decision (see the module comment). Called once
/// per verdict by `handle`, after counting; `cfg_flags` is `pal_cfg_v1`'s `flags`.
#[inline(always)]
pub fn report(
    ctx: &TcContext,
    dir: u8,
    ep_ifindex: u32,
    deferred: bool,
    v: &Verdict,
    cfg_flags: u32,
) {
    let r = v.reason;
    // 1. (`CT_ESTABLISHED` ..= `NEIGHBOR`)
    if (Reason::CT_ESTABLISHED.0..=Reason::NEIGHBOR.0).contains(&r.0)
        || cfg_flags & CFG_NO_FLOW_EVENTS != 0
    {
        return;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, as the evaluation left it.
    let s = unsafe { &mut *s };
    if r.is_drop() {
        dropped(ctx, dir, ep_ifindex, deferred, v, s);
        return;
    }
    let mut flags = if deferred { EV_DEFERRED } else { 0 };
    if r == Reason::CT_RESTORED {
        flags |= EV_REPLY;
    }
    if r == Reason::SERVICE_DEFERRED {
        // 3.
        if s.pkt.ct != CT_NEW {
            return;
        }
        if s.ep.flags & EP_EGRESS_ISOLATED != 0 || audited(&s.ep, DIR_EGRESS) {
            record_service(s);
            return;
        }
        flags |= EV_SERVICE;
        emit(
            ctx,
            &s.ep,
            &s.pkt,
            dir,
            ep_ifindex,
            flags,
            VERDICT_FORWARDED,
            Verdict::pass(Reason::NOT_ISOLATED, 0),
            0,
        );
        return;
    }
    // 2. A judgement after translation at a client neither isolated nor audited returns
    // `NOT_ISOLATED` before parsing (on every packet): not a decision.
    if deferred && r == Reason::NOT_ISOLATED && !audited(&s.ep, DIR_EGRESS) {
        return;
    }
    if deferred && lookup_service(s) {
        flags |= EV_SERVICE;
    }
    let mut verdict = VERDICT_FORWARDED;
    let mut out = *v;
    if r == Reason::NOT_ISOLATED && audited(&s.ep, dir) {
        let pkt = &s.pkt;
        let t = &pkt.t;
        let ports_known = pkt.frag != FRAG_LATER || t.sport != [0; 2] || t.dport != [0; 2];
        let peer = if dir == DIR_INGRESS {
            &t.saddr
        } else {
            &t.daddr
        };
        let rule = policy::allow_rule(
            s.ep.policy_id,
            dir | DIR_AUDIT,
            t.family,
            peer,
            t.proto,
            policy::policy_port(t.proto, t.dport),
            ports_known,
        );
        let f = Facts {
            spoofed: false,
            peer_is_host: false,
            ct: CtMatch::New,
            ct_current: false,
            isolated: false,
            allow_rule: 0,
            untracked_fragment: !ports_known,
        };
        match audit(&f, true, rule) {
            Some(would) => {
                verdict = VERDICT_AUDIT;
                out = would;
            }
            None => out.rule_ref = rule,
        }
    }
    emit(ctx, &s.ep, &s.pkt, dir, ep_ifindex, flags, verdict, out, 0);
}

/// Step 4 of `report`, a dropped packet: rate-limited per flow. The verdict keeps its rule (a
/// ClusterNetworkPolicy Deny rule for `POLICY_DENY`).
#[inline(always)]
fn dropped(
    ctx: &TcContext,
    dir: u8,
    ep_ifindex: u32,
    deferred: bool,
    v: &Verdict,
    s: &mut Scratch,
) {
    let r = v.reason;
    let mut flags = if deferred { EV_DEFERRED } else { 0 };
    let no_ep = r == Reason::NO_ENDPOINT;
    if no_ep
        || r == Reason::BAD_HEADER
        || r == Reason::UNKNOWN_L3
        || r == Reason::EXT_HEADERS_TOO_LONG
        || r == Reason::INTERNAL_ERROR
    {
        flags |= EV_PARTIAL;
    }
    if r == Reason::POLICY_CHANGED && s.key.dir != dir {
        flags |= EV_REPLY;
    }
    // The rate-limit key: the packet's own tuple at its endpoint; without an endpoint nothing
    // of the packet was read (the scratch entry holds another packet's): its interface.
    if no_ep {
        s.key = CtKey {
            ep_id: ep_ifindex,
            dir,
            proto: 0,
            family: 0,
            _pad: 0,
            saddr_be: [0; 16],
            daddr_be: [0; 16],
            sport_be: [0; 2],
            dport_be: [0; 2],
        };
    } else {
        s.key = conntrack::key(s.ep.ep_id, dir, &s.pkt.t);
    }
    let now = clock::now();
    let mut suppressed = 0;
    let key = &s.key;
    match EVENT_LIMIT.get_ptr_mut(key) {
        Some(l) => {
            // SAFETY: live map value; racing CPUs only make the count approximate.
            unsafe {
                if now.wrapping_sub((*l).last_ns) < EVENT_DROP_INTERVAL_NS {
                    (*l).suppressed += 1;
                    count(EVSTAT_SUPPRESSED);
                    return;
                }
                suppressed = (*l).suppressed;
                (*l).last_ns = now;
                (*l).suppressed = 0;
            }
        }
        None => {
            let l = EventLimit {
                last_ns: now,
                suppressed: 0,
                _pad: 0,
            };
            // A full LRU map evicts; a failed insert only loses the rate limit.
            if EVENT_LIMIT.insert(key, l, 0).is_err() {}
        }
    }
    if deferred && lookup_service(s) {
        flags |= EV_SERVICE;
    }
    emit(
        ctx,
        &s.ep,
        &s.pkt,
        dir,
        ep_ifindex,
        flags,
        VERDICT_DROPPED,
        *v,
        suppressed,
    );
}

/// Key of `pal_svcfl_v1`: the client's flow with the destination left out (the judgement
/// after translation sees the backend there).
#[inline(always)]
fn svc_key(s: &mut Scratch) {
    s.key = CtKey {
        ep_id: s.ep.ep_id,
        dir: DIR_EGRESS,
        proto: s.pkt.t.proto,
        family: s.pkt.t.family,
        _pad: 0,
        saddr_be: s.pkt.t.saddr,
        daddr_be: [0; 16],
        sport_be: s.pkt.t.sport,
        dport_be: [0; 2],
    };
}

/// Records where a new flow to a Service address was sent (`from_pod`).
#[inline(always)]
fn record_service(s: &mut Scratch) {
    svc_key(s);
    let v = SvcOrig {
        addr_be: s.pkt.t.daddr,
        port_be: s.pkt.t.dport,
        _pad: [0; 2],
    };
    // A full LRU map evicts; a failed insert only loses the Service name of one event.
    let key = &s.key;
    if SVC_FLOWS.insert(key, v, 0).is_err() {}
}

/// At a judgement after translation: the Service address the client sent this flow to, moved
/// into the packet's `inner` tuple (which events do not otherwise use). `false` when not
/// found (e.g. the kernel masqueraded the source before this hook).
#[inline(always)]
fn lookup_service(s: &mut Scratch) -> bool {
    svc_key(s);
    // SAFETY: copied out at once.
    let key = &s.key;
    match unsafe { SVC_FLOWS.get(key) } {
        Some(o) => {
            s.pkt.inner.daddr = o.addr_be;
            s.pkt.inner.dport = o.port_be;
            true
        }
        None => false,
    }
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = EVENT_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU map value.
        unsafe { *c += 1 };
    }
}

/// The event of a DNS answer `dns_learn` did not read because it does not come from the
/// cluster DNS service (`EV_DNS_OTHER_SERVER`; the answer itself was delivered, `CT_REPLY`).
/// `s` is `to_pod`'s evaluation of it.
#[inline(always)]
pub fn dns_other_server(ctx: &TcContext, s: &Scratch) {
    if CONFIG
        .get(0)
        .is_some_and(|c| c.flags & CFG_NO_FLOW_EVENTS != 0)
    {
        return;
    }
    // SAFETY: the context pointer the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    emit(
        ctx,
        &s.ep,
        &s.pkt,
        DIR_INGRESS,
        ifindex,
        EV_REPLY | EV_DNS_OTHER_SERVER,
        VERDICT_FORWARDED,
        Verdict::pass(Reason::CT_REPLY, 0),
        0,
    );
}

/// Writes one event (or counts it lost).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    ctx: &TcContext,
    ep: &EndpointInfo,
    pkt: &Packet,
    dir: u8,
    ep_ifindex: u32,
    flags: u8,
    verdict: u8,
    v: Verdict,
    suppressed: u32,
) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(EVSTAT_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    let t = &pkt.t;
    // Without an endpoint (`NO_ENDPOINT`) the scratch entry holds another packet's fields.
    let parsed = v.reason != Reason::NO_ENDPOINT;
    let service = flags & EV_SERVICE != 0;
    // Deferred or not, `EV_SERVICE` of a `from_pod` event names the untranslated destination.
    let (svc_addr, svc_port) = if flags & EV_DEFERRED != 0 {
        (pkt.inner.daddr, pkt.inner.dport)
    } else {
        (t.daddr, t.dport)
    };
    // SAFETY: a reserved record of `size_of::<FlowEvent>()` bytes; every field is written.
    unsafe {
        (*e).time_ns = clock::now();
        (*e).ep_id = if parsed { ep.ep_id } else { 0 };
        (*e).ifindex = ep_ifindex;
        (*e).reason = v.reason.0;
        (*e).rule_ref = v.rule_ref;
        (*e).suppressed = suppressed;
        (*e).policy_gen = if parsed { ep.policy_gen } else { 0 };
        (*e).len = ctx.len();
        (*e).verdict = verdict;
        (*e).dir = dir;
        (*e).flags = flags;
        (*e)._pad = [0; 2];
        if parsed {
            (*e).family = t.family;
            (*e).proto = t.proto;
            (*e).tcp_flags = pkt.tcp_flags;
            (*e).icmp_type = pkt.icmp_type;
            (*e).icmp_code = pkt.icmp_code;
            (*e).saddr_be = t.saddr;
            (*e).daddr_be = t.daddr;
            (*e).sport_be = t.sport;
            (*e).dport_be = t.dport;
        } else {
            (*e).family = 0;
            (*e).proto = 0;
            (*e).tcp_flags = 0;
            (*e).icmp_type = 0;
            (*e).icmp_code = 0;
            (*e).saddr_be = [0; 16];
            (*e).daddr_be = [0; 16];
            (*e).sport_be = [0; 2];
            (*e).dport_be = [0; 2];
        }
        if service {
            (*e).svc_port_be = svc_port;
            (*e).svc_addr_be = svc_addr;
        } else {
            (*e).svc_port_be = [0; 2];
            (*e).svc_addr_be = [0; 16];
        }
    }
    // The reader is woken only when enough is pending (`FLOW_RING_WAKE_BYTES`); otherwise
    // it finds the record at its next periodic drain. Forced, not the default: the default
    // wakes only a reader that has caught up, and one that was not woken never does.
    let wake = if FLOW_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= FLOW_RING_WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake as u64);
    count(EVSTAT_EMITTED);
}
