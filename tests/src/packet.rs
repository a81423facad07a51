//! Hand-made packets for the attack tests: IPv4, IPv6, UDP and ICMP/ICMPv6 headers with real
//! checksums, sent from a pod's network namespace (raw IP sockets with `IP_HDRINCL`, or whole
//! Ethernet frames on the pod's `eth0` through `AF_PACKET`), and a capture of every frame that
//! arrives on a pod's `eth0` (before IP reassembly and before any socket sees it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::lab::netns::{in_netns, ip};

/// The Internet checksum (RFC 1071) over the concatenation of `chunks`.
pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for c in chunks {
        for &b in *c {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo header of `proto` over `len` bytes between `src` and `dst`.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(t)) => {
            let mut p = s.octets().to_vec();
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p
        }
        (IpAddr::V6(s), IpAddr::V6(t)) => {
            let mut p = s.octets().to_vec();
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
            p
        }
        _ => panic!("mixed address families"),
    }
}

/// A UDP datagram (header + payload) with its checksum over the pseudo header.
pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut d = Vec::new();
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    let mut c = checksum(&[&pseudo_header(src, dst, 17, d.len()), &d]);
    if c == 0 {
        c = 0xffff;
    }
    d[6..8].copy_from_slice(&c.to_be_bytes());
    d
}

/// An ICMPv4 message: type, code, 4 bytes of `rest_of_header`, then `body`, checksummed.
pub fn icmp4(ty: u8, code: u8, rest_of_header: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest_of_header);
    m.extend_from_slice(body);
    let c = checksum(&[&m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMPv6 message from `src` to `dst`: type, code, 4 bytes of `rest_of_header`, then
/// `body`, checksummed over the pseudo header.
pub fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ty: u8,
    code: u8,
    rest_of_header: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest_of_header);
    m.extend_from_slice(body);
    let c = checksum(&[&pseudo_header(src.into(), dst.into(), 58, m.len()), &m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An IPv4 header (protocol `proto`, TTL 64) + `payload`: identification `id`, fragment
/// offset in 8-byte units, MF flag.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    offset8: u16,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&(offset8 | if more { 0x2000 } else { 0 }).to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header (hop limit `hop_limit`) + `payload` with next header `next`.
pub fn ipv6_hop(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, hop_limit]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header (hop limit 64) + `payload` with next header `next`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    ipv6_hop(src, dst, next, 64, payload)
}

/// An Ethernet frame carrying `l3` (ethertype 0x0800 or 0x86dd).
pub fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn mac_field(text: &str, key: &str) -> [u8; 6] {
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {text:?}"));
    let mut mac = [0u8; 6];
    for (i, b) in word.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(b, 16).expect("hex MAC");
    }
    mac
}

/// (pod `eth0` MAC, gateway MAC = the host veth's, from the plugin's static neighbour entry)
/// of the pod in network namespace `ns`.
pub fn macs(ns: &str) -> ([u8; 6], [u8; 6]) {
    let link = ip(&["-n", ns, "-o", "link", "show", "dev", "eth0"]).expect("ip link");
    let neigh = ip(&["-n", ns, "neigh", "show", "169.254.1.1", "dev", "eth0"]).expect("neigh");
    (mac_field(&link, "link/ether"), mac_field(&neigh, "lladdr"))
}

/// The link-local address of `eth0` in network namespace `ns`.
pub fn link_local(ns: &str) -> Ipv6Addr {
    let out = ip(&[
        "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
    ])
    .expect("ip addr");
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no link-local address on eth0 in {ns}: {out:?}"))
}

/// `ret`, asserting that the syscall it came from succeeded (else the OS error and `what`).
pub fn sys(ret: i32, what: &str) -> i32 {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
    ret
}

/// Sends IPv4 packets with complete headers (IP_HDRINCL via IPPROTO_RAW) from `ns`.
pub fn send_hdrincl(ns: &str, packets: &[Vec<u8>]) {
    in_netns(ns, || {
        // SAFETY: plain syscalls on a descriptor we own.
        unsafe {
            let fd = OwnedFd::from_raw_fd(sys(
                libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
                "raw socket",
            ));
            for p in packets {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
                sys(
                    libc::sendto(
                        fd.as_raw_fd(),
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    ) as i32,
                    "sendto (IP_HDRINCL)",
                );
            }
        }
    })
    .expect("in pod namespace");
}

/// Sends whole Ethernet frames on `eth0` of `ns` (AF_PACKET).
pub fn send_frames(ns: &str, frames: &[Vec<u8>]) {
    in_netns(ns, || {
        // SAFETY: plain syscalls on a descriptor we own.
        unsafe {
            let fd = OwnedFd::from_raw_fd(sys(
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
                "packet socket",
            ));
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            for f in frames {
                let mut sa: libc::sockaddr_ll = std::mem::zeroed();
                sa.sll_family = libc::AF_PACKET as u16;
                sa.sll_ifindex = ifindex as i32;
                sa.sll_halen = 6;
                sa.sll_addr[..6].copy_from_slice(&f[..6]);
                sys(
                    libc::sendto(
                        fd.as_raw_fd(),
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    ) as i32,
                    "sendto (AF_PACKET)",
                );
            }
        }
    })
    .expect("in pod namespace");
}

/// Every frame arriving on `eth0` of a namespace (AF_PACKET, all protocols, incoming only).
pub struct Capture {
    fd: OwnedFd,
    /// Frames received so far (filled by [`Capture::count`] and [`Capture::wait_for`]).
    pub frames: Vec<Vec<u8>>,
}

impl Capture {
    pub fn start(ns: &str) -> Capture {
        let fd = in_netns(ns, || {
            // SAFETY: plain syscalls on a descriptor we own.
            unsafe {
                let proto = (libc::ETH_P_ALL as u16).to_be();
                let fd = OwnedFd::from_raw_fd(sys(
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                        i32::from(proto),
                    ),
                    "capture socket",
                ));
                let mut sa: libc::sockaddr_ll = std::mem::zeroed();
                sa.sll_family = libc::AF_PACKET as u16;
                sa.sll_protocol = proto;
                sa.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
                sys(
                    libc::bind(
                        fd.as_raw_fd(),
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    ),
                    "bind capture",
                );
                fd
            }
        })
        .expect("in pod namespace");
        Capture {
            fd,
            frames: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffers are ours and sized as passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut sa).cast(),
                    &raw mut len,
                )
            };
            if n <= 0 {
                return;
            }
            if sa.sll_pkttype != libc::PACKET_OUTGOING {
                self.frames.push(buf[..n as usize].to_vec());
            }
        }
    }

    /// Frames received so far that carry `marker` anywhere.
    pub fn count(&mut self, marker: &[u8]) -> usize {
        self.drain();
        self.frames
            .iter()
            .filter(|f| f.windows(marker.len()).any(|w| w == marker))
            .count()
    }

    /// Waits (bounded) until `n` frames carrying `marker` arrived.
    pub fn wait_for(&mut self, marker: &[u8], n: usize) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.count(marker) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}
