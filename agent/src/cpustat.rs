//! The machine's CPU time split as `/proc/stat` counts it, for the benchmarks to report how
//! much of a run the hypervisor gave to other guests ("steal"). On a virtual machine that
//! shares its host, a busy neighbour slows every figure of a run alike (here by up to 1.7x
//! for hours), and steal is the one trace of it a guest can read (not a complete one: shared
//! caches and memory bandwidth slow a guest without any steal).
use anyhow::{Context, Result};

/// Cumulative CPU time of all CPUs, in `USER_HZ` ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every state together (user, nice, system, idle, iowait, irq, softirq, steal).
    pub total: u64,
    /// Time this guest was ready to run but the hypervisor ran something else.
    pub steal: u64,
}

impl CpuTimes {
    /// The machine's counters now.
    pub fn now() -> Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        Self::parse(&stat).context("/proc/stat: no aggregate `cpu` line")
    }

    /// The aggregate `cpu` line of `/proc/stat` text. Guest time (the 9th and 10th fields) is
    /// already counted in user time, so it is left out of the total.
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let states = fields.get(..8)?;
        Some(CpuTimes {
            total: states.iter().sum(),
            steal: states[7],
        })
    }

    /// Steal since `earlier`, as a share of all CPU time since then (0 when none passed).
    pub fn steal_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }
}

/// A sentence for a benchmark's output: the steal share of the run since `start`.
pub fn steal_note(start: &CpuTimes) -> String {
    match CpuTimes::now() {
        Ok(now) => format!(
            "host steal during the run: {:.1} % of CPU time (the hypervisor ran other guests instead; a busy host can also slow a run without it)",
            100.0 * now.steal_since(start)
        ),
        Err(e) => format!("host steal during the run: unknown ({e:#})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregate_line() {
        let stat = "cpu  1133213 0 322712 728300 9511 0 56565 7250 0 0\n\
                    cpu0 536888 0 124624 457950 2624 0 2884 3893 0 0\n";
        let t = CpuTimes::parse(stat).unwrap();
        assert_eq!(t.steal, 7250);
        assert_eq!(t.total, 1133213 + 322712 + 728300 + 9511 + 56565 + 7250);
        let later = CpuTimes {
            total: t.total + 1000,
            steal: t.steal + 25,
        };
        assert_eq!(later.steal_since(&t), 0.025);
        assert_eq!(t.steal_since(&t), 0.0);
    }

    #[test]
    fn refuses_what_is_not_proc_stat() {
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn reads_this_machine() {
        let t = CpuTimes::now().unwrap();
        assert!(t.total > 0 && t.steal <= t.total);
    }
}
