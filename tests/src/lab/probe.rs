//! Servers and probes, run by the lab process itself: sockets are opened on a thread that has
//! joined the pod's namespace (a socket stays in the namespace it was created in), then
//! served or probed with non-blocking I/O and `poll`.
//!
//! - Servers: per pod, a TCP listener and a UDP socket on `[::]:<port>` for every model port
//!   (dual stack: IPv4 clients arrive as v4-mapped addresses); TCP connections are accepted
//!   and closed, UDP datagrams are echoed. Plus two raw sockets for IP protocol 132 (v4, v6):
//!   this kernel has no SCTP, so an SCTP probe is a crafted INIT packet, and "reachable" means
//!   the destination's raw socket received it (recorded in a shared [`SctpSeen`]).
//! - Probes: from every pod, every (destination, port, protocol) at once: a TCP connect, a
//!   UDP request that must come back unchanged, an ICMP echo from a ping socket that must be
//!   answered, or an SCTP INIT that must arrive; the ones that do not complete within the
//!   timeout are blocked.

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, bind, connect, getsockopt, recv,
    send, socket, sockopt,
};

use super::LabError;
use super::netns::in_netns;
use super::reachability::{Case, Protocol};

/// The servers of one pod; dropping it stops them and closes the sockets.
pub struct PodServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// SCTP probes received: (receiving endpoint id, probe token). Shared by every server of a
/// lab and read by the probes.
#[derive(Clone, Debug, Default)]
pub struct SctpSeen(Arc<Mutex<HashSet<(String, u32)>>>);

impl SctpSeen {
    fn insert(&self, id: &str, token: u32) {
        if let Ok(mut s) = self.0.lock() {
            s.insert((id.to_string(), token));
        }
    }

    fn contains(&self, id: &str, token: u32) -> bool {
        self.0
            .lock()
            .map(|s| s.contains(&(id.to_string(), token)))
            .unwrap_or(false)
    }
}

/// A socket of any type from `libc::socket` (nix has no constructor for raw SCTP or ping
/// sockets).
fn raw_socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall; a non-negative result is a fresh descriptor we own.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl PodServer {
    /// Servers in `pod_netns`, for the endpoint named `id` (what [`SctpSeen`] records).
    pub fn start(
        pod_netns: &str,
        id: &str,
        ports: &[u16],
        seen: &SctpSeen,
    ) -> Result<PodServer, LabError> {
        let opened = in_netns(pod_netns, || -> std::io::Result<_> {
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            for &port in ports {
                let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                tcp.push(l);
                let u = UdpSocket::bind(addr)?;
                u.set_nonblocking(true)?;
                udp.push(u);
            }
            let raw = [libc::AF_INET, libc::AF_INET6]
                .into_iter()
                .map(|d| raw_socket(d, libc::SOCK_RAW, IPPROTO_SCTP).map_err(std::io::Error::from))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok((tcp, udp, raw))
        })?;
        let (tcp, udp, raw) = opened.map_err(|source| LabError::Server {
            pod_netns: pod_netns.to_string(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (id, seen) = (id.to_string(), seen.clone());
        let thread = std::thread::Builder::new()
            .name(format!("srv-{pod_netns}"))
            .spawn(move || serve(&tcp, &udp, &raw, &id, &seen, &flag))
            .map_err(|source| LabError::Server {
                pod_netns: pod_netns.to_string(),
                source,
            })?;
        Ok(PodServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("lab: a server thread panicked");
        }
    }
}

fn serve(
    tcp: &[TcpListener],
    udp: &[UdpSocket],
    raw: &[OwnedFd],
    id: &str,
    seen: &SctpSeen,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<PollFd> = tcp
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .chain(
                udp.iter()
                    .map(|u| PollFd::new(u.as_fd(), PollFlags::POLLIN)),
            )
            .chain(
                raw.iter()
                    .map(|r| PollFd::new(r.as_fd(), PollFlags::POLLIN)),
            )
            .collect();
        match poll(&mut fds, PollTimeout::from(100u8)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("lab: server poll failed: {e}");
                return;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (i, l) in tcp.iter().enumerate() {
            if ready[i] {
                // Tell who we are and close: a probe only needs the handshake, a
                // `who_answers` client reads the identity (a few bytes into an empty send
                // buffer: the write does not block).
                while let Ok((mut conn, _)) = l.accept() {
                    if let Err(e) = conn.write_all(identity(id).as_bytes())
                        && e.kind() != std::io::ErrorKind::ConnectionReset
                    {
                        eprintln!("lab: identity to a TCP client: {e}");
                    }
                    drop(conn);
                }
            }
        }
        for (i, u) in udp.iter().enumerate() {
            if ready[tcp.len() + i] {
                while let Ok((n, peer)) = u.recv_from(&mut buf) {
                    // A `who_answers` request gets the identity, anything else its echo.
                    let who = identity(id);
                    let answer = if buf[..n].starts_with(WHO_REQUEST) {
                        who.as_bytes()
                    } else {
                        &buf[..n]
                    };
                    if let Err(e) = u.send_to(answer, peer) {
                        eprintln!("lab: UDP echo to {peer}: {e}");
                    }
                }
            }
        }
        for (i, r) in raw.iter().enumerate() {
            if ready[tcp.len() + udp.len() + i] {
                while let Ok(n) = recv(r.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    // An IPv4 raw socket delivers the IP header too, an IPv6 one does not.
                    let sctp = if i == 0 {
                        let ihl = usize::from(buf[0] & 0x0f) * 4;
                        buf.get(ihl..n)
                    } else {
                        buf.get(..n)
                    };
                    if let Some(token) = sctp.and_then(sctp_init_token) {
                        seen.insert(id, token);
                    }
                }
            }
        }
    }
}

/// What a server says about itself: `plt-id <endpoint id>\n`.
fn identity(id: &str) -> String {
    format!("{IDENTITY_PREFIX}{id}\n")
}

const IDENTITY_PREFIX: &str = "plt-id ";

/// A UDP datagram that starts with this asks the server for its identity.
const WHO_REQUEST: &[u8] = b"plt-who";

/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: i32 = 132;

/// An SCTP packet (common header + INIT chunk) to `dst_port` whose initiate tag and initial
/// TSN are `token`, with a correct CRC32c (RFC 9260 appendix A; the datapath does not check
/// it, the receiving raw socket neither, but a real SCTP stack would).
pub fn sctp_init_packet(src_port: u16, dst_port: u16, token: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.extend_from_slice(&[1, 0]); // chunk type INIT, flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&token.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&token.to_be_bytes()); // initial TSN
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// The token of an SCTP INIT built by [`sctp_init_packet`].
fn sctp_init_token(sctp: &[u8]) -> Option<u32> {
    if sctp.len() < 32 || sctp[12] != 1 {
        return None;
    }
    Some(u32::from_be_bytes([sctp[16], sctp[17], sctp[18], sctp[19]]))
}

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78) as SCTP stores it: the final value,
/// transmitted least significant byte first.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// ICMP echo identifiers of probes: unique in this process (until 65 535 pings wrap it).
fn next_echo_ident() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (NEXT.fetch_add(1, Ordering::Relaxed) % 65_535) as u16 + 1
}

/// Tokens of SCTP probes: unique in this process.
fn next_token() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let t = NEXT.fetch_add(1, Ordering::Relaxed);
    // Never 0 (an initiate tag of 0 is invalid).
    (std::process::id() << 20) ^ t | 1 << 31
}

/// One destination of a probe round.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: String,
    pub addr: IpAddr,
}

/// One finished probe.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub case: Case,
    pub to: String,
    pub reachable: bool,
}

enum State {
    Tcp(OwnedFd),
    Udp {
        fd: OwnedFd,
        payload: Vec<u8>,
    },
    Icmp {
        fd: OwnedFd,
        payload: Vec<u8>,
    },
    Sctp {
        fd: OwnedFd,
        packet: Vec<u8>,
        token: u32,
    },
    Done(bool),
}

/// How often an unanswered UDP request is sent again (a datagram may wait on neighbour
/// resolution; the timeout, not one lost packet, decides).
const UDP_RESEND: Duration = Duration::from_millis(200);

/// Probes every target on every case from inside `pod_netns`, all at once; returns when all
/// completed or `timeout` passed.
pub fn probe_from(
    pod_netns: &str,
    from: &str,
    targets: &[Target],
    cases: &[Case],
    timeout: Duration,
    seen: &SctpSeen,
) -> Result<Vec<Outcome>, LabError> {
    probe_from_mapped(pod_netns, from, targets, cases, timeout, seen, &|_, c| {
        c.port
    })
}

/// [`probe_from`] where the port on the wire is `port_of(target, case)` rather than the case's
/// port (probes through a Service port that differs from the target port; the outcome still
/// names the case).
pub fn probe_from_mapped(
    pod_netns: &str,
    from: &str,
    targets: &[Target],
    cases: &[Case],
    timeout: Duration,
    seen: &SctpSeen,
    port_of: &(dyn Fn(&Target, Case) -> u16 + Sync),
) -> Result<Vec<Outcome>, LabError> {
    in_netns(pod_netns, || {
        run_probes(from, targets, cases, timeout, seen, port_of)
    })?
    .map_err(|source| LabError::Probe {
        pod_netns: pod_netns.to_string(),
        source,
    })
}

fn run_probes(
    from: &str,
    targets: &[Target],
    cases: &[Case],
    timeout: Duration,
    seen: &SctpSeen,
    port_of: &(dyn Fn(&Target, Case) -> u16 + Sync),
) -> Result<Vec<Outcome>, Errno> {
    let mut probes: Vec<(Case, &Target, State)> = Vec::new();
    for t in targets {
        for &case in cases {
            let wire_port = port_of(t, case);
            let sa = SockaddrStorage::from(SocketAddr::new(t.addr, wire_port));
            let family = match t.addr {
                IpAddr::V4(_) => AddressFamily::Inet,
                IpAddr::V6(_) => AddressFamily::Inet6,
            };
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let state = match case.protocol {
                Protocol::Tcp => {
                    let fd = socket(family, SockType::Stream, flags, None)?;
                    match connect(fd.as_raw_fd(), &sa) {
                        Ok(()) => State::Done(true),
                        Err(Errno::EINPROGRESS) => State::Tcp(fd),
                        Err(_) => State::Done(false),
                    }
                }
                Protocol::Udp => {
                    let fd = socket(family, SockType::Datagram, flags, None)?;
                    connect(fd.as_raw_fd(), &sa)?;
                    let payload = format!("plt-probe {from} -> {} {case}", t.id).into_bytes();
                    match send(fd.as_raw_fd(), &payload, MsgFlags::empty()) {
                        Ok(_) | Err(Errno::EAGAIN) => State::Udp { fd, payload },
                        Err(_) => State::Done(false),
                    }
                }
                Protocol::Icmp => {
                    // A ping socket (needs net.ipv4.ping_group_range to cover us; the lab
                    // sets it in every namespace that probes). The kernel fills in the
                    // identifier and the checksum.
                    let (domain, proto, echo) = match t.addr {
                        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
                        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
                    };
                    let fd = raw_socket(domain, libc::SOCK_DGRAM, proto)?;
                    // The identifier (a ping socket's "port") is unique in the lab process:
                    // the datapath tracks echo flows by identifier alone, so a request that
                    // reused the identifier of a request in the other direction would pass as
                    // its reply (tests/tests/attacks.rs shows that on purpose; probes must not
                    // stumble on it by chance).
                    let unspecified = match t.addr {
                        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    };
                    bind(
                        fd.as_raw_fd(),
                        &SockaddrStorage::from(SocketAddr::new(unspecified, next_echo_ident())),
                    )?;
                    connect(
                        fd.as_raw_fd(),
                        &SockaddrStorage::from(SocketAddr::new(t.addr, 0)),
                    )?;
                    let mut payload = vec![echo, 0, 0, 0, 0, 0, 0, 1];
                    payload.extend_from_slice(format!("plt-ping {from} -> {}", t.id).as_bytes());
                    match send(fd.as_raw_fd(), &payload, MsgFlags::empty()) {
                        Ok(_) | Err(Errno::EAGAIN) => State::Icmp { fd, payload },
                        Err(_) => State::Done(false),
                    }
                }
                Protocol::Sctp => {
                    let domain = match t.addr {
                        IpAddr::V4(_) => libc::AF_INET,
                        IpAddr::V6(_) => libc::AF_INET6,
                    };
                    let fd = raw_socket(domain, libc::SOCK_RAW, IPPROTO_SCTP)?;
                    connect(
                        fd.as_raw_fd(),
                        &SockaddrStorage::from(SocketAddr::new(t.addr, 0)),
                    )?;
                    let token = next_token();
                    // A fresh source port per probe, as a real client would pick: a probe
                    // must not match a flow an earlier round left in conntrack.
                    let src_port = 32_768 + (token & 0x3fff) as u16;
                    let packet = sctp_init_packet(src_port, wire_port, token);
                    match send(fd.as_raw_fd(), &packet, MsgFlags::empty()) {
                        Ok(_) | Err(Errno::EAGAIN) => State::Sctp { fd, packet, token },
                        Err(_) => State::Done(false),
                    }
                }
            };
            probes.push((case, t, state));
        }
    }
    let deadline = Instant::now() + timeout;
    let mut next_resend = Instant::now() + UDP_RESEND;
    let mut buf = [0u8; 2048];
    loop {
        let pending: Vec<usize> = probes
            .iter()
            .enumerate()
            .filter(|(_, p)| !matches!(p.2, State::Done(_)))
            .map(|(i, _)| i)
            .collect();
        // SCTP probes complete when the destination's server saw their token.
        let mut sctp_pending = false;
        for &i in &pending {
            if let State::Sctp { token, .. } = &probes[i].2 {
                if seen.contains(&probes[i].1.id, *token) {
                    probes[i].2 = State::Done(true);
                } else {
                    sctp_pending = true;
                }
            }
        }
        let now = Instant::now();
        if pending.is_empty() || now >= deadline {
            break;
        }
        if now >= next_resend {
            for &i in &pending {
                let (fd, bytes) = match &probes[i].2 {
                    State::Udp { fd, payload } | State::Icmp { fd, payload } => (fd, payload),
                    State::Sctp { fd, packet, .. } => (fd, packet),
                    _ => continue,
                };
                if let Err(e) = send(fd.as_raw_fd(), bytes, MsgFlags::empty())
                    && e != Errno::EAGAIN
                {
                    probes[i].2 = State::Done(false);
                }
            }
            next_resend = now + UDP_RESEND;
        }
        let mut wait = deadline.min(next_resend).saturating_duration_since(now);
        if sctp_pending {
            wait = wait.min(Duration::from_millis(10));
        }
        let ready: Vec<(usize, bool)> = {
            let mut fds: Vec<PollFd> = Vec::new();
            let mut idx = Vec::new();
            for &i in &pending {
                match &probes[i].2 {
                    State::Tcp(fd) => fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT)),
                    State::Udp { fd, .. } | State::Icmp { fd, .. } => {
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                    }
                    State::Sctp { .. } | State::Done(_) => continue,
                }
                idx.push(i);
            }
            let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
            fds.iter()
                .zip(idx)
                .map(|(f, i)| (i, f.revents().is_some_and(|r| !r.is_empty())))
                .collect()
        };
        for (i, is_ready) in ready {
            if !is_ready {
                continue;
            }
            let next = match &probes[i].2 {
                State::Tcp(fd) => match getsockopt(fd, sockopt::SocketError) {
                    Ok(0) => State::Done(true),
                    _ => State::Done(false),
                },
                State::Udp { fd, payload } => {
                    match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                        Ok(n) if buf[..n] == payload[..] => State::Done(true),
                        Ok(_) | Err(Errno::EAGAIN) => continue,
                        Err(_) => State::Done(false),
                    }
                }
                State::Icmp { fd, payload } => {
                    // An echo reply (type 0 / 129) carrying our data; the kernel rewrote the
                    // identifier, so only the data is compared.
                    match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                        Ok(n)
                            if n == payload.len()
                                && matches!(buf[0], 0 | 129)
                                && buf[8..n] == payload[8..] =>
                        {
                            State::Done(true)
                        }
                        Ok(_) | Err(Errno::EAGAIN) => continue,
                        Err(_) => State::Done(false),
                    }
                }
                State::Sctp { .. } | State::Done(_) => continue,
            };
            probes[i].2 = next;
        }
    }
    Ok(probes
        .into_iter()
        .map(|(case, t, s)| Outcome {
            case,
            to: t.id.clone(),
            reachable: matches!(s, State::Done(true)),
        })
        .collect())
}

/// `count` TCP connections or UDP identity requests at once from inside `pod_netns` to
/// `dest`, each from its own socket (a new flow, balanced on its own by kube-proxy's random
/// DNAT); each yields the identity the answering server gave, or `None` when it did not
/// answer within `timeout`.
pub fn who_answers(
    pod_netns: &str,
    dest: SocketAddr,
    protocol: Protocol,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Option<String>>, LabError> {
    in_netns(pod_netns, || run_who(dest, protocol, count, timeout))?.map_err(|source| {
        LabError::Probe {
            pod_netns: pod_netns.to_string(),
            source,
        }
    })
}

enum Who {
    Connecting(OwnedFd),
    Reading(OwnedFd, Vec<u8>),
    Asking(OwnedFd),
    Done(Option<String>),
}

fn parse_identity(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.strip_prefix(IDENTITY_PREFIX)
        .map(|r| r.trim_end().to_string())
}

fn run_who(
    dest: SocketAddr,
    protocol: Protocol,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Option<String>>, Errno> {
    let family = if dest.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let sa = SockaddrStorage::from(dest);
    let mut all = Vec::with_capacity(count);
    for _ in 0..count {
        let w = match protocol {
            Protocol::Tcp => {
                let fd = socket(family, SockType::Stream, flags, None)?;
                match connect(fd.as_raw_fd(), &sa) {
                    Ok(()) => Who::Reading(fd, Vec::new()),
                    Err(Errno::EINPROGRESS) => Who::Connecting(fd),
                    Err(_) => Who::Done(None),
                }
            }
            Protocol::Udp => {
                let fd = socket(family, SockType::Datagram, flags, None)?;
                connect(fd.as_raw_fd(), &sa)?;
                match send(fd.as_raw_fd(), WHO_REQUEST, MsgFlags::empty()) {
                    Ok(_) | Err(Errno::EAGAIN) => Who::Asking(fd),
                    Err(_) => Who::Done(None),
                }
            }
            Protocol::Sctp | Protocol::Icmp => return Err(Errno::EPROTONOSUPPORT),
        };
        all.push(w);
    }
    let deadline = Instant::now() + timeout;
    let mut next_resend = Instant::now() + UDP_RESEND;
    let mut buf = [0u8; 512];
    loop {
        let pending: Vec<usize> = (0..all.len())
            .filter(|&i| !matches!(all[i], Who::Done(_)))
            .collect();
        let now = Instant::now();
        if pending.is_empty() || now >= deadline {
            break;
        }
        if now >= next_resend {
            for &i in &pending {
                if let Who::Asking(fd) = &all[i]
                    && let Err(e) = send(fd.as_raw_fd(), WHO_REQUEST, MsgFlags::empty())
                    && e != Errno::EAGAIN
                {
                    all[i] = Who::Done(None);
                }
            }
            next_resend = now + UDP_RESEND;
        }
        let wait = deadline.min(next_resend).saturating_duration_since(now);
        let ready: Vec<usize> = {
            let mut fds = Vec::new();
            let mut idx = Vec::new();
            for &i in &pending {
                let (fd, ev) = match &all[i] {
                    Who::Connecting(fd) => (fd, PollFlags::POLLOUT),
                    Who::Reading(fd, _) | Who::Asking(fd) => (fd, PollFlags::POLLIN),
                    Who::Done(_) => continue,
                };
                fds.push(PollFd::new(fd.as_fd(), ev));
                idx.push(i);
            }
            let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
            fds.iter()
                .zip(idx)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, i)| i)
                .collect()
        };
        for i in ready {
            let next = match std::mem::replace(&mut all[i], Who::Done(None)) {
                Who::Connecting(fd) => match getsockopt(&fd, sockopt::SocketError) {
                    Ok(0) => Who::Reading(fd, Vec::new()),
                    _ => Who::Done(None),
                },
                Who::Reading(fd, mut got) => {
                    match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                        Ok(0) => Who::Done(parse_identity(&got)),
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if got.contains(&b'\n') {
                                Who::Done(parse_identity(&got))
                            } else {
                                Who::Reading(fd, got)
                            }
                        }
                        Err(Errno::EAGAIN) => Who::Reading(fd, got),
                        Err(_) => Who::Done(parse_identity(&got)),
                    }
                }
                Who::Asking(fd) => match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(n) => match parse_identity(&buf[..n]) {
                        Some(id) => Who::Done(Some(id)),
                        None => Who::Asking(fd),
                    },
                    Err(Errno::EAGAIN) => Who::Asking(fd),
                    Err(_) => Who::Done(None),
                },
                done @ Who::Done(_) => done,
            };
            all[i] = next;
        }
    }
    Ok(all
        .into_iter()
        .map(|w| match w {
            Who::Done(id) => id,
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn sctp_init_carries_port_and_token() {
        let p = sctp_init_packet(40_000, 81, 0x8000_0123);
        assert_eq!(p.len(), 32);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 81);
        assert_eq!(sctp_init_token(&p), Some(0x8000_0123));
        // The checksum verifies: CRC32c over the packet with the field zeroed.
        let mut z = p.clone();
        z[8..12].fill(0);
        assert_eq!(crc32c(&z).to_le_bytes(), p[8..12]);
    }
}
