//! The enforcers under test besides baseline: the NetworkPolicy YAML of the Palisade
//! configurations, iptables / ipset rules (`Firewall`) and the empty TC program (`EmptyTc`).

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
use palisade_agent::map_sizes::MapSizes;
use palisade_common::maps::PROG_PASS;
use palisade_tests::bpf::BpffsMount;
use palisade_tests::netns::run as cmd_output;

use super::Topo;

const SET: &str = "plt-bench";
const CHAIN: &str = "PLT-BENCH-FW";

/// Rules per NetworkPolicy of the Palisade configurations: a larger policy is not a valid
/// object (the API server refuses objects over 3 MiB; the agent's and the lab's manifest
/// limits follow it, `policy::manifest::limits`): 100,000 rules are ten policies selecting
/// x/a, each its own manifest, which NetworkPolicy unions into the same allowed set (up to
/// 10,000 rules it is one policy, as in every earlier run).
const RULES_PER_POLICY: usize = 10_000;

/// Manifest name of the `part`-th policy.
pub(super) fn policy_name(part: usize) -> String {
    if part == 0 {
        "bench".to_string()
    } else {
        format!("bench-{part}")
    }
}

/// x/a isolated for ingress: `rules` rules (one /32 from 198.18.0.0/15 and one UDP port each)
/// that never match, plus one allowing the client's address on every port, as policies of
/// at most [`RULES_PER_POLICY`] rules (named by [`policy_name`]).
pub(super) fn policy_yaml(rules: usize, client: IpAddr) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let mut y = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Ingress]\n  ingress:\n",
            policy_name(out.len())
        );
        let end = (i + RULES_PER_POLICY).min(rules);
        for i in i..end {
            let (cidr, port) = nonmatching(i);
            writeln!(
                y,
                "  - from: [{{ipBlock: {{cidr: {cidr}}}}}]\n    ports: [{{port: {port}, protocol: UDP}}]",
            )
            .expect("writing to a String");
        }
        i = end;
        if i >= rules {
            writeln!(y, "  - from: [{{ipBlock: {{cidr: {client}/32}}}}]")
                .expect("writing to a String");
            out.push(y);
            return out;
        }
        out.push(y);
    }
}

/// The i-th non-matching rule: its source `198.<hi>.<lo>/32` (in 198.18.0.0/15) and UDP port,
/// the same in the policy and in every firewall configuration.
fn nonmatching(i: usize) -> (String, u32) {
    let (hi, lo) = (18 + (i >> 16) as u32, (i & 0xffff) as u32);
    (
        format!("198.{hi}.{}.{}/32", lo >> 8, lo & 0xff),
        1000 + (i % 50_000) as u32,
    )
}

fn cmd_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("child stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {cmd:?}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// iptables / ipset rules in the node namespace.
pub(super) struct Firewall {
    node: String,
}

impl Firewall {
    pub(super) fn new(node: &str) -> Self {
        Firewall {
            node: node.to_string(),
        }
    }

    fn ipt(&self, tool: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.node, tool]);
        c
    }

    /// kube-router style: FORWARD jumps to a per-pod chain for traffic to the server; the
    /// chain holds the rules, the matching one last, then DROP.
    pub(super) fn install(
        &mut self,
        rules: usize,
        stateful: bool,
        ipset: bool,
        topo: &Topo,
    ) -> Result<()> {
        if ipset {
            let mut s = format!(
                "create {SET} hash:net,port family inet hashsize 1024 maxelem {}\n",
                (rules + 1).max(65536)
            );
            for i in 0..rules {
                let (cidr, port) = nonmatching(i);
                writeln!(s, "add {SET} {cidr},udp:{port}").expect("writing to a String");
            }
            cmd_stdin(self.ipt("ipset").arg("restore"), &s)?;
        }
        let mut t = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:{CHAIN} - [0:0]\n"
        );
        if stateful {
            t.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
        }
        writeln!(t, "-A FORWARD -d {}/32 -j {CHAIN}", topo.server_ip).expect("String");
        if ipset {
            // No `-p`: every packet to the server, the bench's TCP included, is looked up in
            // the set (source address, protocol and destination port), as kube-router's
            // per-pod rules look up their sets; the entries keep each rule's protocol.
            writeln!(t, "-A {CHAIN} -m set --match-set {SET} src,dst -j ACCEPT").expect("String");
        } else {
            for i in 0..rules {
                let (cidr, port) = nonmatching(i);
                writeln!(
                    t,
                    "-A {CHAIN} -s {cidr} -p udp -m udp --dport {port} -j ACCEPT"
                )
                .expect("String");
            }
        }
        writeln!(t, "-A {CHAIN} -s {}/32 -j ACCEPT", topo.client_ip).expect("String");
        writeln!(t, "-A {CHAIN} -j DROP\nCOMMIT").expect("String");
        cmd_stdin(&mut self.ipt("iptables-restore"), &t)
    }

    /// Removes the rules, the chain and the set, and the nf_tables table iptables-nft left
    /// behind (its base chains would stay hooked, costing every later configuration).
    pub(super) fn clean(&mut self) -> Result<()> {
        let tables = cmd_output(self.ipt("nft").args(["list", "tables"]))?;
        if tables.lines().any(|l| l.trim() == "table ip filter") {
            cmd_output(self.ipt("nft").args(["delete", "table", "ip", "filter"]))?;
        }
        let sets = cmd_output(self.ipt("ipset").args(["list", "-n"]))?;
        if sets.lines().any(|l| l.trim() == SET) {
            cmd_output(self.ipt("ipset").args(["destroy", SET]))?;
        }
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = self.clean() {
            eprintln!(
                "bench datapath: cleaning iptables/ipset in {}: {e:#}",
                self.node
            );
        }
    }
}

/// The `pass` classifier, attached with TCX while the empty-TC configuration runs.
pub(super) struct EmptyTc {
    ebpf: aya::Ebpf,
    links: Vec<aya::programs::tc::SchedClassifierLinkId>,
    _bpffs: BpffsMount,
}

impl EmptyTc {
    pub(super) fn load(object: &Path) -> Result<Self> {
        // The object's maps declare pinning: give them a private bpffs. Loaded the agent's
        // way (`palisade_agent::datapath::object`), but only `pass` is loaded and attached.
        let bpffs = BpffsMount::new()?;
        let loaded = palisade_agent::datapath::object::load(
            object,
            bpffs.path(),
            &MapSizes::default(),
            &[PROG_PASS],
        )
        .with_context(|| {
            format!(
                "loading {} and its `pass` program (rebuild: cargo xtask build-ebpf)",
                object.display()
            )
        })?;
        Ok(EmptyTc {
            ebpf: loaded.ebpf,
            links: Vec::new(),
            _bpffs: bpffs,
        })
    }

    pub(super) fn attach(&mut self, topo: &Topo) -> Result<()> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_PASS)
            .context("no `pass`")?
            .try_into()?;
        let veths = topo.veths.clone();
        // Interface names resolve in the caller's namespace: attach from a thread in the node.
        let ids = palisade_tests::lab::netns::in_netns(&topo.node, move || -> Result<Vec<_>> {
            let mut ids = Vec::new();
            for dev in &veths {
                for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                    ids.push(
                        prog.attach_with_options(
                            dev,
                            hook,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .with_context(|| format!("attaching `pass` to {dev} {hook:?}"))?,
                    );
                }
            }
            Ok(ids)
        })??;
        self.links = ids;
        Ok(())
    }

    pub(super) fn detach(&mut self) -> Result<()> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_PASS)
            .context("no `pass`")?
            .try_into()?;
        for id in self.links.drain(..) {
            prog.detach(id).context("detaching `pass`")?;
        }
        Ok(())
    }
}
