//! The agent's DaemonSet in deploy/ agrees with the agent binary (its flags and defaults,
//! asked from `palisade-agent --help`, and the probes' `palisadectl` commands), with the
//! conflist and the ConfigMap carrying it, with the RBAC, with kind's subnets and with the
//! metrics scrape annotations: it runs on every node in the host network with exactly the
//! capabilities it needs, its state paths are host paths, and install-cni puts the plugin
//! and the conflist in place atomically. The ClusterRole's rules are checked against the
//! watched kinds by `rbac.rs`; deploy/'s other objects, the image, the kind cluster, the install
//! guide and the uninstall script by `deploy_objects_and_uninstall.rs`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::deploy_manifests::{
    AGENT, DEPLOY, NAMESPACE, Object, PALISADECTL, agent_settings, all_docs, config_map, container,
    daemonset, env_of, expand, host_mount_covering, installed, pod_spec,
};
use k8s_openapi::api::core::v1::{Container, Probe};

const CONFLIST: &str = "10-palisade.conflist";

/// The capabilities the agent container gets, and why, are documented in deploy/palisade.yaml.
const AGENT_CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];

fn conflist() -> serde_json::Value {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join(CONFLIST)).unwrap();
    serde_json::from_str(&text).unwrap()
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
