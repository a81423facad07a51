//! kube-dns in the lab: a pod `kube-system/kube-dns` (label `k8s-app=kube-dns`, in namespace
//! `kube-system`, labelled `kubernetes.io/metadata.name=kube-system` as every namespace) that
//! runs Debian's dnsmasq with static records ([`Zone`]: A, AAAA, CNAMEs, TTLs) and no
//! upstream, behind the Service
//! `kube-system/kube-dns` (ClusterIPs [`KUBE_DNS_V4`], [`KUBE_DNS_V6`]; ports `dns` 53/UDP and
//! `dns-tcp` 53/TCP) programmed by the lab's kube-proxy ([`Lab::apply_services`]).
//!
//! Lookups are made by a small DNS client written here (`dig` is not installed): one question
//! (A or AAAA), over UDP (resent every 200 ms until the timeout) or TCP (RFC 1035 4.2.2: a
//! two-byte length before the message), from inside a pod's network namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{in_netns, netns_path};
use super::{Lab, LabError};

/// ClusterIPs of the kube-dns Service (kind's defaults: the tenth address of the Service
/// CIDRs).
pub const KUBE_DNS_V4: &str = "10.96.0.10";
pub const KUBE_DNS_V6: &str = "fd00:10:96::a";

/// Pod id of the DNS server.
pub const KUBE_DNS_POD: &str = "kube-system/kube-dns";

/// Record types the client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
}

impl QType {
    fn code(self) -> u16 {
        match self {
            QType::A => 1,
            QType::Aaaa => 28,
        }
    }
}

/// How a lookup travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The running DNS server; dropping it stops dnsmasq.
pub struct KubeDns {
    child: Child,
    /// dnsmasq's log (queries included).
    pub log: PathBuf,
}

impl Drop for KubeDns {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("lab: stopping dnsmasq: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("lab: waiting for dnsmasq: {e}");
        }
    }
}

/// The YAML of the kube-dns namespace, pod and Service (the pod on node `node`).
pub fn kube_dns_yaml(node: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Pod
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec: {{nodeName: {node}}}
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  selector: {{k8s-app: kube-dns}}
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: {KUBE_DNS_V4}
  clusterIPs: [{KUBE_DNS_V4}, \"{KUBE_DNS_V6}\"]
  ports:
    - {{name: dns, protocol: UDP, port: 53, targetPort: 53}}
    - {{name: dns-tcp, protocol: TCP, port: 53, targetPort: 53}}
"
    )
}

/// What kube-dns serves: address records, CNAMEs (dnsmasq answers a CNAME only for a local
/// target) and their TTLs. Build with [`Zone::record`], [`Zone::cname`], [`Zone::local_ttl`].
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// (name, address, TTL): A or AAAA by the address; no TTL = the local TTL.
    pub records: Vec<(String, IpAddr, Option<u32>)>,
    /// (alias, target, TTL).
    pub cnames: Vec<(String, String, Option<u32>)>,
    /// TTL of records without their own (`--local-ttl`; dnsmasq's default is 0).
    pub local_ttl: Option<u32>,
}

impl Zone {
    /// An address record (A or AAAA by the address) with the local TTL.
    pub fn record(mut self, name: &str, ip: IpAddr) -> Self {
        self.records.push((name.to_string(), ip, None));
        self
    }

    /// An address record with its own TTL (seconds).
    pub fn record_ttl(mut self, name: &str, ip: IpAddr, ttl: u32) -> Self {
        self.records.push((name.to_string(), ip, Some(ttl)));
        self
    }

    /// `alias` is a CNAME of `target` (a name of this zone).
    pub fn cname(mut self, alias: &str, target: &str) -> Self {
        self.cnames
            .push((alias.to_string(), target.to_string(), None));
        self
    }

    /// The TTL of every record without its own.
    pub fn local_ttl(mut self, ttl: u32) -> Self {
        self.local_ttl = Some(ttl);
        self
    }

    /// dnsmasq's arguments for this zone.
    fn dnsmasq_args(&self) -> Vec<String> {
        let ttl = |t: &Option<u32>| t.map(|t| format!(",{t}")).unwrap_or_default();
        let mut args: Vec<String> = self
            .records
            .iter()
            .map(|(name, ip, t)| format!("--host-record={name},{ip}{}", ttl(t)))
            .collect();
        args.extend(
            self.cnames
                .iter()
                .map(|(alias, target, t)| format!("--cname={alias},{target}{}", ttl(t))),
        );
        args.extend(self.local_ttl.map(|t| format!("--local-ttl={t}")));
        args
    }
}

impl Lab {
    /// Adds kube-dns (see the module doc) on node `node` (`n0`, ...) serving `records` (name,
    /// address; A or AAAA by the address), and waits (bounded) until dnsmasq answers inside
    /// its pod. Call [`Lab::wait_synced`] before looking up from other pods.
    pub fn start_kube_dns(
        &mut self,
        node: &str,
        records: &[(&str, IpAddr)],
    ) -> Result<KubeDns, LabError> {
        let zone = records
            .iter()
            .fold(Zone::default(), |z, (name, ip)| z.record(name, *ip));
        self.start_kube_dns_zone(node, &zone)
    }

    /// [`Lab::start_kube_dns`] serving a whole [`Zone`] (CNAMEs, TTLs).
    pub fn start_kube_dns_zone(&mut self, node: &str, zone: &Zone) -> Result<KubeDns, LabError> {
        self.apply_services("kube-dns", &kube_dns_yaml(node))?;
        let netns = self
            .pod_netns(KUBE_DNS_POD)
            .ok_or_else(|| LabError::Config {
                reason: format!("pod {KUBE_DNS_POD} was not created"),
            })?
            .to_string();
        let log = self.dir().join("kube-dns.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns, "dnsmasq"])
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--group=root",
                "--port=53",
                "--log-queries",
            ])
            .arg(format!("--log-facility={}", log.display()))
            .args(zone.dnsmasq_args());
        // If the test process dies without dropping the guard, dnsmasq dies with it (the
        // signal comes when the spawning thread exits, which outlives the guard in a test).
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The command line can hold thousands of records: errors give their numbers.
        let what = format!(
            "ip netns exec {netns} dnsmasq ({} records, {} CNAMEs)",
            zone.records.len(),
            zone.cnames.len()
        );
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: what.clone(),
                source,
            })?;
        let mut dns = KubeDns { child, log };
        // Ready when it answers a lookup of the first record from inside its own pod.
        let (probe_name, probe_type) = zone
            .records
            .first()
            .map(|(n, ip, _)| {
                (
                    n.as_str(),
                    if ip.is_ipv4() { QType::A } else { QType::Aaaa },
                )
            })
            .unwrap_or(("kube-dns.lab.test", QType::A));
        let start = Instant::now();
        let limit = Duration::from_secs(10);
        loop {
            let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);
            if lookup_in(
                &netns,
                server,
                probe_name,
                probe_type,
                Transport::Udp,
                Duration::from_millis(200),
            )?
            .is_some()
            {
                break;
            }
            if let Ok(Some(status)) = dns.child.try_wait() {
                return Err(LabError::Command {
                    cmd: what,
                    status: status.to_string(),
                    output: std::fs::read_to_string(&dns.log).unwrap_or_default(),
                });
            }
            if start.elapsed() > limit {
                return Err(LabError::Timeout {
                    what: format!(
                        "dnsmasq in {netns} answering: {}",
                        std::fs::read_to_string(&dns.log).unwrap_or_default()
                    ),
                    after: limit,
                });
            }
        }
        self.log(format_args!(
            "lab: kube-dns (dnsmasq) ready in {netns} after {:?}",
            start.elapsed()
        ));
        Ok(dns)
    }

    /// The kube-dns ClusterIP:53 of a family.
    pub fn kube_dns_addr(v6: bool) -> SocketAddr {
        let ip: IpAddr = if v6 {
            KUBE_DNS_V6.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            KUBE_DNS_V4.parse::<Ipv4Addr>().map(IpAddr::V4)
        }
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        SocketAddr::new(ip, 53)
    }

    /// Looks up `name` (`qtype`) at `server` from pod `from`: `Some(addresses)` when an answer
    /// came within `timeout` (empty for NXDOMAIN or no such record), `None` when none did.
    pub fn dns_lookup(
        &self,
        from: &str,
        server: SocketAddr,
        name: &str,
        qtype: QType,
        transport: Transport,
        timeout: Duration,
    ) -> Result<Option<Vec<IpAddr>>, LabError> {
        let netns = self.pod_netns(from).ok_or_else(|| LabError::Config {
            reason: format!("no pod {from}"),
        })?;
        lookup_in(netns, server, name, qtype, transport, timeout)
    }
}

/// [`Lab::dns_lookup`] from inside network namespace `netns`.
pub fn lookup_in(
    netns: &str,
    server: SocketAddr,
    name: &str,
    qtype: QType,
    transport: Transport,
    timeout: Duration,
) -> Result<Option<Vec<IpAddr>>, LabError> {
    in_netns(netns, || {
        lookup_here(server, name, qtype, transport, timeout)
    })?
    .map_err(|source| LabError::Io {
        op: "DNS lookup from",
        path: netns_path(netns),
        source,
    })
}

/// [`lookup_in`] from the calling thread's network namespace (for loops run inside one
/// [`in_netns`], without a thread per lookup).
pub fn lookup_here(
    server: SocketAddr,
    name: &str,
    qtype: QType,
    transport: Transport,
    timeout: Duration,
) -> std::io::Result<Option<Vec<IpAddr>>> {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let id = (std::process::id() as u16)
        .rotate_left(8)
        .wrapping_add(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let query = build_query(id, name, qtype);
    let reply = match transport {
        Transport::Udp => exchange_udp(server, &query, timeout),
        Transport::Tcp => exchange_tcp(server, &query, timeout),
    }?;
    Ok(reply.and_then(|r| parse_answer(id, &r)))
}

/// A standard query (recursion desired) for one `name` of `qtype`, class IN.
pub fn build_query(id: u16, name: &str, qtype: QType) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    m.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // AN, NS, AR
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.code().to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // IN
    m
}

/// Skips a (possibly compressed) name at `pos`; returns the position after it.
fn skip_name(m: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *m.get(pos)?;
        if len & 0xc0 == 0xc0 {
            return Some(pos + 2);
        }
        pos += 1;
        if len == 0 {
            return Some(pos);
        }
        pos += usize::from(len);
    }
}

/// The A and AAAA addresses of a response to query `id`; `None` when `m` is not one (wrong
/// id, not a response, truncated).
pub fn parse_answer(id: u16, m: &[u8]) -> Option<Vec<IpAddr>> {
    if m.len() < 12 || u16::from_be_bytes([m[0], m[1]]) != id || m[2] & 0x80 == 0 {
        return None;
    }
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(m, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = skip_name(m, pos)?;
        let h = m.get(pos..pos + 10)?;
        let (ty, len) = (
            u16::from_be_bytes([h[0], h[1]]),
            usize::from(u16::from_be_bytes([h[8], h[9]])),
        );
        let data = m.get(pos + 10..pos + 10 + len)?;
        match (ty, len) {
            (1, 4) => out.push(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
            (28, 16) => out.push(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
            _ => {}
        }
        pos += 10 + len;
    }
    Some(out)
}

fn unspecified(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    }
}

fn exchange_udp(
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    let sock = UdpSocket::bind(unspecified(server))?;
    sock.connect(server)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        // A send may fail while the destination is unreachable; the timeout decides.
        if let Err(e) = sock.send(query)
            && e.kind() != std::io::ErrorKind::ConnectionRefused
        {
            return Err(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n].get(..2) == query.get(..2) => return Ok(Some(buf[..n].to_vec())),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

fn exchange_tcp(
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let mut s = match TcpStream::connect_timeout(&server, timeout) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut msg = (query.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(query);
    s.write_all(&msg)?;
    let left = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    let mut len = [0u8; 2];
    let read = s.read_exact(&mut len).and_then(|()| {
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).map(|()| body)
    });
    match read {
        Ok(body) => Ok(Some(body)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encodes_labels_type_and_class() {
        let q = build_query(0x1234, "web.lab.test", QType::Aaaa);
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..17], b"\x03web\x03");
        assert_eq!(&q[q.len() - 4..], &[0, 28, 0, 1]);
    }

    #[test]
    fn answer_with_compressed_names_yields_addresses() {
        let mut r = build_query(7, "a.test", QType::A);
        r[2] |= 0x80; // response
        r[7] = 2; // two answers
        for (ty, data) in [(1u16, vec![10, 96, 0, 1]), (5, vec![0xc0, 0x0c])] {
            r.extend_from_slice(&[0xc0, 0x0c]);
            r.extend_from_slice(&ty.to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(&data);
        }
        assert_eq!(
            parse_answer(7, &r),
            Some(vec!["10.96.0.1".parse::<IpAddr>().expect("ip")])
        );
        assert_eq!(parse_answer(8, &r), None);
        assert_eq!(parse_answer(7, &r[..r.len() - 1]), None);
    }

    #[test]
    fn zone_gives_records_cnames_and_ttls_to_dnsmasq() {
        let zone = Zone::default()
            .record("a.test", "10.96.0.1".parse().expect("ip"))
            .record_ttl("b.test", "fd00::1".parse().expect("ip"), 7)
            .cname("c.test", "a.test")
            .local_ttl(30);
        assert_eq!(
            zone.dnsmasq_args(),
            [
                "--host-record=a.test,10.96.0.1",
                "--host-record=b.test,fd00::1,7",
                "--cname=c.test,a.test",
                "--local-ttl=30",
            ]
        );
    }

    #[test]
    fn kube_dns_yaml_has_named_ports_and_selector() {
        let docs = super::super::model::split_documents("dns", &kube_dns_yaml("n0")).expect("yaml");
        let (svcs, _) = super::super::kubeproxy::parse_objects(&docs).expect("objects");
        let spec = svcs[0].spec.as_ref().expect("spec");
        let names: Vec<_> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("dns".into(), "UDP".into()),
                ("dns-tcp".into(), "TCP".into())
            ]
        );
        assert_eq!(
            spec.selector.as_ref().expect("selector")["k8s-app"],
            "kube-dns"
        );
    }
}
