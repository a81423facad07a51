//! palisadectl: ask the local palisade-agent what it enforces.

// A binary's root resolves modules beside it: these live in palisadectl/.
#[path = "palisadectl/explain.rs"]
mod explain;
#[path = "palisadectl/lint.rs"]
mod lint;
#[path = "palisadectl/report.rs"]
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use palisade_agent::api::{Request, call};
use palisade_node_api::Error as NodeError;
use palisade_node_api::socket::DEFAULT_PATH;

// One module file per command that has options of its own.
#[path = "palisadectl/flows.rs"]
mod flows;

#[derive(Parser)]
#[command(
    name = "palisadectl",
    version,
    about = "Inspect the local Palisade agent"
)]
struct Args {
    /// The agent's socket (its --socket). May come before or after the subcommand.
    #[arg(long, global = true, env = "PALISADE_SOCKET", default_value = DEFAULT_PATH)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Agent health, generations, problems, datapath counters (JSON).
    Status,
    /// Block until the current source state is enforced.
    Wait {
        /// Give up after this long: `30s`, `500ms`, `2m`, `1m30s` (a bare number is seconds).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Endpoints on this node.
    Endpoints,
    /// What is allowed in and out of a pod.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Is a connection allowed, and why: the deciding policies, rules, peers and ports.
    Explain(explain::Args),
    /// Flows the datapath decided, with the pods, policies and rules that decided them
    /// (like `hubble observe`).
    Flows(Box<flows::FlowsArgs>),
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// `palisadectl policy show NAMESPACE/POD`
    Show { pod: String },
    /// Find policies that do not say what was probably meant.
    Lint(lint::Args),
}

/// A duration with units (humantime's syntax), or a bare number of seconds (what the first
/// releases accepted).
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 30s, 500ms, 2m, 1m30s"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let t = Duration::from_secs(30);
    match args.cmd {
        Cmd::Status => {
            let r = call(&args.socket, &Request::Status, t)
                .with_context(|| format!("asking the agent at {}", args.socket.display()))?;
            println!("{}", serde_json::to_string_pretty(&r.status)?);
            if !r.status.is_some_and(|s| s.healthy) {
                std::process::exit(1);
            }
        }
        Cmd::Wait { timeout } => {
            let deadline = Instant::now() + timeout;
            let mut last = String::new();
            let mut backoff = Duration::from_millis(20);
            let mut said_not_listening = false;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!(
                        "timed out after {} waiting for the agent at {}: {last}",
                        humantime::format_duration(timeout),
                        args.socket.display()
                    );
                }
                match call(&args.socket, &Request::Wait, left) {
                    Ok(r) if r.ok => {
                        println!("enforced generation {}", r.generation.unwrap_or(0));
                        return Ok(());
                    }
                    Ok(r) => last = r.error.unwrap_or_default(),
                    Err(e) => {
                        // Say at once which path was tried and that nobody is there (a wrong
                        // --socket), then keep trying: an agent that is starting opens it.
                        if matches!(e, NodeError::NotListening { .. }) && !said_not_listening {
                            eprintln!(
                                "palisadectl: {e}; retrying for up to {}",
                                humantime::format_duration(left)
                            );
                            said_not_listening = true;
                        }
                        last = e.chain();
                    }
                }
                // The agent is not up yet or could not apply: poll again, with a cap.
                std::thread::sleep(backoff.min(left));
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
        Cmd::Endpoints => {
            let r = call(&args.socket, &Request::Endpoints, t)?;
            println!(
                "{:<24} {:<16} {:>7} {:>6} {:>6} {:<4} {:<4} IPS",
                "POD", "HOST VETH", "IFINDEX", "EP", "POLICY", "IN", "OUT"
            );
            for e in r.endpoints.unwrap_or_default() {
                let iso = |b: bool| if b { "iso" } else { "-" };
                println!(
                    "{:<24} {:<16} {:>7} {:>6} {:>6} {:<4} {:<4} {}{}",
                    e.pod,
                    e.host_veth,
                    e.ifindex,
                    e.ep_id,
                    e.policy_id,
                    iso(e.ingress_isolated),
                    iso(e.egress_isolated),
                    e.ips.join(","),
                    if e.pod_unknown {
                        "  (pod not in source: deny all)"
                    } else {
                        ""
                    }
                );
            }
        }
        Cmd::Explain(a) => std::process::exit(explain::run(&args.socket, a)),
        Cmd::Policy {
            cmd: PolicyCmd::Lint(a),
        } => std::process::exit(lint::run(&args.socket, a)),
        Cmd::Flows(f) => flows::run(&args.socket, &f)?,
        Cmd::Policy {
            cmd: PolicyCmd::Show { pod },
        } => {
            let r = call(&args.socket, &Request::Policy { pod }, t)?;
            match (r.ok, r.text, r.error) {
                (true, Some(text), _) => print!("{text}"),
                (_, _, e) => bail!("{}", e.unwrap_or_default()),
            }
        }
    }
    Ok(())
}
