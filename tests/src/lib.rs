//! Shared helpers for Palisade's privileged tests (tiers 1 and 2).
//!
//! Conventions:
//! - every privileged test's name starts with `privileged_` so filters select them;
//! - a test that lacks a privilege calls [`require_privileges`], which prints why it skips and
//!   the kernel version, and fails instead when `CI=true` (a skipped tier in CI is a failure);
//! - every namespace, link, pin and mount a test creates is removed by a guard's `Drop`, and a
//!   sweep of leftovers by name prefix runs at test start.

pub mod bpf;
pub mod bpf_fqdn;
pub mod rng;

pub mod lab;
pub mod netns;
pub mod packet;
pub mod unprivileged;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace, link and directory the tests create.
pub const TEST_PREFIX: &str = "plt";

/// Returns true when the test may run (root). Otherwise prints a loud skip line; under
/// `CI=true` it panics, so CI never passes by skipping.
pub fn require_privileges(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let msg = format!(
        "SKIP {test}: needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN); kernel {}",
        kernel.trim()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} -- CI=true, so a skip is a failure");
    }
    eprintln!("{msg}");
    false
}

/// A name unique to this process and call: `plt<tag><pid mod 10000>x<n>`. Short
/// enough for interface names (15 bytes) when `tag` has at most 3 characters.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 10_000;
    format!("{TEST_PREFIX}{tag}{pid}x{n}")
}

/// Directory of the binaries under test (`PALISADE_BIN_DIR`, set by `cargo xtask test`).
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("PALISADE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            root.join("target/release")
        }
    }
}

/// The eBPF object under test (`PALISADE_BPF_OBJECT`, set by `cargo xtask test`).
pub fn bpf_object() -> PathBuf {
    match std::env::var_os("PALISADE_BPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/palisade.bpf.o"),
    }
}
