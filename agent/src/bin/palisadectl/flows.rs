//! `palisadectl flows`: the agent's flows, like `hubble observe` (same option names where
//! Hubble has them). Filters are applied by the agent.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use palisade_agent::api::{Request, Response};
use palisade_agent::observe::QueryExt;
use palisade_node_api::flow::{Endpoint, Flow, FlowQuery, FlowRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One readable line per flow.
    Compact,
    /// One JSON object per line (Hubble's field names; docs/observability.md).
    Json,
    /// Aligned columns.
    Table,
}

#[derive(Args, Debug)]
pub struct FlowsArgs {
    /// Keep printing new flows as they come.
    #[arg(short, long)]
    follow: bool,
    /// The last N flows of the history (default 20; with --follow, none unless given).
    #[arg(long)]
    last: Option<usize>,
    /// Only flows since this long ago (`30s`, `5m`, `1h30m`) or this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// A pod at either end (NAMESPACE/NAME; repeatable: any of them).
    #[arg(long)]
    pod: Vec<String>,
    /// The source pod (NAMESPACE/NAME).
    #[arg(long)]
    from_pod: Vec<String>,
    /// The destination pod (NAMESPACE/NAME).
    #[arg(long)]
    to_pod: Vec<String>,
    /// Either end in this namespace.
    #[arg(long)]
    namespace: Vec<String>,
    /// Either end's address in this CIDR (or this address).
    #[arg(long)]
    ip: Vec<String>,
    /// Either end's port.
    #[arg(long)]
    port: Vec<u16>,
    /// TCP, UDP, SCTP, ICMP, ICMPv4 or ICMPv6.
    #[arg(long)]
    protocol: Vec<String>,
    /// FORWARDED, DROPPED or AUDIT.
    #[arg(long)]
    verdict: Vec<String>,
    /// A reason (`default_deny`, docs/datapath.md#reasons) or Hubble drop reason
    /// (`POLICY_DENIED`).
    #[arg(long)]
    reason: Vec<String>,
    /// Flows a policy allowed or denied (NAMESPACE/NAME).
    #[arg(long)]
    policy: Vec<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "compact")]
    output: Output,
}

/// `--since` as Unix nanoseconds.
fn since(s: &str) -> Result<i128> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_nanosecond());
    }
    let d: jiff::SignedDuration = s.parse().with_context(|| {
        format!("--since {s:?}: neither a duration (30s, 5m, 1h30m) nor an RFC 3339 time")
    })?;
    Ok(jiff::Timestamp::now().as_nanosecond() - d.as_nanos())
}

impl FlowsArgs {
    fn query(&self) -> Result<FlowQuery> {
        let q = FlowQuery {
            follow: self.follow,
            last: self.last,
            since_unix_ns: self.since.as_deref().map(since).transpose()?,
            pod: self.pod.clone(),
            from_pod: self.from_pod.clone(),
            to_pod: self.to_pod.clone(),
            namespace: self.namespace.clone(),
            ip: self.ip.clone(),
            port: self.port.clone(),
            protocol: self.protocol.clone(),
            verdict: self.verdict.clone(),
            reason: self.reason.clone(),
            policy: self.policy.clone(),
        };
        // Checked here too, so a typo fails before the agent is asked.
        if let Err(e) = q.validate() {
            bail!("{e}");
        }
        Ok(q)
    }
}

pub fn run(socket: &Path, args: &FlowsArgs) -> Result<()> {
    let q = args.query()?;
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    let mut line = serde_json::to_string(&Request::Flows { query: q })?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.output == Output::Table {
        writeln!(out, "{}", table_row(&TABLE_HEADER.map(String::from)))?;
    }
    let reader = BufReader::new(s);
    for l in reader.lines() {
        let l = l.context("reading from the agent")?;
        let r: Response = serde_json::from_str(&l).with_context(|| format!("agent said {l:?}"))?;
        if !r.ok {
            bail!("{}", r.error.unwrap_or_default());
        }
        if let Some(n) = r.lost_flows {
            eprintln!("palisadectl: {n} flows were not shown (this client read too slowly)");
            continue;
        }
        let Some(rec) = r.flow else {
            break;
        };
        let text = match args.output {
            Output::Json => serde_json::to_string(&rec)?,
            Output::Compact => compact(&rec),
            Output::Table => table_row(&table_cells(&rec)),
        };
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(out, "{text}").is_err() || (args.follow && out.flush().is_err()) {
            return Ok(());
        }
    }
    Ok(())
}

fn end(e: &Endpoint, addr: Option<&str>, port: Option<u16>) -> String {
    let who = if e.pod_name.is_empty() {
        addr.unwrap_or("?").to_string()
    } else {
        e.pod()
    };
    match port {
        Some(p) if who.contains(':') && e.pod_name.is_empty() => format!("[{who}]:{p}"),
        Some(p) => format!("{who}:{p}"),
        None => who,
    }
}

/// Who decided, in words: `allowed by x/allow-b spec.ingress[0] (from[0] ..., ports[0] ...)`.
fn decided_by(f: &Flow) -> String {
    let mut parts = Vec::new();
    for (word, list) in [
        ("allowed by", &f.ingress_allowed_by),
        ("allowed by", &f.egress_allowed_by),
        ("denied by", &f.ingress_denied_by),
        ("denied by", &f.egress_denied_by),
    ] {
        if list.is_empty() {
            continue;
        }
        let names: Vec<String> = list
            .iter()
            .map(|p| {
                let mut s = p.key();
                if p.audit {
                    s.push_str(" (audit)");
                }
                if let Some(r) = &p.rule {
                    s.push(' ');
                    s.push_str(&r.path);
                    let detail: Vec<&str> = [r.peer.as_deref(), r.port.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect();
                    if !detail.is_empty() {
                        s.push_str(&format!(" [{}]", detail.join("; ")));
                    }
                }
                s
            })
            .collect();
        let word = if f.verdict == "AUDIT" {
            "would be denied by"
        } else {
            word
        };
        // Denied by isolation (policies named without a rule), or by a tier's Deny rule.
        let isolating = if word.contains("denied") && list.iter().all(|p| p.rule.is_none()) {
            " (isolates the pod; no rule allows it)"
        } else {
            ""
        };
        parts.push(format!("{word} {}{isolating}", names.join(", ")));
    }
    parts.join("; ")
}

fn addrs(f: &Flow) -> (Option<&str>, Option<&str>) {
    match &f.ip {
        Some(ip) => (Some(ip.source.as_str()), Some(ip.destination.as_str())),
        None => (None, None),
    }
}

/// `TIME NODE: SRC -> DST VERDICT reason DIRECTION [decided by] (summary)`.
pub fn compact(r: &FlowRecord) -> String {
    let f = &r.flow;
    let (sp, dp, _) = f.l4_parts();
    let (sa, da) = addrs(f);
    let mut s = format!(
        "{} {}: {} -> {} {} {} {}",
        f.time,
        r.node_name,
        end(&f.source, sa, sp),
        end(&f.destination, da, dp),
        f.verdict,
        f.reason,
        f.traffic_direction
    );
    if let Some(svc) = &f.destination_service {
        let name = if svc.name.is_empty() {
            String::new()
        } else {
            format!("{}/{} ", svc.namespace, svc.name)
        };
        s.push_str(&format!(" via Service {name}{}", svc.address));
    }
    let by = decided_by(f);
    if !by.is_empty() {
        s.push_str(&format!(" {by}"));
    }
    s.push_str(&format!(" ({})", f.summary));
    s
}

const TABLE_HEADER: [&str; 8] = [
    "TIME",
    "SOURCE",
    "DESTINATION",
    "TYPE",
    "VERDICT",
    "REASON",
    "POLICY",
    "SUMMARY",
];

fn table_cells(r: &FlowRecord) -> [String; 8] {
    let f = &r.flow;
    let (sp, dp, proto) = f.l4_parts();
    let (sa, da) = addrs(f);
    let policies: Vec<String> = f.policies().map(|p| p.key()).collect();
    [
        f.time.clone(),
        end(&f.source, sa, sp),
        end(&f.destination, da, dp),
        format!("{proto} {}", f.traffic_direction.to_lowercase()),
        f.verdict.clone(),
        f.reason.clone(),
        if policies.is_empty() {
            "-".into()
        } else {
            policies.join(",")
        },
        f.summary.clone(),
    ]
}

fn table_row(c: &[String; 8]) -> String {
    format!(
        "{:<30} {:<28} {:<28} {:<12} {:<9} {:<16} {:<24} {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    )
}
