//! The agent's Unix stream socket: the client writes one JSON [`Request`] line and reads one
//! JSON [`Response`] line.
//!
//! - `{"op":"add","endpoint":<EndpointRecord>}`: sent by the plugin's ADD after the veth exists
//!   and the record is written; ADD returns only after `{"ok":true,...}` and rolls back
//!   everything otherwise (CNI error 11, try again later);
//! - `{"op":"del","container_id":"...","ifname":"..."}`: sent by DEL and GC;
//! - `status`, `wait`, `endpoints`, `{"op":"policy","pod":"ns/name"}`,
//!   `{"op":"explain","from":"ns/a","to":"ns/b","port":"80/TCP"}`, `lint`: `palisadectl`;
//! - `{"op":"flows","query":<FlowQuery>}`: `palisadectl flows`, answered with one response
//!   line per flow (`flow`), then a last line without one (or, following, until the client
//!   goes away; `lost_flows` says how many a slow follower missed).
//!
//! Responses: `{"ok":true,"generation":<u64>, ...}` or `{"ok":false,"error":"<message>"}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::endpoint::EndpointRecord;
use crate::error::{Error, Result};
use crate::status::{EndpointRow, Status};

/// Default socket path (the agent's `--socket`, `palisadectl --socket`).
pub const DEFAULT_PATH: &str = "/run/palisade/agent.sock";
/// Largest request line the agent reads (an `add` is well under 1 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response line a client reads (status with every counter, a policy in words).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How long the plugin waits for the agent's answer.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// CNI ADD: program this endpoint; answer only once it is enforced.
    Add {
        endpoint: EndpointRecord,
    },
    /// CNI DEL and GC.
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
    /// Is a connection FROM -> TO allowed, and why, against what the agent enforces
    /// (`palisadectl explain`). FROM and TO: `NS/POD`, an IP address, `svc:NS/NAME[:PORT]`;
    /// `port`: `PORT[/PROTO]` or `ICMP` (none: every port). The answer is `report`, a
    /// `palisade_policy::explain::Explanation`.
    Explain {
        from: String,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
        /// NetworkPolicy manifests (YAML) to explain as if applied (added, or replacing the
        /// policy of the same namespace and name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        what_if: Option<String>,
    },
    /// Lint the source's NetworkPolicies against its state (`palisadectl policy lint`). The
    /// answer is `report`, a `palisade_policy::lint::LintReport`.
    Lint,
    /// Flows of the history matching the query, then (with `follow`) new ones as they come.
    Flows {
        query: crate::flow::FlowQuery,
    },
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Add { .. } => "add",
            Request::Del { .. } => "del",
            Request::Status => "status",
            Request::Wait => "wait",
            Request::Endpoints => "endpoints",
            Request::Policy { .. } => "policy",
            Request::Explain { .. } => "explain",
            Request::Lint => "lint",
            Request::Flows { .. } => "flows",
        }
    }

    /// Whether the request changes what is enforced (only the node's administrator, i.e. the
    /// plugin run by the container runtime, may send these).
    pub fn changes_enforcement(&self) -> bool {
        matches!(self, Request::Add { .. } | Request::Del { .. })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The answer to `explain` or `lint`, as JSON: its type belongs to the policy crate,
    /// which this crate (linked by the CNI plugin) does not depend on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
    /// One flow of a `flows` answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Box<crate::flow::FlowRecord>>,
    /// A follower fell behind: this many flows were not sent to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_flows: Option<u64>,
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

/// Connects to the agent; a missing socket file and a socket nobody listens on are
/// [`Error::NotListening`], named with the path tried.
pub fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).map_err(|source| {
        let reason = match source.kind() {
            std::io::ErrorKind::NotFound => "no socket file there",
            std::io::ErrorKind::ConnectionRefused => "the socket file exists but nothing accepts",
            _ => {
                return Error::Socket {
                    op: "connecting",
                    socket: socket.to_path_buf(),
                    source,
                };
            }
        };
        Error::NotListening {
            socket: socket.to_path_buf(),
            reason,
            source,
        }
    })
}

/// Sends one request and reads the one response (whatever its `ok`), waiting at most
/// `timeout` for each of the write and the read.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let fail = |op| {
        move |source| Error::Socket {
            op,
            socket: socket.to_path_buf(),
            source,
        }
    };
    let s = connect(socket)?;
    s.set_read_timeout(Some(timeout))
        .map_err(fail("setting a timeout"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(fail("setting a timeout"))?;
    let mut line = serde_json::to_vec(req).map_err(|source| Error::Encode {
        what: "request",
        source,
    })?;
    line.push(b'\n');
    (&s).write_all(&line).map_err(fail("sending the request"))?;
    let mut answer = Vec::new();
    BufReader::new(&s)
        .take(MAX_RESPONSE_BYTES as u64 + 1)
        .read_until(b'\n', &mut answer)
        .map_err(fail("reading the response"))?;
    if answer.len() > MAX_RESPONSE_BYTES {
        return Err(Error::BadAnswer {
            socket: socket.to_path_buf(),
            answer: format!("(more than {MAX_RESPONSE_BYTES} bytes)"),
        });
    }
    serde_json::from_slice(&answer).map_err(|_| Error::BadAnswer {
        socket: socket.to_path_buf(),
        answer: String::from_utf8_lossy(&answer)
            .trim()
            .chars()
            .take(200)
            .collect(),
    })
}

/// [`call`] for a request that must succeed: the agent's generation on `ok:true`,
/// [`Error::Refused`] with the agent's message on `ok:false`.
pub fn call_ok(socket: &Path, req: &Request, timeout: Duration) -> Result<u64> {
    let resp = call(socket, req, timeout)?;
    if resp.ok {
        Ok(resp.generation.unwrap_or(0))
    } else {
        Err(Error::Refused {
            op: req.op(),
            socket: socket.to_path_buf(),
            message: resp.error.unwrap_or_else(|| "not ok".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn wire_format_is_the_released_one() {
        let del = Request::Del {
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            serde_json::to_string(&del).unwrap(),
            r#"{"op":"del","container_id":"c","ifname":"eth0"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::ok(3)).unwrap(),
            r#"{"ok":true,"generation":3}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::err("x")).unwrap(),
            r#"{"ok":false,"error":"x"}"#
        );
        // An add exactly as the released plugin sent it.
        let add: Request = serde_json::from_str(
            r#"{"op":"add","endpoint":{"container_id":"c","netns":"/n","ifname":"eth0","pod_namespace":null,"pod_name":null,"ips":[],"host_veth":"palx","host_ifindex":3,"mac":"m","created_unix_ms":0}}"#,
        )
        .unwrap();
        assert!(matches!(add, Request::Add { .. }));
        for (req, line) in [
            (Request::Status, r#"{"op":"status"}"#),
            (Request::Wait, r#"{"op":"wait"}"#),
            (
                Request::Policy { pod: "x/a".into() },
                r#"{"op":"policy","pod":"x/a"}"#,
            ),
            (
                Request::Explain {
                    from: "x/a".into(),
                    to: "svc:y/web".into(),
                    port: Some("80/TCP".into()),
                    what_if: None,
                },
                r#"{"op":"explain","from":"x/a","to":"svc:y/web","port":"80/TCP"}"#,
            ),
            (Request::Lint, r#"{"op":"lint"}"#),
        ] {
            assert_eq!(serde_json::to_string(&req).unwrap(), line);
        }
    }

    #[test]
    fn call_returns_generation_or_the_refusal_and_names_a_dead_socket() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("a.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            for answer in [
                r#"{"ok":true,"generation":42}"#,
                r#"{"ok":false,"error":"busy"}"#,
                "not json",
            ] {
                let (s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                assert!(line.starts_with(r#"{"op":"del""#));
                (&s).write_all(format!("{answer}\n").as_bytes()).unwrap();
            }
        });
        let req = Request::Del {
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        let t10 = Duration::from_secs(10);
        assert_eq!(call_ok(&sock, &req, t10).unwrap(), 42);
        let e = call_ok(&sock, &req, t10).unwrap_err();
        assert!(
            matches!(&e, Error::Refused { message, .. } if message == "busy"),
            "{e}"
        );
        let e = call_ok(&sock, &req, t10).unwrap_err();
        assert!(e.to_string().contains("not json"), "{e}");
        t.join().unwrap();
        let none = d.path().join("none.sock");
        let e = call(&none, &req, t10).unwrap_err();
        assert!(matches!(e, Error::NotListening { .. }), "{e}");
        assert!(e.to_string().contains("none.sock"), "{e}");
        // A socket file whose listener is gone.
        drop(UnixListener::bind(d.path().join("dead.sock")).unwrap());
        let e = call(&d.path().join("dead.sock"), &req, t10).unwrap_err();
        assert!(e.to_string().contains("nothing accepts"), "{e}");
    }
}
