//! The report: ratios to the baseline and their statistics, the table, the JSON (with the
//! machine, git HEAD and load average) and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use anyhow::Result;
use palisade_tests::netns::run as cmd_output;

use super::{Config, Sample};

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

pub(super) struct Report {
    rows: Vec<Row>,
    seconds: f64,
    reps: usize,
    /// Wall time of the interleaved sweep, s.
    pub(super) run_secs: f64,
    /// /proc/loadavg before and after the sweep (the machine may be shared).
    pub(super) load: [String; 2],
    /// The eBPF object the agent and the empty TC program were loaded from.
    pub(super) bpf_object: String,
    /// The node namespace's nf_tables tables before and after the sweep.
    pub(super) nft_tables: [Vec<String>; 2],
}

impl Report {
    pub(super) fn new(
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
            nft_tables: Default::default(),
        }
    }

    pub(super) fn table(&self) -> String {
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

    pub(super) fn json(&self, table: &str) -> Result<String> {
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
            "node_nft_tables_before": self.nft_tables[0],
            "node_nft_tables_after": self.nft_tables[1],
            "rows": self.rows,
            "table": table,
        }))?)
    }

    /// Ratio vs rule count, one panel per metric, one line per enforcer (palisade, iptables
    /// stateless/stateful, ipset), the empty TC program as a dashed reference.
    pub(super) fn svg(&self, rules: &[usize]) -> String {
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
