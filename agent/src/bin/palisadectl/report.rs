//! What `explain` and `policy lint` share: the output format, where the answer comes from
//! (the running agent, or a manifest directory), and exit codes.

use std::path::Path;
use std::time::Duration;

use palisade_agent::api::{Request, call};
use palisade_agent::insight::Facts;
use serde::de::DeserializeOwned;

/// Exit code when the question could not be answered (bad input, agent unreachable).
pub const EXIT_ERROR: i32 = 2;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Plain words.
    Text,
    /// The answer's JSON (the same fields as the agent's socket answer).
    Json,
}

/// A manifest directory, read as the agent's directory source reads it.
pub fn read_dir(dir: &Path) -> Result<Facts, String> {
    Facts::from_dir(dir).map_err(|e| {
        let mut msg = format!("reading manifests: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        msg
    })
}

/// Asks the agent and decodes its `report`.
pub fn ask<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, String> {
    let r = call(socket, req, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    if !r.ok {
        return Err(r.error.unwrap_or_else(|| "the agent refused".into()));
    }
    let report = r.report.ok_or_else(|| {
        "the agent sent no report (is it older than this palisadectl?)".to_string()
    })?;
    serde_json::from_value(report).map_err(|e| format!("decoding the agent's answer: {e}"))
}

/// Prints `msg` as palisadectl's error and returns the error exit code.
pub fn fail(msg: &str) -> i32 {
    eprintln!("palisadectl: {msg}");
    EXIT_ERROR
}
