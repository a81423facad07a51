//! Building the eBPF object and the release binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(clap::Args, Default)]
pub struct EbpfArgs {}

#[derive(clap::Args, Default)]
pub struct BuildArgs {
    /// Build in debug mode instead of release.
    #[arg(long)]
    pub debug: bool,
}

/// Paths of what `build_all` produced.
pub struct Artifacts {
    pub bin_dir: PathBuf,
    pub bpf_object: PathBuf,
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds ebpf/ (its own workspace) and copies the object to target/bpf/palisade.bpf.o.
///
/// Uses nightly when installed, else stable with RUSTC_BOOTSTRAP=1 (both carry LLVM 22 and
/// accept `-Z build-std=core`; see ENVIRONMENT.md).
pub fn build_ebpf(_args: &EbpfArgs) -> Result<PathBuf> {
    let root = root();
    let ebpf = root.join("ebpf");
    let target_dir = root.join("target/ebpf");
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut cmd = Command::new("cargo");
    if has_nightly {
        cmd.arg("+nightly");
    } else {
        cmd.arg("+stable").env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.current_dir(&ebpf)
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // The parent workspace's RUSTFLAGS etc. must not leak into the BPF build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    run(&mut cmd)
        .context("building the eBPF object (is bpf-linker installed? run scripts/setup.sh)")?;
    let built = target_dir.join("bpfel-unknown-none/release/palisade");
    let out_dir = root.join("target/bpf");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = out_dir.join("palisade.bpf.o");
    std::fs::copy(&built, &out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    Ok(out)
}

/// Builds the eBPF object and the user-space binaries (palisade, palisade-agent, palisadectl).
pub fn build_all(args: &BuildArgs) -> Result<Artifacts> {
    let bpf_object = build_ebpf(&EbpfArgs::default())?;
    let root = root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root).args([
        "build",
        "--bins",
        "-p",
        "palisade-cni",
        "-p",
        "palisade-agent",
    ]);
    if !args.debug {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let bin_dir = root
        .join("target")
        .join(if args.debug { "debug" } else { "release" });
    Ok(Artifacts {
        bin_dir,
        bpf_object,
    })
}
