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
//! (CRR), both from the generator in `measure.rs`; iperf3 stream throughput; sockperf TCP
//! ping-pong round trip (p50, p99). Each cell is reported as the ratio to the baseline of the same repetition
//! (median, min-max) plus absolute medians; also written as JSON and an SVG chart under
//! target/bench/.

mod enforcers;
mod measure;
mod report;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use palisade_tests::lab::{AgentMode, Lab, LabConfig, Manifests};
use palisade_tests::netns::run as cmd_output;

use enforcers::{EmptyTc, Firewall, policy_name, policy_yaml};
use measure::{Daemon, measure};
use report::Report;
pub(crate) use report::{git_head, loadavg};

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
    let nft_before = nft_tables(&topo.node)?;
    eprintln!("bench datapath: {}", netfilter_note(&nft_before));
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
    report.nft_tables = [nft_before, nft_tables(&topo.node)?];
    let table = report.table();
    println!("{table}");
    println!("{}", netfilter_note(&report.nft_tables[1]));
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

/// The nf_tables tables of the node namespace (`nft list tables`: "table inet palisade", ...).
fn nft_tables(node: &str) -> Result<Vec<String>> {
    let out =
        cmd_output(Command::new("ip").args(["netns", "exec", node, "nft", "list", "tables"]))?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// What the node namespace's netfilter state means for every configuration. The agent's
/// masquerade table (a NAT chain) outlives the agent, as its programs do, so it is there for
/// the baseline and the iptables/ipset configurations too: netfilter's conntrack then runs for
/// every packet of every configuration, as kube-proxy's NAT rules make it run on a Kubernetes
/// node (docs/performance.md, "What it does").
fn netfilter_note(tables: &[String]) -> String {
    let palisade = format!("table inet {}", palisade_agent::node::masquerade::TABLE);
    if tables.contains(&palisade) {
        format!(
            "node namespace: {palisade} (the agent's masquerade NAT) present: netfilter conntrack \
             runs in every configuration, the baseline included"
        )
    } else {
        format!("node namespace: no Palisade NAT table (tables: {tables:?})")
    }
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
