//! `cargo xtask bench datapath`: Palisade's per-packet cost next to no filtering, an empty TC
//! program and iptables / ipset, pod to pod through the host-side veths of one lab node.
//!
//! Client y/b, server x/a (on the same node). Configurations, run interleaved in every
//! repetition so the machine's noise hits them alike:
//! - `baseline`: no programs, no rules (the agent killed, its pinned links removed);
//! - `empty-tc`: the object's `pass` classifier (returns `TC_ACT_OK`) attached with TCX to the
//!   ingress and egress of the client's and the server's host veths;
//! - `palisade/N`: the agent, x/a isolated for ingress by one policy with N ipBlock/port rules
//!   that never match the flow plus one that does;
//! - `ipt-stateless/N`, `ipt-stateful/N`, `ipset/N`: the same rules as kube-router-style
//!   FORWARD rules in the node namespace (stateful: conntrack ESTABLISHED accepted first), or
//!   as one `hash:net,port` set (entries `198.x.y.z/32,udp:P`, each rule's protocol and port)
//!   matched by one rule without `-p`, so every packet of the bench's TCP flows is looked up.
//!
//! Measures (client and server pinned to CPU 0): TCP request/response rate over one
//! connection (RR, 1 byte each way) and new connections per second with one request each
//! (CRR), both from the generator below; iperf3 stream throughput; sockperf TCP ping-pong round
//! trip (p50, p99). Each cell is reported as the ratio to the baseline of the same repetition
//! (median, min-max) plus absolute medians; also written as JSON and an SVG chart under
//! target/bench/.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
use palisade_agent::map_sizes::MapSizes;
use palisade_tests::lab::{AgentMode, Lab, LabConfig, Manifests};

use palisade_common::maps::PROG_PASS;
use palisade_tests::bpf::BpffsMount;
use palisade_tests::netns::run as cmd_output;

#[derive(clap::Args, Clone)]
pub struct DatapathArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Repetitions of the whole interleaved sweep.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Rule counts (non-matching rules; one matching rule is always added).
    #[arg(long, value_delimiter = ',', default_value = "0,100,1000,10000")]
    pub rules: Vec<usize>,
    /// Which configurations besides baseline and empty-tc: any of palisade,
    /// palisade-noevents (flow events off: what events cost), ipt-stateless, ipt-stateful,
    /// ipset.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "palisade,palisade-noevents,ipt-stateless,ipt-stateful,ipset"
    )]
    pub enforcers: Vec<String>,
    /// Smoke run: 0.5 s per measurement (sockperf: 1 s), 2 repetitions, rule counts 0 and 100.
    #[arg(long)]
    pub quick: bool,
    /// Skip building the eBPF object and the release binaries.
    #[arg(long)]
    pub no_build: bool,
    /// Where the JSON and SVG go (default target/bench).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

const RR_PORT: u16 = 7001;
const CRR_PORT: u16 = 7002;
const STREAM_PORT: u16 = 5201;
const PP_PORT: u16 = 7003;
const CPU: usize = 0;
const SET: &str = "plt-bench";
const CHAIN: &str = "PLT-BENCH-FW";

/// An enforcer's configuration at a rule count.
type ConfigOf = fn(usize) -> Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    Baseline,
    EmptyTc,
    Palisade(usize),
    /// Palisade with flow events off (`CFG_NO_FLOW_EVENTS`): the cost of events, same run.
    PalisadeNoEvents(usize),
    IptStateless(usize),
    IptStateful(usize),
    Ipset(usize),
}

impl Config {
    fn label(self) -> String {
        match self.rules() {
            Some(n) => format!("{}/{n}", self.family()),
            None => self.family().into(),
        }
    }

    fn family(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::EmptyTc => "empty-tc",
            Config::Palisade(_) => "palisade",
            Config::PalisadeNoEvents(_) => "palisade-noevents",
            Config::IptStateless(_) => "ipt-stateless",
            Config::IptStateful(_) => "ipt-stateful",
            Config::Ipset(_) => "ipset",
        }
    }

    fn rules(self) -> Option<usize> {
        match self {
            Config::Baseline | Config::EmptyTc => None,
            Config::Palisade(n)
            | Config::PalisadeNoEvents(n)
            | Config::IptStateless(n)
            | Config::IptStateful(n)
            | Config::Ipset(n) => Some(n),
        }
    }
}

/// One measurement of one configuration.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct Sample {
    /// Transactions per second over one connection.
    rr: f64,
    /// Median RR round trip, µs.
    rr_p50_us: f64,
    /// Connections per second (connect, 1-byte request, 1-byte response, close).
    crr: f64,
    /// Stream throughput, Gbit/s.
    stream_gbps: f64,
    /// sockperf TCP ping-pong (14-byte messages, one connection): median round trip, µs.
    pp_p50_us: f64,
    /// sockperf: 99th percentile round trip, µs.
    pp_p99_us: f64,
}

/// A measure in the table: name, value, and whether higher is better (rates) or lower
/// (latencies). Ratios are always "this configuration's performance / baseline's": a rate
/// divided by the baseline's rate, the baseline's latency divided by this latency. So 1.0 is
/// as fast as no filtering and 0.9 is 10% slower, for every column.
struct Metric {
    name: &'static str,
    value: fn(&Sample) -> f64,
    higher_is_better: bool,
}

impl Metric {
    const fn new(name: &'static str, value: fn(&Sample) -> f64, higher_is_better: bool) -> Self {
        Metric {
            name,
            value,
            higher_is_better,
        }
    }

    fn ratio(&self, s: &Sample, base: &Sample) -> f64 {
        let (v, b) = ((self.value)(s), (self.value)(base));
        if self.higher_is_better { v / b } else { b / v }
    }
}

const METRICS: [Metric; 4] = [
    Metric::new("TCP_RR", |s| s.rr, true),
    Metric::new("TCP_CRR", |s| s.crr, true),
    Metric::new("TCP_STREAM", |s| s.stream_gbps, true),
    Metric::new("PP_LAT", |s| s.pp_p50_us, false),
];

/// Everything the run needs about the lab.
struct Topo {
    node: String,
    client_ns: String,
    server_ns: String,
    server_ip: IpAddr,
    client_ip: IpAddr,
    /// Host-side veths of the client and the server (node namespace).
    veths: Vec<String>,
    ifindexes: Vec<u32>,
    links_dir: PathBuf,
}

pub fn run(args: &DatapathArgs) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench datapath needs root (network namespaces, TC programs, iptables)");
    }
    let (seconds, reps, rules) = if args.quick {
        (0.5, 2, vec![0, 100])
    } else {
        (args.seconds, args.reps.max(1), args.rules.clone())
    };
    let bpf_object = if args.no_build {
        palisade_tests::bpf_object()
    } else {
        crate::build::build_all(&crate::build::BuildArgs::default())?.bpf_object
    };
    let dur = Duration::from_secs_f64(seconds);

    let mut configs = vec![Config::Baseline, Config::EmptyTc];
    let families: [(&str, ConfigOf); 5] = [
        ("palisade", Config::Palisade),
        ("palisade-noevents", Config::PalisadeNoEvents),
        ("ipt-stateless", Config::IptStateless),
        ("ipt-stateful", Config::IptStateful),
        ("ipset", Config::Ipset),
    ];
    for e in &args.enforcers {
        if !families.iter().any(|(name, _)| name == e) {
            bail!(
                "unknown enforcer {e:?} (palisade, palisade-noevents, ipt-stateless, ipt-stateful, ipset)"
            );
        }
    }
    for (name, config) in families {
        if args.enforcers.iter().any(|e| e == name) {
            configs.extend(rules.iter().map(|&n| config(n)));
        }
    }

    let mut lab = Lab::start(LabConfig {
        agent: AgentMode::Required,
        // 100,000 rules: ~1 MB of YAML per 10,000 parsed, compiled and written (seconds).
        sync_timeout: Duration::from_secs(180),
        ..LabConfig::default()
    })
    .context("starting the lab")?;
    let topo = topology(&lab)?;
    eprintln!(
        "bench datapath: client y/b ({}) -> server x/a ({}) via {:?} in {}; {} configurations x {reps} repetitions x 4 measures of {seconds} s",
        topo.client_ip,
        topo.server_ip,
        topo.veths,
        topo.node,
        configs.len()
    );
    tune_pods(&topo)?;
    let port = STREAM_PORT.to_string();
    let _iperf = Daemon::start(
        &topo,
        "iperf3 -s",
        &["iperf3", "-s", "-p", &port],
        STREAM_PORT,
    )?;
    let (ip, port) = (topo.server_ip.to_string(), PP_PORT.to_string());
    let _sockperf = Daemon::start(
        &topo,
        "sockperf server",
        &["sockperf", "server", "--tcp", "-i", &ip, "-p", &port],
        PP_PORT,
    )?;
    let mut empty = EmptyTc::load(&bpf_object)?;
    let mut agent_up = true;
    // Policies of the last Palisade configuration (`policy_yaml`'s parts).
    let mut policies_applied = 0;
    let mut firewall = Firewall::new(&topo.node);
    // Sweep leftovers of an interrupted earlier run in this lab (none normally).
    firewall.clean()?;

    let mut results: BTreeMap<Config, Vec<Sample>> = BTreeMap::new();
    let load_before = loadavg();
    // Four measures of `seconds` each plus ~1 s of tool start-up and sockperf warm-up per cell;
    // configuration changes (10k-rule policies, iptables-restore) come on top.
    eprintln!(
        "bench datapath: expect about {:.0} min of measuring (load average before: {load_before})",
        (configs.len() * reps) as f64 * (4.0 * seconds + 1.5) / 60.0
    );
    let started = Instant::now();
    for rep in 0..reps {
        for &config in &configs {
            // Palisade configurations need the agent; all others need it gone.
            let want_agent = matches!(config, Config::Palisade(_) | Config::PalisadeNoEvents(_));
            if want_agent && !agent_up {
                start_agent(&mut lab, &topo)?;
                agent_up = true;
            } else if !want_agent && agent_up {
                stop_agent(&mut lab, &topo)?;
                agent_up = false;
            }
            match config {
                Config::Baseline => {}
                Config::EmptyTc => empty.attach(&topo)?,
                Config::Palisade(n) | Config::PalisadeNoEvents(n) => {
                    // All parts in one apply (one sync: the agent compiles them once).
                    let parts = policy_yaml(n, topo.client_ip);
                    let dir = lab.dir().join("bench-policies");
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir)?;
                    for (part, y) in parts.iter().enumerate() {
                        std::fs::write(dir.join(format!("{}.yaml", policy_name(part))), y)?;
                    }
                    lab.apply(Manifests::Dir(dir))?;
                    for part in parts.len()..policies_applied {
                        lab.remove(&policy_name(part))?;
                    }
                    policies_applied = parts.len();
                    lab.wait_synced()?;
                    set_flow_events(&topo, !matches!(config, Config::PalisadeNoEvents(_)))?;
                }
                Config::IptStateless(n) => firewall.install(n, false, false, &topo)?,
                Config::IptStateful(n) => firewall.install(n, true, false, &topo)?,
                Config::Ipset(n) => firewall.install(n, false, true, &topo)?,
            }
            let sample = measure(&topo, dur);
            // Always undo, also when the measurement failed.
            match config {
                Config::EmptyTc => empty.detach()?,
                Config::IptStateless(_) | Config::IptStateful(_) | Config::Ipset(_) => {
                    firewall.clean()?
                }
                _ => {}
            }
            let sample = sample.with_context(|| format!("measuring {}", config.label()))?;
            eprintln!(
                "rep {}/{reps} {:<18} RR {:>7.0}/s (p50 {:>5.1} µs)  CRR {:>6.0}/s  STREAM {:>5.2} Gbit/s  pp p50 {:>5.1} µs  [{:.0} s]",
                rep + 1,
                config.label(),
                sample.rr,
                sample.rr_p50_us,
                sample.crr,
                sample.stream_gbps,
                sample.pp_p50_us,
                started.elapsed().as_secs_f64()
            );
            results.entry(config).or_default().push(sample);
        }
    }
    if !agent_up {
        // Leave the lab as it was built (its teardown expects a running agent or none).
        start_agent(&mut lab, &topo)?;
    }
    let elapsed = started.elapsed();
    let load_after = loadavg();
    let mut report = Report::new(&configs, &results, seconds, reps);
    report.run_secs = elapsed.as_secs_f64();
    report.load = [load_before, load_after];
    report.bpf_object = bpf_object.display().to_string();
    let table = report.table();
    println!("{table}");
    println!(
        "run time {:.1} min; load average before {}, after {}",
        elapsed.as_secs_f64() / 60.0,
        report.load[0],
        report.load[1]
    );
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| crate::build::root().join("target/bench"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let json_path = out_dir.join(format!("datapath-{stamp}.json"));
    let svg_path = out_dir.join(format!("datapath-{stamp}.svg"));
    std::fs::write(&json_path, report.json(&table)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&svg_path, report.svg(&rules))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!(
        "written: {} and {}",
        json_path.display(),
        svg_path.display()
    );
    // Rules and programs go before the lab's namespaces.
    drop(firewall);
    drop(empty);
    drop(lab);
    Ok(())
}

fn topology(lab: &Lab) -> Result<Topo> {
    let v4 = |id: &str| -> Result<IpAddr> {
        lab.pod_ips(id)
            .and_then(|ips| ips.iter().find(|a| a.is_ipv4()).copied())
            .with_context(|| format!("{id} has no IPv4 address"))
    };
    let node = lab
        .node_netns()
        .first()
        .context("the lab has no node")?
        .to_string();
    let server_ip = v4("x/a")?;
    let client_ip = v4("y/b")?;
    let mut veths = Vec::new();
    let mut ifindexes = Vec::new();
    for ip in [client_ip, server_ip] {
        let out = cmd_output(Command::new("ip").args([
            "-n",
            &node,
            "-o",
            "route",
            "get",
            &ip.to_string(),
        ]))?;
        let dev = word_after(&out, "dev").with_context(|| format!("no dev in {out:?}"))?;
        let link =
            cmd_output(Command::new("ip").args(["-n", &node, "-o", "link", "show", "dev", &dev]))?;
        let idx: u32 = link
            .split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("no ifindex in {link:?}"))?;
        veths.push(dev);
        ifindexes.push(idx);
    }
    Ok(Topo {
        node,
        client_ns: lab.pod_netns("y/b").context("no pod y/b")?.to_string(),
        server_ns: lab.pod_netns("x/a").context("no pod x/a")?.to_string(),
        server_ip,
        client_ip,
        veths,
        ifindexes,
        links_dir: lab.dir().join("n0/bpffs/links"),
    })
}

fn word_after(text: &str, key: &str) -> Option<String> {
    let mut it = text.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next().map(str::to_string);
        }
    }
    None
}

fn cmd_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("child stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {cmd:?}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The client opens tens of thousands of connections per measurement: reuse TIME_WAIT ports
/// and use a wide port range (pod namespaces only).
fn tune_pods(topo: &Topo) -> Result<()> {
    for (key, value) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "1024 65000"),
    ] {
        cmd_output(Command::new("ip").args([
            "netns",
            "exec",
            &topo.client_ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]))?;
    }
    Ok(())
}

/// Flow events on or off in the running datapath (`pal_cfg_v1`, as `--flow-events` sets it).
fn set_flow_events(topo: &Topo, on: bool) -> Result<()> {
    use palisade_common::stats::{CFG_NO_FLOW_EVENTS, Config as DpConfig};
    let maps = topo
        .links_dir
        .parent()
        .context("bpffs of the links")?
        .join("maps");
    let path = maps.join(palisade_common::maps::CONFIG);
    let md = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut m: aya::maps::Array<_, DpConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(md))?;
    let mut cfg = m.get(&0, 0).context("reading pal_cfg_v1")?;
    cfg.flags = if on {
        cfg.flags & !CFG_NO_FLOW_EVENTS
    } else {
        cfg.flags | CFG_NO_FLOW_EVENTS
    };
    m.set(0, cfg, 0).context("writing pal_cfg_v1")?;
    Ok(())
}

/// Kills the agent and removes its pinned links (pod veths and uplink): nothing stays
/// attached.
fn stop_agent(lab: &mut Lab, topo: &Topo) -> Result<()> {
    lab.agent_mut(0).context("no agent")?.kill_hard()?;
    for e in std::fs::read_dir(&topo.links_dir)
        .with_context(|| format!("listing {}", topo.links_dir.display()))?
    {
        let p = e?.path();
        // Per-veth pins are files; the uplink's pins are in a directory.
        if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// Respawns the agent and waits until it has attached to both veths and enforces the
/// manifests.
fn start_agent(lab: &mut Lab, topo: &Topo) -> Result<()> {
    lab.agent_mut(0).context("no agent")?.respawn()?;
    lab.wait_synced()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = std::fs::read_dir(&topo.links_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let attached = topo.ifindexes.iter().all(|i| {
            names
                .iter()
                .filter(|n| n.starts_with(&format!("{i}-")))
                .count()
                >= 2
        });
        if attached {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the respawned agent did not attach to {:?} within 10 s (pins: {names:?})",
                topo.veths
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rules per NetworkPolicy of the Palisade configurations: a larger policy is not a valid
/// object (the API server refuses objects over 3 MiB; the agent's and the lab's manifest
/// limits follow it, `policy::manifest::limits`): 100,000 rules are ten policies selecting
/// x/a, each its own manifest, which NetworkPolicy unions into the same allowed set (up to
/// 10,000 rules it is one policy, as in every earlier run).
const RULES_PER_POLICY: usize = 10_000;

/// Manifest name of the `part`-th policy.
fn policy_name(part: usize) -> String {
    if part == 0 {
        "bench".to_string()
    } else {
        format!("bench-{part}")
    }
}

/// x/a isolated for ingress: `rules` rules (one /32 from 198.18.0.0/15 and one UDP port each)
/// that never match, plus one allowing the client's address on every port, as policies of
/// at most [`RULES_PER_POLICY`] rules (named by [`policy_name`]).
fn policy_yaml(rules: usize, client: IpAddr) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let mut y = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Ingress]\n  ingress:\n",
            policy_name(out.len())
        );
        let end = (i + RULES_PER_POLICY).min(rules);
        for i in i..end {
            let (cidr, port) = nonmatching(i);
            writeln!(
                y,
                "  - from: [{{ipBlock: {{cidr: {cidr}}}}}]\n    ports: [{{port: {port}, protocol: UDP}}]",
            )
            .expect("writing to a String");
        }
        i = end;
        if i >= rules {
            writeln!(y, "  - from: [{{ipBlock: {{cidr: {client}/32}}}}]")
                .expect("writing to a String");
            out.push(y);
            return out;
        }
        out.push(y);
    }
}

/// The i-th non-matching rule: its source `198.<hi>.<lo>/32` (in 198.18.0.0/15) and UDP port,
/// the same in the policy and in every firewall configuration.
fn nonmatching(i: usize) -> (String, u32) {
    let (hi, lo) = (18 + (i >> 16) as u32, (i & 0xffff) as u32);
    (
        format!("198.{hi}.{}.{}/32", lo >> 8, lo & 0xff),
        1000 + (i % 50_000) as u32,
    )
}

/// iptables / ipset rules in the node namespace.
struct Firewall {
    node: String,
}

impl Firewall {
    fn new(node: &str) -> Self {
        Firewall {
            node: node.to_string(),
        }
    }

    fn ipt(&self, tool: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.node, tool]);
        c
    }

    /// kube-router style: FORWARD jumps to a per-pod chain for traffic to the server; the
    /// chain holds the rules, the matching one last, then DROP.
    fn install(&mut self, rules: usize, stateful: bool, ipset: bool, topo: &Topo) -> Result<()> {
        if ipset {
            let mut s = format!(
                "create {SET} hash:net,port family inet hashsize 1024 maxelem {}\n",
                (rules + 1).max(65536)
            );
            for i in 0..rules {
                let (cidr, port) = nonmatching(i);
                writeln!(s, "add {SET} {cidr},udp:{port}").expect("writing to a String");
            }
            cmd_stdin(self.ipt("ipset").arg("restore"), &s)?;
        }
        let mut t = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:{CHAIN} - [0:0]\n"
        );
        if stateful {
            t.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
        }
        writeln!(t, "-A FORWARD -d {}/32 -j {CHAIN}", topo.server_ip).expect("String");
        if ipset {
            // No `-p`: every packet to the server, the bench's TCP included, is looked up in
            // the set (source address, protocol and destination port), as kube-router's
            // per-pod rules look up their sets; the entries keep each rule's protocol.
            writeln!(t, "-A {CHAIN} -m set --match-set {SET} src,dst -j ACCEPT").expect("String");
        } else {
            for i in 0..rules {
                let (cidr, port) = nonmatching(i);
                writeln!(
                    t,
                    "-A {CHAIN} -s {cidr} -p udp -m udp --dport {port} -j ACCEPT"
                )
                .expect("String");
            }
        }
        writeln!(t, "-A {CHAIN} -s {}/32 -j ACCEPT", topo.client_ip).expect("String");
        writeln!(t, "-A {CHAIN} -j DROP\nCOMMIT").expect("String");
        cmd_stdin(&mut self.ipt("iptables-restore"), &t)
    }

    /// Removes the rules, the chain and the set, and the nf_tables table iptables-nft left
    /// behind (its base chains would stay hooked, costing every later configuration).
    fn clean(&mut self) -> Result<()> {
        let tables = cmd_output(self.ipt("nft").args(["list", "tables"]))?;
        if tables.lines().any(|l| l.trim() == "table ip filter") {
            cmd_output(self.ipt("nft").args(["delete", "table", "ip", "filter"]))?;
        }
        let sets = cmd_output(self.ipt("ipset").args(["list", "-n"]))?;
        if sets.lines().any(|l| l.trim() == SET) {
            cmd_output(self.ipt("ipset").args(["destroy", SET]))?;
        }
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = self.clean() {
            eprintln!(
                "bench datapath: cleaning iptables/ipset in {}: {e:#}",
                self.node
            );
        }
    }
}

/// The `pass` classifier, attached with TCX while the empty-TC configuration runs.
struct EmptyTc {
    ebpf: aya::Ebpf,
    links: Vec<aya::programs::tc::SchedClassifierLinkId>,
    _bpffs: BpffsMount,
}

impl EmptyTc {
    fn load(object: &Path) -> Result<Self> {
        // The object's maps declare pinning: give them a private bpffs. Loaded the agent's
        // way (`palisade_agent::datapath::object`), but only `pass` is loaded and attached.
        let bpffs = BpffsMount::new()?;
        let loaded = palisade_agent::datapath::object::load(
            object,
            bpffs.path(),
            &MapSizes::default(),
            &[PROG_PASS],
        )
        .with_context(|| {
            format!(
                "loading {} and its `pass` program (rebuild: cargo xtask build-ebpf)",
                object.display()
            )
        })?;
        Ok(EmptyTc {
            ebpf: loaded.ebpf,
            links: Vec::new(),
            _bpffs: bpffs,
        })
    }

    fn attach(&mut self, topo: &Topo) -> Result<()> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_PASS)
            .context("no `pass`")?
            .try_into()?;
        let veths = topo.veths.clone();
        // Interface names resolve in the caller's namespace: attach from a thread in the node.
        let ids = palisade_tests::lab::netns::in_netns(&topo.node, move || -> Result<Vec<_>> {
            let mut ids = Vec::new();
            for dev in &veths {
                for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                    ids.push(
                        prog.attach_with_options(
                            dev,
                            hook,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .with_context(|| format!("attaching `pass` to {dev} {hook:?}"))?,
                    );
                }
            }
            Ok(ids)
        })??;
        self.links = ids;
        Ok(())
    }

    fn detach(&mut self) -> Result<()> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_PASS)
            .context("no `pass`")?
            .try_into()?;
        for id in self.links.drain(..) {
            prog.detach(id).context("detaching `pass`")?;
        }
        Ok(())
    }
}

/// A server (iperf3 or sockperf) in the server pod, pinned to the bench CPU, killed on drop.
struct Daemon {
    what: &'static str,
    child: Child,
}

impl Daemon {
    /// Starts `args` under `taskset` in the server namespace and waits until something listens
    /// on TCP `port` there.
    fn start(topo: &Topo, what: &'static str, args: &[&str], port: u16) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &topo.server_ns, "taskset", "-c"])
            .arg(CPU.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what} ({args:?})"))?;
        let server = Daemon { what, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = cmd_output(Command::new("ip").args([
                "netns",
                "exec",
                &topo.server_ns,
                "ss",
                "-Hltn",
                &format!("sport = :{port}"),
            ]))?;
            if !out.trim().is_empty() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("{what} not listening on {port} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // `ip netns exec` and `taskset` exec the server (same pid): kill the process we started.
        if let Err(e) = self.child.kill() {
            eprintln!("killing {}: {e}", self.what);
        }
        if let Err(e) = self.child.wait() {
            eprintln!("waiting for {}: {e}", self.what);
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns`, pinned to the bench CPU.
fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .with_context(|| format!("opening netns {ns}"))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let mut set = nix::sched::CpuSet::new();
        set.set(CPU).context("cpu set")?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .context("sched_setaffinity")?;
        f()
    }))
}

fn join<T>(h: std::thread::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("{what} thread panicked"))?
}

/// Listens in the server namespace; returns once listening.
fn server<T: Send + 'static>(
    topo: &Topo,
    port: u16,
    serve: impl FnOnce(TcpListener) -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let addr = SocketAddr::new(topo.server_ip, port);
    let (tx, rx) = std::sync::mpsc::channel();
    let h = spawn_in(&topo.server_ns, move || {
        let l = TcpListener::bind(addr);
        let l = match l {
            Ok(l) => {
                tx.send(None).ok();
                l
            }
            Err(e) => {
                let msg = format!("binding {addr}: {e}");
                tx.send(Some(msg.clone())).ok();
                bail!(msg)
            }
        };
        serve(l)
    })?;
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(None) => Ok(h),
        Ok(Some(e)) => bail!(e),
        Err(_) => bail!("server thread did not start listening"),
    }
}

fn measure(topo: &Topo, dur: Duration) -> Result<Sample> {
    let (rr, rr_p50_us) = rr(topo, dur)?;
    let crr = crr(topo, dur)?;
    let stream_gbps = stream(topo, dur)?;
    let (pp_p50_us, pp_p99_us) = ping_pong(topo, dur)?;
    Ok(Sample {
        rr,
        rr_p50_us,
        crr,
        stream_gbps,
        pp_p50_us,
        pp_p99_us,
    })
}

/// sockperf TCP ping-pong from the client pod to the server pod's `sockperf server`, both on
/// the bench CPU, for `dur` (rounded up to whole seconds) including sockperf's own warm-up:
/// median and p99 round trip, µs.
fn ping_pong(topo: &Topo, dur: Duration) -> Result<(f64, f64)> {
    // Whole seconds only; sockperf's -t includes its ~0.4 s warm-up, which is not measured.
    let secs = dur.as_secs_f64().ceil().max(1.0) as u64;
    let out = cmd_output(
        Command::new("ip")
            .args(["netns", "exec", &topo.client_ns, "taskset", "-c"])
            .arg(CPU.to_string())
            .args(["sockperf", "ping-pong", "--tcp", "--full-rtt", "-i"])
            .arg(topo.server_ip.to_string())
            .arg("-p")
            .arg(PP_PORT.to_string())
            .arg("-t")
            .arg(secs.to_string()),
    )?;
    let p50 = sockperf_value(&out, "percentile 50.000 =")
        .with_context(|| format!("no median in sockperf output: {out}"))?;
    let p99 = sockperf_value(&out, "percentile 99.000 =")
        .with_context(|| format!("no p99 in sockperf output: {out}"))?;
    Ok((p50, p99))
}

/// The number after `key` on sockperf's summary lines ("---> percentile 50.000 =    8.457").
fn sockperf_value(out: &str, key: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let (_, rest) = l.split_once(key)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// 1-byte request / 1-byte response over one connection for `dur` (after a warm-up).
fn rr(topo: &Topo, dur: Duration) -> Result<(f64, f64)> {
    let srv = server(topo, RR_PORT, |l| {
        let (mut c, _) = l.accept()?;
        c.set_nodelay(true)?;
        let mut b = [0u8; 1];
        loop {
            match c.read(&mut b)? {
                0 => return Ok(()),
                _ => c.write_all(&b)?,
            }
        }
    })?;
    let to = SocketAddr::new(topo.server_ip, RR_PORT);
    let cli = spawn_in(&topo.client_ns, move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("RR connect to {to}"))?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = [1u8; 1];
        let mut one = || -> Result<()> {
            c.write_all(&b)?;
            c.read_exact(&mut b).context("RR response")?;
            Ok(())
        };
        for _ in 0..200 {
            one()?;
        }
        let mut lat = Vec::with_capacity(1 << 16);
        let start = Instant::now();
        while start.elapsed() < dur {
            let t = Instant::now();
            one()?;
            lat.push(t.elapsed());
        }
        let secs = start.elapsed().as_secs_f64();
        lat.sort();
        let p50 = crate::bench_policy::percentile(&lat, 0.5);
        Ok((lat.len() as f64 / secs, p50.as_secs_f64() * 1e6))
    })?;
    let out = join(cli, "RR client");
    join(srv, "RR server")?;
    out
}

/// Connect, 1-byte request, 1-byte response, server closes, client closes; for `dur`.
fn crr(topo: &Topo, dur: Duration) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_srv = stop.clone();
    let srv = server(topo, CRR_PORT, move |l| {
        let mut b = [0u8; 1];
        loop {
            let (mut c, _) = l.accept()?;
            if stop_srv.load(Ordering::Relaxed) {
                return Ok(());
            }
            c.set_nodelay(true)?;
            if c.read(&mut b)? == 1 {
                c.write_all(&b)?;
            }
        }
    })?;
    let to = SocketAddr::new(topo.server_ip, CRR_PORT);
    let cli = spawn_in(&topo.client_ns, move || {
        let one = || -> Result<()> {
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("CRR connect to {to}"))?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut b = [1u8; 1];
            c.write_all(&b)?;
            c.read_exact(&mut b).context("CRR response")?;
            // Wait for the server's FIN: the server closes first (TIME_WAIT on its side).
            let mut rest = [0u8; 16];
            while c.read(&mut rest)? > 0 {}
            Ok(())
        };
        for _ in 0..50 {
            one()?;
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            one()?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })?;
    let out = join(cli, "CRR client");
    stop.store(true, Ordering::Relaxed);
    // Wake the server's accept (from the client namespace).
    let to2 = to;
    let waker = spawn_in(&topo.client_ns, move || {
        TcpStream::connect_timeout(&to2, Duration::from_secs(2))
            .map(|_| ())
            .context("waking the CRR server")
    })?;
    join(waker, "CRR waker")?;
    join(srv, "CRR server")?;
    out
}

/// iperf3 stream from the client pod to the server pod, both on the bench CPU.
fn stream(topo: &Topo, dur: Duration) -> Result<f64> {
    let secs = dur.as_secs_f64().ceil().max(1.0) as u64;
    let out = cmd_output(
        Command::new("ip")
            .args(["netns", "exec", &topo.client_ns, "taskset", "-c"])
            .arg(CPU.to_string())
            .args(["iperf3", "-J", "-c"])
            .arg(topo.server_ip.to_string())
            .arg("-p")
            .arg(STREAM_PORT.to_string())
            .arg("-t")
            .arg(secs.to_string()),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing iperf3 -J")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received.bits_per_second in iperf3 output: {out}"))?;
    Ok(bps / 1e9)
}

/// Median, min and max of a non-empty slice.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

#[derive(serde::Serialize)]
struct Row {
    config: String,
    family: String,
    rules: Option<usize>,
    samples: Vec<Sample>,
    /// Per metric: median, min, max of the ratio to the same repetition's baseline.
    ratio: BTreeMap<String, (f64, f64, f64)>,
    /// Per metric: median of the absolute values.
    median: BTreeMap<String, f64>,
    rr_p50_us_median: f64,
    pp_p99_us_median: f64,
}

struct Report {
    rows: Vec<Row>,
    seconds: f64,
    reps: usize,
    /// Wall time of the interleaved sweep, s.
    run_secs: f64,
    /// /proc/loadavg before and after the sweep (the machine may be shared).
    load: [String; 2],
    /// The eBPF object the agent and the empty TC program were loaded from.
    bpf_object: String,
}

impl Report {
    fn new(
        configs: &[Config],
        results: &BTreeMap<Config, Vec<Sample>>,
        seconds: f64,
        reps: usize,
    ) -> Self {
        let base = results.get(&Config::Baseline).cloned().unwrap_or_default();
        let rows = configs
            .iter()
            .map(|c| {
                let samples = results.get(c).cloned().unwrap_or_default();
                let mut ratio = BTreeMap::new();
                let mut median = BTreeMap::new();
                for m in &METRICS {
                    let r: Vec<f64> = samples
                        .iter()
                        .zip(&base)
                        .map(|(s, b)| m.ratio(s, b))
                        .collect();
                    ratio.insert(m.name.to_string(), stats(&r));
                    let abs: Vec<f64> = samples.iter().map(m.value).collect();
                    median.insert(m.name.to_string(), stats(&abs).0);
                }
                let p50: Vec<f64> = samples.iter().map(|s| s.rr_p50_us).collect();
                let pp99: Vec<f64> = samples.iter().map(|s| s.pp_p99_us).collect();
                Row {
                    config: c.label(),
                    family: c.family().into(),
                    rules: c.rules(),
                    samples,
                    ratio,
                    median,
                    rr_p50_us_median: stats(&p50).0,
                    pp_p99_us_median: stats(&pp99).0,
                }
            })
            .collect();
        Report {
            rows,
            seconds,
            reps,
            run_secs: 0.0,
            load: Default::default(),
            bpf_object: String::new(),
        }
    }

    fn table(&self) -> String {
        let mut t = String::new();
        writeln!(
            t,
            "\nratio to baseline of the same repetition (rates: value/baseline; PP_LAT: baseline/latency): median [min-max] over {} repetitions of {} s; absolute medians",
            self.reps, self.seconds
        )
        .expect("String");
        writeln!(
            t,
            "| configuration | TCP_RR | TCP_CRR | TCP_STREAM | PP_LAT | RR/s | RR p50 µs | CRR/s | Gbit/s | pp p50 µs | pp p99 µs |"
        )
        .expect("String");
        writeln!(t, "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|").expect("String");
        for r in &self.rows {
            let cell = |m: &str| {
                let (med, lo, hi) = r.ratio[m];
                format!("{med:.3} [{lo:.3}-{hi:.3}]")
            };
            writeln!(
                t,
                "| {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.2} | {:.1} | {:.1} |",
                r.config,
                cell("TCP_RR"),
                cell("TCP_CRR"),
                cell("TCP_STREAM"),
                cell("PP_LAT"),
                r.median["TCP_RR"],
                r.rr_p50_us_median,
                r.median["TCP_CRR"],
                r.median["TCP_STREAM"],
                r.median["PP_LAT"],
                r.pp_p99_us_median,
            )
            .expect("String");
        }
        t
    }

    fn json(&self, table: &str) -> Result<String> {
        let machine = machine();
        Ok(serde_json::to_string_pretty(&serde_json::json!({
            "bench": "datapath",
            "client": "y/b",
            "server": "x/a",
            "seconds": self.seconds,
            "repetitions": self.reps,
            "machine": machine,
            "bpf_object": self.bpf_object,
            "git_head": git_head(),
            "run_secs": self.run_secs,
            "loadavg_before": self.load[0],
            "loadavg_after": self.load[1],
            "rows": self.rows,
            "table": table,
        }))?)
    }

    /// Ratio vs rule count, one panel per metric, one line per enforcer (palisade, iptables
    /// stateless/stateful, ipset), the empty TC program as a dashed reference.
    fn svg(&self, rules: &[usize]) -> String {
        let (w, ph, pad) = (640.0, 240.0, 50.0);
        let h = ph * METRICS.len() as f64 + 40.0;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let families = [
            ("palisade", "#1f77b4"),
            ("palisade-noevents", "#9467bd"),
            ("ipt-stateless", "#d62728"),
            ("ipt-stateful", "#ff7f0e"),
            ("ipset", "#2ca02c"),
        ];
        let n = rules.len().max(1);
        let x = |i: usize| pad + (w - 2.0 * pad) * (i as f64 + 0.5) / n as f64;
        for (p, metric) in METRICS.iter().map(|m| m.name).enumerate() {
            let top = 20.0 + ph * p as f64;
            let y = |r: f64| top + 20.0 + (ph - 60.0) * (1.0 - r.clamp(0.0, 1.2) / 1.2);
            writeln!(
                s,
                "<text x=\"{pad}\" y=\"{}\" font-weight=\"bold\">{metric}: ratio to no filtering vs non-matching rules</text>",
                top + 10.0
            )
            .expect("String");
            for g in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2] {
                writeln!(
                    s,
                    "<line x1=\"{pad}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{g:.1}</text>",
                    x2 = w - pad,
                    yy = y(g),
                    tx = pad - 4.0,
                    ty = y(g) + 4.0
                )
                .expect("String");
            }
            for (i, r) in rules.iter().enumerate() {
                writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{r}</text>",
                    x(i),
                    y(0.0) + 14.0
                )
                .expect("String");
            }
            if let Some(e) = self.rows.iter().find(|r| r.family == "empty-tc") {
                let v = e.ratio[metric].0;
                writeln!(
                    s,
                    "<line x1=\"{pad}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>",
                    x2 = w - pad,
                    yy = y(v)
                )
                .expect("String");
            }
            for (k, (fam, color)) in families.iter().enumerate() {
                let pts: Vec<String> = rules
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| {
                        let r = self
                            .rows
                            .iter()
                            .find(|r| r.family == *fam && r.rules == Some(*n))?;
                        let v = r.ratio[metric].0;
                        v.is_finite().then(|| format!("{:.1},{:.1}", x(i), y(v)))
                    })
                    .collect();
                writeln!(
                    s,
                    "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                    pts.join(" ")
                )
                .expect("String");
                for p in &pts {
                    let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                    writeln!(
                        s,
                        "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>"
                    )
                    .expect("String");
                }
                writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{fam}</text>",
                    w - pad - 90.0,
                    top + 30.0 + 13.0 * k as f64
                )
                .expect("String");
            }
            writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#888\">empty TC (dashed)</text>",
                w - pad - 90.0,
                top + 30.0 + 13.0 * families.len() as f64
            )
            .expect("String");
        }
        s.push_str("</svg>\n");
        s
    }
}

/// `git rev-parse HEAD` of the checkout (the binaries may include uncommitted changes).
pub(crate) fn git_head() -> String {
    cmd_output(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(crate::build::root()),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_default()
}

/// The first three fields of /proc/loadavg.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    serde_json::json!({"nproc": nproc, "kernel": kernel, "cpu": model})
}
