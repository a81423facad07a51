//! deploy/ loaded for the deploy tests (`deploy_agent_daemonset.rs`,
//! `deploy_objects_and_uninstall.rs`): every YAML object parsed into its k8s-openapi type with
//! no field that type does not know, and lookups into them: the DaemonSets, their pod specs and
//! containers, the ConfigMap, a container's resolved environment, the agent's effective
//! settings (its flags and defaults, asked from `palisade-agent --help`, overridden by the
//! DaemonSet's args) and the hostPath volume covering a path.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;

pub const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
pub const AGENT: &str = env!("CARGO_BIN_EXE_palisade-agent");
pub const PALISADECTL: &str = env!("CARGO_BIN_EXE_palisadectl");
pub const NAMESPACE: &str = "kube-system";

#[derive(Debug)]
pub enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    ConfigMap(Box<ConfigMap>),
    DaemonSet(Box<DaemonSet>),
    /// kind's cluster configuration (no k8s-openapi type; checked field by field).
    KindCluster(serde_json::Value),
}

pub struct Doc {
    pub file: PathBuf,
    pub object: Object,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// The first place where `a` and `b` differ, as a path.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let here = format!("{at}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = first_difference(p, q, &here) {
                            return Some(d);
                        }
                    }
                    (Some(_), None) | (None, Some(_)) => return Some(here),
                    (None, None) => {}
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}[{i}]"))),
        _ => (a != b).then(|| at.to_string()),
    }
}

/// Parses `value` as `T` and serializes it back: anything the type does not know (a misspelt
/// field, a field at the wrong level) is dropped on the way and shows up as a difference.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &Path, value: &serde_json::Value) -> T {
    let t: T =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let back = serde_json::to_value(&t).unwrap();
    if let Some(at) = first_difference(value, &back, "") {
        panic!(
            "{}: {at} is not a field of {} (or does not survive a round trip)",
            file.display(),
            std::any::type_name::<T>()
        );
    }
    t
}

pub fn all_docs() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(Path::new(DEPLOY), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let values: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for v in values {
            let api_version = v["apiVersion"].as_str().unwrap_or_default();
            let kind = v["kind"].as_str().unwrap_or_default();
            let object = match (api_version, kind) {
                ("v1", "Namespace") => Object::Namespace(typed(&file, &v)),
                ("v1", "ServiceAccount") => Object::ServiceAccount(typed(&file, &v)),
                ("v1", "ConfigMap") => Object::ConfigMap(typed(&file, &v)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    Object::ClusterRole(typed(&file, &v))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    Object::ClusterRoleBinding(typed(&file, &v))
                }
                ("apps/v1", "DaemonSet") => Object::DaemonSet(typed(&file, &v)),
                ("kind.x-k8s.io/v1alpha4", "Cluster") => Object::KindCluster(v),
                _ => panic!(
                    "{}: unknown object {api_version}/{kind}: add it to this test",
                    file.display()
                ),
            };
            docs.push(Doc {
                file: file.clone(),
                object,
            });
        }
    }
    docs
}

pub fn rel(file: &Path) -> String {
    file.strip_prefix(DEPLOY)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// The one manifest the install guide applies: `kubectl apply -f deploy/palisade.yaml`.
const INSTALLED_FILES: [&str; 1] = ["palisade.yaml"];

/// The objects the install guide applies.
pub fn installed() -> Vec<Doc> {
    all_docs()
        .into_iter()
        .filter(|d| INSTALLED_FILES.contains(&rel(&d.file).as_str()))
        .collect()
}

pub fn daemonset(docs: &[Doc], name: &str) -> DaemonSet {
    let found: Vec<_> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::DaemonSet(ds) if ds.metadata.name.as_deref() == Some(name) => {
                Some((**ds).clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one DaemonSet {name}");
    found.into_iter().next().unwrap()
}

pub fn pod_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec.template.spec.clone().unwrap()
}

pub fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

pub fn config_map(docs: &[Doc]) -> ConfigMap {
    let found: Vec<_> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::ConfigMap(c) => Some((**c).clone()),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one ConfigMap");
    found.into_iter().next().unwrap()
}

/// The agent's flags with their defaults, from its own `--help`.
fn agent_defaults() -> BTreeMap<String, Option<String>> {
    let out = Command::new(AGENT)
        .arg("--help")
        .env_remove("PALISADE_SOURCE")
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            flags.insert(name.clone(), None);
            current = Some(name);
        }
        if let (Some(name), Some(i)) = (&current, line.find("[default: ")) {
            let v = &line[i + "[default: ".len()..];
            let v = &v[..v.find(']').unwrap()];
            flags.insert(name.clone(), Some(v.to_string()));
        }
    }
    assert!(
        flags.contains_key("bpffs"),
        "unexpected --help format:\n{help}"
    );
    flags
}

/// The environment of a container, resolved (`configMapKeyRef` from the ConfigMap;
/// `fieldRef` as `fieldRef:<path>`).
pub fn env_of(c: &Container, cm: &ConfigMap) -> BTreeMap<String, String> {
    let data = cm.data.clone().unwrap_or_default();
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(from)) => {
                    if let Some(f) = &from.field_ref {
                        format!("fieldRef:{}", f.field_path)
                    } else if let Some(k) = &from.config_map_key_ref {
                        assert_eq!(k.name, cm.metadata.name.clone().unwrap());
                        data.get(&k.key)
                            .unwrap_or_else(|| panic!("ConfigMap has no key {}", k.key))
                            .clone()
                    } else {
                        panic!("env {}: unsupported valueFrom", e.name)
                    }
                }
                _ => panic!("env {}: neither value nor valueFrom", e.name),
            };
            (e.name.clone(), value)
        })
        .collect()
}

/// `$(VAR)` expanded as the kubelet does.
pub fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    assert!(!out.contains("$("), "{arg}: undefined variable");
    out
}

/// The agent's effective settings: its defaults, overridden by the DaemonSet's args.
pub fn agent_settings(docs: &[Doc]) -> BTreeMap<String, String> {
    let ds = daemonset(docs, "palisade");
    let spec = pod_spec(&ds);
    let agent = container(&spec, "agent");
    let env = env_of(agent, &config_map(docs));
    let mut settings: BTreeMap<String, String> = agent_defaults()
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    for arg in agent.args.iter().flatten() {
        let arg = expand(arg, &env);
        let (k, v) = arg
            .strip_prefix("--")
            .and_then(|a| a.split_once('='))
            .unwrap_or_else(|| panic!("agent arg {arg:?}: write it as --flag=value"));
        settings.insert(k.to_string(), v.to_string());
    }
    settings
}

/// The hostPath volume mounted at `path` or at one of its ancestors, checking that the node's
/// path and the container's are the same (the plugin on the node uses the same paths).
pub fn host_mount_covering<'a>(spec: &'a PodSpec, c: &Container, path: &str) -> (&'a Volume, bool) {
    let mut best: Option<(&Volume, &str, bool)> = None;
    for m in c.volume_mounts.iter().flatten() {
        if Path::new(path).starts_with(&m.mount_path)
            && best.is_none_or(|(_, p, _)| m.mount_path.len() > p.len())
        {
            let v = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .unwrap_or_else(|| panic!("mount {} of an undefined volume", m.name));
            best = Some((v, &m.mount_path, m.read_only.unwrap_or(false)));
        }
    }
    let (v, mount_path, read_only) =
        best.unwrap_or_else(|| panic!("{}: nothing mounted over {path}", c.name));
    let host = v
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{}: {path} is not on a hostPath volume", c.name));
    assert_eq!(
        host.path, mount_path,
        "{}: {path}: node path and container path differ",
        c.name
    );
    (v, read_only)
}
