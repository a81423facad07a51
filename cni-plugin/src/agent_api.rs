//! The agent's local socket protocol.
//!
//! Unix stream socket; the plugin writes one JSON request line and reads one JSON response
//! line:
//! - `{"op":"add","endpoint":<EndpointRecord>}`: sent by ADD after the veth exists and the
//!   endpoint record is written; ADD returns only after `{"ok":true,...}` and rolls back
//!   everything otherwise (CNI error 11, try again later);
//! - `{"op":"del","container_id":"...","ifname":"..."}`: sent by DEL and GC before removing,
//!   best effort (a failure is only logged to stderr).
//!
//! Responses: `{"ok":true,"generation":<u64>}` or `{"ok":false,"error":"<message>"}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::endpoint::EndpointRecord;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Add {
        endpoint: EndpointRecord,
    },
    Del {
        container_id: String,
        ifname: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(generation: u64) -> Response {
        Response {
            ok: true,
            generation: Some(generation),
            error: None,
        }
    }

    pub fn err(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            generation: None,
            error: Some(message.into()),
        }
    }
}

impl Request {
    fn op(&self) -> &'static str {
        match self {
            Request::Add { .. } => "add",
            Request::Del { .. } => "del",
        }
    }
}

/// How long the plugin waits for the agent's answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request and returns the agent's generation on `ok:true`. Any failure (socket
/// missing, refused, timeout, bad answer, `ok:false`) is [`Error::Agent`] (CNI code 11).
pub fn call(socket: &Path, req: &Request) -> Result<u64> {
    let fail = |reason: String| Error::Agent {
        op: req.op(),
        socket: socket.to_path_buf(),
        reason,
    };
    let mut s = UnixStream::connect(socket).map_err(|e| fail(format!("connect: {e}")))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| fail(format!("set timeout: {e}")))?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| fail(format!("set timeout: {e}")))?;
    let mut line = serde_json::to_vec(req).map_err(|e| fail(format!("encode: {e}")))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| fail(format!("write: {e}")))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| fail(format!("read: {e}")))?;
    let resp: Response = serde_json::from_str(answer.trim())
        .map_err(|e| fail(format!("bad answer {:?}: {e}", answer.trim())))?;
    match (resp.ok, resp.generation) {
        (true, Some(g)) => Ok(g),
        (true, None) => Ok(0),
        (false, _) => Err(fail(resp.error.unwrap_or_else(|| "not ok".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn wire_format_matches_the_contract() {
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
        let add: Request = serde_json::from_str(
            r#"{"op":"add","endpoint":{"container_id":"c","netns":"/n","ifname":"eth0","pod_namespace":null,"pod_name":null,"ips":[],"host_veth":"palx","host_ifindex":3,"mac":"m","created_unix_ms":0}}"#,
        )
        .unwrap();
        assert!(matches!(add, Request::Add { .. }));
    }

    #[test]
    fn call_returns_generation_or_try_again_later() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("a.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            for answer in [
                r#"{"ok":true,"generation":42}"#,
                r#"{"ok":false,"error":"busy"}"#,
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
        assert_eq!(call(&sock, &req).unwrap(), 42);
        let e = call(&sock, &req).unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(e.to_string().contains("busy"));
        t.join().unwrap();
        let e = call(&d.path().join("none.sock"), &req).unwrap_err();
        assert_eq!(e.code(), 11);
    }
}
