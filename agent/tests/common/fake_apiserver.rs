//! A fake Kubernetes API server for tests: the list/watch protocol over HTTP/1.1 on
//! 127.0.0.1, with objects the test serializes (k8s-openapi types).
//!
//! What it speaks, as kube-rs's watcher uses it (kube-runtime 5, `watcher::Config::default()`):
//! - `GET <collection>?limit=500` (and `&continue=T` for further pages): a `<Kind>List` with
//!   `metadata.resourceVersion` (and `metadata.continue` when there are more pages);
//! - `GET <collection>?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=N`:
//!   a chunked stream of newline-delimited `WatchEvent`s (ADDED / MODIFIED / DELETED /
//!   BOOKMARK) for changes after N, until `timeoutSeconds`, the server's stop, or
//!   [`FakeApiServer::end_watches`]. A resourceVersion older than the retained history
//!   gets one `ERROR` event carrying a `Status` 410 `Expired`, and the stream ends, as the
//!   real apiserver does. `sendInitialEvents=true` (streaming lists) sends the current objects
//!   as ADDED and a BOOKMARK annotated `k8s.io/initial-events-end`.
//!
//! One thread per connection, one request per connection (`Connection: close`). Built on std
//! only, so it can be started from a thread that entered another network namespace: the
//! listening socket belongs to the namespace it was created in.
//!
//! Shared by the agent's tier-0 tests and the privileged tests (included by path).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

/// A collection the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Collection path, e.g. `/api/v1/pods`.
    pub path: &'static str,
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespaced: bool,
}

pub const NODES: Resource = Resource {
    path: "/api/v1/nodes",
    kind: "Node",
    api_version: "v1",
    namespaced: false,
};
pub const NAMESPACES: Resource = Resource {
    path: "/api/v1/namespaces",
    kind: "Namespace",
    api_version: "v1",
    namespaced: false,
};
pub const PODS: Resource = Resource {
    path: "/api/v1/pods",
    kind: "Pod",
    api_version: "v1",
    namespaced: true,
};
pub const SERVICES: Resource = Resource {
    path: "/api/v1/services",
    kind: "Service",
    api_version: "v1",
    namespaced: true,
};
pub const NETWORK_POLICIES: Resource = Resource {
    path: "/apis/networking.k8s.io/v1/networkpolicies",
    kind: "NetworkPolicy",
    api_version: "networking.k8s.io/v1",
    namespaced: true,
};
pub const ENDPOINT_SLICES: Resource = Resource {
    path: "/apis/discovery.k8s.io/v1/endpointslices",
    kind: "EndpointSlice",
    api_version: "discovery.k8s.io/v1",
    namespaced: true,
};
/// Served from a CRD in a real cluster: [`FakeApiServer::unserve`] makes it a 404, as when
/// the CRD is not installed.
pub const CLUSTER_NETWORK_POLICIES: Resource = Resource {
    path: "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
    kind: "ClusterNetworkPolicy",
    api_version: "policy.networking.k8s.io/v1alpha2",
    namespaced: false,
};
pub const ALL: [Resource; 7] = [
    NODES,
    NAMESPACES,
    PODS,
    SERVICES,
    NETWORK_POLICIES,
    ENDPOINT_SLICES,
    CLUSTER_NETWORK_POLICIES,
];

fn resource_at(path: &str) -> Option<Resource> {
    ALL.into_iter().find(|r| r.path == path)
}

/// Counters per collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// List requests answered (every page counts).
    pub lists: u64,
    /// Watch requests received.
    pub watches: u64,
    /// Watch streams open now.
    pub open_watches: u64,
    /// Watches answered with 410 Expired.
    pub expired: u64,
}

struct Logged {
    rv: u64,
    path: &'static str,
    kind: &'static str,
    object: Value,
}

/// The server's objects and history. Test code changes it through [`FakeApiServer`], or
/// directly inside [`FakeApiServer::offline`].
#[derive(Default)]
pub struct Cluster {
    rv: u64,
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    log: Vec<Logged>,
    /// Oldest resourceVersion a watch may start from; older ones get 410.
    floor: u64,
    /// Bumped to end every open watch stream.
    epoch: u64,
    stopped: bool,
    held_lists: BTreeSet<&'static str>,
    /// Collections answered with 404 (a CRD not installed).
    unserved: BTreeSet<&'static str>,
    stats: BTreeMap<&'static str, Stats>,
    requests: Vec<String>,
}

fn key_of(r: Resource, obj: &Value) -> (String, String) {
    let meta = &obj["metadata"];
    let ns = if r.namespaced {
        meta["namespace"].as_str().unwrap_or("default").to_string()
    } else {
        String::new()
    };
    (ns, meta["name"].as_str().unwrap_or_default().to_string())
}

impl Cluster {
    /// Creates or replaces an object (ADDED or MODIFIED); returns its new resourceVersion.
    pub fn apply<T: Serialize>(&mut self, r: Resource, obj: &T) -> u64 {
        let mut v = serde_json::to_value(obj).expect("object serializes");
        v["apiVersion"] = json!(r.api_version);
        v["kind"] = json!(r.kind);
        if r.namespaced && v["metadata"]["namespace"].is_null() {
            v["metadata"]["namespace"] = json!("default");
        }
        let key = key_of(r, &v);
        self.rv += 1;
        v["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if v["metadata"]["uid"].is_null() {
            v["metadata"]["uid"] = json!(format!("uid-{}-{}-{}", r.kind, key.0, key.1));
        }
        let objects = self.objects.entry(r.path).or_default();
        let kind = if objects.insert(key, v.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.log.push(Logged {
            rv: self.rv,
            path: r.path,
            kind,
            object: v,
        });
        self.rv
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds); false when absent.
    pub fn delete(&mut self, r: Resource, namespace: &str, name: &str) -> bool {
        let ns = if r.namespaced { namespace } else { "" };
        let Some(mut v) = self
            .objects
            .entry(r.path)
            .or_default()
            .remove(&(ns.to_string(), name.to_string()))
        else {
            return false;
        };
        self.rv += 1;
        v["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.log.push(Logged {
            rv: self.rv,
            path: r.path,
            kind: "DELETED",
            object: v,
        });
        true
    }

    /// The stored object, as served.
    pub fn get(&self, r: Resource, namespace: &str, name: &str) -> Option<Value> {
        let ns = if r.namespaced { namespace } else { "" };
        self.objects
            .get(r.path)?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn stats_mut(&mut self, r: Resource) -> &mut Stats {
        self.stats.entry(r.path).or_default()
    }

    pub fn stats(&self, r: Resource) -> Stats {
        self.stats.get(r.path).copied().unwrap_or_default()
    }
}

struct Inner {
    cluster: Mutex<Cluster>,
    cond: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake API server; dropping it stops it (open watches end).
pub struct FakeApiServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    listener_fd: i32,
    accept: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1:0 of the calling thread's network namespace.
    pub fn start() -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            cluster: Mutex::new(Cluster::default()),
            cond: Condvar::new(),
        });
        let listener_fd = listener.as_raw_fd();
        let accept_inner = inner.clone();
        let accept = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if accept_inner.lock().stopped {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let inner = accept_inner.clone();
                    let spawned = std::thread::Builder::new()
                        .name("fake-apiserver-conn".into())
                        .spawn(move || serve(&inner, conn));
                    if let Err(e) = spawned {
                        eprintln!("fake apiserver: spawning a connection thread: {e}");
                    }
                }
            })?;
        Ok(FakeApiServer {
            addr,
            inner,
            listener_fd,
            accept: Some(accept),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig whose current context points at this server, without auth.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    \
                 cluster: fake\n    user: fake\ncurrent-context: fake\n",
                self.url()
            ),
        )
    }

    /// Changes the cluster while watches keep streaming (each change becomes an event).
    pub fn with<R>(&self, f: impl FnOnce(&mut Cluster) -> R) -> R {
        let mut c = self.inner.lock();
        let out = f(&mut c);
        drop(c);
        self.inner.cond.notify_all();
        out
    }

    pub fn apply<T: Serialize>(&self, r: Resource, obj: &T) -> u64 {
        self.with(|c| c.apply(r, obj))
    }

    pub fn delete(&self, r: Resource, namespace: &str, name: &str) -> bool {
        self.with(|c| c.delete(r, namespace, name))
    }

    /// Sends a BOOKMARK at the current resourceVersion on the open watches of `r`.
    pub fn bookmark(&self, r: Resource) {
        self.with(|c| {
            let rv = c.rv;
            c.log.push(Logged {
                rv,
                path: r.path,
                kind: "BOOKMARK",
                object: json!({"apiVersion": r.api_version, "kind": r.kind,
                               "metadata": {"resourceVersion": rv.to_string()}}),
            });
        });
    }

    /// Ends every open watch stream (clients reconnect from their last resourceVersion;
    /// nothing is lost, the history is kept).
    pub fn end_watches(&self) {
        self.with(|c| c.epoch += 1);
    }

    /// Atomically: ends every open watch, applies `f` (none of whose changes reach the ended
    /// streams), and when `forget_history` compacts the history (as etcd compaction does), so
    /// any watch resuming from before now gets 410 Gone and must relist.
    pub fn offline<R>(&self, forget_history: bool, f: impl FnOnce(&mut Cluster) -> R) -> R {
        self.with(|c| {
            c.epoch += 1;
            let out = f(c);
            if forget_history {
                c.floor = c.rv;
            }
            out
        })
    }

    /// List requests for `r` block until [`Self::release_lists`].
    pub fn hold_lists(&self, r: Resource) {
        self.with(|c| c.held_lists.insert(r.path));
    }

    pub fn release_lists(&self, r: Resource) {
        self.with(|c| c.held_lists.remove(r.path));
    }

    /// Answers `r`'s collection with 404 from now on, as an API server without its CRD does.
    pub fn unserve(&self, r: Resource) {
        self.with(|c| c.unserved.insert(r.path));
    }

    /// Serves `r` again (its CRD installed).
    pub fn serve(&self, r: Resource) {
        self.with(|c| c.unserved.remove(r.path));
    }

    pub fn stats(&self, r: Resource) -> Stats {
        self.inner.lock().stats(r)
    }

    /// Request targets received so far (path and query).
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    /// Waits (bounded) until `pred` holds on the server's state; false on timeout.
    pub fn wait_until(&self, timeout: Duration, mut pred: impl FnMut(&Cluster) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut c = self.inner.lock();
        loop {
            if pred(&c) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            c = self
                .inner
                .cond
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.with(|c| c.stopped = true);
        // shutdown(2) on a listening socket wakes a blocked accept(2) (EINVAL), in whatever
        // namespace the socket lives.
        // SAFETY: the fd is the listener's, owned by the accept thread until it returns.
        unsafe {
            libc::shutdown(self.listener_fd, libc::SHUT_RDWR);
        }
        if let Some(t) = self.accept.take()
            && t.join().is_err()
        {
            eprintln!("fake apiserver: accept thread panicked");
        }
    }
}

struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    rd.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    Ok(Request {
        path: path.to_string(),
        query,
    })
}

fn respond(mut stream: &TcpStream, code: u16, reason: &str, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).expect("JSON");
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn serve(inner: &Inner, stream: TcpStream) {
    let req = match read_request(&stream) {
        Ok(r) => r,
        Err(_) => return,
    };
    let target = format!(
        "{}?{}",
        req.path,
        req.query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    );
    let unserved = {
        let mut c = inner.lock();
        c.requests.push(target);
        c.unserved.contains(req.path.as_str())
    };
    let Some(r) = resource_at(&req.path).filter(|_| !unserved) else {
        // Client errors are the test's business; a failed write means the client left.
        if respond(
            &stream,
            404,
            "Not Found",
            &status(404, "NotFound", &format!("no collection at {}", req.path)),
        )
        .is_err()
        {
            return;
        }
        return;
    };
    let watch = matches!(
        req.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    let result = if watch {
        serve_watch(inner, &stream, r, &req)
    } else {
        serve_list(inner, &stream, r, &req)
    };
    // A write error means the client went away: nothing to do.
    if result.is_err() {
        inner.cond.notify_all();
    }
}

fn serve_list(
    inner: &Inner,
    stream: &TcpStream,
    r: Resource,
    req: &Request,
) -> std::io::Result<()> {
    let mut c = inner.lock();
    c.stats_mut(r).lists += 1;
    inner.cond.notify_all();
    while c.held_lists.contains(r.path) && !c.stopped {
        c = inner.cond.wait(c).unwrap_or_else(|e| e.into_inner());
    }
    let items: Vec<Value> = c
        .objects
        .get(r.path)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    let rv = c.rv;
    drop(c);
    let offset: usize = req
        .query
        .get("continue")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let limit: usize = req
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let page: Vec<Value> = items.iter().skip(offset).take(limit).cloned().collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if offset.saturating_add(page.len()) < items.len() {
        meta["continue"] = json!((offset + page.len()).to_string());
    }
    respond(
        stream,
        200,
        "OK",
        &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version,
                "metadata": meta, "items": page}),
    )
}

fn write_event(mut stream: &TcpStream, kind: &str, object: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON");
    line.push(b'\n');
    write!(stream, "{:x}\r\n", line.len())?;
    stream.write_all(&line)?;
    stream.write_all(b"\r\n")?;
    stream.flush()
}

fn serve_watch(
    inner: &Inner,
    stream: &TcpStream,
    r: Resource,
    req: &Request,
) -> std::io::Result<()> {
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let deadline = Instant::now() + timeout;
    let initial_events = req.query.get("sendInitialEvents").map(String::as_str) == Some("true");
    let from: Option<u64> = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v != 0);
    {
        let mut w = stream;
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n"
        )?;
        w.flush()?;
    }
    let mut c = inner.lock();
    c.stats_mut(r).watches += 1;
    let epoch = c.epoch;
    let mut pending: Vec<(&'static str, Value)> = Vec::new();
    let mut pos = c.log.len();
    match from {
        Some(n) if n < c.floor => {
            c.stats_mut(r).expired += 1;
            let floor = c.floor;
            drop(c);
            inner.cond.notify_all();
            write_event(
                stream,
                "ERROR",
                &status(
                    410,
                    "Expired",
                    &format!("too old resource version: {n} ({floor})"),
                ),
            )?;
            return end_chunks(stream);
        }
        Some(n) if !initial_events => {
            pos = c.log.iter().position(|e| e.rv > n).unwrap_or(c.log.len());
        }
        _ => {
            let objs: Vec<Value> = c
                .objects
                .get(r.path)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            pending.extend(objs.into_iter().map(|o| ("ADDED", o)));
            if initial_events {
                pending.push((
                    "BOOKMARK",
                    json!({"apiVersion": r.api_version, "kind": r.kind,
                           "metadata": {"resourceVersion": c.rv.to_string(),
                           "annotations": {"k8s.io/initial-events-end": "true"}}}),
                ));
            }
        }
    }
    c.stats_mut(r).open_watches += 1;
    drop(c);
    inner.cond.notify_all();
    let result = (|| {
        loop {
            for (kind, obj) in pending.drain(..) {
                write_event(stream, kind, &obj)?;
            }
            let mut c = inner.lock();
            loop {
                if c.stopped || c.epoch != epoch || Instant::now() >= deadline {
                    return Ok(());
                }
                if pos < c.log.len() {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                c = inner
                    .cond
                    .wait_timeout(c, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            pending.extend(
                c.log[pos..]
                    .iter()
                    .filter(|e| e.path == r.path)
                    .map(|e| (e.kind, e.object.clone())),
            );
            pos = c.log.len();
        }
    })();
    let ended = result.and_then(|()| end_chunks(stream));
    inner.lock().stats_mut(r).open_watches -= 1;
    inner.cond.notify_all();
    ended
}

fn end_chunks(mut stream: &TcpStream) -> std::io::Result<()> {
    stream.write_all(b"0\r\n\r\n")?;
    stream.flush()
}
