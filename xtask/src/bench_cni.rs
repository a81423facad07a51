//! `cargo xtask bench cni`: ADD and DEL latency of palisade against the reference `ptp` +
//! `host-local` plugins doing the same wiring (a veth per pod, a /32 host route, a default
//! route in the pod), sequentially and 20 in parallel.
//!
//! Everything runs inside a throwaway "node" network namespace (never the machine's own):
//! each plugin process joins it before exec, as if a runtime on that node had started it.
//! Latency is wall time from spawn to exit of the plugin process, as a runtime sees it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::build::{self, root};

#[derive(clap::Args)]
pub struct CniArgs {
    /// Sequential ADD/DEL pairs per plugin.
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// Concurrent ADDs (then DELs) per parallel round.
    #[arg(long, default_value_t = 20)]
    pub parallel: usize,
    /// Parallel rounds per plugin.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Directory of the reference plugins (ptp, host-local).
    #[arg(long, default_value = "/usr/lib/cni")]
    pub reference_dir: PathBuf,
}

/// A named network namespace, deleted on drop.
struct Ns {
    name: String,
    path: PathBuf,
    file: File,
}

impl Ns {
    fn new(name: String) -> Result<Ns> {
        build::run(Command::new("ip").args(["netns", "add", &name]))?;
        let path = Path::new("/run/netns").join(&name);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        build::run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        Ok(Ns { name, path, file })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("warning: could not delete netns {}", self.name);
        }
    }
}

struct Plugin {
    label: &'static str,
    binary: PathBuf,
    cni_path: String,
    config: Vec<u8>,
}

impl Plugin {
    fn spawn(&self, node: &Ns, command: &str, cid: &str, pod: &Ns) -> Result<Child> {
        let mut cmd = Command::new(&self.binary);
        let fd = node.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe and only touches an fd the parent keeps open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", &pod.path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(&self.config)
            .context("writing config")?;
        Ok(child)
    }
}

fn finish(child: Child, what: &str) -> Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Times one call: spawn to exit.
fn timed(p: &Plugin, node: &Ns, command: &str, cid: &str, pod: &Ns) -> Result<Duration> {
    let t = Instant::now();
    let child = p.spawn(node, command, cid, pod)?;
    finish(child, &format!("{} {command} {cid}", p.label))?;
    Ok(t.elapsed())
}

/// Spawns all calls at once; each call's latency is its own spawn-to-exit time.
fn timed_parallel(
    p: &Plugin,
    node: &Ns,
    command: &str,
    cids: &[String],
    pods: &[Ns],
) -> Result<Vec<Duration>> {
    let mut running = Vec::new();
    for (cid, pod) in cids.iter().zip(pods) {
        running.push((Instant::now(), p.spawn(node, command, cid, pod)?, cid));
    }
    // Reap in completion order so each latency ends when its process does.
    let mut out = Vec::new();
    let mut pending: Vec<_> = running.into_iter().map(Some).collect();
    while out.len() < pending.len() {
        let mut progressed = false;
        for slot in pending.iter_mut() {
            let done = match slot {
                Some((_, child, _)) => child.try_wait()?.is_some(),
                None => false,
            };
            if done {
                let (start, child, cid) = slot.take().context("slot")?;
                let lat = start.elapsed();
                finish(child, &format!("{} {command} {cid}", p.label))?;
                out.push(lat);
                progressed = true;
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(out)
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    let i = (v.len() * p / 100).min(v.len().saturating_sub(1));
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

struct Row {
    plugin: &'static str,
    mode: String,
    op: &'static str,
    samples: Vec<Duration>,
}

pub fn run(args: &CniArgs) -> Result<()> {
    ensure!(
        nix_is_root(),
        "bench cni needs root (network namespaces, veths)"
    );
    let root = root();
    println!("== building palisade (release)");
    build::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "palisade-cni",
        "--bin",
        "palisade",
    ]))?;
    let palisade_bin = root.join("target/release/palisade");
    for p in ["ptp", "host-local"] {
        ensure!(
            args.reference_dir.join(p).exists(),
            "{} missing: run scripts/setup.sh",
            args.reference_dir.join(p).display()
        );
    }

    let tag = std::process::id() % 100_000;
    let node = Ns::new(format!("pltbn{tag}"))?;
    let n_pods = args.parallel.max(1);
    let pods: Vec<Ns> = (0..n_pods)
        .map(|i| Ns::new(format!("pltbp{tag}x{i}")))
        .collect::<Result<_>>()?;
    let state = std::env::temp_dir().join(format!("pltb-state-{tag}"));
    std::fs::create_dir_all(&state)?;

    let palisade = Plugin {
        label: "palisade",
        binary: palisade_bin.clone(),
        cni_path: palisade_bin
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        config: serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "palisade",
            "podCIDRs": ["10.250.0.0/16"], "stateDir": state.join("palisade"), "mtu": 1500,
        }))?,
    };
    let palisade_dual = Plugin {
        label: "palisade (dual stack)",
        binary: palisade_bin.clone(),
        cni_path: palisade.cni_path.clone(),
        config: serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "palisade",
            "podCIDRs": ["10.252.0.0/16", "fd00:be:c::/64"], "stateDir": state.join("palisade-dual"), "mtu": 1500,
        }))?,
    };
    let reference = Plugin {
        label: "ptp + host-local",
        binary: args.reference_dir.join("ptp"),
        cni_path: args.reference_dir.display().to_string(),
        config: serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "ptp", "ipMasq": false, "mtu": 1500,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.251.0.0/16" }]], "dataDir": state.join("host-local") },
        }))?,
    };

    let mut rows = Vec::new();
    for p in [&palisade, &reference, &palisade_dual] {
        println!("== {}: {} sequential ADD/DEL", p.label, args.iterations);
        // Warm-up (page cache, first-use sysctls) outside the samples.
        timed(p, &node, "ADD", "warmup", &pods[0])?;
        timed(p, &node, "DEL", "warmup", &pods[0])?;
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for i in 0..args.iterations {
            let cid = format!("seq{i}");
            add.push(timed(p, &node, "ADD", &cid, &pods[0])?);
            del.push(timed(p, &node, "DEL", &cid, &pods[0])?);
        }
        rows.push(Row {
            plugin: p.label,
            mode: "sequential".into(),
            op: "ADD",
            samples: add,
        });
        rows.push(Row {
            plugin: p.label,
            mode: "sequential".into(),
            op: "DEL",
            samples: del,
        });

        println!(
            "== {}: {} rounds of {} parallel ADDs then DELs",
            p.label, args.rounds, n_pods
        );
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for r in 0..args.rounds {
            let cids: Vec<String> = (0..n_pods).map(|i| format!("par{r}x{i}")).collect();
            add.extend(timed_parallel(p, &node, "ADD", &cids, &pods)?);
            del.extend(timed_parallel(p, &node, "DEL", &cids, &pods)?);
        }
        rows.push(Row {
            plugin: p.label,
            mode: format!("{n_pods} parallel"),
            op: "ADD",
            samples: add,
        });
        rows.push(Row {
            plugin: p.label,
            mode: format!("{n_pods} parallel"),
            op: "DEL",
            samples: del,
        });
    }
    if let Err(e) = std::fs::remove_dir_all(&state) {
        eprintln!("warning: removing {}: {e}", state.display());
    }

    println!();
    println!(
        "{:<24} {:<12} {:<4} {:>6} {:>9} {:>9}",
        "plugin", "mode", "op", "n", "p50 ms", "p99 ms"
    );
    let mut p50 = std::collections::HashMap::new();
    for r in &mut rows {
        let n = r.samples.len();
        let a = pct(&mut r.samples, 50);
        let b = pct(&mut r.samples, 99);
        p50.insert((r.plugin, r.mode.clone(), r.op), a);
        println!(
            "{:<24} {:<12} {:<4} {:>6} {:>9} {:>9}",
            r.plugin,
            r.mode,
            r.op,
            n,
            ms(a),
            ms(b)
        );
    }
    let ours = p50[&("palisade", "sequential".to_string(), "ADD")];
    let theirs = p50[&("ptp + host-local", "sequential".to_string(), "ADD")];
    println!();
    println!(
        "goal: palisade p50 ADD <= reference p50 ADD (sequential): {} ms vs {} ms -> {}",
        ms(ours),
        ms(theirs),
        if ours <= theirs { "met" } else { "NOT met" }
    );
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
