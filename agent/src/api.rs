//! The agent's local socket: one JSON request line, one JSON response line.
//!
//! Used by the CNI plugin (`add`, `del`: the plugin's contract, `palisade_cni::agent_api`) and
//! by `palisadectl` (`status`, `wait`, `endpoints`, `policy`).

use serde::{Deserialize, Serialize};

use crate::endpoints::EndpointRecord;
use crate::status::{EndpointRow, Status};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// CNI ADD: program this endpoint; answer only once it is enforced.
    Add {
        endpoint: EndpointRecord,
    },
    /// CNI DEL.
    Del {
        container_id: String,
        ifname: String,
    },
    Status,
    /// Re-read the source now and answer once what it holds is enforced.
    Wait,
    Endpoints,
    /// What is allowed in and out of a pod, in words. `pod` is `namespace/name`.
    Policy {
        pod: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<EndpointRow>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Response {
    pub fn ok(generation: u64) -> Self {
        Response {
            ok: true,
            generation: Some(generation),
            ..Default::default()
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

/// Client side (palisadectl, tests): sends one request, reads one response.
pub fn call(
    socket: &std::path::Path,
    req: &Request,
    timeout: std::time::Duration,
) -> std::io::Result<Response> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut out = String::new();
    BufReader::new(s).read_line(&mut out)?;
    serde_json::from_str(&out).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_the_cni_plugin_sends_parse_as_agent_requests() {
        let rec = EndpointRecord {
            container_id: "c1".into(),
            netns: "/var/run/netns/p".into(),
            ifname: "eth0".into(),
            pod_namespace: Some("x".into()),
            pod_name: Some("a".into()),
            ips: vec!["10.244.0.5/24".into()],
            host_veth: "pal0123456789ab".into(),
            host_ifindex: 7,
            mac: "02:00:00:00:00:01".into(),
            created_unix_ms: 1,
        };
        let add = serde_json::to_string(&palisade_cni::agent_api::Request::Add {
            endpoint: rec.clone(),
        })
        .unwrap();
        assert!(
            matches!(serde_json::from_str::<Request>(&add).unwrap(), Request::Add { endpoint } if endpoint == rec)
        );
        let del = serde_json::to_string(&palisade_cni::agent_api::Request::Del {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        })
        .unwrap();
        assert!(matches!(
            serde_json::from_str::<Request>(&del).unwrap(),
            Request::Del { .. }
        ));
        // And the plugin understands the agent's answers.
        let ok: palisade_cni::agent_api::Response =
            serde_json::from_str(&serde_json::to_string(&Response::ok(3)).unwrap()).unwrap();
        assert!(ok.ok && ok.generation == Some(3));
        let err: palisade_cni::agent_api::Response =
            serde_json::from_str(&serde_json::to_string(&Response::err("no")).unwrap()).unwrap();
        assert!(!err.ok && err.error.as_deref() == Some("no"));
    }
}
