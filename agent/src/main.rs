//! palisade-agent: Palisade's node agent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use palisade_agent::agent::{Agent, AgentConfig};
use palisade_agent::source::DirSource;

#[derive(Parser)]
#[command(
    name = "palisade-agent",
    version,
    about = "Palisade node agent: enforces NetworkPolicy with eBPF"
)]
struct Args {
    /// Source of cluster state: `dir:PATH` (a directory of Kubernetes YAML manifests, watched).
    #[arg(long, env = "PALISADE_SOURCE")]
    source: String,
    /// bpffs directory for pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/palisade")]
    bpffs: PathBuf,
    /// The eBPF object (built by `cargo xtask build-ebpf`).
    #[arg(long, default_value = "/usr/lib/palisade/palisade.bpf.o")]
    bpf_object: PathBuf,
    /// Node-local state shared with the CNI plugin (endpoint records).
    #[arg(long, default_value = "/var/lib/palisade")]
    state_dir: PathBuf,
    /// Socket for the CNI plugin and palisadectl.
    #[arg(long, default_value = "/run/palisade/agent.sock")]
    socket: PathBuf,
    /// This node's name.
    #[arg(long, env = "NODE_NAME", default_value = "localhost")]
    node_name: String,
    /// Periodic resync in seconds (changes are also picked up at once via inotify).
    #[arg(long, default_value_t = 10)]
    resync_seconds: u64,
    /// Emit per-packet debug lines from the datapath (aya-log).
    #[arg(long)]
    bpf_debug_log: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let Some(dir) = args.source.strip_prefix("dir:") else {
        bail!(
            "--source {:?}: expected dir:PATH (the Kubernetes API source comes later)",
            args.source
        );
    };
    let cfg = AgentConfig {
        node: args.node_name,
        state_dir: args.state_dir,
        bpffs: args.bpffs,
        object: args.bpf_object,
        debug_log: args.bpf_debug_log,
    };
    let source = Box::new(DirSource::new(dir));
    let resync = Duration::from_secs(args.resync_seconds.max(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Inside the runtime: the source's watcher is a task of it.
        let agent = Agent::start(cfg, source)?;
        palisade_agent::run::run(agent, args.socket, resync).await
    })
}
