//! Running the real programs on a crafted frame with `BPF_PROG_TEST_RUN` (tests, benchmarks,
//! `netward` debugging). The packet goes through the live maps: conntrack entries it creates
//! stay, exactly as for a real packet.
use anyhow::{anyhow, Context, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};

use super::loader::{PROG_EGRESS, PROG_INGRESS};
use super::Datapath;
use crate::model::Direction;

/// tc verdict codes the programs return.
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const TC_ACT_SHOT: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The program let the packet continue (it never redirects or rewrites).
    pub pass: bool,
    pub return_value: u32,
    /// Average run time per repetition, in nanoseconds (kernel-measured).
    pub ns_per_run: u64,
}

/// Kernel statistics of one program (`kernel.bpf_stats_enabled` must be on for the run
/// figures to move; see [`Datapath::enable_run_stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_time_ns: u64,
    pub run_count: u64,
    pub jited_bytes: u32,
    pub verified_insns: Option<u32>,
}

impl Datapath {
    fn program_by_dir(&self, dir: Direction) -> Result<&SchedClassifier> {
        let name = match dir {
            Direction::Egress => PROG_EGRESS,
            Direction::Ingress => PROG_INGRESS,
        };
        Ok(self
            .bpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?)
    }

    /// Turn on the kernel's per-program run-time accounting while the returned fd lives.
    pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")
    }

    /// The kernel's statistics for the program enforcing `dir`.
    pub fn program_stats(&self, dir: Direction) -> Result<ProgramStats> {
        let info = self.program_by_dir(dir)?.info()?;
        Ok(ProgramStats {
            run_time_ns: info.run_time().as_nanos() as u64,
            run_count: info.run_count(),
            jited_bytes: info.size_jitted(),
            verified_insns: info.verified_instruction_count(),
        })
    }

    /// Run the program enforcing `dir` (the local pod's direction) on `frame` (an Ethernet
    /// frame), `repeat` times.
    pub fn test_run(&self, dir: Direction, frame: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        let prog = self.program_by_dir(dir)?;
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: repeat.max(1),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN")?;
        let pass = match r.return_value {
            TC_ACT_UNSPEC => true,
            TC_ACT_SHOT => false,
            other => return Err(anyhow!("unexpected tc verdict {other}")),
        };
        Ok(TestRunOutcome {
            pass,
            return_value: r.return_value,
            ns_per_run: r.duration.as_nanos() as u64,
        })
    }
}
