//! `cargo xtask bench datapath` (or `cargo bench -p netward --bench datapath -- [--repeat N]
//! [--sizes 1,1000,...] [--new-flows N]
//! [--baseline-object OLD.o]`): per-packet cost of the tc programs. Needs root.
use anyhow::{Context, Result};
use netward::cpustat::{steal_note, CpuTimes};
use netward::datapath::bench::{run, table, BenchOptions};

fn main() -> Result<()> {
    let mut opts = BenchOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--repeat" => opts.repeat = value()?.parse().context("--repeat")?,
            "--new-flows" => opts.new_flows = value()?.parse().context("--new-flows")?,
            "--sizes" => {
                opts.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse().context("--sizes"))
                    .collect::<Result<_>>()?
            }
            "--baseline-object" => opts.baseline_object = Some(value()?.into()),
            "--bench" => {} // passed by `cargo bench`
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let start = CpuTimes::now()?;
    let rows = run(&opts)?;
    print!("{}", table(&rows, opts.repeat));
    println!("{}", steal_note(&start));
    Ok(())
}
