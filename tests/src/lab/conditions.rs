//! What privileged lab tests share around the lab itself: starting one that must enforce,
//! and waiting on what its agents report (tests wait on conditions, never on fixed sleeps).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Lab, LabConfig, LabError};

/// How long [`Lab::wait_status`] waits for a status condition.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Lab::wait_flow`] waits for a flow to be reported.
const FLOW_TIMEOUT: Duration = Duration::from_secs(10);

impl Lab {
    /// The lab for privileged test `test`: `None` when the test is skipped for lack of
    /// privileges (see [`crate::require_privileges`]), an error when the lab starts but does
    /// not enforce (no agent or no eBPF object: build with `cargo xtask build`).
    pub fn start_enforcing(test: &str, config: LabConfig) -> Result<Option<Lab>, LabError> {
        if !crate::require_privileges(test) {
            return Ok(None);
        }
        let lab = Lab::start(config)?;
        if !lab.enforcing() {
            return Err(LabError::AgentUnavailable {
                reason: format!(
                    "{test}: the lab is not enforcing ({}): build with `cargo xtask build`",
                    lab.mode()
                ),
            });
        }
        Ok(Some(lab))
    }

    /// Polls `palisadectl status` of every node (joined by newlines) until `cond` holds for
    /// it; each call must answer. Returns the status that satisfied it.
    pub fn wait_status(&self, what: &str, cond: impl Fn(&str) -> bool) -> Result<String, LabError> {
        let deadline = Instant::now() + STATUS_TIMEOUT;
        loop {
            let status = self.agent_status()?.join("\n");
            if cond(&status) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout {
                    what: format!("waiting for {what}; status:\n{status}"),
                    after: STATUS_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `palisadectl flows -o json ARGS` of node 0, polled until `want` holds for some flow
    /// (the agent names events as they come). Returns that flow's `flow` object.
    pub fn wait_flow(
        &self,
        args: &[&str],
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Result<Value, LabError> {
        let agent = self.agent(0).ok_or_else(|| LabError::AgentUnavailable {
            reason: "the lab runs no agent on node 0".into(),
        })?;
        let start = Instant::now();
        loop {
            let flows = agent.flows(args)?;
            if let Some(f) = flows.iter().find(|f| want(&f["flow"])) {
                return Ok(f["flow"].clone());
            }
            if start.elapsed() > FLOW_TIMEOUT {
                return Err(LabError::Timeout {
                    what: format!(
                        "no flow {what} in `palisadectl flows {}`:\n{}",
                        args.join(" "),
                        flows
                            .iter()
                            .map(Value::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                    after: FLOW_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
