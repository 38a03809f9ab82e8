//! Evaluation reports: `report.json`, `report.csv` and `report.md` (one row per compression
//! setting, accuracies as fractions), written atomically.

use crate::io::write_atomic;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// One evaluated setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Pruning method (`none`, `gul1`, `lul1`, ...).
    pub compression: String,
    /// Pruning ratio δ as requested (fraction of weights, or of units for structured methods).
    pub ratio: f64,
    /// Fraction of conv and linear weights that are zero after pruning (what a plot against
    /// sparsity shows; differs from `ratio` for structured methods).
    pub sparsity: f64,
    /// Weight format (`fp32`, `fp16`, `int8`, ...).
    pub format: String,
    /// The verifier behind `certified` (`ibp`).
    pub certifier: String,
    pub clean: f64,
    pub pgd: f64,
    pub certified: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub checkpoint: String,
    pub dataset: String,
    pub eps: f32,
    /// Test points evaluated.
    pub n: usize,
    /// Training batches on which compressed networks' batch-norm statistics were re-estimated
    /// (absent: they keep the full network's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_recalibration_batches: Option<usize>,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialise")
    }

    pub fn to_csv(&self) -> String {
        let mut s =
            String::from("compression,ratio,sparsity,format,certifier,clean,pgd,certified\n");
        for r in &self.rows {
            writeln!(
                s,
                "{},{},{:.4},{},{},{:.4},{:.4},{:.4}",
                r.compression,
                r.ratio,
                r.sparsity,
                r.format,
                r.certifier,
                r.clean,
                r.pgd,
                r.certified
            )
            .expect("writing to a String");
        }
        s
    }

    /// A Markdown table in percent, with the run's context above it.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# Evaluation of `{}`\n\n{} test points of {}, ε = {}; accuracies in %.\n\n",
            self.checkpoint, self.n, self.dataset, self.eps
        );
        if let Some(b) = self.bn_recalibration_batches {
            writeln!(
                s,
                "Compressed networks' batch-norm statistics re-estimated on {b} training batches.\n"
            )
            .expect("writing to a String");
        }
        s.push_str("| compression | ratio | format | certifier | clean | PGD | certified |\n");
        s.push_str("|---|---:|---|---|---:|---:|---:|\n");
        for r in &self.rows {
            writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                r.compression,
                r.ratio,
                r.format,
                r.certifier,
                100.0 * r.clean,
                100.0 * r.pgd,
                100.0 * r.certified
            )
            .expect("writing to a String");
        }
        s
    }

    /// A plain-text table for the terminal.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{:<12} {:>6} {:<6} {:<9} {:>8} {:>8} {:>10}\n",
            "compression", "ratio", "format", "certifier", "clean", "PGD", "certified"
        );
        for r in &self.rows {
            writeln!(
                s,
                "{:<12} {:>6} {:<6} {:<9} {:>7.2}% {:>7.2}% {:>9.2}%",
                r.compression,
                r.ratio,
                r.format,
                r.certifier,
                100.0 * r.clean,
                100.0 * r.pgd,
                100.0 * r.certified
            )
            .expect("writing to a String");
        }
        s
    }

    /// Write `report.json`, `report.csv` and `report.md` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        write_atomic(&dir.join("report.json"), self.to_json().as_bytes())?;
        write_atomic(&dir.join("report.csv"), self.to_csv().as_bytes())?;
        write_atomic(&dir.join("report.md"), self.to_markdown().as_bytes())
    }
}
