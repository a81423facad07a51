//! deploy/ as a whole and what goes with it: every YAML object parses into its k8s-openapi
//! type with no field that type does not know, everything namespaced lives in kube-system,
//! every container runs the image kind loads, the Dockerfile puts the binaries, the eBPF
//! object and the uninstall script where the manifests expect, the kind cluster is the one
//! the install guide names (as is every deploy/ path it names), and the uninstall script
//! and its DaemonSet remove Palisade's files and network state and nothing else. The agent's
//! DaemonSet is checked by `deploy_agent_daemonset.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;

use common::deploy_manifests::{
    DEPLOY, NAMESPACE, Object, PALISADECTL, agent_settings, all_docs, container, daemonset,
    host_mount_covering, installed, pod_spec, rel,
};

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
