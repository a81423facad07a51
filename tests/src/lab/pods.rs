//! The model's pods made real: the manifests directory rewritten from the base model and the
//! user manifests, and pods created (CNI ADD, servers started) or torn down (CNI DEL) to match.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;

use super::probe::PodServer;
use super::{Lab, LabError, ModelPod, PodRuntime, allow_ping, model, netns, write_atomic};

impl Lab {
    /// Recomputes the model from the base and the user manifests, rewrites the manifests
    /// directory, and creates or removes pods.
    pub(super) fn sync(&mut self) -> Result<(), LabError> {
        let mut model = self.base.clone();
        for docs in self.user.values() {
            model.overlay(docs)?;
        }
        self.model = model;
        self.write_user_files()?;
        self.reconcile_pods()
    }

    fn write_user_files(&self) -> Result<(), LabError> {
        let dir = self.manifests_dir();
        let wanted: BTreeSet<String> = self
            .user
            .keys()
            .map(|n| format!("50-user-{n}.yaml"))
            .collect();
        let entries = std::fs::read_dir(&dir).map_err(|source| LabError::Io {
            op: "listing",
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with("50-user-") && !wanted.contains(&f) {
                std::fs::remove_file(e.path()).map_err(|source| LabError::Io {
                    op: "removing",
                    path: e.path(),
                    source,
                })?;
            }
        }
        for (name, docs) in &self.user {
            let rest: Vec<Value> = docs
                .iter()
                .filter(|d| !model::is_model_object(d))
                .cloned()
                .collect();
            write_atomic(
                &dir.join(format!("50-user-{name}.yaml")),
                &model::join_documents(&rest),
            )?;
        }
        Ok(())
    }

    pub(super) fn write_model(&self) -> Result<(), LabError> {
        let ips: BTreeMap<String, Vec<IpAddr>> = self
            .pods
            .iter()
            .map(|(id, p)| (id.clone(), p.ips.clone()))
            .collect();
        write_atomic(
            &self.manifests_dir().join("00-model.yaml"),
            &self.model.to_yaml(&ips),
        )
    }

    /// Makes the running pods match the model: removes pods that left it (or moved node),
    /// creates the new ones (model written and agents synced first: the plugin asks the
    /// agent about the pod), then writes the model again with the new pods' addresses.
    pub(super) fn reconcile_pods(&mut self) -> Result<(), LabError> {
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(id, p)| self.model.pod(id).is_none_or(|m| m.node != p.node))
            .map(|(id, _)| id.clone())
            .collect();
        let new: Vec<ModelPod> = self
            .model
            .pods
            .iter()
            .filter(|m| self.pods.get(&m.id()).is_none_or(|p| p.node != m.node))
            .cloned()
            .collect();
        for id in &stale {
            if let Some(p) = self.pods.remove(id) {
                self.teardown_pod(p)?;
            }
        }
        self.write_model()?;
        if new.is_empty() {
            return Ok(());
        }
        self.wait_synced()?;
        for m in new {
            self.add_pod(&m)?;
        }
        self.write_model()
    }

    fn add_pod(&mut self, m: &ModelPod) -> Result<(), LabError> {
        if m.host_network {
            return self.add_host_network_pod(m);
        }
        let name = format!("{}-{}-{}", self.id, m.namespace, m.name);
        netns::add(&name)?;
        let mut rt = PodRuntime {
            netns: name.clone(),
            container_id: name.clone(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            node: m.node,
            ips: Vec::new(),
            server: None,
            added: false,
            host_network: false,
        };
        let id = m.id();
        // Recorded first, so a failure below still tears down what exists.
        let node = &self.nodes[m.node];
        let result = allow_ping(&name).and_then(|()| {
            node.cni.add(
                &rt.container_id,
                &rt.netns,
                (&m.namespace, &m.name),
                &m.requested_ips,
            )
        });
        match result {
            Ok(ips) => {
                rt.ips = ips;
                rt.added = true;
            }
            Err(e) => {
                self.pods.insert(id, rt);
                return Err(e);
            }
        }
        match PodServer::start(&name, &id, &self.model.serve, &self.sctp_seen) {
            Ok(s) => rt.server = Some(s),
            Err(e) => {
                self.pods.insert(id, rt);
                return Err(e);
            }
        }
        self.log(format_args!(
            "lab: pod {id} on {} ({name}): {:?}",
            node.name, rt.ips
        ));
        self.pods.insert(id, rt);
        Ok(())
    }

    pub(super) fn teardown_pod(&self, mut p: PodRuntime) -> Result<(), LabError> {
        p.server = None;
        if p.host_network {
            // Its namespace is its node's.
            return Ok(());
        }
        if p.added {
            self.nodes[p.node]
                .cni
                .del(&p.container_id, &p.netns, (&p.namespace, &p.name))?;
        }
        netns::del(&p.netns)
    }
}
