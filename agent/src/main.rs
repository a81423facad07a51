//! palisade-agent: Palisade's node agent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use palisade_agent::agent::{Agent, AgentConfig};
use palisade_agent::node::routing::{Cidr, NetworkConfig};
use palisade_agent::source::{DirSource, KubeSource, Source};

/// mimalloc rather than glibc malloc: a policy change builds and drops ~10^5 small objects per
/// 10,000 rules; with glibc (chunk consolidation on free) a change of a 10,000-rule policy took
/// ~45 ms in process, with mimalloc ~25 ms (`cargo xtask bench policy`, docs/policy.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "palisade-agent",
    version,
    about = "Palisade node agent: enforces NetworkPolicy with eBPF"
)]
struct Args {
    /// Source of cluster state: `kube` (the Kubernetes API: in-cluster service account, or
    /// --kubeconfig), or `dir:PATH` (a directory of Kubernetes YAML or JSON manifests, watched).
    #[arg(long, env = "PALISADE_SOURCE")]
    source: String,
    /// With `--source kube`: a kubeconfig file (its current context) instead of the
    /// in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// bpffs directory for pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/palisade")]
    bpffs: PathBuf,
    /// The eBPF object. Default: /usr/lib/palisade/palisade.bpf.o (where the image installs
    /// it); when that does not exist, bpf/palisade.bpf.o beside this binary's directory, which
    /// is where `cargo xtask build` writes it (target/bpf/palisade.bpf.o for
    /// target/release/palisade-agent).
    #[arg(long)]
    bpf_object: Option<PathBuf>,
    /// Node-local state shared with the CNI plugin (endpoint records).
    #[arg(long, default_value = "/var/lib/palisade")]
    state_dir: PathBuf,
    /// Socket for the CNI plugin and palisadectl: mode 0600 (root only) unless
    /// --socket-group is given.
    #[arg(long, default_value = palisade_node_api::socket::DEFAULT_PATH)]
    socket: PathBuf,
    /// Make the socket 0660 with this group (name or numeric id): its members may use
    /// `palisadectl status`, `wait`, `endpoints` and `policy`. Adding or deleting endpoints
    /// stays root's (checked by peer credentials).
    #[arg(long, value_parser = parse_group)]
    socket_group: Option<nix::unistd::Gid>,
    /// This node's name (its Node object). Default: $NODE_NAME, else the host name in lower
    /// case (as kubelet names its Node).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The container runtime's CNI config directory: palisade entries there whose stateDir,
    /// agentSocket or podCIDRFile disagree with this agent are reported in `palisadectl
    /// status`.
    #[arg(long, default_value = palisade_agent::cniconf::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// Periodic resync in seconds (changes are also picked up at once via inotify).
    #[arg(long, default_value_t = 10)]
    resync_seconds: u64,
    /// Emit per-packet debug lines from the datapath (aya-log).
    #[arg(long)]
    bpf_debug_log: bool,
    /// The cluster's pod CIDRs (repeatable): traffic from pods to them is never masqueraded.
    /// Default: the union of every Node's spec.podCIDRs.
    #[arg(long = "cluster-cidr", value_parser = parse_cidr)]
    cluster_cidrs: Vec<Cidr>,
    /// The Service CIDRs (repeatable): traffic from pods to them is never masqueraded.
    #[arg(long = "service-cidr", value_parser = parse_cidr)]
    service_cidrs: Vec<Cidr>,
    /// Masquerade (SNAT to the node's address) pod traffic leaving the cluster's pod and
    /// service CIDRs (nftables table `inet palisade`); `--masquerade=false` deletes the table.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    masquerade: bool,
    /// Route to every other Node's pod CIDRs via its InternalIP (routes of protocol 80).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pod_routes: bool,
    /// An interface that Service traffic translated to a remote backend leaves the node
    /// through (its TC egress gets `to_uplink`); repeatable. Default: the interface holding
    /// this node's InternalIP, and every interface holding a default route.
    #[arg(long = "uplink")]
    uplinks: Vec<String>,
    /// Flow events from the datapath (one per decision; docs/observability.md).
    /// `--flow-events=false`: the datapath emits none and `palisadectl flows` shows nothing.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    flow_events: bool,
    /// Flows kept in memory for `palisadectl flows` (the oldest go first).
    #[arg(long, default_value_t = 4096)]
    flow_history: usize,
    /// Serve Prometheus metrics on `--metrics-address` (`/metrics`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    metrics: bool,
    /// Address and port of the metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:9963")]
    metrics_address: std::net::SocketAddr,
    /// Audit mode for the whole node: every NetworkPolicy is audited (decides nothing; what
    /// it would drop is reported as AUDIT flows). Per policy: the annotation
    /// `policy.palisade.io/audit: "true"`.
    #[arg(long)]
    audit_mode: bool,
    /// The most pods this node runs (kubelet's `--max-pods`): sizes the flow-state maps
    /// (conntrack, assured tier, fragments, event limits; docs/datapath.md "Map sizes").
    #[arg(long, default_value_t = palisade_agent::map_sizes::DEFAULT_MAX_PODS,
          value_parser = palisade_agent::map_sizes::parse_max_pods)]
    max_pods: u32,
    /// `NAME=ENTRIES`: create map NAME with this many entries instead of its default or the
    /// size `--max-pods` gives it (repeatable; pal_ep_v1, pal_pol_v1, pal_port_v1, pal_svc_v1,
    /// pal_host_v1, pal_ct_v1, pal_cta_v1, pal_frag_v1, pal_evrl_v1, pal_svcfl_v1,
    /// pal_fqaddr_v1: the node's limit on addresses learnt from DNS answers). A map
    /// pinned with another size is replaced by one of this size, its entries copied where
    /// they fit (docs/security.md, lost node state).
    #[arg(long = "map-size", value_parser = palisade_agent::map_sizes::parse)]
    map_sizes: Vec<(String, u32)>,
    /// The cluster DNS Service (NAMESPACE/NAME): only its answers (from its ClusterIPs) teach
    /// pods the addresses of their ClusterNetworkPolicy `domainNames` (docs/fqdn.md).
    #[arg(long, default_value = palisade_agent::reconcile::DEFAULT_DNS_SERVICE,
          value_parser = parse_service_name)]
    dns_service: String,
    /// Most addresses one pod may learn from DNS answers (docs/fqdn.md "Limits"); at the limit
    /// a new name's addresses are refused, what was learnt stays.
    #[arg(long, default_value_t = palisade_common::fqdn::DEFAULT_MAX_LEARNT_PER_POD,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    fqdn_max_per_pod: u32,
}

/// `--dns-service`: NAMESPACE/NAME, both non-empty.
fn parse_service_name(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Ok(s.into()),
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// Where the image installs the eBPF object.
const INSTALLED_BPF_OBJECT: &str = "/usr/lib/palisade/palisade.bpf.o";

/// `--bpf-object` when not given: the installed object, else the one `cargo xtask build` wrote
/// beside the binary's directory (`target/release/palisade-agent` -> `target/bpf/...`).
fn default_bpf_object(exe: Option<&std::path::Path>) -> PathBuf {
    let installed = PathBuf::from(INSTALLED_BPF_OBJECT);
    if installed.exists() {
        return installed;
    }
    exe.and_then(|e| e.parent()?.parent())
        .map(|target| target.join("bpf/palisade.bpf.o"))
        .filter(|p| p.exists())
        .unwrap_or(installed)
}

/// The host name in lower case, as kubelet names its Node when `--hostname-override` is unset.
fn host_name() -> Result<String> {
    use anyhow::Context;
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name for --node-name (set --node-name or NODE_NAME)")?;
    let name = raw.trim().to_lowercase();
    if name.is_empty() {
        bail!("the host name is empty: set --node-name or NODE_NAME");
    }
    Ok(name)
}

fn parse_group(s: &str) -> Result<nix::unistd::Gid, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!("no group {s:?} on this host")),
        Err(e) => Err(format!("looking up group {s:?}: {e}")),
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s).ok_or_else(|| format!("{s:?} is not a CIDR (e.g. 10.244.0.0/16)"))
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
    raise_fd_limit();
    let dir = match args.source.as_str() {
        "kube" => None,
        s => match s.strip_prefix("dir:") {
            Some(d) => Some(PathBuf::from(d)),
            None => bail!("--source {s:?}: expected kube or dir:PATH"),
        },
    };
    let kubeconfig = args.kubeconfig;
    let node = match args.node_name {
        Some(n) => n,
        None => host_name()?,
    };
    let object = match args.bpf_object {
        Some(o) => o,
        None => default_bpf_object(std::env::current_exe().ok().as_deref()),
    };
    tracing::info!(node, object = %object.display(), "starting");
    let cfg = AgentConfig {
        node,
        state_dir: args.state_dir,
        bpffs: args.bpffs,
        object,
        debug_log: args.bpf_debug_log,
        network: NetworkConfig {
            routes: args.pod_routes,
            masquerade: args.masquerade,
            cluster_cidrs: args.cluster_cidrs,
            service_cidrs: args.service_cidrs,
        },
        uplinks: args.uplinks,
        observe: palisade_agent::observe::ObserveConfig {
            events: args.flow_events,
            history: args.flow_history,
            metrics_addr: args.metrics.then_some(args.metrics_address),
        },
        audit_mode: args.audit_mode,
        map_sizes: palisade_agent::map_sizes::MapSizes::for_node(args.max_pods, args.map_sizes),
        dns_service: args.dns_service,
        fqdn_max_per_pod: args.fqdn_max_per_pod,
    };
    let resync = Duration::from_secs(args.resync_seconds.max(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Inside the runtime: the source's watchers are tasks of it.
        let source: Box<dyn Source> = match dir {
            Some(dir) => Box::new(DirSource::new(dir).write_pod_cidrs(&cfg.node, &cfg.state_dir)),
            None => Box::new(kube_source(&cfg, kubeconfig.as_deref()).await?),
        };
        let agent = Agent::start(cfg, source)?;
        let run = palisade_agent::run::RunConfig {
            socket: args.socket,
            socket_group: args.socket_group,
            resync,
            cni_conf_dir: args.cni_conf_dir,
        };
        palisade_agent::run::run(agent, run).await
    })
}

/// The agent holds two descriptors per pod (one per TCX link, see `datapath::links`): lift the
/// soft limit on open files to the hard one, as a node daemon with many pods needs.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("reading the open files limit: {e}"),
    }
}

/// Starts the API source and waits until every kind is listed (and this node's pod CIDR file
/// written). Until then the agent does not start: what is pinned stays enforced, and the CNI
/// socket is not answering against a half-synced view.
async fn kube_source(
    cfg: &AgentConfig,
    kubeconfig: Option<&std::path::Path>,
) -> Result<KubeSource> {
    use anyhow::Context;
    let config = palisade_agent::source::kube::client_config(kubeconfig)
        .await
        .context("Kubernetes client configuration")?;
    let source = KubeSource::start(config, cfg.node.clone(), cfg.state_dir.clone())?;
    tracing::info!("{}: listing {:?}", source.describe(), source.unlisted());
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    loop {
        tokio::select! {
            _ = source.wait_complete() => break,
            _ = report.tick() => {
                tracing::warn!("{}: still waiting for the initial list of {:?} (RBAC? see docs/kube-source.md)", source.describe(), source.unlisted());
            }
        }
    }
    tracing::info!("{}: every kind listed", source.describe());
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_bpf_object_is_found_where_the_build_writes_it() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("target/release/palisade-agent");
        let built = d.path().join("target/bpf/palisade.bpf.o");
        std::fs::create_dir_all(built.parent().unwrap()).unwrap();
        // Without the object beside the build, the installed path is named (in the error).
        if !Path::new(INSTALLED_BPF_OBJECT).exists() {
            assert_eq!(
                default_bpf_object(Some(&exe)),
                Path::new(INSTALLED_BPF_OBJECT)
            );
            std::fs::write(&built, b"").unwrap();
            assert_eq!(default_bpf_object(Some(&exe)), built);
        }
    }

    #[test]
    fn the_node_name_defaults_to_the_lower_case_host_name() {
        let n = host_name().unwrap();
        assert!(!n.is_empty() && n == n.to_lowercase(), "{n}");
        let a = Args::try_parse_from(["palisade-agent", "--source", "kube"]).unwrap();
        // NODE_NAME may be set where the tests run; without it no name is assumed.
        assert_eq!(a.node_name, std::env::var("NODE_NAME").ok());
    }
}
