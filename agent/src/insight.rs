//! `palisadectl explain` and `palisadectl policy lint` over a source snapshot.
//!
//! The semantics are `palisade_policy::{explain, lint}`; this module only turns a snapshot
//! into their input. The agent answers over its socket from its own snapshot (explain against
//! the policies it enforces, which keep the last valid version of a policy whose update was
//! invalid); palisadectl answers offline from a manifest directory read by the same directory
//! source the agent uses (`--manifests DIR`), so both see a manifest alike.

use std::path::Path;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use palisade_policy as policy;
use palisade_policy::explain::{Explainer, Explanation, PolicySet};
use palisade_policy::lint::{LintInput, LintReport};
use palisade_policy::manifest;

use crate::compile::cluster_facts;
use crate::endpoints::EndpointRecord;
use crate::source::{DirSource, Snapshot};

/// What explain and lint read: the cluster (policies as the source holds them, invalid ones
/// included), the Services, and what could not be read.
pub struct Facts {
    pub cluster: policy::Cluster,
    pub services: Vec<policy::ServiceInfo>,
    /// The source's Namespace objects were read (not only names from pods and policies).
    pub namespaces_known: bool,
    /// Objects (or files) that could not be read, and bad fields of pods and Services.
    pub problems: Vec<policy::Problem>,
}

impl Facts {
    /// From a snapshot; `locals` give the addresses of this node's pods (as `compile`).
    pub fn new(snap: &Snapshot, locals: &[(String, &EndpointRecord)]) -> Self {
        let (mut cluster, mut problems) = cluster_facts(snap, locals);
        cluster.policies = snap.policies.values().map(|p| (**p).clone()).collect();
        cluster.cluster_policies = snap
            .cluster_policies
            .values()
            .map(|p| (**p).clone())
            .collect();
        let mut services = Vec::new();
        for svc in snap.services.values() {
            let (info, mut found) = policy::service_info(svc);
            problems.append(&mut found);
            services.push(info);
        }
        problems.extend(
            snap.problems
                .iter()
                .map(|p| policy::Problem::new(&p.object, &p.field, &p.message)),
        );
        Facts {
            cluster,
            services,
            namespaces_known: !snap.namespaces.is_empty(),
            problems,
        }
    }

    /// A manifest directory, read once.
    pub fn from_dir(dir: &Path) -> Result<Self, crate::source::SourceError> {
        let snap = DirSource::new(dir).rescan()?.unwrap_or_default();
        Ok(Facts::new(&snap, &[]))
    }

    /// `explain FROM TO [PORT]`, against `enforced` policies (an agent's NetworkPolicies and
    /// ClusterNetworkPolicies) or else the valid policies of the cluster, with `what_if`
    /// (NetworkPolicy manifests) applied on top.
    pub fn explain(
        &self,
        enforced: Option<Enforced<'_>>,
        from: &str,
        to: &str,
        port: Option<&str>,
        what_if: Option<&str>,
    ) -> Result<Explanation, String> {
        let mut set = match enforced {
            Some((p, cnps)) => {
                let mut set = PolicySet::from_prepared(p).with_cluster_policies(cnps);
                for np in &self.cluster.policies {
                    let problems = policy::validate(np);
                    if !problems.is_empty() {
                        set.note(format!(
                            "{} is invalid ({}); the agent enforces its last valid version, if it had one",
                            policy::policy_object_name(np),
                            problems[0]
                        ));
                    }
                }
                for cnp in &self.cluster.cluster_policies {
                    if let Err(problems) = policy::prepare_cluster_policy(cnp) {
                        set.note(format!(
                            "{} is invalid ({}); the agent enforces its last valid version, if it had one",
                            policy::cnp::cluster_policy_object_name(cnp),
                            problems.first().map(ToString::to_string).unwrap_or_default()
                        ));
                    }
                }
                set
            }
            None => PolicySet::from_cluster(&self.cluster),
        };
        if let Some(yaml) = what_if {
            set.what_if(&what_if_policies(yaml)?)
                .map_err(|e| e.to_string())?;
        }
        Explainer::new(&self.cluster, &set, &self.services)
            .explain(from, to, port)
            .map_err(|e| e.to_string())
    }

    pub fn lint(&self) -> LintReport {
        policy::lint::lint(&LintInput {
            cluster: &self.cluster,
            services: &self.services,
            namespaces_known: self.namespaces_known,
            read_problems: &self.problems,
        })
    }
}

/// The NetworkPolicies of a `--what-if` manifest (multi-document YAML, read by the one
/// manifest parser with its limits and strict fields); a document that is not a readable
/// NetworkPolicy is an error naming it (a what-if answer must not silently leave out the
/// policy the user wanted to try).
pub fn what_if_policies(yaml: &str) -> Result<Vec<NetworkPolicy>, String> {
    let m = manifest::parse(yaml, manifest::Format::Yaml).map_err(|e| format!("--what-if: {e}"))?;
    if let Some(p) = m.problems.first() {
        return Err(format!("--what-if: {p}"));
    }
    let mut out = Vec::new();
    for (i, o) in m.objects {
        match o {
            policy::Object::NetworkPolicy(np) => out.push((*np).clone()),
            other => {
                return Err(format!(
                    "--what-if: document {i} is a {}; only NetworkPolicies can be tried",
                    other.kind().name()
                ));
            }
        }
    }
    if out.is_empty() {
        return Err("--what-if: the file holds no NetworkPolicy".into());
    }
    Ok(out)
}

/// What an agent enforces: its NetworkPolicies and its ClusterNetworkPolicies (the last
/// valid version of each).
pub type Enforced<'a> = (&'a [&'a policy::Prepared], &'a [&'a policy::PreparedCnp]);

/// Work answered off the agent's loop.
pub type Job = Box<dyn FnOnce() -> palisade_node_api::socket::Response + Send>;

/// One lint at a time per agent: a client asking again while one runs is told so at once
/// (lint of a large cluster takes seconds; a flood of requests must not queue that work).
static LINT_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The socket answer to `explain`.
pub fn explain_response(
    facts: &Facts,
    enforced: &[&policy::Prepared],
    enforced_cluster: &[&policy::PreparedCnp],
    from: &str,
    to: &str,
    port: Option<&str>,
    what_if: Option<&str>,
) -> palisade_node_api::socket::Response {
    use palisade_node_api::socket::Response;
    match facts.explain(Some((enforced, enforced_cluster)), from, to, port, what_if) {
        Ok(e) => match serde_json::to_value(&e) {
            Ok(v) => Response {
                ok: true,
                report: Some(v),
                ..Default::default()
            },
            Err(e) => Response::err(format!("encoding the explanation: {e}")),
        },
        Err(e) => Response::err(e),
    }
}

/// The job answering `lint` over `facts`.
pub fn lint_job(facts: Facts) -> Job {
    use palisade_node_api::socket::Response;
    use std::sync::atomic::Ordering;
    if LINT_RUNNING.swap(true, Ordering::AcqRel) {
        return Box::new(|| Response::err("a lint is already running; ask again when it ends"));
    }
    /// Clears the flag when the job has run, or is dropped without running.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            LINT_RUNNING.store(false, Ordering::Release);
        }
    }
    let done = Done;
    Box::new(move || {
        let _done = done;
        match serde_json::to_value(facts.lint()) {
            Ok(v) => Response {
                ok: true,
                report: Some(v),
                ..Default::default()
            },
            Err(e) => Response::err(format!("encoding the lint report: {e}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Facts {
        Facts::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lint"))
            .expect("the examples read")
    }

    /// Threat model: a client on the socket floods `lint` (seconds of work each on a large
    /// cluster). Only one runs at a time; the others are refused at once, and a job dropped
    /// without running frees the slot.
    #[test]
    fn one_lint_at_a_time_and_the_slot_is_freed_even_when_a_job_never_runs() {
        let first = lint_job(examples());
        let refused = lint_job(examples())();
        assert!(!refused.ok);
        assert_eq!(
            refused.error.as_deref(),
            Some("a lint is already running; ask again when it ends")
        );
        let answer = first();
        assert!(answer.ok);
        let report: LintReport =
            serde_json::from_value(answer.report.expect("a report")).expect("a lint report");
        assert_eq!(report.findings.len(), 3);
        drop(lint_job(examples()));
        assert!(lint_job(examples())().ok, "a dropped job freed the slot");
    }

    #[test]
    fn what_if_takes_only_network_policies_and_names_what_else_it_got() {
        let ok = what_if_policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n",
        )
        .expect("one policy");
        assert_eq!(ok[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            what_if_policies("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n").unwrap_err(),
            "--what-if: document 0 is a Service; only NetworkPolicies can be tried"
        );
        assert_eq!(
            what_if_policies("").unwrap_err(),
            "--what-if: the file holds no NetworkPolicy"
        );
        assert!(
            what_if_policies("kind: [x")
                .unwrap_err()
                .starts_with("--what-if: document 0: not valid YAML")
        );
        // A typo is not dropped silently: the what-if would answer without the rule meant.
        let typo = what_if_policies(
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: [{from: []}]}\n",
        )
        .unwrap_err();
        assert!(
            typo.contains("NetworkPolicy x/p") && typo.contains("spec.egress[0].from"),
            "{typo}"
        );
    }

    #[test]
    fn explain_against_enforced_policies_notes_an_invalid_current_version() {
        let mut f = examples();
        let enforced_from: Vec<policy::Prepared> = f
            .cluster
            .policies
            .iter()
            .map(|p| policy::prepare(p).expect("valid example"))
            .collect();
        // The source now holds an invalid update of one policy; the agent still enforces the
        // last valid one.
        let spec = f.cluster.policies[0].spec.as_mut().expect("spec");
        spec.policy_types = Some(vec!["Sideways".into()]);
        let enforced: Vec<&policy::Prepared> = enforced_from.iter().collect();
        let e = f
            .explain(
                Some((&enforced, &[])),
                "web/api",
                "db/postgres",
                Some("5432"),
                None,
            )
            .expect("an answer");
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("is invalid") && n.contains("last valid version")),
            "{:?}",
            e.notes
        );
        assert_eq!(e.verdict, policy::explain::Verdict::Allowed);
    }
}
