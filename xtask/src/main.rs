//! `cargo xtask <command>`: the project's build, test, lab and benchmark entry points.
//!
//! Every command installs nothing by itself; `scripts/setup.sh` (called by README's commands
//! and by `.ci/run`) does the installing.

mod bench_cni;
mod bench_datapath;
mod bench_policy;
mod bench_prog;
mod build;
mod lab;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Palisade build, test, lab and benchmark commands"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object (target bpfel-unknown-none) into target/bpf/.
    BuildEbpf(build::EbpfArgs),
    /// Build everything: eBPF object and release binaries.
    Build(build::BuildArgs),
    /// Run the test tiers: 0 (no root), 1 (BPF_PROG_TEST_RUN), 2 (namespaces).
    Test(test::TestArgs),
    /// Benchmarks (root): `cargo xtask bench cni`.
    #[command(subcommand)]
    Bench(Bench),
    /// The upstream NetworkPolicy model (x, y, z × a, b, c) in network namespaces: apply
    /// manifests, print the reachability truth tables (root).
    Lab(lab::LabArgs),
    /// README's first command: the lab with no policy, a default deny, then an allow (root).
    Demo(lab::DemoArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// ADD/DEL latency (p50, p99) of palisade vs the reference ptp + host-local plugins,
    /// sequential and in parallel, in a throwaway node namespace.
    Cni(bench_cni::CniArgs),
    /// Policy change -> enforcement latency (p50, p99) at 10 / 1,000 / 10,000 rules in the lab;
    /// compile time and map memory for 10,000 pods and 1,000 policies (synthetic).
    Policy(bench_policy::PolicyBenchArgs),
    /// Per-packet cost pod to pod (TCP RR, CRR, stream): no filtering, an empty TC program,
    /// Palisade and iptables/ipset at 0 to 10,000 rules, interleaved.
    Datapath(bench_datapath::DatapathArgs),
    /// Per-packet cost of each datapath path (established per hook, new allowed flow,
    /// denied) in BPF_PROG_TEST_RUN, next to the empty TC program's.
    Prog(bench_prog::ProgArgs),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BuildEbpf(a) => build::build_ebpf(&a).map(|_| ()),
        Cmd::Build(a) => build::build_all(&a).map(|_| ()),
        Cmd::Test(a) => test::run(&a),
        Cmd::Bench(Bench::Cni(a)) => bench_cni::run(&a),
        Cmd::Bench(Bench::Policy(a)) => bench_policy::run(&a),
        Cmd::Bench(Bench::Datapath(a)) => bench_datapath::run(&a),
        Cmd::Bench(Bench::Prog(a)) => bench_prog::run(&a),
        Cmd::Lab(a) => lab::run_lab(&a),
        Cmd::Demo(a) => lab::run_demo(&a),
    }
}
