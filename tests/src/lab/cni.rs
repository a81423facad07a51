//! Running the CNI plugin the way a container runtime does, with the node namespace as the
//! plugin's "host": `ip netns exec <node> palisade` with the CNI_* environment and the network
//! configuration on stdin.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::LabError;
use super::netns::{netns_path, output_with_input};

/// What the lab tells the plugin about one node.
#[derive(Clone, Debug)]
pub struct NodeCni {
    pub plugin: PathBuf,
    pub node_netns: String,
    pub pod_cidrs: Vec<String>,
    pub state_dir: PathBuf,
    pub agent_socket: Option<PathBuf>,
}

/// The part of a CNI result the lab uses.
#[derive(Deserialize, Debug)]
struct CniResult {
    #[serde(default)]
    ips: Vec<CniIp>,
}

#[derive(Deserialize, Debug)]
struct CniIp {
    address: String,
}

impl NodeCni {
    /// The network configuration; `requested` addresses go to `runtimeConfig.ips` (the CNI
    /// `ips` capability), as a runtime passes them.
    pub fn config(&self, requested: &[IpAddr]) -> serde_json::Value {
        let mut c = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "palisade",
            "type": "palisade",
            "mtu": 1500,
            "podCIDRs": self.pod_cidrs,
            "stateDir": self.state_dir,
        });
        if let Some(s) = &self.agent_socket {
            c["agentSocket"] = serde_json::json!(s);
        }
        if !requested.is_empty() {
            let ips: Vec<String> = requested.iter().map(ToString::to_string).collect();
            c["runtimeConfig"] = serde_json::json!({ "ips": ips });
        }
        c
    }

    fn exec(
        &self,
        command: &str,
        container_id: &str,
        pod_netns: &str,
        k8s: (&str, &str),
        requested: &[IpAddr],
    ) -> Result<String, LabError> {
        let cni_path = self.plugin.parent().unwrap_or(Path::new("/"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_netns])
            .arg(&self.plugin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns_path(pod_netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path)
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={};K8S_POD_NAME={}", k8s.0, k8s.1),
            );
        let what = format!("CNI {command} {}/{} on {}", k8s.0, k8s.1, self.node_netns);
        let config = self.config(requested).to_string();
        let out = output_with_input(&mut cmd, &what, &config)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(LabError::Cni {
                what,
                status: out.status.to_string(),
                output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(stdout)
    }

    /// CNI ADD; returns the pod's addresses from the result.
    pub fn add(
        &self,
        container_id: &str,
        pod_netns: &str,
        k8s: (&str, &str),
        requested: &[IpAddr],
    ) -> Result<Vec<IpAddr>, LabError> {
        let out = self.exec("ADD", container_id, pod_netns, k8s, requested)?;
        let result: CniResult = serde_json::from_str(&out).map_err(|e| LabError::Cni {
            what: format!("parsing the ADD result for {}/{}", k8s.0, k8s.1),
            status: "exit 0".into(),
            output: format!("{e}: {out}"),
        })?;
        result
            .ips
            .iter()
            .map(|ip| {
                let addr = ip.address.split('/').next().unwrap_or_default();
                addr.parse().map_err(|_| LabError::Cni {
                    what: format!("ADD result for {}/{}", k8s.0, k8s.1),
                    status: "exit 0".into(),
                    output: format!("bad address {:?}", ip.address),
                })
            })
            .collect()
    }

    /// CNI DEL (idempotent in the plugin).
    pub fn del(
        &self,
        container_id: &str,
        pod_netns: &str,
        k8s: (&str, &str),
    ) -> Result<(), LabError> {
        self.exec("DEL", container_id, pod_netns, k8s, &[])
            .map(|_| ())
    }
}

/// True when `plugin` answers CNI VERSION with a result that lists 1.1.0 (a plugin that exists
/// but is still a skeleton does not).
pub fn plugin_works(plugin: &Path) -> bool {
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", "VERSION");
    output_with_input(&mut cmd, "CNI VERSION", r#"{"cniVersion":"1.1.0"}"#).is_ok_and(|out| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1.1.0")
    })
}
