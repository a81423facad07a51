//! Label selectors (`matchLabels` + `matchExpressions`), parsed once and matched many times.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::Labels;
use crate::validate::Problem;

/// One requirement; a selector matches when all of its requirements do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Requirement {
    /// `In` (and each `matchLabels` pair, as `In` with one value): the key is present with one
    /// of the values.
    In(String, BTreeSet<String>),
    /// `NotIn`: the key is absent, or present with none of the values.
    NotIn(String, BTreeSet<String>),
    Exists(String),
    /// `DoesNotExist`: the key is absent.
    DoesNotExist(String),
}

/// A parsed label selector. No requirement (`{}`) selects everything in scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Selector {
    pub reqs: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// An `In` requirement usable as an index lookup: every match has `key` = one of `values`.
    pub fn index_hint(&self) -> Option<(&str, &BTreeSet<String>)> {
        self.reqs
            .iter()
            .filter_map(|r| match r {
                Requirement::In(k, vs) => Some((k.as_str(), vs)),
                _ => None,
            })
            .min_by_key(|(_, vs)| vs.len())
    }

    /// Parses `sel`, appending a problem (under `field`) for each invalid part. Returns `None`
    /// when anything is invalid.
    pub fn parse(
        sel: &LabelSelector,
        object: &str,
        field: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Selector> {
        let before = problems.len();
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            let f = format!("{field}.matchLabels[{k:?}]");
            check_key(k, object, &f, problems);
            check_value(v, object, &f, problems);
            reqs.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            check_key(&e.key, object, &format!("{f}.key"), problems);
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            for v in &values {
                check_value(v, object, &format!("{f}.values"), problems);
            }
            let needs_values = match e.operator.as_str() {
                "In" | "NotIn" => true,
                "Exists" | "DoesNotExist" => false,
                op => {
                    problems.push(Problem::new(
                        object,
                        format!("{f}.operator"),
                        format!(
                            "unknown operator {op:?} (expected In, NotIn, Exists or DoesNotExist)"
                        ),
                    ));
                    continue;
                }
            };
            if needs_values && values.is_empty() {
                problems.push(Problem::new(
                    object,
                    format!("{f}.values"),
                    format!("operator {} needs at least one value", e.operator),
                ));
                continue;
            }
            if !needs_values && !values.is_empty() {
                problems.push(Problem::new(
                    object,
                    format!("{f}.values"),
                    format!("operator {} takes no values, got {values:?}", e.operator),
                ));
                continue;
            }
            let k = e.key.clone();
            reqs.push(match e.operator.as_str() {
                "In" => Requirement::In(k, values),
                "NotIn" => Requirement::NotIn(k, values),
                "Exists" => Requirement::Exists(k),
                _ => Requirement::DoesNotExist(k),
            });
        }
        (problems.len() == before).then_some(Selector { reqs })
    }
}

fn is_name_part(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_key(k: &str, object: &str, field: &str, problems: &mut Vec<Problem>) {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            })
    });
    if !prefix_ok || !is_name_part(name, 63) {
        problems.push(Problem::new(
            object,
            field,
            format!("{k:?} is not a valid label key"),
        ));
    }
}

fn check_value(v: &str, object: &str, field: &str, problems: &mut Vec<Problem>) {
    if !v.is_empty() && !is_name_part(v, 63) {
        problems.push(Problem::new(
            object,
            field,
            format!("{v:?} is not a valid label value"),
        ));
    }
}
