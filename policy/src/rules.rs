//! Rule identities and their stable `rule_ref` numbers (what the datapath's counters,
//! conntrack entries and `palisadectl` name).

use std::collections::{BTreeMap, HashMap};

use crate::validate::Direction;

/// Which kind of object a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleKind {
    /// `spec.<direction>[index]` of NetworkPolicy `namespace/policy`.
    NetworkPolicy,
    /// `spec.<direction>[index]` of ClusterNetworkPolicy `policy` (cluster-scoped: the
    /// namespace is empty).
    ClusterNetworkPolicy,
    /// No policy tier decided, so the default allow applies, at an endpoint that a
    /// ClusterNetworkPolicy makes the datapath look up (namespace and policy empty, index 0).
    DefaultAllow,
}

/// Identity of one rule: `spec.<direction>[index]` of policy `namespace/policy` (see
/// [`RuleKind`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    pub kind: RuleKind,
    pub namespace: String,
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

impl RuleId {
    /// Rule `index` of `direction` of NetworkPolicy `namespace/policy`.
    pub fn network_policy(
        namespace: impl Into<String>,
        policy: impl Into<String>,
        direction: Direction,
        index: usize,
    ) -> Self {
        RuleId {
            kind: RuleKind::NetworkPolicy,
            namespace: namespace.into(),
            policy: policy.into(),
            direction,
            index,
        }
    }

    /// Rule `index` of `direction` of ClusterNetworkPolicy `policy`.
    pub fn cluster_network_policy(
        policy: impl Into<String>,
        direction: Direction,
        index: usize,
    ) -> Self {
        RuleId {
            kind: RuleKind::ClusterNetworkPolicy,
            namespace: String::new(),
            policy: policy.into(),
            direction,
            index,
        }
    }

    /// The default allow in `direction` (no tier decided).
    pub fn default_allow(direction: Direction) -> Self {
        RuleId {
            kind: RuleKind::DefaultAllow,
            namespace: String::new(),
            policy: String::new(),
            direction,
            index: 0,
        }
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.direction.name();
        match self.kind {
            RuleKind::NetworkPolicy => write!(
                f,
                "{}/{} {dir}[{}]",
                self.namespace, self.policy, self.index
            ),
            RuleKind::ClusterNetworkPolicy => write!(
                f,
                "ClusterNetworkPolicy {} {dir}[{}]",
                self.policy, self.index
            ),
            RuleKind::DefaultAllow => write!(f, "no policy decided: default allow ({dir})"),
        }
    }
}

/// Stable `rule_ref` numbers (>= 1) for rules. The agent keeps one registry for its lifetime:
/// an unchanged rule keeps its number across compiles, and a number is never given to another
/// rule, so a `rule_ref` seen in a counter or a conntrack entry always names the same rule.
#[derive(Clone, Debug, Default)]
pub struct RuleRegistry {
    /// (kind, namespace, policy) -> references of its ingress and egress rules, by index. A
    /// rule without a reference yet has 0 there.
    by_policy: HashMap<PolicyKey, [Vec<u32>; 2]>,
    by_ref: BTreeMap<u32, RuleId>,
    last: u32,
    /// Bit `r` set: reference `r` was used since the last `drop_unused`.
    used: Vec<u64>,
}

type PolicyKey = (RuleKind, String, String);

fn policy_key(id: &RuleId) -> PolicyKey {
    (id.kind, id.namespace.clone(), id.policy.clone())
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl RuleRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn mark_used(&mut self, r: u32) {
        let (word, bit) = (r as usize / 64, r % 64);
        if self.used.len() <= word {
            self.used.resize(word + 1, 0);
        }
        self.used[word] |= 1 << bit;
    }

    fn is_used(&self, r: u32) -> bool {
        self.used
            .get(r as usize / 64)
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    /// The reference of `id`, assigning the next free number on first sight. Marks it used.
    pub fn rule_ref(&mut self, id: &RuleId) -> u32 {
        let r = match self.get(id) {
            Some(r) => r,
            None => {
                self.last += 1;
                let refs =
                    &mut self.by_policy.entry(policy_key(id)).or_default()[dir_index(id.direction)];
                if refs.len() <= id.index {
                    refs.resize(id.index + 1, 0);
                }
                refs[id.index] = self.last;
                self.by_ref.insert(self.last, id.clone());
                self.last
            }
        };
        self.mark_used(r);
        r
    }

    /// The references of rules `0..count` of one direction of one policy, assigning numbers
    /// to those seen for the first time (in index order). Marks them used.
    pub(crate) fn policy_refs(
        &mut self,
        kind: RuleKind,
        namespace: &str,
        policy: &str,
        direction: Direction,
        count: usize,
    ) -> Vec<u32> {
        let key = (kind, namespace.to_string(), policy.to_string());
        let mut refs = self
            .by_policy
            .get(&key)
            .map(|d| d[dir_index(direction)].clone())
            .unwrap_or_default();
        if refs.len() < count {
            refs.resize(count, 0);
        }
        let mut assigned = false;
        for (index, r) in refs.iter_mut().enumerate().take(count) {
            if *r == 0 {
                self.last += 1;
                *r = self.last;
                self.by_ref.insert(
                    self.last,
                    RuleId {
                        kind,
                        namespace: namespace.to_string(),
                        policy: policy.to_string(),
                        direction,
                        index,
                    },
                );
                assigned = true;
            }
        }
        for &r in &refs[..count] {
            self.mark_used(r);
        }
        if assigned {
            self.by_policy.entry(key).or_default()[dir_index(direction)] = refs.clone();
        }
        refs.truncate(count);
        refs
    }

    /// The reference of `id`, if it has one (does not assign or mark).
    pub fn get(&self, id: &RuleId) -> Option<u32> {
        self.by_policy
            .get(&policy_key(id))
            .and_then(|d| d[dir_index(id.direction)].get(id.index))
            .copied()
            .filter(|r| *r != 0)
    }

    /// The rule behind a reference.
    pub fn describe(&self, rule_ref: u32) -> Option<&RuleId> {
        self.by_ref.get(&rule_ref)
    }

    pub fn len(&self) -> usize {
        self.by_ref.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ref.is_empty()
    }

    /// Forgets every rule not referenced since the previous call (i.e. by the compiles in
    /// between) and returns their references. Call it once the maps no longer hold them.
    pub fn drop_unused(&mut self) -> Vec<u32> {
        let stale: Vec<u32> = self
            .by_ref
            .keys()
            .filter(|r| !self.is_used(**r))
            .copied()
            .collect();
        for r in &stale {
            if let Some(id) = self.by_ref.remove(r)
                && let Some(d) = self.by_policy.get_mut(&policy_key(&id))
                && let Some(slot) = d[dir_index(id.direction)].get_mut(id.index)
            {
                *slot = 0;
            }
        }
        self.by_policy
            .retain(|_, d| d.iter().flatten().any(|r| *r != 0));
        self.used.clear();
        stale
    }
}
