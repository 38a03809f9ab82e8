//! The reports as `train`, `eval` and `merge` leave them: the files, and the table on stdout.

use anyhow::Result;
use cactus::eval::plot::accuracy_svg;
use cactus::eval::Report;
use cactus::io::write_atomic;
use std::path::Path;

/// `report.json`, `.csv`, `.md` and the plot `report.svg`, each written atomically.
pub fn write_reports(report: &Report, dir: &Path) -> Result<()> {
    report.write(dir)?;
    write_atomic(&dir.join("report.svg"), accuracy_svg(report).as_bytes())?;
    Ok(())
}

/// The report's table, then where its files are.
pub fn print_table(report: &Report, dir: &Path) {
    println!("{}", report.to_table().trim_end());
    println!("reports in {}", dir.display());
}
