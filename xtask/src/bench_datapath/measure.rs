//! The measurements: servers and clients in the pod namespaces pinned to the bench CPU, and
//! RR, CRR, iperf3 stream and sockperf ping-pong, one `Sample` per configuration.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use palisade_tests::netns::run as cmd_output;

use super::{CPU, CRR_PORT, PP_PORT, RR_PORT, STREAM_PORT, Sample, Topo};

/// A server (iperf3 or sockperf) in the server pod, pinned to the bench CPU, killed on drop.
pub(super) struct Daemon {
    what: &'static str,
    child: Child,
}

impl Daemon {
    /// Starts `args` under `taskset` in the server namespace and waits until something listens
    /// on TCP `port` there.
    pub(super) fn start(topo: &Topo, what: &'static str, args: &[&str], port: u16) -> Result<Self> {
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

pub(super) fn measure(topo: &Topo, dur: Duration) -> Result<Sample> {
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
