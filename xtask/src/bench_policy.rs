//! `cargo xtask bench policy`: what policy costs the control plane.
//!
//! 1. Synthetic state (10,000 pods, 1,000 policies, 100 local endpoints by default): compile
//!    time, number of map entries, time to program every endpoint into the real (pinned) maps,
//!    and the kernel's own accounting of map memory; then the same with 1,000
//!    ClusterNetworkPolicies (Admin and Baseline tiers) mixed in.
//! 2. End to end in the lab: time from a policy file change to enforcement observed by packets,
//!    with 10, 1,000 and 10,000 rules (see `change_latency`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use palisade_agent::applier::Applier;
use palisade_agent::datapath::Datapath;
use palisade_agent::datapath_ops::{Ops, capacity};
use palisade_policy::{PortContents, SyntheticSpec, desired_endpoint, synthetic_cluster};

#[derive(clap::Args, Clone)]
pub struct PolicyBenchArgs {
    /// Namespaces of the synthetic cluster (pods = namespaces x pods-per-namespace).
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    #[arg(long, default_value_t = 100)]
    pub pods_per_namespace: usize,
    /// Policies per namespace (policies = namespaces x this).
    #[arg(long, default_value_t = 10)]
    pub policies_per_namespace: usize,
    /// Endpoints on the simulated node.
    #[arg(long, default_value_t = 100)]
    pub local_pods: usize,
    /// ClusterNetworkPolicies of the second synthetic run (0: skip it).
    #[arg(long, default_value_t = 1000)]
    pub cluster_policies: usize,
    /// Compile repetitions.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Rule counts for the end-to-end change latency.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    pub rules: Vec<usize>,
    /// Policy changes measured per rule count.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// File formats the policy is written in for the end-to-end part (the directory source
    /// reads both; YAML parsing dominates large policies, the Kubernetes API source gets JSON).
    #[arg(long, value_delimiter = ',', default_value = "yaml,json")]
    pub formats: Vec<Format>,
    /// Skip the end-to-end part.
    #[arg(long)]
    pub synthetic_only: bool,
}

/// How the benchmark writes its policy file.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    fn file(self) -> &'static str {
        match self {
            Format::Yaml => "bench.yaml",
            Format::Json => "bench.json",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Format::Yaml => "dir/yaml",
            Format::Json => "dir/json",
        }
    }

    fn policy(self, rules: usize, allow: bool) -> String {
        match self {
            Format::Yaml => policy_yaml(rules, allow),
            Format::Json => policy_json(rules, allow),
        }
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn synthetic(args: &PolicyBenchArgs, bpf_object: Option<&PathBuf>) -> Result<()> {
    synthetic_run(args, 0, bpf_object)?;
    if args.cluster_policies > 0 {
        synthetic_run(args, args.cluster_policies, bpf_object)?;
    }
    Ok(())
}

fn synthetic_run(
    args: &PolicyBenchArgs,
    cluster_policies: usize,
    bpf_object: Option<&PathBuf>,
) -> Result<()> {
    let spec = SyntheticSpec {
        namespaces: args.namespaces,
        pods_per_namespace: args.pods_per_namespace,
        policies_per_namespace: args.policies_per_namespace,
        local_pods: args.local_pods,
        cluster_policies,
    };
    let built = Instant::now();
    let (cluster, local) = synthetic_cluster(spec);
    println!(
        "synthetic cluster: {} namespaces, {} pods, {} policies, {} ClusterNetworkPolicies, {} \
         local endpoints (built in {})",
        cluster.namespaces.len(),
        cluster.pods.len(),
        cluster.policies.len(),
        cluster.cluster_policies.len(),
        local.len(),
        ms(built.elapsed())
    );
    let mut times = Vec::new();
    let mut compiled = None;
    for _ in 0..args.runs.max(1) {
        let mut reg = palisade_policy::RuleRegistry::default();
        let t = Instant::now();
        let c = palisade_policy::compile(&cluster, &local, &mut reg);
        times.push(t.elapsed());
        compiled = Some(c);
    }
    times.sort();
    let compiled = compiled.expect("at least one run");
    let mut contents = PortContents::default();
    let desired: Vec<_> = local
        .iter()
        .enumerate()
        .filter_map(|(i, pod)| {
            let ep = compiled.endpoints.get(pod)?;
            let addrs = cluster.pod(pod).map(|p| p.ips.clone()).unwrap_or_default();
            Some(desired_endpoint(
                Some(ep),
                1000 + i as u32,
                1 + i as u32,
                &addrs,
                &mut contents,
            ))
        })
        .collect();
    let policy_entries: usize = desired.iter().map(|d| d.entries.len()).sum();
    let mut sets = std::collections::BTreeSet::new();
    for d in &desired {
        for a in d.entries.values() {
            if let palisade_agent::applier::Allow::Ports(c) = a {
                sets.insert(c.clone());
            }
        }
    }
    let port_entries: usize = sets.iter().map(|c| c.len()).sum();
    println!(
        "compile ({} runs): median {}, min {}, max {}",
        times.len(),
        ms(percentile(&times, 0.5)),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
    println!(
        "desired state: {policy_entries} policy entries (pal_pol_v1), {} distinct port sets with {port_entries} entries (pal_port_v1)",
        sets.len()
    );
    if !compiled.problems.is_empty() {
        println!(
            "problems reported by the compiler: {}",
            compiled.problems.len()
        );
    }
    let Some(object) = bpf_object else {
        println!("(no eBPF object / not root: skipping the kernel map part)");
        return Ok(());
    };
    let bpffs = palisade_tests::bpf::BpffsMount::new()?;
    let mut dp = Datapath::open(object, bpffs.path())?;
    let before: u64 = dp.map_memory().iter().map(|(_, b)| b).sum();
    let mut applier = Applier::new(capacity(&dp.maps)?);
    let t = Instant::now();
    for d in &desired {
        applier.apply_endpoint(&mut Ops(&mut dp.maps), d)?;
    }
    applier.commit(&mut Ops(&mut dp.maps));
    let programmed = t.elapsed();
    println!(
        "programming all {} endpoints into the kernel maps: {}",
        desired.len(),
        ms(programmed)
    );
    println!("kernel map memory (fdinfo memlock):");
    let mut total = 0;
    for (name, bytes) in dp.map_memory() {
        total += bytes;
        println!("  {name:<12} {:>10.1} KiB", bytes as f64 / 1024.0);
    }
    println!(
        "  {:<12} {:>10.1} KiB (empty maps: {:.1} KiB)",
        "total",
        total as f64 / 1024.0,
        before as f64 / 1024.0
    );
    drop(dp);
    Ok(())
}

/// The policy on x/a: `rules` ingress rules that never match the probe (one /32 from
/// 198.18.0.0/15 and one UDP port each), plus, when `allow`, one rule allowing x/b on UDP 80.
fn policy_yaml(rules: usize, allow: bool) -> String {
    use std::fmt::Write;
    let mut y = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n  ingress:\n",
    );
    for i in 0..rules {
        let (hi, lo) = (18 + (i >> 16) as u32, (i & 0xffff) as u32);
        writeln!(
            y,
            "  - from: [{{ipBlock: {{cidr: 198.{hi}.{}.{}/32}}}}]\n    ports: [{{port: {}, protocol: UDP}}]",
            lo >> 8,
            lo & 0xff,
            1000 + i % 50_000
        )
        .expect("writing to a String");
    }
    if allow {
        y.push_str("  - from: [{podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80, protocol: UDP}]\n");
    }
    if rules == 0 && !allow {
        y.push_str("  []\n");
    }
    y
}

/// The same policy as `policy_yaml`, as one JSON object.
fn policy_json(rules: usize, allow: bool) -> String {
    use std::fmt::Write;
    let mut j = String::from(
        r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"bench","namespace":"x"},"spec":{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Ingress"],"ingress":["#,
    );
    let mut sep = "";
    for i in 0..rules {
        let (hi, lo) = (18 + (i >> 16) as u32, (i & 0xffff) as u32);
        write!(
            j,
            r#"{sep}{{"from":[{{"ipBlock":{{"cidr":"198.{hi}.{}.{}/32"}}}}],"ports":[{{"port":{},"protocol":"UDP"}}]}}"#,
            lo >> 8,
            lo & 0xff,
            1000 + i % 50_000
        )
        .expect("writing to a String");
        sep = ",";
    }
    if allow {
        write!(
            j,
            r#"{sep}{{"from":[{{"podSelector":{{"matchLabels":{{"pod":"b"}}}}}}],"ports":[{{"port":80,"protocol":"UDP"}}]}}"#
        )
        .expect("writing to a String");
    }
    j.push_str("]}}\n");
    j
}

/// Not the node contract's writer (`palisade_node_api::file::write_atomic`): the change is
/// timed from the rename, so the write (and no fsync) must come before the clock starts.
fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<Instant> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    let at = Instant::now();
    std::fs::rename(&tmp, dir.join(name)).context("renaming the policy into place")?;
    Ok(at)
}

/// Waits until `sock` is readable or `deadline` passes. The wait is a `ppoll` with the exact
/// remaining time: `SO_RCVTIMEO` is kept in jiffies and rounds up (with HZ=250 a 1 ms receive
/// timeout waits ~8 ms), which made every denied probe last ~8 ms and quantized the
/// deny -> allow figures.
fn readable_before(sock: &std::net::UdpSocket, deadline: Instant) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, ppoll};
    use std::os::fd::AsFd;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let left = nix::sys::time::TimeSpec::from_duration(deadline - now);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match ppoll(&mut fds, Some(left), None) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("ppoll on the probe socket"),
        }
    }
}

/// One probe: sequence number, when it was sent, whether its echo came back.
#[derive(Clone, Copy)]
struct Probe {
    seq: u64,
    at: Instant,
    ok: bool,
}

/// Probes x/b -> x/a UDP 80 back to back from inside x/b's namespace until told to stop.
/// Each probe waits at most `timeout` for its echo before the next is sent; an echo that comes
/// later still marks its probe answered (a slow echo on a loaded machine is not a denial).
fn probe_loop(
    netns: String,
    target: std::net::SocketAddr,
    timeout: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    out: std::sync::Arc<std::sync::Mutex<Vec<Probe>>>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || -> Result<()> {
        let f = std::fs::File::open(format!("/var/run/netns/{netns}"))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(target)?;
        sock.set_nonblocking(true)?;
        let mut buf = [0u8; 64];
        let mut seq: u64 = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            seq += 1;
            let msg = seq.to_be_bytes();
            let at = Instant::now();
            sock.send(&msg)?;
            let mut ok = false;
            let deadline = at + timeout;
            // Skip late echoes of earlier probes.
            'wait: while readable_before(&sock, deadline)? {
                loop {
                    match sock.recv(&mut buf) {
                        Ok(n) if n >= 8 && buf[..8] == msg => {
                            ok = true;
                            break 'wait;
                        }
                        Ok(n) if n >= 8 => {
                            let late = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                            let mut log = out.lock().expect("probe log");
                            if let Some(p) = log.iter_mut().rev().find(|p| p.seq == late) {
                                p.ok = true;
                            }
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // An ICMP error queued on the socket: not an echo.
                        Err(_) => break,
                    }
                }
            }
            out.lock().expect("probe log").push(Probe { seq, at, ok });
            if ok {
                // Pace answered probes a little so the log stays small.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    })
}

/// End to end: for each rule count, toggle the allow rule `changes` times and measure the time
/// from the file's rename to the first probe of the new verdict after which every probe agrees.
pub fn change_latency(args: &PolicyBenchArgs) -> Result<()> {
    use palisade_tests::lab::{Lab, LabConfig};

    let lab = Lab::start(LabConfig::default()).context("starting the lab")?;
    if !lab.enforcing() {
        anyhow::bail!(
            "the lab is not enforcing ({}); build first: cargo xtask build",
            lab.mode()
        );
    }
    let dir = lab.manifests_dir();
    let a_ip = lab
        .pod_ips("x/a")
        .and_then(|ips| ips.iter().find(|a| a.is_ipv4()).copied())
        .context("x/a has no IPv4 address")?;
    let b_ns = lab.pod_netns("x/b").context("no pod x/b")?.to_string();
    println!(
        "\nchange -> enforcement (x/b -> x/a UDP 80, toggling one allow rule among N that never match;"
    );
    println!(
        "source: the agent's directory source, the policy written as one YAML or JSON file and renamed into place):"
    );
    println!(
        "{:>10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "source", "rules", "changes", "p50", "p99", "max", "apply p50"
    );
    let mut written: Option<Format> = None;
    for &rules in &args.rules {
        for &format in &args.formats {
            if let Some(old) = written.filter(|f| *f != format) {
                std::fs::remove_file(dir.join(old.file()))
                    .with_context(|| format!("removing {}", old.file()))?;
            }
            written = Some(format);
            let lat = toggle(&lab, &dir, format, rules, args.changes, a_ip, &b_ns)?;
            let applies = agent_apply_times(&lab, args.changes);
            let breakdown = last_apply_line(&lab);
            println!(
                "{:>10} {rules:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
                format.label(),
                lat.len(),
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or_default()),
                applies.map(ms).unwrap_or_else(|| "-".into())
            );
            if let Some(line) = breakdown {
                println!("{:>21} agent, last change: {line}", "");
            }
        }
    }
    if let Some(f) = written {
        std::fs::remove_file(dir.join(f.file())).ok();
    }
    drop(lab);
    Ok(())
}

/// Toggles the allow rule `changes` times with the policy written as `format`; returns the
/// sorted latencies.
fn toggle(
    lab: &palisade_tests::lab::Lab,
    dir: &Path,
    format: Format,
    rules: usize,
    changes: usize,
    a_ip: std::net::IpAddr,
    b_ns: &str,
) -> Result<Vec<Duration>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    write_atomic(dir, format.file(), &format.policy(rules, true))?;
    lab.wait_synced()?;
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let prober = probe_loop(
        b_ns.to_string(),
        std::net::SocketAddr::new(a_ip, 80),
        Duration::from_millis(1),
        stop.clone(),
        log.clone(),
    );
    let mut lat = Vec::new();
    let mut allow = true;
    for _ in 0..changes {
        allow = !allow;
        let text = format.policy(rules, allow);
        let at = write_atomic(dir, format.file(), &text)?;
        // Wait until the agent has applied it (not part of the measurement), then until
        // probes after that point exist.
        lab.wait_synced()?;
        let applied = Instant::now();
        loop {
            let n = log
                .lock()
                .expect("probe log")
                .iter()
                .filter(|p| p.at > applied)
                .count();
            if n >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let entries = log.lock().expect("probe log").clone();
        // The first probe sent after the rename after which every probe agrees with `allow`.
        // The newest probe may still be waiting for its echo: it is left out.
        let mut after: Vec<_> = entries.iter().filter(|p| p.at >= at).collect();
        after.pop();
        let flip = after
            .iter()
            .rposition(|p| p.ok != allow)
            .map(|i| i + 1)
            .unwrap_or(0);
        if let Some(p) = after.get(flip) {
            lat.push(p.at.duration_since(at));
        }
        log.lock().expect("probe log").clear();
    }
    stop.store(true, Ordering::Relaxed);
    prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))??;
    lat.sort();
    Ok(lat)
}

/// `s` without ANSI escape sequences (the agent's log is colored).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in 0x40..=0x7e.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The agent's last "applied in" line, without its log prefix.
fn last_apply_line(lab: &palisade_tests::lab::Lab) -> Option<String> {
    let log = std::fs::read_to_string(lab.agent_logs().first()?).ok()?;
    let line = log.lines().rev().find(|l| l.contains("applied in "))?;
    Some(strip_ansi(line.split("applied in ").nth(1)?))
}

/// Median of the agent's own "applied in" lines of the last `changes` changes (source read +
/// compile + map writes), when found.
fn agent_apply_times(lab: &palisade_tests::lab::Lab, changes: usize) -> Option<Duration> {
    let log = std::fs::read_to_string(lab.agent_logs().first()?).ok()?;
    let mut v: Vec<Duration> = log
        .lines()
        .rev()
        .filter(|l| l.contains("applied in "))
        .take(changes)
        .filter_map(|l| {
            let rest = l.split("applied in ").nth(1)?;
            let num: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let unit: String = rest[num.len()..]
                .chars()
                .take_while(|c| c.is_alphabetic() || *c == 'µ')
                .collect();
            let x: f64 = num.parse().ok()?;
            Some(Duration::from_secs_f64(match unit.as_str() {
                "s" => x,
                "ms" => x / 1e3,
                "µs" | "us" => x / 1e6,
                "ns" => x / 1e9,
                _ => return None,
            }))
        })
        .collect();
    v.sort();
    Some(percentile(&v, 0.5))
}

/// The directory source's parser (`palisade_policy::manifest::parse`: limits, strict fields)
/// on the largest policy of the end-to-end part, in each format: what YAML costs over JSON.
fn manifest_parse(args: &PolicyBenchArgs) -> Result<()> {
    let rules = args.rules.iter().copied().max().unwrap_or(10_000);
    for format in &args.formats {
        let text = format.policy(rules, true);
        let mf = match format {
            Format::Yaml => palisade_policy::manifest::Format::Yaml,
            Format::Json => palisade_policy::manifest::Format::Json,
        };
        let mut times = Vec::new();
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            let m = palisade_policy::manifest::parse(&text, mf)
                .with_context(|| format!("parsing the {rules}-rule {format:?} policy"))?;
            times.push(t.elapsed());
            anyhow::ensure!(
                m.objects.len() == 1 && m.problems.is_empty(),
                "the {rules}-rule {format:?} policy did not parse cleanly: {:?}",
                m.problems
            );
        }
        times.sort();
        println!(
            "manifest parse ({}, {rules} rules, {} KB, {} runs): median {}, min {}",
            format.label(),
            text.len() / 1024,
            times.len(),
            ms(percentile(&times, 0.5)),
            ms(times[0])
        );
    }
    Ok(())
}

pub fn run(args: &PolicyBenchArgs) -> Result<()> {
    let root = nix::unistd::Uid::effective().is_root();
    let art = if root {
        Some(crate::build::build_all(&crate::build::BuildArgs::default())?)
    } else {
        None
    };
    synthetic(args, art.as_ref().map(|a| &a.bpf_object))?;
    manifest_parse(args)?;
    if args.synthetic_only {
        return Ok(());
    }
    if !root {
        anyhow::bail!("the end-to-end part needs root (network namespaces); use --synthetic-only");
    }
    change_latency(args)
}
