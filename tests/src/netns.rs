//! Namespaces, a simulated node, ICMP echo and a CNI invoker for the CNI plugin tests.
//!
//! A "node" is its own network namespace: the plugin runs there (its process joins the node
//! namespace before exec, like a runtime on that node would), so it never touches the
//! machine's own namespace. Pods are further namespaces. Every namespace is named
//! `pltc<...>` (via [`crate::unique_name`]) and removed by [`Netns`]'s `Drop`; [`sweep_stale`]
//! removes those of test processes that died.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where `ip netns add` puts namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Tag of the CNI tests' namespaces (`plt` + `c`).
pub const CNI_TAG: &str = "c";

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
    file: File,
}

impl Netns {
    /// Creates `plt<tag><pid>x<n>` with `lo` up.
    pub fn new(tag: &str) -> Result<Netns> {
        let name = crate::unique_name(tag);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let path = Path::new(NETNS_DIR).join(&name);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let ns = Netns { name, path, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command whose process joins this namespace before exec (`setns` in the child).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the closure touches nothing but the fd, which the
        // parent keeps open until the child has exec'd.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// `ip -n <ns> <args>`, failing on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `f` on a fresh thread inside this namespace.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&self.file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {}", self.name))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }

    /// Whether a link called `name` exists here.
    pub fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Names of links whose name starts with `prefix`.
    pub fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(prefix))
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let st = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("warning: could not delete netns {}", self.name);
        }
    }
}

/// Deletes `plt<tag>*` namespaces older than `age` (left by test processes that died).
/// Younger ones may belong to a test running right now in another process.
pub fn sweep_stale(tag: &str, age: Duration) {
    let prefix = format!("{}{tag}", crate::TEST_PREFIX);
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        let old = ent
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|e| e > age);
        if old {
            eprintln!("sweeping stale netns {name}");
            if let Err(e) = run(Command::new("ip").args(["netns", "del", &name])) {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// Runs a command, failing with its output on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` until it returns `Ok(Some(_))`, or fails after `timeout` with the last error.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last = String::from("condition not met");
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn icmp_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one ICMP echo request from namespace `from` to `dst` and waits up to `timeout` for
/// the reply (a raw socket, so the tests need no `ping` binary).
pub fn ping(from: &Netns, dst: IpAddr, timeout: Duration) -> Result<()> {
    from.run_in(|| ping_here(dst, timeout))
        .with_context(|| format!("ping {dst} from {}", from.name))
}

fn ping_here(dst: IpAddr, timeout: Duration) -> Result<()> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static SEQ: AtomicU16 = AtomicU16::new(1);
    let id = (std::process::id() & 0xffff) as u16;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let (domain, proto, req_type, reply_type) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    // SAFETY: plain socket(2); the fd is owned by OwnedFd below.
    let raw = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("raw ICMP socket");
    }
    // SAFETY: raw is a fresh, valid fd we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let mut pkt = vec![req_type, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"palisade-cni-test");
    if dst.is_ipv4() {
        let c = icmp_checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    } // ICMPv6: the kernel fills the checksum on raw ICMPv6 sockets.
    let sa: nix::sys::socket::SockaddrStorage = SocketAddr::new(dst, 0).into();
    let deadline = Instant::now() + timeout;
    nix::sys::socket::sendto(
        fd.as_raw_fd(),
        &pkt,
        &sa,
        nix::sys::socket::MsgFlags::empty(),
    )
    .with_context(|| format!("sending echo request to {dst}"))?;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no echo reply from {dst} within {timeout:?}");
        }
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros().max(1000) as libc::suseconds_t,
        };
        // SAFETY: setsockopt with a valid timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let (n, from) = match nix::sys::socket::recvfrom::<nix::sys::socket::SockaddrStorage>(
            fd.as_raw_fd(),
            &mut buf,
        ) {
            Ok(r) => r,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("receiving echo reply"),
        };
        let icmp = if dst.is_ipv4() {
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            &buf[ihl.min(n)..n]
        } else {
            &buf[..n]
        };
        let from_ip = from.and_then(|f| {
            f.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| f.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        });
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
            && from_ip == Some(dst)
        {
            return Ok(());
        }
    }
}

/// Pings until a reply comes (neighbour resolution may take a round), bounded by `timeout`.
pub fn ping_until(from: &Netns, dst: IpAddr, timeout: Duration) -> Result<()> {
    wait_for(
        &format!("echo reply from {dst} in {}", from.name),
        timeout,
        || ping(from, dst, Duration::from_millis(300)).map(Some),
    )
}

/// A simulated node: its namespace, addresses on its `lo`, and a plugin state directory.
pub struct Node {
    pub ns: Netns,
    pub state: tempfile::TempDir,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl Node {
    /// A node namespace with 192.0.2.1/32 and 2001:db8::1/128 on `lo` (documentation ranges;
    /// they exist only inside this namespace).
    pub fn new() -> Result<Node> {
        let ns = Netns::new(CNI_TAG)?;
        ns.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"])?;
        ns.ip(&["addr", "add", "2001:db8::1/128", "dev", "lo", "nodad"])?;
        let state = tempfile::Builder::new().prefix("pltc-state").tempdir()?;
        Ok(Node {
            ns,
            state,
            v4: "192.0.2.1".parse()?,
            v6: "2001:db8::1".parse()?,
        })
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Number of IPAM allocation files.
    pub fn allocations(&self) -> Result<Vec<String>> {
        let dir = self.state_dir().join("ipam");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in rd {
            let n = e?.file_name().to_string_lossy().into_owned();
            if n.parse::<IpAddr>().is_ok() || n.starts_with(".tmp") {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Number of endpoint records (and tmp files) in the state dir.
    pub fn records(&self) -> Result<Vec<String>> {
        let dir = self.state_dir().join("endpoints");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in rd {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Host-side veths (`pal*`) in the node.
    pub fn host_veths(&self) -> Result<Vec<String>> {
        self.ns.links_with_prefix("pal")
    }
}

/// One CNI invocation of a plugin binary inside a node namespace.
pub struct Invocation<'a> {
    pub plugin: PathBuf,
    pub node: &'a Netns,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: Option<&'a str>,
    pub cni_path: Option<&'a str>,
}

impl Invocation<'_> {
    /// Spawns the plugin with `config` on stdin.
    pub fn spawn(&self, config: &[u8]) -> Result<Child> {
        let mut cmd = self.node.command(&self.plugin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", self.cni_path.unwrap_or("/opt/cni/bin"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = self.netns {
            cmd.env("CNI_NETNS", n);
        }
        if let Some(a) = self.args {
            cmd.env("CNI_ARGS", a);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.plugin.display()))?;
        let mut stdin = child.stdin.take().context("plugin stdin")?;
        stdin
            .write_all(config)
            .context("writing config to plugin")?;
        drop(stdin);
        Ok(child)
    }

    /// Runs the plugin to completion.
    pub fn run(&self, config: &[u8]) -> Result<Output> {
        self.spawn(config)?
            .wait_with_output()
            .context("waiting for plugin")
    }
}
