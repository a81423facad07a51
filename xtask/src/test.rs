//! Test tiers.
//!
//! - tier 0: `cargo test` on the default members: no root, no BPF toolchain.
//! - tier 1 and 2: the `palisade-tests` crate (root, bpffs, network namespaces). Each test
//!   prints why it skips; with `CI=true` a missing privilege fails the run instead.

use std::process::Command;

use anyhow::Result;

use crate::build::{self, BuildArgs, root};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Only tier 0 (no root, no BPF toolchain needed).
    #[arg(long)]
    pub tier0: bool,
    /// Extra arguments for the privileged test binary (e.g. a test name filter).
    #[arg(last = true)]
    pub filter: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let root = root();
    println!("== tier 0: cargo test (workspace default members)");
    build::run(Command::new("cargo").current_dir(&root).args([
        "test",
        "--workspace",
        "--exclude",
        "palisade-tests",
    ]))?;
    if args.tier0 {
        return Ok(());
    }
    println!("== building eBPF object and release binaries");
    let art = build::build_all(&BuildArgs::default())?;
    println!("== tiers 1-2: privileged tests (palisade-tests)");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--release", "-p", "palisade-tests", "--"])
        .args(&args.filter)
        .env("PALISADE_BIN_DIR", &art.bin_dir)
        .env("PALISADE_BPF_OBJECT", &art.bpf_object);
    build::run(&mut cmd)
}
