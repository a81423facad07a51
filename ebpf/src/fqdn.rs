//! Egress by domain name in the datapath (meaning and maps: `palisade_common::fqdn`,
//! `docs/fqdn.md`): reading the cluster DNS service's answers to a pod before they are
//! delivered (`learn`), and the egress check of learnt addresses (`allow_rule`).
//!
//! Learning happens here, not in the agent: the answer reaches the pod only after its
//! addresses are in `pal_fqaddr_v1` (the TC program returns after writing them), so the pod's
//! first connection to a name it just resolved finds them, with or without a running agent.
//!
//! The reader has the `policy` crate's bounds (`fqdn::dns`): one question, at most 16
//! answers, at most 8 CNAME links, compression pointers strictly backwards and at most 16 per
//! name, names of at most `NAME_BYTES` encoded bytes. It is stricter in one way: a record
//! belongs to the answer's chain when its owner name is the chain's current name *at the same
//! place in the message* (a compression pointer to it, as every common server writes it);
//! an answer written without compression teaches only its question's own records. Anything
//! it cannot read teaches nothing (fail closed; counted `FQST_UNREAD`).

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_load_bytes, programs::TcContext};
use palisade_common::{
    DIR_NAME_VARIANT, FAMILY_V4, FAMILY_V6,
    conntrack::CtKey,
    endpoint::{EP_NAME_RULES, EndpointInfo},
    fqdn::{
        FQST_ANSWERS, FQST_FULL, FQST_LEARNT, FQST_NOT_ALLOWED, FQST_OTHER_SERVER, FQST_POD_FULL,
        FQST_UNREAD, FqdnEndpoint, GRACE_NS, LABEL_TAG, LearntKey, LearntValue, MAX_NAME_RULES,
        NAME_BYTES, NAME_END, clamp_ttl, exact_prefixlen,
    },
    packet::{IPPROTO_TCP, IPPROTO_UDP},
    policy::{RULE_REF_NONE, rule_allows},
    stats::HostAddrKey,
};

use crate::{
    assured, clock,
    conntrack::CT_REPLY,
    events,
    maps::{
        DNS_SERVERS, FQ_SCRATCH, FQDN_COUNTS, FQDN_ENDPOINTS, FQDN_LEARNT, FQDN_NAMES, FQDN_STATS,
        FqScratch, SCRATCH,
    },
    parse::{FRAG_NONE, Packet},
    policy,
};

/// Labels of a question name (a 255-octet name has at most 127).
pub const MAX_LABELS: usize = 128;
const MAX_ANSWERS: u32 = 16;
const MAX_CHAIN: u32 = 8;
const MAX_POINTERS: usize = 16;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const DNS_PORT: [u8; 2] = 53u16.to_be_bytes();
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = FQDN_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *c += 1 };
    }
}

/// The DNS message in the packet: every read goes through `bpf_skb_load_bytes` at an offset
/// from `start`, bounded by `end`. The helper takes the offset as a plain number, so the
/// verifier does not track offsets read from the message, and the loops below verify once
/// per iteration instead of once per path through the message.
struct Msg<'a> {
    ctx: &'a TcContext,
    start: usize,
    len: usize,
}

impl Msg<'_> {
    #[inline(always)]
    fn ld<T>(&self, i: usize) -> Option<T> {
        if i + core::mem::size_of::<T>() > self.len {
            return None;
        }
        self.ctx.load::<T>(self.start + i).ok()
    }

    #[inline(always)]
    fn byte(&self, i: usize) -> Option<u8> {
        self.ld::<u8>(i)
    }

    #[inline(always)]
    fn be16(&self, i: usize) -> Option<u16> {
        self.ld::<[u8; 2]>(i).map(u16::from_be_bytes)
    }

    #[inline(always)]
    fn be32(&self, i: usize) -> Option<u32> {
        self.ld::<[u8; 4]>(i).map(u32::from_be_bytes)
    }

    /// The identity of the name at `off` (see `ident`).
    #[inline(always)]
    fn ident(&self, off: usize) -> Option<usize> {
        let r = ident(
            self.ctx.skb.skb,
            self.start as u64,
            self.len as u64,
            off as u64,
        );
        if r == u64::MAX {
            None
        } else {
            Some(r as usize)
        }
    }
}

/// The identity of the name at `off` of the message at `start` (`len` bytes) of `skb`: the
/// offset of its first label once the compression pointers it starts with are followed (each
/// strictly backwards, at most `MAX_POINTERS`), so a record whose owner is a pointer to a
/// name has that name's identity; `u64::MAX` when unreadable. Not inlined: the verifier walks
/// its loop once per call and continues the caller from one returned number, not from every
/// way out of it.
#[inline(never)]
fn ident(skb: *mut __sk_buff, start: u64, len: u64, off: u64) -> u64 {
    let ctx = TcContext::new(skb);
    let m = Msg {
        ctx: &ctx,
        start: start as usize,
        len: len as usize,
    };
    let mut id = off as usize;
    let mut i = 0;
    while i < MAX_POINTERS {
        let Some(b) = m.byte(id) else {
            return u64::MAX;
        };
        if b & 0xc0 != 0xc0 {
            return id as u64;
        }
        let Some(lo) = m.byte(id + 1) else {
            return u64::MAX;
        };
        let target = (((b & 0x3f) as usize) << 8) | lo as usize;
        if target >= id {
            return u64::MAX;
        }
        id = target;
        i += 1;
    }
    u64::MAX
}

/// State of the walk over the answer section.
struct Walk {
    off: usize,
    /// Identity of the chain's current name (`ident`).
    cur: usize,
    links: u32,
    /// Smallest TTL along the chain so far.
    ttl: u32,
    ep_id: u32,
    rules: u32,
    /// The endpoint's per-pod limit (`FqdnEndpoint::max_learnt`).
    max_learnt: u32,
    now: u64,
}

/// Learns `addr` for `w.ep_id` through `w.rules` for the chain's TTL (an existing unexpired
/// entry keeps its other rules and its later expiry).
#[inline(always)]
fn remember(w: &Walk, family: u8, addr: [u8; 16]) {
    let k = LearntKey::new(w.ep_id, family, addr);
    let mut v = LearntValue {
        expires_ns: w.now + clamp_ttl(w.ttl) as u64 * 1_000_000_000,
        rules: w.rules,
        _pad: 0,
    };
    let mut added = true;
    if let Some(old) = FQDN_LEARNT.get_ptr(&k) {
        added = false;
        // SAFETY: live map value; read once, a racing writer writes the same kind of values.
        let (oe, or) = unsafe { ((*old).expires_ns, (*old).rules) };
        if oe > w.now {
            v.rules |= or;
            if oe > v.expires_ns {
                v.expires_ns = oe;
            }
        }
    }
    // The per-pod limit, for entries this adds (refreshing one is always allowed).
    let cnt = FQDN_COUNTS.get_ptr_mut(&w.ep_id);
    if added
        && let Some(c) = cnt
        // SAFETY: live map value, read once (a racing add makes the limit off by one at most
        // per CPU).
        && unsafe { *c } >= w.max_learnt as u64
    {
        count(FQST_POD_FULL);
        return;
    }
    if FQDN_LEARNT.insert(&k, &v, 0).is_err() {
        count(FQST_FULL);
        return;
    }
    count(FQST_LEARNT);
    if added {
        // The endpoint's first entry (or the sweep removed its count): create it (a racing
        // first entry on another CPU may win: `BPF_NOEXIST`, both add below).
        if cnt.is_none() {
            let _ = FQDN_COUNTS.insert(&w.ep_id, &0, BPF_NOEXIST);
        }
        if let Some(c) = FQDN_COUNTS.get_ptr_mut(&w.ep_id) {
            // SAFETY: a live, 8-byte aligned map value.
            unsafe { assured::atomic_add(c, 1) };
        }
    }
}

/// One answer record at `w.off` of the message at `start` (`len` bytes) of `skb`: follows
/// the chain, learns its addresses. 1: go on; 0: stop (the chain is too long); 2:
/// unreadable. Not inlined, for the reason `ident` is not: the answer loop continues from
/// one returned number per record.
#[inline(never)]
fn record(skb: *mut __sk_buff, start: u64, len: u64, w: &mut Walk) -> u32 {
    let ctx = TcContext::new(skb);
    let m = Msg {
        ctx: &ctx,
        start: start as usize,
        len: len as usize,
    };
    match record_in(&m, w) {
        Some(true) => 1,
        Some(false) => 0,
        None => 2,
    }
}

#[inline(always)]
fn record_in(m: &Msg, w: &mut Walk) -> Option<bool> {
    // The owner: a compression pointer (how servers name the records of an answer); an
    // owner written out in full is not read (the answer teaches nothing).
    let b = m.byte(w.off)?;
    if b & 0xc0 != 0xc0 {
        return None;
    }
    let owner = m.ident(w.off)?;
    let at = w.off + 2;
    let ty = m.be16(at)?;
    let class = m.be16(at + 2)?;
    let ttl = m.be32(at + 4)?;
    let rdlen = m.be16(at + 8)? as usize;
    let rd = at + 10;
    if rd + rdlen > m.len {
        return None;
    }
    w.off = rd + rdlen;
    if class != CLASS_IN || owner != w.cur {
        return Some(true);
    }
    if ttl < w.ttl {
        w.ttl = ttl;
    }
    if ty == TYPE_CNAME {
        if w.links == MAX_CHAIN {
            return Some(false);
        }
        w.links += 1;
        w.cur = m.ident(rd)?;
    } else if ty == TYPE_A && rdlen == 4 {
        let a: [u8; 4] = m.ld(rd)?;
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&a);
        remember(w, FAMILY_V4, addr);
    } else if ty == TYPE_AAAA && rdlen == 16 {
        remember(w, FAMILY_V6, m.ld::<[u8; 16]>(rd)?);
    }
    Some(true)
}

/// Whether the packet `to_pod` just passed (its evaluation is still in the scratch entry)
/// may be a DNS answer that teaches: to a pod with name rules, a reply of a tracked flow, from
/// port 53, UDP or TCP, not a fragment. Cheap: every other packet stops here.
#[inline(always)]
pub fn may_teach() -> bool {
    let Some(sc) = SCRATCH.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch entry, written by this run's evaluation.
    let sc = unsafe { &*sc };
    teaches(&sc.ep, &sc.pkt)
}

#[inline(always)]
fn teaches(ep: &EndpointInfo, pkt: &Packet) -> bool {
    ep.flags & EP_NAME_RULES != 0
        && pkt.ct == CT_REPLY
        && pkt.frag == FRAG_NONE
        && pkt.t.sport == DNS_PORT
        && (pkt.t.proto == IPPROTO_UDP || pkt.t.proto == IPPROTO_TCP)
        && pkt.l4_off != 0
}

/// `to_pod`'s tail call to `dns_learn` failed (the loader did not set it): counted, the
/// answer teaches nothing.
#[inline(always)]
pub fn tail_call_failed() {
    count(FQST_UNREAD);
}

/// `dns_learn`: the DNS answer `to_pod` passed (`may_teach`; its evaluation is still in the
/// scratch entry: a tail call keeps the CPU) is read if it comes from the cluster DNS service,
/// and what it teaches is written before the answer is delivered.
#[inline(always)]
pub fn learn(ctx: &TcContext) {
    let Some(sc) = SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, written by `to_pod`'s evaluation of this packet.
    let sc = unsafe { &*sc };
    let (ep, pkt) = (&sc.ep, &sc.pkt);
    if !teaches(ep, pkt) {
        return;
    }
    let hk = HostAddrKey {
        family: pkt.t.family,
        _pad: [0; 3],
        addr_be: pkt.t.saddr,
    };
    // SAFETY: presence check only.
    if unsafe { DNS_SERVERS.get(hk) }.is_none() {
        count(FQST_OTHER_SERVER);
        events::dns_other_server(ctx, sc);
        return;
    }
    let Some(fe) = FQDN_ENDPOINTS.get_ptr(ep.ep_id) else {
        return;
    };
    // SAFETY: live map value, copied out.
    let fe = unsafe { *fe };
    let Some(s) = FQ_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry; a TC program run is not preempted by another run on
    // the same CPU.
    let s = unsafe { &mut *s };
    count(FQST_ANSWERS);
    let payload = pkt.l4_off as usize + pkt.l4_hlen as usize;
    let r = read(ctx, pkt.t.proto, payload, ep.ep_id, &fe, s);
    if r.is_none() {
        count(FQST_UNREAD);
    }
}

/// The question name's labels (uncompressed: nothing precedes it that it could point to),
/// their offsets into `s.labels`: (label count << 32) | offset of its terminating zero, or
/// `u64::MAX`.
#[inline(never)]
fn question_labels(skb: *mut __sk_buff, start: u64, len: u64, s: &mut FqScratch) -> u64 {
    let ctx = TcContext::new(skb);
    let m = Msg {
        ctx: &ctx,
        start: start as usize,
        len: len as usize,
    };
    let mut off = 12usize;
    let mut nl = 0usize;
    while nl < MAX_LABELS {
        let Some(l) = m.byte(off) else {
            return u64::MAX;
        };
        if l == 0 {
            return ((nl as u64) << 32) | off as u64;
        }
        if l > 63 {
            return u64::MAX;
        }
        s.labels[nl] = off as u16;
        nl += 1;
        off += 1 + l as usize;
    }
    u64::MAX
}

/// Writes the `pal_fqname_v1` encoding of the question's `nl` labels (`s.labels`) into
/// `s.key`: the labels in reverse order, each tagged and copied, then `NAME_END` (not yet in
/// lower case). Returns its length, or `u64::MAX` when it does not fit.
#[inline(never)]
fn question_key(skb: *mut __sk_buff, start: u64, nl: u64, s: &mut FqScratch) -> u64 {
    let ctx = TcContext::new(skb);
    let nl = nl as usize;
    let mut p = 0usize;
    let mut i = 0usize;
    while i < MAX_LABELS {
        if i == nl {
            break;
        }
        let lo = s.labels[(nl - 1 - i) & (MAX_LABELS - 1)] as usize;
        let Ok(l) = ctx.load::<u8>(start as usize + lo) else {
            return u64::MAX;
        };
        let l = l as usize;
        if l == 0 || l > 63 || p > NAME_BYTES - 2 || p + 1 + l >= NAME_BYTES {
            return u64::MAX;
        }
        s.key.data.name[p] = LABEL_TAG | l as u8;
        // SAFETY: `p + 1 + l` < NAME_BYTES: within the key's name (the verifier, which knows
        // `p` and `l` apart, also allows for `FqScratch::slack`).
        let r = unsafe {
            bpf_skb_load_bytes(
                skb as *const _,
                (start as usize + lo + 1) as u32,
                s.key.data.name.as_mut_ptr().add(p + 1) as *mut _,
                l as u32,
            )
        };
        if r != 0 {
            return u64::MAX;
        }
        p += 1 + l;
        i += 1;
    }
    if i != nl || p >= NAME_BYTES {
        return u64::MAX;
    }
    s.key.data.name[p] = NAME_END;
    (p + 1) as u64
}

/// Finds the DNS message in the payload, matches its question against the pattern set and
/// walks its answers. `None`: unreadable.
#[inline(always)]
fn read(
    ctx: &TcContext,
    proto: u8,
    payload: usize,
    ep_id: u32,
    fe: &FqdnEndpoint,
    s: &mut FqScratch,
) -> Option<()> {
    let (name_set, nrules) = (fe.name_set, fe.rules);
    let total = ctx.len() as usize;
    let mut start = payload;
    if proto == IPPROTO_TCP {
        // One whole message in the segment: its 2-byte length, then exactly that much.
        let l: [u8; 2] = ctx.load(start).ok()?;
        if start + 2 + u16::from_be_bytes(l) as usize != total {
            return None;
        }
        start += 2;
    }
    if start + 12 > total || total - start > 0xffff {
        return None;
    }
    let m = Msg {
        ctx,
        start,
        len: total - start,
    };
    // Header: a response (QR), standard query, not truncated, no error, one question.
    let flags = m.be16(2)?;
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || flags & 0x0200 != 0 || flags & 0x000f != 0 {
        return None;
    }
    if m.be16(4)? != 1 {
        return None;
    }
    let ancount = m.be16(6)? as u32;

    // The question: its labels, then the lookup key (each step a BPF call, see `ident`).
    let r = question_labels(ctx.skb.skb, m.start as u64, m.len as u64, s);
    if r == u64::MAX {
        return None;
    }
    let (nl, off) = ((r >> 32) as usize, (r & 0xffff_ffff) as usize);
    if m.be16(off + 3)? != CLASS_IN {
        return None;
    }
    let answers = off + 5;
    let p = question_key(ctx.skb.skb, m.start as u64, nl as u64, s);
    if p == u64::MAX {
        return None;
    }
    // Lower case, over the whole key (bytes past the name are not compared; no tag is a
    // letter): one path for the verifier.
    let mut q = 0usize;
    while q < NAME_BYTES {
        let b = s.key.data.name[q];
        if b.is_ascii_uppercase() {
            s.key.data.name[q] = b + 32;
        }
        q += 1;
    }
    let p = p as usize;
    s.key.data.name_set_be = name_set.to_be_bytes();
    s.key.prefix_len = exact_prefixlen(p);
    let all = if nrules >= 32 {
        u32::MAX
    } else {
        (1u32 << nrules) - 1
    };
    let rules = match FQDN_NAMES.get(&s.key) {
        Some(r) => *r & all,
        None => 0,
    };
    if rules == 0 {
        count(FQST_NOT_ALLOWED);
        return Some(());
    }

    let mut w = Walk {
        off: answers,
        cur: 12,
        links: 0,
        ttl: u32::MAX,
        ep_id,
        rules,
        max_learnt: fe.max_learnt,
        now: clock::now(),
    };
    let mut a = 0;
    while a < MAX_ANSWERS {
        if a == ancount {
            break;
        }
        match record(ctx.skb.skb, m.start as u64, m.len as u64, &mut w) {
            1 => {}
            0 => break,
            _ => return None,
        }
        a += 1;
    }
    Some(())
}

/// The rule admitting the egress flow `key` (of an endpoint with `EP_NAME_RULES` and policy
/// `policy_id`) that its policy does not allow, through the addresses the endpoint learnt:
/// `RULE_REF_NONE` when the destination is not learnt, or learnt but expired (`grace`: a
/// re-check of a flow admitted before, which keeps working `GRACE_NS` past expiry), else the
/// first name rule i the address was learnt through whose variant (direction
/// `DIR_NAME_VARIANT + i` of `policy_id`) allows the flow. Not inlined: up to
/// `MAX_NAME_RULES` pairs of LPM lookups, on the deny path only.
#[inline(never)]
pub fn allow_rule(key: &CtKey, policy_id: u32, ports_known: bool, grace: bool) -> u32 {
    let Some(fe) = FQDN_ENDPOINTS.get_ptr(key.ep_id) else {
        return RULE_REF_NONE;
    };
    let k = LearntKey::new(key.ep_id, key.family, key.daddr_be);
    let Some(lv) = FQDN_LEARNT.get_ptr(&k) else {
        return RULE_REF_NONE;
    };
    // SAFETY: live map values, fields read once.
    let (expires, learnt, nrules) = unsafe { ((*lv).expires_ns, (*lv).rules, (*fe).rules) };
    let until = if grace { expires + GRACE_NS } else { expires };
    if clock::now() >= until {
        return RULE_REF_NONE;
    }
    let mut i = 0;
    while i < MAX_NAME_RULES {
        if i as u32 >= nrules {
            break;
        }
        if learnt & (1 << i) != 0 {
            let r = variant_rule(policy_id, DIR_NAME_VARIANT + i as u8, key, ports_known);
            if rule_allows(r) {
                return r;
            }
        }
        i += 1;
    }
    RULE_REF_NONE
}

/// The egress lookups of flow `key` in the variant `dir` of `policy_id`. A call of its own:
/// its keys live in its own (small) stack frame, once, not once per name rule in
/// `allow_rule`'s.
#[inline(never)]
fn variant_rule(policy_id: u32, dir: u8, key: &CtKey, ports_known: bool) -> u32 {
    policy::allow_rule(
        policy_id,
        dir,
        key.family,
        &key.daddr_be,
        key.proto,
        policy::policy_port(key.proto, key.dport_be),
        ports_known,
    )
}
