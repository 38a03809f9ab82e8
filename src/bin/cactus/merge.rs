//! `cactus merge`: the reports of `eval --shard K/N` runs, combined into one.

use crate::output::{print_table, write_reports};
use anyhow::{Context, Result};
use cactus::eval::Report;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MergeArgs {
    /// report.json files (or directories holding one) of the shards.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Directory for the merged report.json/.csv/.md/.svg.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let reports = args
        .reports
        .iter()
        .map(|p| {
            let file = if p.is_dir() {
                p.join("report.json")
            } else {
                p.clone()
            };
            let bytes = cactus::runtime::memory::read_file(&file)?;
            let report = serde_json::from_slice::<Report>(&bytes)
                .with_context(|| format!("{}: not a cactus report", file.display()))?;
            report
                .check()
                .with_context(|| format!("{}: not a report cactus eval writes", file.display()))?;
            Ok(report)
        })
        .collect::<Result<Vec<Report>>>()?;
    let merged = Report::merge(&reports)?;
    write_reports(&merged, &args.out)?;
    println!(
        "merged {} shards: {} test points of {}, ε = {}",
        reports.len(),
        merged.n,
        merged.dataset,
        merged.eps
    );
    print_table(&merged, &args.out);
    Ok(())
}
