//! The assured conntrack tier (`pal_cta_v1`), its per-endpoint budget (`pal_ctcnt_v1`) and its
//! counters (`pal_ctst_v1`): what a pod cannot evict from another pod.
//!
//! `pal_ct_v1` is one LRU table for every endpoint of the node: a pod that opens flows fast
//! evicts the idlest flows of every other pod. A flow whose first reply has been seen (both
//! ends talk: Linux conntrack's ASSURED) moves out of it into `pal_ct_v1`'s twin
//! `pal_cta_v1`, a plain hash (no LRU: nothing evicts from it; `BPF_F_NO_PREALLOC`: an empty
//! tier costs no memory). It moves, it is not copied: one entry, one timestamp to refresh.
//! Its value has `CT_SEEN_REPLY` (set by the reply that moved it), which is why it is never
//! asked to move again. An assured entry leaves only when it expires (the
//! usual idle timeouts: the datapath deletes an expired entry it finds, the agent's sweep the
//! others) or its endpoint goes away (the agent's sweep).
//!
//! Budget: each endpoint may hold at most `ASSURED_BUDGET` assured entries, counted in
//! `pal_ctcnt_v1` (ep_id -> entries, u64: the BPF target's atomics are 64-bit) under the entry's `ep_id` (the endpoint whose hook
//! tracks it, whichever side opened the flow). Promotion past the budget is refused (counted
//! `CTST_REFUSED`): the flow stays in the LRU tier, as every flow did before (TCP is still
//! restorable there, `decide::restore`; UDP is evictable). So one pod exhausts at most its own
//! budget and, by opening flows *into* a pod, that pod's budget for *new* promotions (only
//! while those flows stay alive); it never evicts an assured entry. The per-node bound is the
//! tier's `max_entries`; a full tier refuses promotions the same way.
//!
//! Count keeping: whoever inserts an entry adds 1, whoever *successfully* deletes one
//! subtracts 1 (a delete that finds nothing subtracts nothing: no double count). The agent's
//! sweep recounts and rewrites the counts of the endpoints it sweeps (a count a racing
//! promotion changed meanwhile is fixed at the next sweep; a count that wrapped below zero
//! reads as exhausted: promotions are refused, never granted past the budget by mistake).

use crate::conntrack::{CT_REVOKED, CT_SEEN_REPLY};

/// Assured entries per endpoint (default; the agent's counts map holds one count per endpoint).
pub const ASSURED_BUDGET: u32 = 4096;

/// `pal_ctst_v1` slots (per-CPU u64 counters, summed by the agent).
/// Flows promoted into the assured tier.
pub const CTST_PROMOTED: u32 = 0;
/// Promotions refused: the endpoint's budget, or the tier, was full.
pub const CTST_REFUSED: u32 = 1;
/// Expired assured entries the datapath deleted when it found them.
pub const CTST_REAPED: u32 = 2;
pub const CTST_SLOTS: u32 = 4;

/// What a passing packet of a tracked flow does to the flow's tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promotion {
    /// Nothing: not the flow's first reply (an assured flow has seen its reply).
    Stay,
    /// The first reply of a flow in the LRU tier, within the endpoint's budget: move it.
    Promote,
    /// The first reply, but the endpoint holds `budget` assured entries (or more: a count
    /// that wrapped reads as exhausted): the flow stays in the LRU tier.
    Refuse,
}

/// The promotion decision for a passing packet that matched a flow as its reply
/// (`is_reply`), with the flow's flags before this packet and the endpoint's count.
#[inline(always)]
pub fn promotion(is_reply: bool, flags_before: u32, charged: u64, budget: u32) -> Promotion {
    if !is_reply || flags_before & (CT_SEEN_REPLY | CT_REVOKED) != 0 {
        Promotion::Stay
    } else if charged >= u64::from(budget) {
        Promotion::Refuse
    } else {
        Promotion::Promote
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{CT_CLOSING, CT_SERVICE};

    #[test]
    fn only_the_first_reply_of_an_lru_flow_within_budget_is_promoted() {
        assert_eq!(promotion(true, 0, 0, 4), Promotion::Promote);
        assert_eq!(promotion(true, CT_SERVICE, 3, 4), Promotion::Promote);
        assert_eq!(promotion(true, CT_CLOSING, 0, 4), Promotion::Promote);
        // Established packets, later replies (assured flows included), revoked flows: nothing.
        assert_eq!(promotion(false, 0, 0, 4), Promotion::Stay);
        assert_eq!(promotion(true, CT_SEEN_REPLY, 0, 4), Promotion::Stay);
        assert_eq!(promotion(true, CT_REVOKED, 0, 4), Promotion::Stay);
    }

    #[test]
    fn at_the_budget_or_with_a_wrapped_count_promotion_is_refused() {
        assert_eq!(promotion(true, 0, 4, 4), Promotion::Refuse);
        assert_eq!(promotion(true, 0, 5, 4), Promotion::Refuse);
        assert_eq!(promotion(true, 0, u64::MAX, 4), Promotion::Refuse);
        assert_eq!(promotion(true, 0, 0, 0), Promotion::Refuse);
        // A refused flow has seen its reply: it is not asked again (one count per flow).
        assert_eq!(promotion(true, CT_SEEN_REPLY, 4, 4), Promotion::Stay);
    }
}
