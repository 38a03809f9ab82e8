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
    /// The verifier behind `certified` (`ibp`, `crown-ibp`, `crown`, `alpha-crown`, `bab`).
    pub certifier: String,
    pub clean: f64,
    pub pgd: f64,
    pub certified: f64,
    /// Seconds the certifier ran on this setting.
    #[serde(default)]
    pub seconds: f64,
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
    /// `K/N`: this report covers the K-th of N slices of the test points (`cactus merge`
    /// combines them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Certified means certified under f32 rounding (`cactus eval --sound`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sound: bool,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialise")
    }

    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "compression,ratio,sparsity,format,certifier,clean,pgd,certified,seconds\n",
        );
        for r in &self.rows {
            writeln!(
                s,
                "{},{},{:.4},{},{},{:.4},{:.4},{:.4},{:.2}",
                r.compression,
                r.ratio,
                r.sparsity,
                r.format,
                r.certifier,
                r.clean,
                r.pgd,
                r.certified,
                r.seconds
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
        if self.sound {
            s.push_str(
                "Certified under f32 rounding (bounds lowered by their rounding error).\n\n",
            );
        }
        s.push_str(
            "| compression | ratio | format | certifier | clean | PGD | certified | seconds |\n",
        );
        s.push_str("|---|---:|---|---|---:|---:|---:|---:|\n");
        for r in &self.rows {
            writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
                r.compression,
                r.ratio,
                r.format,
                r.certifier,
                100.0 * r.clean,
                100.0 * r.pgd,
                100.0 * r.certified,
                r.seconds
            )
            .expect("writing to a String");
        }
        s
    }

    /// A plain-text table for the terminal.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{:<12} {:>6} {:<6} {:<11} {:>8} {:>8} {:>10} {:>9}\n",
            "compression", "ratio", "format", "certifier", "clean", "PGD", "certified", "seconds"
        );
        for r in &self.rows {
            writeln!(
                s,
                "{:<12} {:>6} {:<6} {:<11} {:>7.2}% {:>7.2}% {:>9.2}% {:>9.1}",
                r.compression,
                r.ratio,
                r.format,
                r.certifier,
                100.0 * r.clean,
                100.0 * r.pgd,
                100.0 * r.certified,
                r.seconds
            )
            .expect("writing to a String");
        }
        s
    }

    /// Combine the shard reports `K/N` of one evaluation (every K of 0..N exactly once; same
    /// checkpoint, data set, ε, recalibration and rows) into the report of all their points:
    /// accuracies weighted by each shard's points, seconds summed.
    pub fn merge(shards: &[Report]) -> crate::Result<Report> {
        use crate::Error;
        let first = shards
            .first()
            .ok_or_else(|| Error::Invalid("merge needs at least one report".into()))?;
        let parse = |r: &Report| -> crate::Result<(usize, usize)> {
            let s = r.shard.as_deref().ok_or_else(|| {
                Error::Invalid(format!(
                    "a report of {} points has no shard (was it made with --shard K/N?)",
                    r.n
                ))
            })?;
            parse_shard(s)
        };
        let (_, total) = parse(first)?;
        for r in shards {
            r.check()?;
        }
        // The K seen, as a set rather than N flags: N comes from the file and sizes nothing.
        let mut seen = std::collections::BTreeSet::new();
        for r in shards {
            let (k, n) = parse(r)?;
            if n != total {
                return Err(Error::Invalid(format!(
                    "shards of {total} and of {n} slices cannot be merged"
                )));
            }
            if !seen.insert(k) {
                return Err(Error::Invalid(format!("shard {k}/{n} is given twice")));
            }
            let key = |r: &Report| {
                (
                    r.checkpoint.clone(),
                    r.dataset.clone(),
                    r.eps.to_bits(),
                    r.bn_recalibration_batches,
                    r.sound,
                )
            };
            let settings = |r: &Report| -> Vec<(String, u64, String, String)> {
                r.rows
                    .iter()
                    .map(|x| {
                        let setting = (x.compression.clone(), x.ratio.to_bits());
                        (setting.0, setting.1, x.format.clone(), x.certifier.clone())
                    })
                    .collect()
            };
            if key(r) != key(first) || settings(r) != settings(first) {
                return Err(Error::Invalid(format!(
                    "shard {k}/{n} is of another evaluation (checkpoint, data set, ε, soundness or rows differ)"
                )));
            }
        }
        // Distinct K below N, as many as N: all of them. Otherwise one of 0..=len is missing.
        if seen.len() != total {
            let k = (0..).find(|k| !seen.contains(k)).unwrap_or(0);
            return Err(Error::Invalid(format!("shard {k}/{total} is missing")));
        }
        let n = shards
            .iter()
            .try_fold(0usize, |a, r| a.checked_add(r.n))
            .ok_or_else(|| Error::Invalid("the shards' point counts overflow".into()))?;
        let weighted = |f: &dyn Fn(&Row) -> f64, row: usize| -> f64 {
            if n == 0 {
                return 0.0;
            }
            shards
                .iter()
                .map(|r| f(&r.rows[row]) * r.n as f64)
                .sum::<f64>()
                / n as f64
        };
        let rows = (0..first.rows.len())
            .map(|i| Row {
                clean: weighted(&|r| r.clean, i),
                pgd: weighted(&|r| r.pgd, i),
                certified: weighted(&|r| r.certified, i),
                seconds: shards.iter().map(|r| r.rows[i].seconds).sum(),
                ..first.rows[i].clone()
            })
            .collect();
        Ok(Report {
            n,
            shard: None,
            rows,
            ..first.clone()
        })
    }

    /// An error unless the report could have come from an evaluation: ε finite and ≥ 0, at
    /// least one point, no control characters in its text, every row's ratio, sparsity and
    /// accuracies fractions in [0, 1] with certified ≤ PGD ≤ clean, and its seconds finite and
    /// ≥ 0 (a report read back from a file is checked before it is merged).
    pub fn check(&self) -> crate::Result<()> {
        let bad = |what: String| {
            crate::Error::Invalid(format!(
                "report of {}: {what}",
                self.checkpoint.escape_debug()
            ))
        };
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(bad(format!("ε is {}, not a number ≥ 0", self.eps)));
        }
        if self.n == 0 {
            return Err(bad("it covers no test points".into()));
        }
        // Its text is printed and written into the merged CSV and Markdown.
        let texts = [&self.checkpoint, &self.dataset]
            .into_iter()
            .chain(self.shard.as_ref())
            .chain(
                self.rows
                    .iter()
                    .flat_map(|r| [&r.compression, &r.format, &r.certifier]),
            );
        for t in texts {
            if t.chars().any(char::is_control) {
                return Err(bad(format!(
                    "the text '{}' holds control characters",
                    t.escape_debug()
                )));
            }
        }
        let fraction = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        for (i, r) in self.rows.iter().enumerate() {
            if ![r.ratio, r.sparsity, r.clean, r.pgd, r.certified]
                .into_iter()
                .all(fraction)
            {
                return Err(bad(format!(
                    "row {i} has a ratio, sparsity or accuracy outside [0, 1]"
                )));
            }
            // Accuracies are counts of points over n; allow their rounding.
            let slack = 1e-9;
            if r.certified > r.pgd + slack || r.pgd > r.clean + slack {
                return Err(bad(format!(
                    "row {i} has certified {} > PGD {} or PGD > clean {}",
                    r.certified, r.pgd, r.clean
                )));
            }
            if !(r.seconds.is_finite() && r.seconds >= 0.0) {
                return Err(bad(format!("row {i} ran for {} seconds", r.seconds)));
            }
        }
        Ok(())
    }

    /// Write `report.json`, `report.csv` and `report.md` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        write_atomic(&dir.join("report.json"), self.to_json().as_bytes())?;
        write_atomic(&dir.join("report.csv"), self.to_csv().as_bytes())?;
        write_atomic(&dir.join("report.md"), self.to_markdown().as_bytes())
    }
}

/// `K/N` with K < N, as (K, N).
pub fn parse_shard(s: &str) -> crate::Result<(usize, usize)> {
    let bad = || crate::Error::Invalid(format!("a shard is K/N with 0 ≤ K < N, got '{s}'"));
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if k >= n {
        return Err(bad());
    }
    Ok((k, n))
}
