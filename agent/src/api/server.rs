//! The socket server: who may connect, who may change what is enforced, and how long and how
//! much a client may take.
//!
//! Threat: a local unprivileged user (or a container the socket is mounted into) that can
//! connect. What holds:
//! - the socket is 0600 (root only), or 0660 with `--socket-group` (members may read status);
//!   it is bound under a temporary name, restricted, then renamed into place, so it is never
//!   reachable with a wider mode;
//! - `add` and `del` change what is enforced: only a peer with uid 0 (or the agent's own uid)
//!   may send them (`SO_PEERCRED`, which the client cannot forge); `status`, `wait`,
//!   `endpoints` and `policy` are answered for anyone who can connect;
//! - an `add` is checked before the agent sees it: the record is valid, equals the record the
//!   plugin wrote under the state directory (0600 in a 0700 directory), and names the
//!   plugin's host veth of that attachment ([`super::veth`]);
//! - a request line may hold at most `MAX_REQUEST_BYTES` and must arrive within
//!   [`REQUEST_TIMEOUT`]; an answer line must be taken within it too (a client that stops
//!   reading is dropped); accept errors (EMFILE, ENFILE) back off instead of spinning;
//! - at most [`MAX_CONNECTIONS`] are served at once, of which [`RESERVED_FOR_ROOT`] only for
//!   root (or the agent's uid): other users holding every slot they may take cannot hold up
//!   the plugin's `add` and `del` (a pod would not start); one over is answered "busy" at once;
//! - at most [`MAX_FOLLOWERS`] `flows --follow` streams (which last until the client goes) at
//!   once, whoever asks; one over is refused with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palisade_node_api::endpoint::{self, EndpointRecord};
use palisade_node_api::socket::MAX_REQUEST_BYTES;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, UCred};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{Request, Response, veth};
use crate::observe::Hub;

/// A request and where its answer goes.
pub type Job = (Request, oneshot::Sender<Response>);

/// How long a client may take to send its request line, and to take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// What is still read (and dropped) from a client after its answer, at most.
const DRAIN_BYTES: u64 = 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Of those, slots only root (or the agent's uid) may take, so that the plugin's requests are
/// served however many connections other users hold.
pub const RESERVED_FOR_ROOT: usize = 16;
/// `flows --follow` streams at once (they hold their connection slot until the client goes).
/// Fewer than [`RESERVED_FOR_ROOT`]: root's own followers leave root slots free.
pub const MAX_FOLLOWERS: usize = 8;

/// The connection slots (see the module's text).
struct Slots {
    /// Anyone's: `MAX_CONNECTIONS - RESERVED_FOR_ROOT`.
    shared: Arc<Semaphore>,
    /// Root's only.
    reserved: Arc<Semaphore>,
    followers: Arc<Semaphore>,
}

impl Slots {
    fn new() -> Self {
        Slots {
            shared: Arc::new(Semaphore::new(MAX_CONNECTIONS - RESERVED_FOR_ROOT)),
            reserved: Arc::new(Semaphore::new(RESERVED_FOR_ROOT)),
            followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
        }
    }

    /// A slot for a peer: a shared one if free; for root a reserved one, waited for if all are
    /// taken (root's clients are the plugin and the operator); for others `None` (busy).
    async fn take(&self, root: bool) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.shared.clone().try_acquire_owned() {
            return Some(p);
        }
        if !root {
            return None;
        }
        self.reserved.clone().acquire_owned().await.ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists and is not a socket: refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
}

/// Binds the agent socket at `path`: mode 0600, or 0660 owned by `group`. A stale socket
/// (of an agent that died) is replaced; anything else at `path` is an error.
pub fn bind(path: &Path, group: Option<nix::unistd::Gid>) -> Result<UnixListener, SocketError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let io = |op, p: &Path| {
        let path = p.to_path_buf();
        move |source| SocketError::Io { op, path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) | Err(_) => {}
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing", &tmp)(e));
        }
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io("binding", &tmp))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    let restricted = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("restricting the mode of", &tmp))
        .and_then(|()| match group {
            Some(g) => nix::unistd::chown(&tmp, None, Some(g))
                .map_err(|e| io("giving its group to", &tmp)(e.into())),
            None => Ok(()),
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io("renaming into place", path)));
    if let Err(e) = restricted {
        if let Err(rm) = std::fs::remove_file(&tmp) {
            tracing::debug!("removing {}: {rm}", tmp.display());
        }
        return Err(e);
    }
    listener
        .set_nonblocking(true)
        .map_err(io("configuring", path))?;
    UnixListener::from_std(listener).map_err(io("registering", path))
}

/// Whether a peer may change what is enforced (`add`, `del`), and may take the slots reserved
/// for root: root, or the agent's own uid.
fn may_change(peer: Option<&UCred>) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    match peer {
        Some(p) if p.uid() == 0 || p.uid() == me => Ok(()),
        Some(p) => Err(format!(
            "uid {} (pid {}) may not change what is enforced: only root may add or delete endpoints",
            p.uid(),
            p.pid().map_or_else(|| "?".into(), |p| p.to_string())
        )),
        None => Err("peer credentials unavailable: only root may add or delete endpoints".into()),
    }
}

/// The checks of an `add` that need no agent state: the record's own rules, the record the
/// plugin wrote, the kernel's view of its interface. Blocking (file and netlink I/O).
pub fn check_add(record: &EndpointRecord, state_dir: &Path) -> Result<(), String> {
    record.validate().map_err(|e| e.chain())?;
    let on_disk =
        endpoint::read(state_dir, &record.container_id, &record.ifname).map_err(|e| e.chain())?;
    if on_disk.as_ref() != Some(record) {
        return Err(format!(
            "it does not match the endpoint record the plugin wrote at {} ({})",
            record.path(state_dir).display(),
            if on_disk.is_some() { "differs" } else { "none" }
        ));
    }
    let link = veth::inspect(record.host_ifindex)?;
    veth::check_is_host_veth(record, link.as_ref())
}

/// Reads one request line: at most `MAX_REQUEST_BYTES`, without the deadline (the caller
/// bounds it).
async fn read_request(rd: &mut BufReader<OwnedReadHalf>) -> Result<Request, String> {
    let mut line = Vec::new();
    rd.take(MAX_REQUEST_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "request longer than {MAX_REQUEST_BYTES} bytes: refused"
        ));
    }
    serde_json::from_slice(&line).map_err(|e| {
        let text: String = String::from_utf8_lossy(&line)
            .trim()
            .chars()
            .take(200)
            .collect();
        format!("bad request {text:?}: {e}")
    })
}

async fn answer(
    req: Request,
    peer: Option<UCred>,
    tx: &mpsc::Sender<Job>,
    state_dir: &Path,
) -> Response {
    if req.changes_enforcement() {
        if let Err(why) = may_change(peer.as_ref()) {
            tracing::warn!("refused {} on the agent socket: {why}", req.op());
            return Response::err(why);
        }
        if let Request::Add { endpoint } = &req {
            let (ep, dir) = (endpoint.clone(), state_dir.to_path_buf());
            let key = endpoint.key();
            let checked = tokio::task::spawn_blocking(move || check_add(&ep, &dir))
                .await
                .unwrap_or_else(|e| Err(format!("check panicked: {e}")));
            if let Err(why) = checked {
                tracing::warn!("refused add of endpoint {key}: {why}");
                return Response::err(format!("refused add of endpoint {key}: {why}"));
            }
        }
    }
    let (otx, orx) = oneshot::channel();
    if tx.send((req, otx)).await.is_err() {
        return Response::err("agent is shutting down");
    }
    orx.await
        .unwrap_or_else(|_| Response::err("agent dropped the request"))
}

async fn serve_one(
    stream: UnixStream,
    peer: Option<UCred>,
    tx: mpsc::Sender<Job>,
    state_dir: Arc<Path>,
    hub: Arc<Hub>,
    followers: Arc<Semaphore>,
) {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let resp = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut rd)).await {
        Err(_) => Response::err(format!(
            "no complete request line within {REQUEST_TIMEOUT:?}"
        )),
        Ok(Err(why)) => Response::err(why),
        // Streamed here, off the agent's loop, for as long as the client reads.
        Ok(Ok(Request::Flows { query })) if !query.follow => {
            return crate::observe::serve_flows(&hub, query, wr).await;
        }
        Ok(Ok(Request::Flows { query })) => match followers.try_acquire_owned() {
            Ok(_following) => return crate::observe::serve_flows(&hub, query, wr).await,
            Err(_) => Response::err(format!(
                "the agent already serves {MAX_FOLLOWERS} flows --follow streams (its limit): \
                 stop one, or ask without --follow"
            )),
        },
        Ok(Ok(req)) => answer(req, peer, &tx, &state_dir).await,
    };
    finish(rd, wr, &resp).await;
}

/// Sends `resp` as the connection's last line and closes it.
async fn finish(
    mut rd: BufReader<OwnedReadHalf>,
    mut wr: tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) {
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    match tokio::time::timeout(REQUEST_TIMEOUT, wr.write_all(out.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("writing response: {e}"),
        Err(_) => tracing::debug!("client did not take its response within {REQUEST_TIMEOUT:?}"),
    }
    // Closing with unread input makes the client's next read fail (ECONNRESET) instead of
    // ending: take what a refused client still sends (bounded) so it reads its answer, then
    // end of file.
    if let Err(e) = wr.shutdown().await {
        tracing::debug!("shutting down the response side: {e}");
    }
    let (mut rest, mut sink) = ((&mut rd).take(DRAIN_BYTES), tokio::io::sink());
    let drain = tokio::io::copy(&mut rest, &mut sink);
    if let Ok(Err(e)) = tokio::time::timeout(DRAIN_TIME, drain).await {
        tracing::debug!("draining the request side: {e}");
    }
}

/// Accepts connections until the agent stops; each request goes to the agent's loop through
/// `tx`.
pub async fn serve(
    listener: UnixListener,
    tx: mpsc::Sender<Job>,
    state_dir: PathBuf,
    hub: Arc<Hub>,
) {
    let state_dir: Arc<Path> = state_dir.into();
    let slots = Arc::new(Slots::new());
    let accept = || async { listener.accept().await.map(|(s, _)| s) };
    accept_loop(accept, |stream| {
        let (tx, state_dir, hub, slots) =
            (tx.clone(), state_dir.clone(), hub.clone(), slots.clone());
        tokio::spawn(async move {
            let peer = stream.peer_cred().ok();
            let Some(slot) = slots.take(may_change(peer.as_ref()).is_ok()).await else {
                let (rd, wr) = stream.into_split();
                let busy = Response::err(format!(
                    "busy: the agent serves at most {} connections of users other than root \
                     at once; try again",
                    MAX_CONNECTIONS - RESERVED_FOR_ROOT
                ));
                finish(BufReader::new(rd), wr, &busy).await;
                return;
            };
            let followers = slots.followers.clone();
            serve_one(stream, peer, tx, state_dir, hub, followers).await;
            drop(slot);
        });
    })
    .await;
}

/// First and longest wait after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Takes connections from `accept` and hands each to `handle` (which takes its slot: a
/// connection over the limit is answered "busy" and closed at once, so accepting does not
/// wait for slots). A failed accept (EMFILE, ENFILE, ENOBUFS: the pending connection stays in
/// the backlog, so retrying at once would spin a core) waits before the next try, doubling up
/// to a second.
async fn accept_loop<S, A, F>(mut accept: impl FnMut() -> A, mut handle: F)
where
    A: std::future::Future<Output = std::io::Result<S>>,
    F: FnMut(S),
{
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        match accept().await {
            Ok(stream) => {
                backoff = ACCEPT_BACKOFF.0;
                handle(stream);
            }
            Err(e) => {
                tracing::warn!("accept on the agent socket: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Threat: a local user exhausts the agent's file descriptors (EMFILE) by opening
    /// connections. 0.1 retried a failed accept at once, spinning a core for as long as the
    /// pending connection stayed in the backlog. 1.5 s of failures cost a bounded number of
    /// tries (a slow machine only makes fewer), and the first connection after them is served.
    #[tokio::test]
    async fn accept_errors_back_off_instead_of_spinning() {
        let (calls, served) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let accept = || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                match n {
                    0..10_000 => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
                    _ => std::future::pending().await,
                }
            }
        };
        let handle = |()| {
            served.fetch_add(1, Ordering::Relaxed);
        };
        let failing = Duration::from_millis(1500);
        let looped = tokio::time::timeout(failing, accept_loop(accept, handle));
        assert!(looped.await.is_err(), "the accept loop gave up");
        let n = calls.load(Ordering::Relaxed);
        // 10 ms doubling: at most 8 tries in 1.5 s (0.1 made all 10,000 at once).
        assert!(
            (2..=8).contains(&n),
            "{n} accept calls in {failing:?} of failures"
        );

        // Errors, then a connection: it is served.
        let calls = AtomicUsize::new(0);
        let accept = || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                match n {
                    0..3 => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
                    3 => Ok(()),
                    _ => std::future::pending().await,
                }
            }
        };
        let looped = tokio::time::timeout(failing, accept_loop(accept, handle));
        assert!(looped.await.is_err());
        assert_eq!(served.load(Ordering::Relaxed), 1);
    }

    /// Threat: users other than root hold every connection they may open (e.g. `flows
    /// --follow` streams, which last): root still gets a slot, at once while reserved ones are
    /// free, and others are refused rather than queued.
    #[tokio::test]
    async fn others_cannot_take_the_slots_reserved_for_root() {
        let slots = Slots::new();
        let mut held = Vec::new();
        while let Some(p) = slots.take(false).await {
            held.push(p);
        }
        assert_eq!(held.len(), MAX_CONNECTIONS - RESERVED_FOR_ROOT);
        for _ in 0..RESERVED_FOR_ROOT {
            let root = tokio::time::timeout(Duration::from_secs(1), slots.take(true)).await;
            held.push(root.expect("root waited").expect("root slot"));
        }
        assert!(slots.take(false).await.is_none(), "others still refused");
        // All taken: root waits for one (it is not refused), and gets the first freed.
        let waiting = slots.take(true);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err()
        );
        held.pop();
        assert!(waiting.await.is_some());
    }
}
