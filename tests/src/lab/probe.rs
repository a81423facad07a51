//! Servers and probes, run by the lab process itself: sockets are opened on a thread that has
//! joined the pod's namespace (a socket stays in the namespace it was created in), then
//! served or probed with non-blocking I/O and `poll`.
//!
//! - Servers: per pod, a TCP listener and a UDP socket on `[::]:<port>` for every model port
//!   (dual stack: IPv4 clients arrive as v4-mapped addresses); TCP connections are accepted
//!   and closed, UDP datagrams are echoed.
//! - Probes: from every pod, every (destination, port, protocol) at once: a TCP connect, or a
//!   UDP request that must come back unchanged; the ones that do not complete within the
//!   timeout are blocked.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, connect, getsockopt, recv, send,
    socket, sockopt,
};

use super::LabError;
use super::netns::in_netns;
use super::reachability::{Case, Protocol};

/// The servers of one pod; dropping it stops them and closes the sockets.
pub struct PodServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PodServer {
    pub fn start(pod_netns: &str, ports: &[u16]) -> Result<PodServer, LabError> {
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
            Ok((tcp, udp))
        })?;
        let (tcp, udp) = opened.map_err(|source| LabError::Server {
            pod_netns: pod_netns.to_string(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("srv-{pod_netns}"))
            .spawn(move || serve(&tcp, &udp, &flag))
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

fn serve(tcp: &[TcpListener], udp: &[UdpSocket], stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<PollFd> = tcp
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .chain(
                udp.iter()
                    .map(|u| PollFd::new(u.as_fd(), PollFlags::POLLIN)),
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
                // Accept and close: the probe only needs the handshake.
                while let Ok((conn, _)) = l.accept() {
                    drop(conn);
                }
            }
        }
        for (i, u) in udp.iter().enumerate() {
            if ready[tcp.len() + i] {
                while let Ok((n, peer)) = u.recv_from(&mut buf) {
                    if let Err(e) = u.send_to(&buf[..n], peer) {
                        eprintln!("lab: UDP echo to {peer}: {e}");
                    }
                }
            }
        }
    }
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
    Udp { fd: OwnedFd, payload: Vec<u8> },
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
) -> Result<Vec<Outcome>, LabError> {
    in_netns(pod_netns, || run_probes(from, targets, cases, timeout))?.map_err(|source| {
        LabError::Probe {
            pod_netns: pod_netns.to_string(),
            source,
        }
    })
}

fn run_probes(
    from: &str,
    targets: &[Target],
    cases: &[Case],
    timeout: Duration,
) -> Result<Vec<Outcome>, Errno> {
    let mut probes: Vec<(Case, &Target, State)> = Vec::new();
    for t in targets {
        for &case in cases {
            let sa = SockaddrStorage::from(SocketAddr::new(t.addr, case.port));
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
        let now = Instant::now();
        if pending.is_empty() || now >= deadline {
            break;
        }
        if now >= next_resend {
            for &i in &pending {
                if let State::Udp { fd, payload } = &probes[i].2
                    && let Err(e) = send(fd.as_raw_fd(), payload, MsgFlags::empty())
                    && e != Errno::EAGAIN
                {
                    probes[i].2 = State::Done(false);
                }
            }
            next_resend = now + UDP_RESEND;
        }
        let wait = deadline.min(next_resend).saturating_duration_since(now);
        let ready: Vec<(usize, bool)> = {
            let mut fds: Vec<PollFd> = Vec::new();
            let mut idx = Vec::new();
            for &i in &pending {
                match &probes[i].2 {
                    State::Tcp(fd) => fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT)),
                    State::Udp { fd, .. } => fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
                    State::Done(_) => continue,
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
                State::Done(_) => continue,
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
