//! One `palisade-agent` per lab node, run inside the node's network namespace with a private
//! bpffs mount, and `palisadectl` to wait until the manifests directory is enforced.
//!
//! The agent enters only the node's network namespace (`setns`), not a mount namespace of its
//! own as under `ip netns exec`: a bpffs it mounts again after losing its own (tests of lost
//! node state) must be the one the test and the next agent on the node see.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::LabError;

/// Paths of the agent and palisadectl binaries.
#[derive(Clone, Debug)]
pub struct AgentBins {
    pub agent: PathBuf,
    pub ctl: PathBuf,
    pub bpf_object: PathBuf,
}

impl AgentBins {
    pub fn in_dir(bin_dir: &Path, bpf_object: PathBuf) -> Self {
        AgentBins {
            agent: bin_dir.join("palisade-agent"),
            ctl: bin_dir.join("palisadectl"),
            bpf_object,
        }
    }

    /// Why the agent cannot run, or `None` when it looks usable: both binaries exist, the
    /// agent's `--help` knows the flags the lab passes, and the eBPF object exists.
    pub fn unusable_reason(&self) -> Option<String> {
        for b in [&self.agent, &self.ctl] {
            if !b.exists() {
                return Some(format!("{} not found", b.display()));
            }
        }
        let help = Command::new(&self.agent)
            .arg("--help")
            .stdin(Stdio::null())
            .output();
        match help {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                for flag in [
                    "--source",
                    "--bpffs",
                    "--bpf-object",
                    "--socket",
                    "--node-name",
                    "--cluster-cidr",
                    "--service-cidr",
                ] {
                    if !text.contains(flag) {
                        return Some(format!(
                            "{} --help does not mention {flag} (not implemented yet?)",
                            self.agent.display()
                        ));
                    }
                }
            }
            Ok(o) => {
                return Some(format!(
                    "{} --help failed: {}",
                    self.agent.display(),
                    o.status
                ));
            }
            Err(e) => return Some(format!("{} --help: {e}", self.agent.display())),
        }
        if !self.bpf_object.exists() {
            return Some(format!(
                "eBPF object {} not found",
                self.bpf_object.display()
            ));
        }
        None
    }
}

/// A running agent; [`Agent::stop`] (or drop) ends it and unmounts its bpffs.
pub struct Agent {
    node: String,
    child: Option<Child>,
    socket: PathBuf,
    bpffs: PathBuf,
    mounted: bool,
    log: PathBuf,
    ctl: PathBuf,
    /// How to start it again (`respawn`).
    spawn: SpawnArgs,
}

#[derive(Clone, Debug)]
struct SpawnArgs {
    bins: AgentBins,
    node_netns: String,
    manifests: PathBuf,
    state_dir: PathBuf,
    /// `--cluster-cidr` / `--service-cidr` arguments, then the lab's and the test's extra
    /// agent arguments (`LabConfig::agent_args`, [`Agent::respawn_with`]).
    network_args: Vec<String>,
}

/// How long the agent may take to open its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Agent {
    /// Mounts a private bpffs under `node_dir/bpffs`, starts the agent in `node_netns` (with
    /// `network_args`: `--cluster-cidr`, `--service-cidr`) and waits (bounded) until its
    /// socket accepts connections.
    pub fn start(
        bins: &AgentBins,
        node_netns: &str,
        node_name: &str,
        node_dir: &Path,
        manifests: &Path,
        state_dir: &Path,
        network_args: &[String],
    ) -> Result<Agent, LabError> {
        let bpffs = node_dir.join("bpffs");
        std::fs::create_dir_all(&bpffs).map_err(|source| LabError::Io {
            op: "creating bpffs mount point",
            path: bpffs.clone(),
            source,
        })?;
        mount(
            Some("bpf"),
            &bpffs,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| LabError::Mount {
            path: bpffs.clone(),
            source,
        })?;
        let socket = node_dir.join("agent.sock");
        let log = node_dir.join("agent.log");
        let mut agent = Agent {
            node: node_name.to_string(),
            child: None,
            socket,
            bpffs,
            mounted: true,
            log,
            ctl: bins.ctl.clone(),
            spawn: SpawnArgs {
                bins: bins.clone(),
                node_netns: node_netns.to_string(),
                manifests: manifests.to_path_buf(),
                state_dir: state_dir.to_path_buf(),
                network_args: network_args.to_vec(),
            },
        };
        agent.spawn_process(false)?;
        Ok(agent)
    }

    /// Starts the agent process (appending to its log when `append`) and waits for its socket.
    fn spawn_process(&mut self, append: bool) -> Result<(), LabError> {
        let SpawnArgs {
            bins,
            node_netns,
            manifests,
            state_dir,
            network_args,
        } = self.spawn.clone();
        let log = self.log.clone();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&log)
            .map_err(|source| LabError::Io {
                op: "opening agent log",
                path: log.clone(),
                source,
            })?;
        let log_err = log_file.try_clone().map_err(|source| LabError::Io {
            op: "duplicating agent log handle",
            path: log.clone(),
            source,
        })?;
        let netns_path = super::netns::netns_path(&node_netns);
        let netns = std::fs::File::open(&netns_path).map_err(|source| LabError::Io {
            op: "opening the node's network namespace",
            path: netns_path.clone(),
            source,
        })?;
        let mut cmd = Command::new(&bins.agent);
        cmd.arg("--source")
            .arg(format!("dir:{}", manifests.display()))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--bpf-object")
            .arg(&bins.bpf_object)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--node-name")
            .arg(&self.node)
            .args(&network_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let netns_fd = std::os::fd::AsRawFd::as_raw_fd(&netns);
        // SAFETY: prctl and setns are async-signal-safe system calls, on a descriptor opened
        // before the fork. If the lab process dies without running its guards (SIGKILL), the
        // kernel kills the agent too; the sweep removes the rest.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            cmd: format!("{cmd:?}"),
            source,
        })?;
        drop(netns);
        self.child = Some(child);
        self.wait_socket()
    }

    /// `kill -9` the agent: no cleanup of any kind runs. Its pinned maps and links stay in the
    /// node's bpffs (which stays mounted), as after a crash.
    pub fn kill_hard(&mut self) -> Result<(), LabError> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(|source| LabError::Spawn {
                cmd: format!("kill -9 agent of {}", self.node),
                source,
            })?;
            child.wait().map_err(|source| LabError::Spawn {
                cmd: format!("wait agent of {}", self.node),
                source,
            })?;
        }
        Ok(())
    }

    /// Starts a new agent process on the same node, bpffs, state and socket (after
    /// `kill_hard`), and waits until it accepts connections.
    pub fn respawn(&mut self) -> Result<(), LabError> {
        self.kill_hard()?;
        if self.socket.exists() {
            // A killed agent leaves its socket file; the new one replaces it, but the wait
            // below must not connect to a stale file: remove it first.
            std::fs::remove_file(&self.socket).map_err(|source| LabError::Io {
                op: "removing stale agent socket",
                path: self.socket.clone(),
                source,
            })?;
        }
        self.spawn_process(true)
    }

    /// [`Agent::respawn`] with `args` added to the agent's arguments from now on: an upgrade
    /// or a changed flag (a later `--map-size` of the same map wins).
    pub fn respawn_with(&mut self, args: &[&str]) -> Result<(), LabError> {
        self.spawn
            .network_args
            .extend(args.iter().map(|a| a.to_string()));
        self.respawn()
    }

    /// The agent's `--bpffs` directory.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The agent's `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.spawn.state_dir
    }

    /// `palisadectl status` as its exit status and JSON: (healthy, text). Unlike `status`,
    /// an unhealthy agent is not an error.
    pub fn health(&self) -> Result<(bool, String), LabError> {
        let out = Command::new(&self.ctl)
            .arg("--socket")
            .arg(&self.socket)
            .arg("status")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                cmd: format!("{} status", self.ctl.display()),
                source,
            })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// `palisadectl endpoints` (text table).
    pub fn endpoints(&self) -> Result<String, LabError> {
        self.ctl(&["endpoints"])
    }

    fn wait_socket(&mut self) -> Result<(), LabError> {
        let start = Instant::now();
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(LabError::Agent {
                    node: self.node.clone(),
                    what: format!("exited before opening its socket ({status})"),
                    log: self.log_tail(),
                });
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(LabError::Agent {
                    node: self.node.clone(),
                    what: format!(
                        "socket {} not accepting connections after {READY_TIMEOUT:?}",
                        self.socket.display()
                    ),
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the agent's log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Runs `palisadectl ARGS` against this agent and returns its output whatever the exit
    /// status (`explain` exits 1 for "denied": an answer, not a failure).
    pub fn palisadectl(&self, args: &[&str]) -> Result<std::process::Output, LabError> {
        Command::new(&self.ctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                cmd: format!("{} {args:?}", self.ctl.display()),
                source,
            })
    }

    fn ctl(&self, args: &[&str]) -> Result<String, LabError> {
        let out = self.palisadectl(args)?;
        if !out.status.success() {
            return Err(LabError::Agent {
                node: self.node.clone(),
                what: format!(
                    "palisadectl {} failed ({}): {}{}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                log: self.log_tail(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Blocks until the agent enforces the current contents of the manifests directory.
    pub fn wait_synced(&self, timeout: Duration) -> Result<(), LabError> {
        let secs = timeout.as_secs().max(1).to_string();
        self.ctl(&["wait", "--timeout", &secs]).map(|_| ())
    }

    /// `palisadectl status` (JSON).
    pub fn status(&self) -> Result<String, LabError> {
        self.ctl(&["status"])
    }

    /// `palisadectl flows -o json ARGS`: one JSON object per flow.
    pub fn flows(&self, args: &[&str]) -> Result<Vec<serde_json::Value>, LabError> {
        let mut all = vec!["flows", "-o", "json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all)?;
        out.lines()
            .map(|l| {
                serde_json::from_str(l).map_err(|e| LabError::Agent {
                    node: self.node.clone(),
                    what: format!("palisadectl flows printed {l:?}: {e}"),
                    log: self.log_tail(),
                })
            })
            .collect()
    }

    /// Process id of the agent (`ip netns exec` execs it in place), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `palisadectl ARGS` (any command), its standard output.
    pub fn palisadectl_stdout(&self, args: &[&str]) -> Result<String, LabError> {
        self.ctl(args)
    }

    /// SIGTERM, a bounded wait, then SIGKILL; then unmounts the bpffs.
    pub fn stop(&mut self) -> Result<(), LabError> {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            if kill(pid, Signal::SIGTERM).is_ok() {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(5) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if let Ok(None) = child.try_wait() {
                child.kill().map_err(|source| LabError::Spawn {
                    cmd: format!("kill agent of {}", self.node),
                    source,
                })?;
            }
            child.wait().map_err(|source| LabError::Spawn {
                cmd: format!("wait agent of {}", self.node),
                source,
            })?;
        }
        if self.mounted {
            // Every bpffs stacked there: the lab's, and any the agent mounted after losing
            // it. Not mounted any more (a test unmounted it) is fine.
            for _ in 0..8 {
                match umount2(&self.bpffs, MntFlags::MNT_DETACH) {
                    Ok(()) => {}
                    Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
                    Err(source) => {
                        return Err(LabError::Mount {
                            path: self.bpffs.clone(),
                            source,
                        });
                    }
                }
            }
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("lab: stopping the agent of {}: {e}", self.node);
        }
    }
}

impl super::Lab {
    /// The agent of node `index`.
    pub fn agent(&self, index: usize) -> Option<&Agent> {
        self.agents.get(index)
    }

    /// The agent of node `index` (for crash and restart tests).
    pub fn agent_mut(&mut self, index: usize) -> Option<&mut Agent> {
        self.agents.get_mut(index)
    }

    /// The private bpffs of node `index`'s agent (its pinned maps are under `maps/`).
    pub fn agent_bpffs(&self, index: usize) -> Option<&Path> {
        self.agents.get(index).map(|a| a.bpffs.as_path())
    }
}
