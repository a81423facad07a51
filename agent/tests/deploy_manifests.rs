//! deploy/ holds together: every YAML object parses into its k8s-openapi type with no field
//! that type does not know, and the DaemonSet agrees with the agent binary (its flags and
//! defaults, asked from `palisade-agent --help`), with the conflist, with the RBAC, with the
//! Dockerfile and with the uninstall script. The ClusterRole's rules are checked against the
//! watched kinds by `rbac.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Probe, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const AGENT: &str = env!("CARGO_BIN_EXE_palisade-agent");
const PALISADECTL: &str = env!("CARGO_BIN_EXE_palisadectl");
const NAMESPACE: &str = "kube-system";
const CONFLIST: &str = "10-palisade.conflist";

/// The capabilities the agent container gets, and why, are documented in deploy/palisade.yaml.
const AGENT_CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];

#[derive(Debug)]
enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    ConfigMap(Box<ConfigMap>),
    DaemonSet(Box<DaemonSet>),
    /// kind's cluster configuration (no k8s-openapi type; checked field by field).
    KindCluster(serde_json::Value),
}

struct Doc {
    file: PathBuf,
    object: Object,
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

fn all_docs() -> Vec<Doc> {
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

fn rel(file: &Path) -> String {
    file.strip_prefix(DEPLOY)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// The one manifest the install guide applies: `kubectl apply -f deploy/palisade.yaml`.
const INSTALLED_FILES: [&str; 1] = ["palisade.yaml"];

/// The objects the install guide applies.
fn installed() -> Vec<Doc> {
    all_docs()
        .into_iter()
        .filter(|d| INSTALLED_FILES.contains(&rel(&d.file).as_str()))
        .collect()
}

fn daemonset(docs: &[Doc], name: &str) -> DaemonSet {
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

fn pod_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec.template.spec.clone().unwrap()
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn config_map(docs: &[Doc]) -> ConfigMap {
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
fn env_of(c: &Container, cm: &ConfigMap) -> BTreeMap<String, String> {
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
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    assert!(!out.contains("$("), "{arg}: undefined variable");
    out
}

/// The agent's effective settings: its defaults, overridden by the DaemonSet's args.
fn agent_settings(docs: &[Doc]) -> BTreeMap<String, String> {
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
fn host_mount_covering<'a>(spec: &'a PodSpec, c: &Container, path: &str) -> (&'a Volume, bool) {
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

fn conflist() -> serde_json::Value {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join(CONFLIST)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_object_in_deploy_parses_into_its_kubernetes_type_with_no_unknown_field() {
    let docs = all_docs();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for d in &docs {
        let kind = format!("{:?}", d.object);
        let kind = kind.split('(').next().unwrap().to_string();
        *kinds.entry(kind).or_default() += 1;
        if let Object::KindCluster(_) = d.object {
            assert_eq!(
                rel(&d.file),
                "kind.yaml",
                "the kind config the README names"
            );
        }
    }
    let expected: BTreeMap<String, usize> = [
        ("ServiceAccount", 1),
        ("ClusterRole", 1),
        ("ClusterRoleBinding", 1),
        ("ConfigMap", 1),
        ("DaemonSet", 2),
        ("KindCluster", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds, expected);
}

#[test]
fn everything_namespaced_lives_in_kube_system_which_deploy_does_not_create() {
    for d in all_docs() {
        let ns = match &d.object {
            Object::ServiceAccount(o) => o.metadata.namespace.clone(),
            Object::ConfigMap(o) => o.metadata.namespace.clone(),
            Object::DaemonSet(o) => o.metadata.namespace.clone(),
            Object::Namespace(n) => panic!(
                "{}: Namespace {:?}: use kube-system, which exists already",
                d.file.display(),
                n.metadata.name
            ),
            Object::ClusterRole(_) | Object::ClusterRoleBinding(_) | Object::KindCluster(_) => {
                continue;
            }
        };
        assert_eq!(ns.as_deref(), Some(NAMESPACE), "{}", d.file.display());
    }
}

#[test]
fn conflist_chains_palisade_then_portmap_and_the_configmap_carries_it_verbatim() {
    let docs = installed();
    let conf = conflist();
    assert_eq!(conf["cniVersion"], "1.1.0");
    assert_eq!(conf["name"], "palisade");
    let types: Vec<&str> = conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["palisade", "portmap"]);
    // A runtime passes requested addresses (`runtimeConfig.ips`) only to a plugin that
    // declares the capability.
    assert_eq!(conf["plugins"][0]["capabilities"]["ips"], true);
    // Same paths as the agent: the plugin finds the agent and the pod CIDR file it writes.
    let settings = agent_settings(&docs);
    let p = &conf["plugins"][0];
    assert_eq!(p["agentSocket"], settings["socket"].as_str());
    assert_eq!(p["stateDir"], settings["state-dir"].as_str());
    assert_eq!(
        p["podCIDRFile"],
        format!("{}/podcidrs.json", settings["state-dir"]).as_str()
    );
    let cm = config_map(&docs);
    let data = cm.data.unwrap();
    let carried: serde_json::Value = serde_json::from_str(&data[CONFLIST]).unwrap();
    assert_eq!(carried, conf, "ConfigMap's {CONFLIST} differs from deploy/");
}

#[test]
fn agent_runs_on_every_node_in_the_host_network_at_node_critical_priority() {
    let docs = installed();
    let ds = daemonset(&docs, "palisade");
    let spec = pod_spec(&ds);
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "no toleration of every taint: {:?}",
        spec.tolerations
    );
    let agent = container(&spec, "agent");
    assert_eq!(
        agent.command.as_deref(),
        Some(&["palisade-agent".into()][..])
    );
    let env = env_of(agent, &config_map(&docs));
    assert_eq!(env["NODE_NAME"], "fieldRef:spec.nodeName");
    assert_eq!(agent_settings(&docs)["source"], "kube");
}

#[test]
fn agent_has_exactly_bpf_net_admin_and_perfmon_and_only_the_bpffs_mount_is_privileged() {
    let docs = installed();
    let spec = pod_spec(&daemonset(&docs, "palisade"));
    let agent = container(&spec, "agent");
    let sc = agent.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(AGENT_CAPABILITIES));
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let privileged = c
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        assert_eq!(privileged, c.name == "mount-bpffs", "{}", c.name);
        if !privileged {
            let caps = c
                .security_context
                .as_ref()
                .and_then(|s| s.capabilities.as_ref());
            assert_eq!(
                caps.and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()]),
                "{} drops every capability it does not add",
                c.name
            );
        }
    }
    // The privileged one only mounts bpffs, and only when the node has not.
    let mount = container(&spec, "mount-bpffs");
    let script = mount.command.as_ref().unwrap().last().unwrap();
    let mounts: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("mount "))
        .collect();
    assert_eq!(mounts, ["mount -t bpf bpffs /sys/fs/bpf"]);
    assert!(script.contains("stat -f -c %T /sys/fs/bpf)\" = bpf_fs"));
}

#[test]
fn agent_state_paths_are_host_paths_mounted_at_the_same_place() {
    let docs = installed();
    let settings = agent_settings(&docs);
    let spec = pod_spec(&daemonset(&docs, "palisade"));
    let agent = container(&spec, "agent");
    let socket_dir = Path::new(&settings["socket"]).parent().unwrap();
    for path in [
        settings["bpffs"].as_str(),
        settings["state-dir"].as_str(),
        socket_dir.to_str().unwrap(),
    ] {
        let (_, read_only) = host_mount_covering(&spec, agent, path);
        assert!(!read_only, "agent writes {path}");
    }
    // bpffs: mounted by the init container and seen by the agent through propagation.
    let bpffs_mount = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&settings["bpffs"]).starts_with(&m.mount_path))
            .cloned()
            .unwrap()
    };
    assert_eq!(bpffs_mount(agent).mount_path, "/sys/fs/bpf");
    assert_eq!(
        bpffs_mount(agent).mount_propagation.as_deref(),
        Some("HostToContainer")
    );
    let init = container(&spec, "mount-bpffs");
    assert_eq!(
        bpffs_mount(init).mount_propagation.as_deref(),
        Some("Bidirectional")
    );
    // The object comes with the image, not from the node.
    let object = &settings["bpf-object"];
    assert!(
        agent
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| !Path::new(object).starts_with(&m.mount_path)),
        "{object} is hidden by a mount"
    );
}

#[test]
fn agent_args_and_probe_commands_are_accepted_by_the_binaries() {
    let docs = installed();
    let spec = pod_spec(&daemonset(&docs, "palisade"));
    let agent = container(&spec, "agent");
    let env = env_of(agent, &config_map(&docs));
    let args: Vec<String> = agent
        .args
        .iter()
        .flatten()
        .map(|a| expand(a, &env))
        .collect();
    // clap rejects an unknown flag or a bad value before it gets to --help.
    let out = Command::new(AGENT)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "palisade-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (kind, probe) in probes(agent) {
        let cmd = probe.exec.unwrap().command.unwrap();
        let out = Command::new(PALISADECTL)
            .args(&cmd[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{kind} probe {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn probes(c: &Container) -> Vec<(&'static str, Probe)> {
    [
        ("startup", &c.startup_probe),
        ("readiness", &c.readiness_probe),
        ("liveness", &c.liveness_probe),
    ]
    .into_iter()
    .filter_map(|(k, p)| Some((k, p.clone()?)))
    .collect()
}

#[test]
fn probes_ask_palisadectl_status_on_the_agents_socket() {
    let docs = installed();
    let settings = agent_settings(&docs);
    let spec = pod_spec(&daemonset(&docs, "palisade"));
    let probes = probes(container(&spec, "agent"));
    let kinds: Vec<&str> = probes.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["startup", "readiness", "liveness"]);
    for (kind, probe) in probes {
        let cmd = probe.exec.unwrap().command.unwrap();
        assert_eq!(
            cmd,
            [
                "palisadectl".to_string(),
                format!("--socket={}", settings["socket"]),
                "status".to_string()
            ],
            "{kind} probe"
        );
    }
}

#[test]
fn install_cni_writes_the_plugin_and_the_conflist_under_a_temporary_name_then_renames() {
    let docs = installed();
    let spec = pod_spec(&daemonset(&docs, "palisade"));
    let init = container(&spec, "install-cni");
    let script = init.command.as_ref().unwrap().last().unwrap();
    let lines: Vec<Vec<&str>> = script
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (source, dest) in [
        ("/usr/local/bin/palisade", "/opt/cni/bin/palisade"),
        (
            "/etc/palisade/10-palisade.conflist",
            "/etc/cni/net.d/10-palisade.conflist",
        ),
    ] {
        // 1. the file is copied to a temporary name in the destination's directory,
        //    which libcni does not load as a config;
        // 2. renamed onto its final name, the only write of that name.
        let mv = lines
            .iter()
            .position(|l| l.first() == Some(&"mv") && l.last() == Some(&dest))
            .unwrap_or_else(|| panic!("no rename onto {dest}"));
        let tmp = lines[mv][lines[mv].len() - 2];
        assert_eq!(Path::new(tmp).parent(), Path::new(dest).parent(), "{tmp}");
        assert!(
            [".conf", ".conflist", ".json"]
                .iter()
                .all(|e| !tmp.ends_with(e)),
            "{tmp} would be loaded by libcni"
        );
        let cp = lines
            .iter()
            .position(|l| l.first() == Some(&"cp") && l.last() == Some(&tmp))
            .unwrap_or_else(|| panic!("nothing writes {tmp}"));
        assert!(cp < mv);
        assert_eq!(lines[cp][1], source);
        let writes_dest = lines
            .iter()
            .filter(|l| l.first() != Some(&"echo") && l.iter().skip(1).any(|w| *w == dest))
            .count();
        assert_eq!(writes_dest, 1, "{dest} is written only by the rename");
        host_mount_covering(&spec, init, dest);
    }
    // The conflist comes from the ConfigMap.
    let mount = init
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/palisade")
        .unwrap();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let cm = volume.config_map.as_ref().unwrap();
    assert_eq!(
        cm.name,
        config_map(&docs).metadata.name.unwrap(),
        "the config volume is the ConfigMap"
    );
    let items = cm.items.clone().unwrap();
    assert!(
        items
            .iter()
            .any(|i| i.key == CONFLIST && i.path == CONFLIST)
    );
}

#[test]
fn daemonset_runs_as_the_service_account_the_cluster_role_binding_binds() {
    let docs = installed();
    let spec = pod_spec(&daemonset(&docs, "palisade"));
    let sa = spec.service_account_name.unwrap();
    let mut bound = Vec::new();
    let mut accounts = Vec::new();
    for d in &docs {
        match &d.object {
            Object::ClusterRoleBinding(b) => {
                assert_eq!(b.role_ref.name, "palisade-agent");
                for s in b.subjects.iter().flatten() {
                    bound.push((s.kind.clone(), s.name.clone(), s.namespace.clone()));
                }
            }
            Object::ServiceAccount(a) => accounts.push(a.metadata.name.clone().unwrap()),
            _ => {}
        }
    }
    assert_eq!(
        bound,
        [(
            "ServiceAccount".to_string(),
            sa.clone(),
            Some(NAMESPACE.to_string())
        )]
    );
    assert_eq!(accounts, [sa]);
    // rbac.rs checks the role's rules.
    let roles: Vec<String> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::ClusterRole(r) => r.metadata.name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(roles, ["palisade-agent"]);
}

#[test]
fn every_container_runs_the_image_kind_loads() {
    for d in all_docs() {
        let Object::DaemonSet(ds) = &d.object else {
            continue;
        };
        let spec = pod_spec(ds);
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            assert_eq!(c.image.as_deref(), Some("palisade:dev"), "{}", c.name);
            // `kind load docker-image` puts it on the nodes; nothing pulls it.
            assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        }
    }
}

#[test]
fn dockerfile_puts_the_binaries_object_and_script_where_the_manifests_expect() {
    let docs = installed();
    let settings = agent_settings(&docs);
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("Dockerfile")).unwrap();
    let copies: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("COPY --from=build"))
        .map(|l| l.split_whitespace().skip(2).collect())
        .collect();
    let placed = |file: &str, dest: &str| {
        copies.iter().any(|c| {
            let (to, from) = c.split_last().unwrap();
            from.iter().any(|f| f.ends_with(file))
                && (*to == dest || (to.ends_with('/') && format!("{to}{file}") == dest))
        })
    };
    for bin in ["palisade", "palisade-agent", "palisadectl"] {
        assert!(
            placed(bin, &format!("/usr/local/bin/{bin}")),
            "{bin} not copied"
        );
    }
    assert!(
        placed("palisade.bpf.o", &settings["bpf-object"]),
        "the eBPF object is not copied to the agent's --bpf-object"
    );
    let uninstall = daemonset(&all_docs(), "palisade-uninstall");
    let spec = pod_spec(&uninstall);
    let cmd = container(&spec, "uninstall").command.clone().unwrap();
    assert_eq!(cmd.len(), 1);
    assert!(
        text.lines().any(|l| l.starts_with("COPY")
            && l.contains("deploy/uninstall/uninstall.sh")
            && l.ends_with(&format!(" {}", cmd[0]))),
        "the image does not carry {}",
        cmd[0]
    );
}

#[test]
fn kind_cluster_has_no_default_cni_iptables_kube_proxy_the_pod_subnet_and_two_workers() {
    let cluster = all_docs()
        .into_iter()
        .find_map(|d| match d.object {
            Object::KindCluster(v) => Some(v),
            _ => None,
        })
        .unwrap();
    // docs/install.md uses the name (`kind load --name`, node containers `palisade-*`).
    assert_eq!(cluster["name"], "palisade");
    let net = &cluster["networking"];
    assert_eq!(net["disableDefaultCNI"], true);
    assert_eq!(net["kubeProxyMode"], "iptables");
    assert_eq!(net["podSubnet"], "10.244.0.0/16");
    let roles: Vec<&str> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
}

/// A node's file system in a temporary directory, with Palisade's files and others'.
struct FakeNode {
    root: tempfile::TempDir,
}

const PALISADE_FILES: [&str; 6] = [
    "etc/cni/net.d/10-palisade.conflist",
    "opt/cni/bin/palisade",
    "sys/fs/bpf/palisade/maps/pal_ep_v1",
    "sys/fs/bpf/palisade/links/7-to_pod",
    "var/lib/palisade/ipam/10.244.1.2",
    "run/palisade/agent.sock",
];
const OTHER_FILES: [&str; 5] = [
    "etc/cni/net.d/05-other.conflist",
    "opt/cni/bin/portmap",
    "sys/fs/bpf/other/map",
    "var/lib/other/file",
    "run/other/sock",
];

impl FakeNode {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        for f in PALISADE_FILES.iter().chain(&OTHER_FILES) {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
        }
        FakeNode { root }
    }

    fn uninstall(&self, path: &str) -> std::process::Output {
        Command::new("sh")
            .arg(Path::new(DEPLOY).join("uninstall/uninstall.sh"))
            .env("PALISADE_HOST_ROOT", self.root.path())
            .env("PATH", path)
            .output()
            .unwrap()
    }

    fn exists(&self, f: &str) -> bool {
        self.root.path().join(f).exists()
    }
}

#[test]
fn uninstall_script_removes_palisades_files_and_nothing_else_and_can_run_twice() {
    let node = FakeNode::new();
    for _ in 0..2 {
        let out = node.uninstall("/usr/bin:/bin");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in PALISADE_FILES {
            assert!(!node.exists(f), "{f} left behind");
        }
        for d in ["sys/fs/bpf/palisade", "var/lib/palisade", "run/palisade"] {
            assert!(!node.exists(d), "{d} left behind");
        }
        for f in OTHER_FILES {
            assert!(node.exists(f), "{f} removed");
        }
    }
}

#[test]
fn uninstall_script_refuses_while_an_agent_answers_even_an_unhealthy_one() {
    use palisade_agent::api::Response;
    use palisade_agent::status::Status;
    let node = FakeNode::new();
    let sock_path = node.root.path().join("run/palisade/agent.sock");
    std::fs::remove_file(&sock_path).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        let resp = Response {
            ok: true,
            status: Some(Status::default()),
            ..Default::default()
        };
        let mut out = serde_json::to_string(&resp).unwrap();
        out.push('\n');
        (&conn).write_all(out.as_bytes()).unwrap();
        line
    });
    let bin_dir = Path::new(PALISADECTL).parent().unwrap();
    let out = node.uninstall(&format!("{}:/usr/bin:/bin", bin_dir.display()));
    // Asserted before joining: had the script not asked, the server would still be waiting.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("still answers"));
    assert!(server.join().unwrap().contains("status"));
    for f in PALISADE_FILES.iter().filter(|f| !f.ends_with(".sock")) {
        assert!(node.exists(f), "{f} removed while the agent runs");
    }
}

#[test]
fn uninstall_daemonset_mounts_the_node_paths_the_script_removes() {
    let spec = pod_spec(&daemonset(&all_docs(), "palisade-uninstall"));
    let c = container(&spec, "uninstall");
    for path in [
        "/etc/cni/net.d/10-palisade.conflist",
        "/opt/cni/bin/palisade",
        "/sys/fs/bpf/palisade",
        "/var/lib/palisade",
        "/run/palisade",
    ] {
        let (_, read_only) = host_mount_covering(&spec, c, path);
        assert!(!read_only, "{path}");
        // The directory itself must not be a mount point, or it could not be removed.
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .all(|m| m.mount_path != path),
            "{path} is a mount point"
        );
    }
    assert_eq!(spec.host_network, Some(true));
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
}

#[test]
fn every_deploy_path_the_install_guide_names_exists() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/install.md"))
        .unwrap();
    let mut named = BTreeSet::new();
    for (i, _) in guide.match_indices("deploy/") {
        let path: String = guide[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
            .collect();
        let path = path.trim_end_matches('.');
        if path != "deploy/" {
            named.insert(path.to_string());
        }
    }
    assert!(named.contains("deploy/kind.yaml"), "{named:?}");
    assert!(
        guide.contains("kubectl apply -f deploy/palisade.yaml\n"),
        "the guide installs with the one manifest"
    );
    for path in named {
        let on_disk = Path::new(DEPLOY).join(path.trim_start_matches("deploy/"));
        assert!(
            on_disk.exists(),
            "docs/install.md names {path}, which does not exist"
        );
    }
    // The objects it waits for and execs into.
    let docs = all_docs();
    for name in ["palisade", "palisade-uninstall"] {
        daemonset(&docs, name);
        assert!(guide.contains(&format!("ds/{name}")), "ds/{name}");
    }
    assert!(guide.contains("-t palisade:dev") && guide.contains("docker-image palisade:dev"));
}

#[test]
fn agent_masquerades_outside_kinds_pod_and_service_subnets() {
    let docs = all_docs();
    let settings = agent_settings(&docs);
    let cluster = docs
        .iter()
        .find_map(|d| match &d.object {
            Object::KindCluster(v) => Some(v.clone()),
            _ => None,
        })
        .unwrap();
    let net = &cluster["networking"];
    assert_eq!(
        settings.get("cluster-cidr").map(String::as_str),
        net["podSubnet"].as_str(),
        "--cluster-cidr is kind's podSubnet"
    );
    assert_eq!(
        settings.get("service-cidr").map(String::as_str),
        net["serviceSubnet"].as_str(),
        "--service-cidr is kind's serviceSubnet"
    );
    assert_eq!(settings.get("masquerade").map(String::as_str), Some("true"));
    // The agent runs `nft`; uninstall.sh runs `nft` and `ip`: the image carries both.
    let dockerfile = std::fs::read_to_string(Path::new(DEPLOY).join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("nftables") && dockerfile.contains("iproute2"),
        "the image lacks nftables or iproute2"
    );
}

#[test]
fn uninstall_script_deletes_the_masquerade_table_and_the_agents_routes() {
    let node = FakeNode::new();
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    // Stand-ins: `nft list` finds the table; `ip route show proto 80` finds a route (IPv4 only).
    for (name, body) in [
        ("nft", "echo \"nft $*\" >> \"$LOG\"\n"),
        (
            "ip",
            "echo \"ip $*\" >> \"$LOG\"\n[ \"$1 $3\" = \"-4 show\" ] && echo '10.244.2.0/24 via 192.168.254.3 proto 80'\nexit 0\n",
        ),
    ] {
        let p = bin.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm).unwrap();
    }
    let out = Command::new("sh")
        .arg(Path::new(DEPLOY).join("uninstall/uninstall.sh"))
        .env("PALISADE_HOST_ROOT", node.root.path())
        .env("PALISADE_NETWORK_CLEANUP", "1")
        .env("LOG", &log)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(
        calls,
        [
            "nft list table inet palisade",
            "nft delete table inet palisade",
            "ip -4 route show proto 80",
            "ip -4 route flush proto 80",
            "ip -6 route show proto 80",
        ]
    );
    // Without PALISADE_NETWORK_CLEANUP a fake node's run touches no network state.
    std::fs::remove_file(&log).unwrap();
    let out = node.uninstall(&format!("{}:/usr/bin:/bin", bin.path().display()));
    assert!(out.status.success());
    assert!(!log.exists(), "nft or ip ran against a fake node");
}

/// The agent serves /metrics on the port the DaemonSet exposes and its scrape annotations
/// name (Prometheus' usual pod discovery), and flow events are on.
#[test]
fn agent_exposes_metrics_on_the_port_its_scrape_annotations_name() {
    let docs = all_docs();
    let settings = agent_settings(&docs);
    assert_eq!(settings.get("metrics").map(String::as_str), Some("true"));
    assert_eq!(
        settings.get("flow-events").map(String::as_str),
        Some("true")
    );
    let addr: std::net::SocketAddr = settings["metrics-address"].parse().unwrap();
    let ds = daemonset(&docs, "palisade");
    let ann = ds
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        ann.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        ann.get("prometheus.io/port").map(String::as_str),
        Some(addr.port().to_string().as_str())
    );
    assert_eq!(
        ann.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    let spec = pod_spec(&ds);
    let agent = container(&spec, "agent");
    let port = agent
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(port.container_port, i32::from(addr.port()));
    assert!(
        addr.ip().is_unspecified(),
        "Prometheus reaches the node's address: {addr}"
    );
}
