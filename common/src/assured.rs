//! The assured conntrack tier (`pal_cta_v1`), its per-endpoint budget (`pal_ctcnt_v1`) and its
//! counters (`pal_ctst_v1`): what a pod cannot evict from another pod.
//!
//! `pal_ct_v1` is one LRU table for every endpoint of the node: a pod that opens flows fast
//! evicts the idlest flows of every other pod. A flow that has seen its reply (both ends talk:
//! Linux conntrack's SEEN_REPLY) and outlives `CT_REFRESH_NS` moves out of it into
//! `pal_ct_v1`'s twin `pal_cta_v1`, a plain hash (no LRU: nothing evicts from it;
//! `BPF_F_NO_PREALLOC`: an empty tier costs no memory). The move is made by the packet that
//! refreshes the flow's stamp (at most once per `CT_REFRESH_NS`, a write the flow makes
//! anyway), so short flows (a request and its answer, a refused connection: most flows) never
//! move, cost no move and take no budget; Linux, likewise, marks a UDP flow assured only once
//! it has lived a while after its reply. A flow that is closing (FIN or RST seen) or revoked
//! never moves. It moves, it is not copied: one entry, one timestamp to refresh. An assured
//! entry leaves only when it expires (the usual idle timeouts: the datapath deletes an expired
//! entry it finds, the agent's sweep the others) or its endpoint goes away (the agent's sweep).
//!
//! Budget: each endpoint may hold at most `ASSURED_BUDGET` assured entries, counted in
//! `pal_ctcnt_v1` (ep_id -> entries, u64: the BPF target's atomics are 64-bit) under the entry's `ep_id` (the endpoint whose hook
//! tracks it, whichever side opened the flow). Promotion past the budget is refused (counted
//! `CTST_REFUSED`, once per attempt: the flow stays in the LRU tier and is asked again at its
//! next refresh), as every flow did before (TCP is still restorable there, `decide::restore`;
//! UDP is evictable). So one pod exhausts at most its own budget and, by holding flows *into*
//! a pod open, that pod's budget for *new* promotions (only while those flows stay alive, each
//! past `CT_REFRESH_NS`: short connections, refused ones and closing ones take none); it never
//! evicts an assured entry. The per-node bound is the
//! tier's `max_entries`; a full tier refuses promotions the same way.
//!
//! Count keeping: whoever inserts an entry adds 1, whoever *successfully* deletes one
//! subtracts 1 (a delete that finds nothing subtracts nothing: no double count). The agent's
//! sweep recounts and rewrites the counts of the endpoints it sweeps (a count a racing
//! promotion changed meanwhile is fixed at the next sweep; a count that wrapped below zero
//! reads as exhausted: promotions are refused, never granted past the budget by mistake).

use crate::conntrack::{CT_CLOSING, CT_REVOKED, CT_SEEN_REPLY};

/// Assured entries per endpoint (default; the agent's counts map holds one count per endpoint).
pub const ASSURED_BUDGET: u32 = 4096;

/// `pal_ctst_v1` slots (per-CPU u64 counters, summed by the agent).
/// Flows promoted into the assured tier.
pub const CTST_PROMOTED: u32 = 0;
/// Promotions refused: the endpoint's budget, or the tier, was full (per attempt: a refused
/// flow is asked again at each refresh of its stamp).
pub const CTST_REFUSED: u32 = 1;
/// Expired assured entries the datapath deleted when it found them.
pub const CTST_REAPED: u32 = 2;
pub const CTST_SLOTS: u32 = 4;

/// What a passing packet that refreshes the stamp of a flow in the LRU tier does to the
/// flow's tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promotion {
    /// Nothing: the flow has not seen its reply, or it is closing or revoked.
    Stay,
    /// A flow that has seen its reply, within the endpoint's budget: move it.
    Promote,
    /// The endpoint holds `budget` assured entries (or more: a count that wrapped reads as
    /// exhausted): the flow stays in the LRU tier, and is asked again at its next refresh.
    Refuse,
}

/// Whether a flow with `flags` belongs in the assured tier: it has seen its reply and is
/// neither closing nor revoked.
#[inline(always)]
pub fn assurable(flags: u32) -> bool {
    flags & CT_SEEN_REPLY != 0 && flags & (CT_CLOSING | CT_REVOKED) == 0
}

/// The promotion decision for a passing packet of a flow in the LRU tier that refreshes the
/// flow's stamp (so the flow has lived at least `CT_REFRESH_NS` since it was admitted, since
/// its first reply, or since its last refresh), with the flow's flags after this packet and
/// the endpoint's count.
#[inline(always)]
pub fn promotion(flags: u32, charged: u64, budget: u32) -> Promotion {
    if !assurable(flags) {
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
    use crate::conntrack::CT_SERVICE;

    #[test]
    fn only_a_flow_that_has_seen_its_reply_and_is_not_closing_moves_within_budget() {
        assert_eq!(promotion(CT_SEEN_REPLY, 0, 4), Promotion::Promote);
        assert_eq!(
            promotion(CT_SEEN_REPLY | CT_SERVICE, 3, 4),
            Promotion::Promote
        );
        // No reply yet (a flow one side talks in), closing (a FIN or a refused connection's
        // RST), revoked by a policy change: nothing.
        assert_eq!(promotion(0, 0, 4), Promotion::Stay);
        assert_eq!(promotion(CT_SEEN_REPLY | CT_CLOSING, 0, 4), Promotion::Stay);
        assert_eq!(promotion(CT_CLOSING, 0, 4), Promotion::Stay);
        assert_eq!(promotion(CT_SEEN_REPLY | CT_REVOKED, 0, 4), Promotion::Stay);
    }

    #[test]
    fn at_the_budget_or_with_a_wrapped_count_promotion_is_refused() {
        assert_eq!(promotion(CT_SEEN_REPLY, 4, 4), Promotion::Refuse);
        assert_eq!(promotion(CT_SEEN_REPLY, 5, 4), Promotion::Refuse);
        assert_eq!(promotion(CT_SEEN_REPLY, u64::MAX, 4), Promotion::Refuse);
        assert_eq!(promotion(CT_SEEN_REPLY, 0, 0), Promotion::Refuse);
        // Closing flows are not asked: they cost no count lookup.
        assert_eq!(promotion(CT_SEEN_REPLY | CT_CLOSING, 4, 4), Promotion::Stay);
    }
}
