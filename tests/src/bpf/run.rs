//! Running crafted frames through the loaded programs with `BPF_PROG_TEST_RUN`: the TC action
//! and the one reason counted, the mark left, the mean time per run, and the programs' sizes.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use palisade_common::{maps::PROG_PASS, verdict::Reason};

use super::{Datapath, Outcome, Prog};

impl Datapath {
    /// The packets counted in `dir` so far, per reason (in `Reason::ALL` order).
    pub fn packet_counts(&self, dir: u8) -> Result<Vec<u64>> {
        Reason::ALL
            .iter()
            .map(|r| self.counter(dir, *r).map(|c| c.packets))
            .collect()
    }

    /// Runs `frame` through `prog` once: the returned TC action, and the one reason whose
    /// counter moved (an error if none or several did).
    pub fn run(&self, prog: Prog, frame: &[u8]) -> Result<Outcome> {
        self.counted(prog, || self.run_raw(prog, frame))
    }

    /// The action `run_once` returns and the one reason whose counter it moved.
    fn counted(&self, prog: Prog, run_once: impl FnOnce() -> Result<u32>) -> Result<Outcome> {
        let before = self.packet_counts(prog.dir())?;
        let action = run_once()?;
        let after = self.packet_counts(prog.dir())?;
        let moved: Vec<Reason> = Reason::ALL
            .iter()
            .zip(before.iter().zip(after.iter()))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, _)| *r)
            .collect();
        match moved.as_slice() {
            [reason] => Ok(Outcome {
                action,
                reason: *reason,
            }),
            _ => bail!(
                "{} counted {:?} for one frame (action {action})",
                prog.name(),
                moved.iter().map(|r| r.name()).collect::<Vec<_>>()
            ),
        }
    }

    fn classifier(&self, name: &str) -> Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?)
    }

    /// Runs `frame` through `prog` once and returns the TC action only.
    pub fn run_raw(&self, prog: Prog, frame: &[u8]) -> Result<u32> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let res = self
            .classifier(prog.name())?
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.name()))?;
        Ok(res.return_value)
    }

    /// Runs `frame` through `prog` once on an skb with `mark` and `ingress_ifindex` set (the
    /// kernel copies both from the test run's `__sk_buff` context): the TC action and the
    /// mark the program left.
    pub fn run_with_mark(
        &self,
        prog: Prog,
        frame: &[u8],
        mark: u32,
        ingress_ifindex: u32,
    ) -> Result<(u32, u32)> {
        let mut out = vec![0u8; frame.len() + 256];
        // `struct __sk_buff` up to and including `ifindex`: mark at byte 8,
        // ingress_ifindex at 36; every other field zero, as the kernel requires.
        let mut ctx = [0u8; 44];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        // The kernel copies the whole `__sk_buff` back (ENOSPC if the buffer is smaller).
        let mut ctx_out = [0u8; 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        };
        let res = self
            .classifier(prog.name())?
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", prog.name()))?;
        let out_mark = u32::from_ne_bytes([ctx_out[8], ctx_out[9], ctx_out[10], ctx_out[11]]);
        Ok((res.return_value, out_mark))
    }

    /// Runs `frame` through `prog` `repeat` times in the kernel and returns the mean time
    /// of one run, as `BPF_PROG_TEST_RUN` measures it.
    pub fn time_per_run(&self, prog: Prog, frame: &[u8], repeat: u32) -> Result<Duration> {
        self.time_named(prog.name(), frame, repeat)
    }

    /// [`Self::time_per_run`] of the object's empty `pass` program (returns `TC_ACT_OK`,
    /// counts nothing): the fixed cost of a TC program, for `cargo xtask bench prog`.
    pub fn pass_time_per_run(&self, frame: &[u8], repeat: u32) -> Result<Duration> {
        self.time_named(PROG_PASS, frame, repeat)
    }

    fn time_named(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Duration> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let res = self
            .classifier(name)?
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?;
        Ok(res.duration)
    }

    /// (verified instructions, translated bytes) of a loaded program, as the kernel reports.
    pub fn program_size(&self, prog: Prog) -> Result<(Option<u32>, Option<u32>)> {
        let info = self.classifier(prog.name())?.info()?;
        Ok((info.verified_instruction_count(), info.size_translated()))
    }
}
