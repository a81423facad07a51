//! `cargo xtask lab` and `cargo xtask demo`: the upstream NetworkPolicy model in network
//! namespaces (palisade_tests::lab), with truth tables printed as the upstream e2e suite does.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use palisade_tests::lab::{AgentMode, Family, Lab, LabConfig, Peer, Protocol, Reachability};

use crate::build::{self, BuildArgs, root};

#[derive(clap::Args)]
pub struct LabArgs {
    /// Simulated nodes (pods are spread over them round robin).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub nodes: u8,
    /// Directory (or file) of manifests to apply: NetworkPolicies, and Namespace/Pod objects
    /// that change the model's labels or add pods.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Print the observations as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Address family of the probes.
    #[arg(long, default_value = "v4")]
    pub family: Family,
    /// Ports to probe.
    #[arg(long, value_delimiter = ',', default_values_t = [80u16, 81])]
    pub ports: Vec<u16>,
    /// Keep the lab up after printing, until Enter is pressed (to look around with
    /// `ip netns exec`).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(clap::Args)]
pub struct CommonArgs {
    /// Run without the agent (nothing is enforced: everything is reachable).
    #[arg(long)]
    pub no_agent: bool,
    /// Use the binaries already built instead of building first.
    #[arg(long)]
    pub no_build: bool,
    /// Progress lines on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub nodes: u8,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn require_root(cmd: &str) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "`cargo xtask {cmd}` must run as root: it creates network namespaces, mounts bpffs and \
             loads BPF programs (try: sudo -E env PATH=$PATH cargo xtask {cmd})"
        );
    }
    Ok(())
}

fn start(nodes: u8, common: &CommonArgs) -> Result<Lab> {
    let mut config = LabConfig {
        nodes: nodes.into(),
        agent: if common.no_agent {
            AgentMode::Off
        } else {
            AgentMode::Auto
        },
        verbose: common.verbose,
        ..LabConfig::default()
    };
    if common.no_build {
        config.bin_dir = root().join("target/release");
        config.bpf_object = root().join("target/bpf/palisade.bpf.o");
    } else {
        eprintln!("== building the eBPF object and the binaries");
        let art = build::build_all(&BuildArgs::default())?;
        config.bin_dir = art.bin_dir;
        config.bpf_object = art.bpf_object;
    }
    eprintln!("== starting the lab ({nodes} node(s))");
    let lab = Lab::start(config).context("starting the lab")?;
    eprintln!("lab {}: {}", lab.id(), lab.mode());
    Ok(lab)
}

pub fn run_lab(args: &LabArgs) -> Result<()> {
    require_root("lab")?;
    let mut lab = start(args.nodes, &args.common)?;
    if let Some(m) = &args.manifests {
        eprintln!("== applying {}", m.display());
        lab.apply(m.as_path())
            .with_context(|| format!("applying {}", m.display()))?;
    }
    lab.wait_synced().context("waiting for the agents")?;
    let observed = lab
        .probe_all(&args.ports, &Protocol::ALL, args.family)
        .context("probing")?;
    if args.json {
        let mut v = observed.to_json();
        v["mode"] = serde_json::json!(lab.mode().to_string());
        v["enforcing"] = serde_json::json!(lab.enforcing());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{observed}");
        println!("mode: {}", lab.mode());
    }
    if args.keep {
        keep(&lab)?;
    }
    Ok(())
}

fn keep(lab: &Lab) -> Result<()> {
    eprintln!("== lab {} kept up", lab.id());
    eprintln!("   node namespaces: {}", lab.node_netns().join(" "));
    for id in lab.pod_ids() {
        eprintln!(
            "   pod {id}: netns {} ips {:?}",
            lab.pod_netns(&id).unwrap_or("?"),
            lab.pod_ips(&id).unwrap_or(&[])
        );
    }
    eprintln!(
        "   manifests: {} (edit them; the agents follow)",
        lab.manifests_dir().display()
    );
    for l in lab.agent_logs() {
        eprintln!("   agent log: {}", l.display());
    }
    eprintln!("   e.g. ip netns exec {} ip route", lab.node_netns()[0]);
    eprintln!("press Enter to tear the lab down");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading stdin")?;
    Ok(())
}

/// The flows behind a few cells of the last table: why an allowed cell is allowed and a
/// denied one denied, as `palisadectl flows` tells it (docs/observability.md). The probes of
/// the table made these flows; the agent of the destination's node judged them.
fn why(lab: &Lab) -> Result<()> {
    println!("\n==== why: the flows behind a few cells (palisadectl flows)");
    let cells = [
        (
            "y/b",
            "x/a",
            "80",
            "TCP",
            "allowed: the rule of allow-x-a-from-y-tcp-80",
        ),
        (
            "z/b",
            "x/a",
            "80",
            "TCP",
            "denied: isolated, no rule allows z",
        ),
        (
            "y/b",
            "x/a",
            "81",
            "UDP",
            "denied: the rule allows TCP 80 only",
        ),
        (
            "y/c",
            "x/b",
            "80",
            "TCP",
            "denied: x/b is isolated by the default deny alone",
        ),
    ];
    for (from, to, port, proto, what) in cells {
        println!("\n{from} -> {to} {proto}/{port} ({what}):");
        let args = [
            "flows",
            "--from-pod",
            from,
            "--to-pod",
            to,
            "--port",
            port,
            "--protocol",
            proto,
            "--last",
            "6",
        ];
        for i in 0..lab.node_netns().len() {
            let Some(agent) = lab.agent(i) else { continue };
            let out = agent
                .palisadectl_stdout(&args)
                .with_context(|| format!("palisadectl {}", args.join(" ")))?;
            // The destination's ingress decides these cells: its latest verdict.
            if let Some(line) = out.lines().rfind(|l| l.contains(" INGRESS")) {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

pub fn run_demo(args: &DemoArgs) -> Result<()> {
    require_root("demo")?;
    let mut lab = start(args.nodes, &args.common)?;
    let demo = root().join("examples/demo");
    let ports = [80u16, 81];
    let family = Family::V4;
    let mut mismatches = 0;

    let mut step = |lab: &mut Lab,
                    title: &str,
                    file: Option<&str>,
                    expect: &dyn Fn(&mut Reachability)|
     -> Result<()> {
        println!("\n==== {title}");
        if let Some(f) = file {
            let path = demo.join(f);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            println!("applying {}:\n{}", path.display(), text.trim_end());
            lab.apply(path.as_path())
                .with_context(|| format!("applying {}", path.display()))?;
        }
        lab.wait_synced().context("waiting for the agents")?;
        let observed = lab.probe_all(&ports, &Protocol::ALL, family)?;
        println!();
        print!("{observed}");
        let mut expected = Reachability::all_reachable_like(&observed);
        if lab.enforcing() {
            expect(&mut expected);
            expected.allow_loopback();
        }
        match expected.diff(&observed, true) {
            None => println!("as expected"),
            Some(d) => {
                mismatches += 1;
                println!("NOT as expected:\n{d}");
            }
        }
        Ok(())
    };

    step(
        &mut lab,
        "no policy: everything is reachable",
        None,
        &|_| {},
    )?;
    step(
        &mut lab,
        "default deny ingress in namespace x",
        Some("01-default-deny.yaml"),
        &|e| {
            e.expect_peer(&Peer::any(), &Peer::ns("x"), false);
        },
    )?;
    step(
        &mut lab,
        "allow x/a from namespace y on TCP 80",
        Some("02-allow-from-y.yaml"),
        &|e| {
            e.expect_peer(&Peer::any(), &Peer::ns("x"), false);
            e.table_mut(80, Protocol::Tcp)
                .set_peers(&Peer::ns("y"), &Peer::pod("x", "a"), true);
        },
    )?;
    if lab.enforcing() {
        why(&lab)?;
    }
    println!("\nmode: {}", lab.mode());
    drop(lab);
    if mismatches > 0 {
        bail!("{mismatches} step(s) did not match the expected tables");
    }
    Ok(())
}
