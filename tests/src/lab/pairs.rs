//! Probing chosen (client, server, case, family) quadruples rather than every pair: what a
//! conformance assertion names. All are probed at once, one thread per (client, server,
//! family), so a round costs the probe timeout once when anything is blocked.

use super::probe::{self, Target};
use super::probing::in_parallel;
use super::{Case, Family, Lab, LabError};

/// One probe: from endpoint `from` to endpoint `to` (pod ids `ns/name` or outside hosts), on
/// `case`, to `to`'s address of `family`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub from: String,
    pub to: String,
    pub case: Case,
    pub family: Family,
}

impl Lab {
    /// Whether each pair's probe got through, in `pairs`' order.
    pub fn probe_pairs(&self, pairs: &[Pair]) -> Result<Vec<bool>, LabError> {
        let families: Vec<Family> = pairs.iter().map(|p| p.family).collect();
        if families.contains(&Family::V4) {
            self.wait_links_ready(Family::V4)?;
        }
        if families.contains(&Family::V6) {
            self.wait_links_ready(Family::V6)?;
        }
        // Groups: (from, to, family) -> the cases asked, and where their answers go.
        let mut groups: Vec<(&Pair, Vec<(Case, usize)>)> = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|(g, _)| g.from == p.from && g.to == p.to && g.family == p.family)
            {
                Some((_, cases)) => cases.push((p.case, i)),
                None => groups.push((p, vec![(p.case, i)])),
            }
        }
        let mut plan = Vec::new();
        for (g, cases) in &groups {
            let netns = self
                .endpoint(&g.from)
                .map(|(n, _)| n.to_string())
                .ok_or_else(|| LabError::Config {
                    reason: format!("no endpoint {}", g.from),
                })?;
            let target = Target {
                id: g.to.clone(),
                addr: self.endpoint_addr(&g.to, g.family)?,
            };
            plan.push((netns, g.from.clone(), target, cases.clone()));
        }
        let timeout = self.config.probe_timeout;
        let seen = &self.sctp_seen;
        let results = in_parallel(&plan, "probe", |(netns, from, target, cases)| {
            let only: Vec<Case> = cases.iter().map(|(c, _)| *c).collect();
            let out = probe::probe_from(
                netns,
                from,
                std::slice::from_ref(target),
                &only,
                timeout,
                seen,
            )?;
            Ok(out
                .into_iter()
                .map(|o| {
                    let i = cases
                        .iter()
                        .find(|(c, _)| *c == o.case)
                        .map_or(usize::MAX, |(_, i)| *i);
                    (i, o.reachable)
                })
                .collect::<Vec<_>>())
        })?;
        let mut answers = vec![false; pairs.len()];
        for r in results {
            for (i, ok) in r {
                if let Some(a) = answers.get_mut(i) {
                    *a = ok;
                }
            }
        }
        Ok(answers)
    }
}
