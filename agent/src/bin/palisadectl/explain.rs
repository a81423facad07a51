//! `palisadectl explain FROM TO [PORT]`: is a connection allowed, and why.
//!
//! Exit status: 0 allowed, 1 denied (or allowed only partly: some Service backends, some
//! ports), 2 the question could not be answered.

use std::path::{Path, PathBuf};

use palisade_agent::api::Request;
use palisade_policy::explain::{Explanation, Verdict, render};

use super::report::{Format, ask, fail, read_dir};

#[derive(clap::Args)]
pub struct Args {
    /// The source: NAMESPACE/POD or an IP address.
    from: String,
    /// The destination: NAMESPACE/POD, an IP address, or svc:NAMESPACE/NAME[:PORT] (a
    /// Service, explained per backend pod and target port).
    to: String,
    /// PORT[/PROTOCOL] (80, 53/UDP) or ICMP; without it, every protocol and port.
    port: Option<String>,
    /// Answer from a directory of manifests (Namespaces, Pods, Services, NetworkPolicies)
    /// instead of the running agent.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// NetworkPolicy manifests to answer as if they were applied (added, or replacing the
    /// policy of the same namespace and name).
    #[arg(long, value_name = "FILE")]
    what_if: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
}

pub fn run(socket: &Path, a: Args) -> i32 {
    match answer(socket, &a) {
        Ok(e) => {
            match a.output {
                Format::Text => print!("{}", render(&e)),
                Format::Json => match serde_json::to_string_pretty(&e) {
                    Ok(j) => println!("{j}"),
                    Err(err) => return fail(&format!("encoding the answer: {err}")),
                },
            }
            match e.verdict {
                Verdict::Allowed => 0,
                Verdict::Denied | Verdict::Partly => 1,
            }
        }
        Err(msg) => fail(&msg),
    }
}

fn answer(socket: &Path, a: &Args) -> Result<Explanation, String> {
    let what_if = match &a.what_if {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("reading --what-if {}: {e}", f.display()))?,
        ),
        None => None,
    };
    match &a.manifests {
        Some(dir) => {
            read_dir(dir)?.explain(None, &a.from, &a.to, a.port.as_deref(), what_if.as_deref())
        }
        None => {
            if let Some(w) = &what_if
                && w.len() > palisade_node_api::socket::MAX_REQUEST_BYTES / 2
            {
                return Err(format!(
                    "--what-if file is {} bytes; the agent reads requests up to {} bytes: \
                     answer offline with --manifests instead",
                    w.len(),
                    palisade_node_api::socket::MAX_REQUEST_BYTES
                ));
            }
            ask(
                socket,
                &Request::Explain {
                    from: a.from.clone(),
                    to: a.to.clone(),
                    port: a.port.clone(),
                    what_if,
                },
            )
        }
    }
}
