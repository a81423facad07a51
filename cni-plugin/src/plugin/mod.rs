//! The CNI commands and the kernel plumbing behind them (feature `plugin`).

pub mod cmd;
pub mod netlink;
pub mod netns;
pub mod sysctl;

use std::io::{Read, Write};

use crate::config::{self, CniEnv, Command};
use crate::error::Error;
use crate::version::{self, Version};

/// Largest network config read from stdin (a conflist entry with a `prevResult` is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Runs one plugin invocation from the process environment and stdin; prints the result or the
/// spec's error JSON to stdout and returns the exit code.
pub fn main() -> i32 {
    // A value that is not UTF-8 reads as U+FFFD here and then fails its variable's check by
    // name (it is never silently "missing").
    let get = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let mut stdin = Vec::new();
    let command = CniEnv::command(&get);
    // VERSION's stdin is optional (`{"cniVersion": ...}`); the other commands need it. A
    // network config is a few KiB: anything past MAX_CONFIG_BYTES is refused, not buffered.
    let read = std::io::stdin()
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut stdin)
        .and_then(|n| {
            if n as u64 > MAX_CONFIG_BYTES {
                Err(std::io::Error::other(format!(
                    "more than {MAX_CONFIG_BYTES} bytes of network config"
                )))
            } else {
                Ok(())
            }
        });
    let out_version = config::peek_version(&stdin)
        .as_deref()
        .and_then(Version::parse)
        .map(Version::as_str)
        .unwrap_or(version::LATEST);
    let outcome = read
        .map_err(|e| Error::io("reading", "stdin", e))
        .and(command)
        .and_then(|c| match c {
            Command::Version => Ok(Some(version::version_info(
                config::peek_version(&stdin).as_deref(),
            ))),
            c => cmd::dispatch(c, &get, &stdin),
        });
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            if writeln!(out, "{v}").is_err() {
                return 1;
            }
            0
        }
        Ok(None) => 0,
        Err(e) => {
            // stdout carries the spec's JSON; stderr a line for humans (kubelet logs).
            eprintln!("palisade: {e}");
            if writeln!(out, "{}", e.to_json(out_version)).is_err() {
                eprintln!("palisade: stdout closed, error JSON not written");
            }
            1
        }
    }
}
