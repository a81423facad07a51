//! The Palisade datapath object: two TC classifiers attached to the host side of each pod's
//! veth, and one on the node's uplink.
//!
//! - `to_pod` (TC egress of the host veth): traffic going into the pod, `DIR_INGRESS`, the
//!   peer is the source.
//! - `from_pod` (TC ingress of the host veth): traffic leaving the pod, `DIR_EGRESS`, the peer
//!   is the destination.
//! - `to_uplink` (TC egress of the node's uplink): only packets that `from_pod` sent to a
//!   Service address (`SVC_MARK`), judged after the kernel translated them
//!   (`palisade_common::service`); `to_pod` does the same for a local backend first.
//!
//! All run the same evaluation (`evaluate`), documented step by step above it and in
//! `docs/datapath.md`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use palisade_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_V4,
    conntrack::{CT_CLOSING, CT_REVOKED, CT_SEEN_REPLY, CT_SERVICE, ct_needs_refresh},
    decide::{CtMatch, Facts, decide, restorable, restore, tcp_mid_stream},
    endpoint::{
        EP_EGRESS_ISOLATED, EP_HAS_V4, EP_HAS_V6, EP_INGRESS_ISOLATED, EP_NAME_RULES, EndpointInfo,
    },
    maps::TAIL_DNS_LEARN,
    neighbor::is_link_local,
    packet::IPPROTO_TCP,
    policy::rule_allows,
    service::SVC_MARK,
    stats::{CFG_DEBUG_LOG, CFG_NO_FAST_PATH, HostAddrKey},
    verdict::{Reason, Verdict},
};
use palisade_ebpf::{
    addr_eq, assured, clock,
    conntrack::{self, CT_NEW, CT_RELATED, CT_REPLY},
    ep_cache, events,
    fastpath::{self, Answer},
    fqdn,
    maps::{CONFIG, HOST_ADDRS, SCRATCH, SERVICES, Scratch, TAILS},
    parse::{FRAG_FIRST, FRAG_LATER, Packet, TCP_FIN, TCP_RST, Tuple, parse},
    policy, stats,
    words::zero_words,
};

/// Packets going into the pod. A packet `from_pod` sent to a Service address and the kernel
/// translated to this pod is first judged as the sender's egress (`deferred_egress`). A
/// passing DNS answer to a pod with name rules is read before it is delivered (`fqdn::learn`).
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    if deferred_egress(&ctx) == TC_ACT_SHOT {
        return TC_ACT_SHOT;
    }
    let act = handle(ctx.skb.skb, DIR_INGRESS, ifindex(&ctx), false);
    if act == TC_ACT_OK && fqdn::may_teach() {
        // SAFETY: a tail call with this program's own context. Returns only when it fails (no
        // program at the index): the answer then teaches nothing, counted.
        unsafe { TAILS.tail_call(&ctx, TAIL_DNS_LEARN) };
        fqdn::tail_call_failed();
    }
    act
}

/// A DNS answer that `to_pod` passed (`fqdn::may_teach`), reached by tail call: reads it and
/// learns what it teaches, then passes it (`to_pod`'s verdict).
#[classifier]
pub fn dns_learn(ctx: TcContext) -> i32 {
    fqdn::learn(&ctx);
    TC_ACT_OK
}

/// Packets leaving the pod.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    handle(ctx.skb.skb, DIR_EGRESS, ifindex(&ctx), false)
}

/// Packets leaving the node: only Service traffic translated to a remote backend (or to
/// anything else outside the node) is judged; everything else passes untouched and uncounted.
#[classifier]
pub fn to_uplink(ctx: TcContext) -> i32 {
    deferred_egress(&ctx)
}

/// Returns `TC_ACT_OK` unconditionally: the fixed cost of any TC program on these hooks,
/// for `cargo xtask bench datapath`. The agent never attaches it.
#[classifier]
pub fn pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// A packet carrying `SVC_MARK`: judged as egress of the pod whose host veth it came in
/// through (`skb->ingress_ifindex`), on its translated tuple. The mark is cleared. Unmarked
/// packets: `TC_ACT_OK` without counting.
#[inline(always)]
fn deferred_egress(ctx: &TcContext) -> i32 {
    // SAFETY: the context pointer the kernel passed to this program.
    let (mark, iif) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ingress_ifindex) };
    if mark & SVC_MARK == 0 {
        return TC_ACT_OK;
    }
    ctx.set_mark(mark & !SVC_MARK);
    handle(ctx.skb.skb, DIR_EGRESS, iif, true)
}

/// Evaluates, counts, optionally logs, and turns the verdict into a TC action. Every error
/// path of `evaluate` arrives here as a reason, so nothing leaves uncounted, and everything
/// that is not an explicit pass is `TC_ACT_SHOT` (fail closed).
///
/// Not inlined: a BPF-to-BPF call. The verifier still checks the body at each call site with
/// the caller's (constant) arguments, but when it returns only the caller's registers and the
/// returned action remain, so the many paths through one evaluation collapse into a few
/// states before the next: `to_pod`, which evaluates twice (a deferred Service judgement,
/// then its own ingress), is verified in roughly twice `from_pod`'s instructions instead of
/// their product.
#[inline(never)]
fn handle(skb: *mut __sk_buff, dir: u8, ep_ifindex: u32, deferred: bool) -> i32 {
    let ctx = &TcContext::new(skb);
    let cfg_flags = CONFIG.get(0).map_or(0, |c| c.flags);
    let v = match evaluate(ctx, dir, ep_ifindex, deferred, cfg_flags) {
        Ok(v) => v,
        Err(reason) => Verdict::drop(reason),
    };
    stats::count(dir, v.reason, ctx.len());
    if cfg_flags & CFG_DEBUG_LOG != 0 {
        debug!(
            ctx,
            "dir={} ifindex={} ep_ifindex={} reason={} rule={}",
            dir,
            ifindex(ctx),
            ep_ifindex,
            v.reason.0,
            v.rule_ref
        );
    }
    events::report(ctx, dir, ep_ifindex, deferred, &v, cfg_flags);
    if v.is_drop() { TC_ACT_SHOT } else { TC_ACT_OK }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer the kernel passed to this program.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Whether the packet's source is one of the endpoint's own addresses (per family it has).
#[inline(always)]
fn own_source(ep: &EndpointInfo, t: &Tuple) -> bool {
    if t.family == FAMILY_V4 {
        ep.flags & EP_HAS_V4 != 0
            && u32::from_ne_bytes([t.saddr[0], t.saddr[1], t.saddr[2], t.saddr[3]])
                == u32::from_ne_bytes(ep.ipv4_be)
    } else {
        ep.flags & EP_HAS_V6 != 0 && addr_eq(&t.saddr, &ep.ipv6_be)
    }
}

/// Whether `peer` is this node: an address in `pal_host_v1`, or an IPv6 link-local address
/// (on a pod's veth the only other end is the node, and the kernel neither forwards a packet
/// with a link-local source nor routes a link-local destination off its link).
#[inline(always)]
fn peer_is_node(family: u8, peer: &[u8; 16]) -> bool {
    if family != FAMILY_V4 && is_link_local(peer) {
        return true;
    }
    let hk = HostAddrKey {
        family,
        _pad: [0; 3],
        addr_be: *peer,
    };
    // SAFETY: presence check only.
    unsafe { HOST_ADDRS.get(hk) }.is_some()
}

/// Whether `addr` is a Service address (`pal_svc_v1`).
#[inline(always)]
fn is_service(family: u8, addr: &[u8; 16]) -> bool {
    let k = HostAddrKey {
        family,
        _pad: [0; 3],
        addr_be: *addr,
    };
    // SAFETY: presence check only.
    unsafe { SERVICES.get(k) }.is_some()
}

// `copy_words` / `zero_words` on the scratch entry's `ep` and `pkt`: 8-byte aligned offsets
// (the entry itself is a map value, 8-byte aligned).
const _: () = assert!(core::mem::offset_of!(Scratch, ep).is_multiple_of(8));
const _: () = assert!(core::mem::offset_of!(Scratch, pkt).is_multiple_of(8));

/// The facts of a packet decided before conntrack: spoofed, or to/from a host address.
#[inline(always)]
fn host_or_spoofed(spoofed: bool, peer_is_host: bool) -> Facts {
    Facts {
        spoofed,
        peer_is_host,
        ct: CtMatch::New,
        ct_current: false,
        isolated: false,
        allow_rule: 0,
        untracked_fragment: false,
    }
}

#[inline(always)]
fn isolated(ep: &EndpointInfo, dir: u8) -> bool {
    let bit = if dir == DIR_INGRESS {
        EP_INGRESS_ISOLATED
    } else {
        EP_EGRESS_ISOLATED
    };
    ep.flags & bit != 0
}

/// Evaluation order (`Err` = a verdict decided before `decide`: a drop reason, or `NEIGHBOR`):
/// 1. Endpoint: `ep_ifindex` in `pal_ep_v1` (the hook's interface; for a `deferred` egress
///    judgement, the interface the packet came in through); none => `NO_ENDPOINT`. A deferred
///    judgement of an endpoint that is not egress-isolated passes here (`NOT_ISOLATED`),
///    unless audited policies isolate its egress (then its new flows are audited).
///    1b. A packet of a current assured flow (`fastpath::established`, unless
///    `CFG_NO_FAST_PATH`) passes here as established or reply: the rest is skipped. When
///    the tuple it asked is not in the assured tier, step 6 does not ask that tier again.
/// 2. Parse L2/L3/L4 (`parse`): ARP and IPv6 neighbour discovery => `NEIGHBOR`; malformed =>
///    `BAD_HEADER` / `UNKNOWN_L3` / `EXT_HEADERS_TOO_LONG`.
/// 3. Fragments: a later fragment takes its ports from `pal_frag_v1`; unknown ports make it
///    an untracked fragment (only all-ports rules can admit it).
/// 4. Anti-spoofing (`from_pod` only): the source must be the pod's address. (A deferred
///    judgement skips it: `from_pod` checked it, and the kernel may since have masqueraded it.)
/// 5. Host peer (an untracked packet only): the peer address is in `pal_host_v1`, or IPv6
///    link-local. Leaving the pod, the packet is also marked `SVC_MARK`: if the node
///    translates it to a pod (kube-proxy NodePort, portmap hostPort), its egress is judged
///    after translation (`to_pod` / `to_uplink`); delivered to the node itself, it passes.
/// 6. Conntrack (skipped when 4 already decides): established, reply, related, or new. It is
///    looked up before 5, which it makes unnecessary for a tracked flow: host traffic is never
///    tracked (so the host lookup is paid only by packets of untracked flows).
///    Then, `from_pod` only: a new flow whose destination is in `pal_svc_v1`, or a packet of
///    a `CT_SERVICE` flow, is tracked as `CT_SERVICE`, marked `SVC_MARK` and passed as
///    `SERVICE_DEFERRED` (judged after translation).
/// 7. Policy lookups, only when the verdict depends on them: a new flow, or a tracked flow
///    admitted under another `policy_gen`, at an endpoint isolated in the direction the flow was
///    admitted in. A re-check evaluates the flow as it was admitted (its conntrack key). A
///    `CT_SERVICE` flow is never re-checked: its egress is judged on its translated packets.
/// 8. `decide` (palisade_common::decide) gives the verdict; then the state follows it: a
///    passing new flow is tracked (and a first fragment's ports recorded), a tracked flow is
///    refreshed (its timestamp once it is `CT_REFRESH_NS` old, its flags when they change;
///    re-stamped with the current policy after a re-check), a flow the new policy forbids is
///    marked `CT_REVOKED` (its later packets are cut the same way); a flow in the LRU tier
///    that has seen its reply moves into the assured tier, within its endpoint's budget, when
///    a packet refreshes its stamp (`assured::promote`).
/// 9. Deny path only: a mid-stream TCP segment dropped by policy as new may be the reply of a
///    flow whose entry was evicted (`restore_lost_reply`).
#[inline(always)]
fn evaluate(
    ctx: &TcContext,
    dir: u8,
    ep_ifindex: u32,
    deferred: bool,
    cfg_flags: u32,
) -> Result<Verdict, Reason> {
    let s = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch entry; a TC program run is not preempted by another run
        // on the same CPU.
        Some(s) => unsafe { &mut *s },
        None => return Err(Reason::INTERNAL_ERROR),
    };

    // 1.
    if !ep_cache::load(ep_ifindex, &mut s.ep) {
        return Err(Reason::NO_ENDPOINT);
    }
    let ep = &s.ep;
    if deferred && !isolated(ep, DIR_EGRESS) && !events::audited(ep, DIR_EGRESS) {
        return Ok(Verdict::pass(Reason::NOT_ISOLATED, 0));
    }
    // 1b.
    let mut first_not_assured = false;
    if !deferred && cfg_flags & CFG_NO_FAST_PATH == 0 {
        match fastpath::established(ctx.skb.skb, dir, ep, &mut s.key) {
            Answer::Pass(v) => return Ok(v),
            Answer::AssuredMiss => first_not_assured = true,
            Answer::Unknown => {}
        }
    }

    // 2.
    // SAFETY: `Packet::ZERO` is all zero bytes; 8-byte aligned (`Scratch.pkt`, asserted above).
    unsafe { zero_words(&mut s.pkt) };
    let pkt = &mut s.pkt;
    parse(ctx, dir, ep, pkt)?;

    // 3.
    let mut ports_known = true;
    if pkt.frag == FRAG_LATER {
        match conntrack::frag_ports(ep.ep_id, dir, pkt) {
            Some((sp, dp)) => {
                pkt.t.sport = sp;
                pkt.t.dport = dp;
            }
            None => ports_known = false,
        }
    }

    // 4.
    let spoofed = dir == DIR_EGRESS && !deferred && !own_source(ep, &pkt.t);

    if spoofed {
        return Ok(decide(&host_or_spoofed(true, false)));
    }

    // 6. (before 5: a tracked flow needs no host lookup, host traffic is never tracked.)
    let now = clock::now();
    let key = &mut s.key;
    let (ct, value) = conntrack::lookup(ep.ep_id, dir, pkt, now, key, first_not_assured);
    pkt.ct = ct;

    // 5.
    if ct == CT_NEW {
        let peer = if dir == DIR_INGRESS {
            &pkt.t.saddr
        } else {
            &pkt.t.daddr
        };
        if peer_is_node(pkt.t.family, peer) {
            if dir == DIR_EGRESS && !deferred {
                // 5b. The node may translate this to a pod (a NodePort, a hostPort): judged
                // after translation like Service traffic, when the packet meets `to_pod` or
                // `to_uplink`. Delivered to the node itself, it meets neither and passes.
                // SAFETY: the context pointer the kernel passed to this program.
                let mark = unsafe { (*ctx.skb.skb).mark };
                ctx.set_mark(mark | SVC_MARK);
            }
            // Host traffic is not tracked: it passes whatever the conntrack table says.
            return Ok(decide(&host_or_spoofed(false, true)));
        }
    }

    // 6b. (after the conntrack lookup, so a packet of a tracked flow costs no extra lookup:
    // the entry says whether its flow goes to a Service.)
    if dir == DIR_EGRESS && !deferred {
        let service = if ct == CT_NEW {
            is_service(pkt.t.family, &pkt.t.daddr)
        } else {
            // SAFETY: live map value found by the lookup.
            unsafe { (*value).flags & CT_SERVICE != 0 }
        };
        if service {
            if ct != CT_NEW {
                // SAFETY: as above.
                unsafe {
                    if ct_needs_refresh(now, (*value).last_seen_ns) {
                        (*value).last_seen_ns = now;
                    }
                }
            } else if pkt.frag != FRAG_LATER && pkt.icmp_error == 0 {
                conntrack::insert(key, now, ep.policy_gen, 0, CT_SERVICE)
                    .map_err(|_| Reason::INTERNAL_ERROR)?;
            }
            // SAFETY: the context pointer the kernel passed to this program.
            let mark = unsafe { (*ctx.skb.skb).mark };
            ctx.set_mark(mark | SVC_MARK);
            return Ok(Verdict::pass(Reason::SERVICE_DEFERRED, 0));
        }
    }

    let tracked = ct != CT_NEW;
    // SAFETY: `value` is the live map value found by the lookup when `tracked`.
    let ct_current = tracked
        && unsafe {
            ((*value).policy_gen == ep.policy_gen && (*value).flags & CT_REVOKED == 0)
                || (*value).flags & CT_SERVICE != 0
        };

    // 7. The question asked: the flow in the direction it was admitted (for a new flow, the
    // packet itself; `key` holds it either way).
    let cdir = key.dir;
    let iso = isolated(ep, cdir);
    let mut allow_rule = 0;
    if iso && !ct_current {
        let peer = if cdir == DIR_INGRESS {
            &key.saddr_be
        } else {
            &key.daddr_be
        };
        let port = policy::policy_port(key.proto, key.dport_be);
        allow_rule = policy::allow_rule(
            ep.policy_id,
            cdir,
            key.family,
            peer,
            key.proto,
            port,
            ports_known || tracked,
        );
        // 7b. Egress the policy does not allow, of an endpoint with name rules: addresses it
        // learnt from its DNS answers (`fqdn::allow_rule`; a re-check of a flow admitted
        // before gets the grace period).
        if cdir == DIR_EGRESS && ep.flags & EP_NAME_RULES != 0 && !rule_allows(allow_rule) {
            let r = fqdn::allow_rule(key, ep.policy_id, ports_known || tracked, tracked);
            if rule_allows(r) {
                allow_rule = r;
            }
        }
    }

    // 8.
    let f = Facts {
        spoofed: false,
        peer_is_host: false,
        ct: conntrack::ct_match(ct),
        ct_current,
        isolated: iso,
        allow_rule,
        untracked_fragment: !ports_known,
    };
    let mut v = decide(&f);
    if v.is_drop() {
        if v.reason == Reason::POLICY_CHANGED {
            // Kept, marked: later packets of the flow are cut the same way, never new
            // (which step 9 could restore as replies of the reversed flow).
            // SAFETY: live map value (tracked); a plain store.
            unsafe { (*value).flags |= CT_REVOKED };
            return Ok(v);
        }
        // 9.
        let mid_stream = tcp_mid_stream(pkt.t.proto, pkt.tcp_flags, pkt.frag == FRAG_LATER);
        if !restorable(&f, v, mid_stream, deferred) {
            return Ok(v);
        }
        match restore_lost_reply(ep, pkt, key) {
            Some(restored) => v = restored,
            None => return Ok(v),
        }
    }
    let closing = if pkt.t.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_CLOSING
    } else {
        0
    };
    if tracked {
        let mut refreshed = false;
        // SAFETY: live map value (see above); plain stores, a racing packet of the same flow
        // writes the same kind of values.
        unsafe {
            if !ct_current {
                (*value).policy_gen = ep.policy_gen;
                (*value).rule_ref = v.rule_ref;
                (*value).flags &= !CT_REVOKED;
            }
            // Written only when something changes, the timestamp only once it is
            // `CT_REFRESH_NS` old: the packets of a busy flow leave its entry's cache line
            // alone.
            if ct != CT_RELATED {
                let mut flags = (*value).flags | closing;
                if ct == CT_REPLY {
                    flags |= CT_SEEN_REPLY;
                }
                if flags != (*value).flags {
                    (*value).flags = flags;
                    (*value).last_seen_ns = now;
                } else if ct_needs_refresh(now, (*value).last_seen_ns) {
                    (*value).last_seen_ns = now;
                    refreshed = true;
                }
            }
        }
        // A flow in the LRU tier that has outlived `CT_REFRESH_NS` after its reply moves to
        // the assured tier (last: `value` is not used after the move). Short flows never get
        // here: they cost no move and take no budget.
        if refreshed {
            // SAFETY: `value` is the live entry of `key` found by the lookup.
            unsafe { assured::promote(key, value) };
        }
    } else if pkt.frag != FRAG_LATER && pkt.icmp_error == 0 {
        // ICMP errors and later fragments do not start flows. A restored flow (`key` is the
        // flow the packet replies to) has seen this reply.
        let seen = if v.reason == Reason::CT_RESTORED {
            CT_SEEN_REPLY
        } else {
            0
        };
        conntrack::insert(key, now, ep.policy_gen, v.rule_ref, closing | seen)
            .map_err(|_| Reason::INTERNAL_ERROR)?;
    }
    if pkt.frag == FRAG_FIRST {
        conntrack::frag_record(ep.ep_id, dir, pkt).map_err(|_| Reason::INTERNAL_ERROR)?;
    }
    Ok(v)
}

/// Step 9 of `evaluate`: a mid-stream TCP segment that policy drops as a new flow, asked the
/// question of the flow it would be a reply to (`palisade_common::decide::restore`): its
/// reversed tuple in the other direction at this endpoint, the same peer, the packet's source
/// port. Allowed: `Some(CT_RESTORED)` and `key` is that flow's key (step 8 tracks it again,
/// under the current `policy_gen` and the admitting rule). `None`: the drop stands. Costs the
/// lookups of one new flow, on the deny path only.
#[inline(always)]
fn restore_lost_reply(
    ep: &EndpointInfo,
    pkt: &Packet,
    key: &mut palisade_common::conntrack::CtKey,
) -> Option<Verdict> {
    let rdir = conntrack::other_dir(key.dir);
    *key = conntrack::reversed_key(ep.ep_id, rdir, &pkt.t);
    // The peer is the same address in both directions: the reversed flow's source when it
    // enters the pod, its destination when it leaves.
    let peer = if rdir == DIR_INGRESS {
        &key.saddr_be
    } else {
        &key.daddr_be
    };
    // Leaving the pod, a Service destination never gets here (it passed as
    // `SERVICE_DEFERRED`); entering it, a Service source is a reply the kernel un-translated.
    let peer_is_service = rdir == DIR_EGRESS && is_service(key.family, peer);
    let iso = isolated(ep, rdir);
    let allow_rule = if iso && !peer_is_service {
        policy::allow_rule(
            ep.policy_id,
            rdir,
            key.family,
            peer,
            key.proto,
            policy::policy_port(key.proto, key.dport_be),
            true,
        )
    } else {
        0
    };
    let reversed = Facts {
        spoofed: false,
        peer_is_host: false,
        ct: CtMatch::New,
        ct_current: false,
        isolated: iso,
        allow_rule,
        untracked_fragment: false,
    };
    restore(&reversed, peer_is_service)
}

/// The object's license, as the kernel reads it. No GPL-only helper is used.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
