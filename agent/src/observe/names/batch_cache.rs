//! The per-batch cache of `Names::resolve`: the explainers over the enforced and the audited
//! policies, built only when some event of the batch needs one, and the explanations already
//! given, by question.

use std::collections::HashMap;
use std::rc::Rc;

use palisade_policy::explain::{DirectionExplanation, Explainer, PolicySet};
use palisade_policy::{Direction, PodKey, Prepared};

use super::Names;

/// The explainers of one batch: over the enforced policies, and over the audited ones (as if
/// enforced: what they would decide).
pub(super) struct Lazy<'n> {
    names: &'n Names,
    sets: Option<(PolicySet, PolicySet)>,
    enforced: Option<Explainer<'n>>,
    audited: Option<Explainer<'n>>,
    /// The explanations this batch asked for, by question. An explanation walks every rule of
    /// the policies selecting the pod; a burst of new flows between the same pods on the same
    /// port (alike but for the client's port) asks the same question, answered once here
    /// instead of once per event (with 10,000 rules, once per event cost `bench datapath`'s
    /// TCP_CRR ~5 points with events on: docs/performance.md).
    explained: HashMap<Question, Rc<DirectionExplanation>>,
}

/// An explanation's question: the pod, the direction, the peer, protocol and port, and
/// whether the audited policies answer it.
type Question = (PodKey, Direction, palisade_policy::Endpoint, u8, u16, bool);

impl<'n> Lazy<'n> {
    pub(super) fn new(names: &'n Names) -> Self {
        Lazy {
            names,
            sets: None,
            enforced: None,
            audited: None,
            explained: HashMap::new(),
        }
    }

    /// `Explainer::direction_on_port` of the enforced (or audited) explainer, once per
    /// question per batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn direction(
        &mut self,
        audit: bool,
        pod: &PodKey,
        info: &palisade_policy::PodInfo,
        dir: Direction,
        peer: palisade_policy::Endpoint,
        proto: u8,
        port: u16,
    ) -> Rc<DirectionExplanation> {
        let question = (pod.clone(), dir, peer, proto, port, audit);
        if let Some(e) = self.explained.get(&question) {
            return e.clone();
        }
        let e = Rc::new(
            self.get(audit)
                .direction_on_port(info, dir, &question.2, proto, port),
        );
        self.explained.insert(question, e.clone());
        e
    }

    fn get(&mut self, audit: bool) -> &Explainer<'n> {
        let names = self.names;
        let sets = self.sets.get_or_insert_with(|| {
            let refs: Vec<&Prepared> = names.prepared.iter().map(|p| &**p).collect();
            let all = PolicySet::from_prepared(&refs);
            let audited = all.audited();
            (all, audited)
        });
        let slot = if audit {
            &mut self.audited
        } else {
            &mut self.enforced
        };
        slot.get_or_insert_with(|| {
            let set = if audit { &sets.1 } else { &sets.0 };
            Explainer::new(&names.cluster, set, &[])
        })
    }
}
