//! Value parsers and checks shared by the subcommands' options.

use anyhow::{bail, Result};
use cactus::compress::quant::FORMAT_NAMES;
use cactus::compress::{prune_help, PruneMethod};
use std::path::Path;
use std::str::FromStr;

/// Any of the library's named choices (pruning method, number format, granularity, certifier,
/// device), with its own message when the name is unknown.
pub fn parse<T: FromStr<Err = cactus::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: cactus::Error| e.to_string())
}

/// A pruning method, or `none` for the unpruned network.
pub fn parse_prune_choice(s: &str) -> Result<Option<PruneMethod>, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        parse(s).map(Some)
    }
}

/// Help for an option taking pruning methods: `intro`, then every method of the registry.
pub fn prune_methods_help(intro: &str) -> String {
    format!("{intro}: {}", prune_help())
}

/// Help for an option taking weight formats: `intro`, then the formats.
pub fn formats_help(intro: &str) -> String {
    format!("{intro}: {FORMAT_NAMES}")
}

pub fn check_ratios(ratios: &[f64], option: &str) -> Result<()> {
    if let Some(r) = ratios
        .iter()
        .find(|r| !(r.is_finite() && (0.0..1.0).contains(*r)))
    {
        bail!("{option}: ratio {r} is not in [0, 1)");
    }
    Ok(())
}

/// A missing checkpoint said plainly, before the loader's own message for it.
pub fn check_exists(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    Ok(())
}

/// A memory size for `--max-memory` (4G, 512M, 1000000).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    cactus::runtime::memory::parse_size(s).map_err(|e| e.to_string())
}

/// A count of at least 1 (`--limit`, `--eval-limit`: zero points would report 0% of nothing).
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// Text from a file, safe to print: control characters (a terminal's escape sequences, line
/// breaks that would forge output lines) and bidirectional overrides are shown escaped, as
/// `\u{1b}` or `\n`; the rest of Unicode (ε, δ) as it is.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The dataset to evaluate on: `given`, else the one the checkpoint's metadata names.
pub fn dataset_of(
    given: Option<cactus::data::DatasetKind>,
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<cactus::data::DatasetKind> {
    match (given, extra.get("train.dataset")) {
        (Some(d), _) => Ok(d),
        (None, Some(name)) => <cactus::data::DatasetKind as clap::ValueEnum>::from_str(name, false)
            .map_err(|_| {
                anyhow::anyhow!(
                    "the checkpoint names an unknown dataset '{}'; pass --dataset",
                    printable(name)
                )
            }),
        (None, None) => {
            bail!("the checkpoint does not say which dataset it was trained on: pass --dataset")
        }
    }
}

/// The L-inf radius: `given`, else the ε the checkpoint's metadata says it was trained for.
pub fn eps_of(
    given: Option<f32>,
    extra: &std::collections::BTreeMap<String, String>,
    checkpoint: &Path,
) -> Result<f32> {
    match (given, extra.get("train.eps")) {
        (Some(e), _) => Ok(e),
        (None, Some(text)) => match text.parse::<f32>() {
            Ok(e) if e.is_finite() && e >= 0.0 => Ok(e),
            _ => bail!(
                "{}: the training ε in its metadata ('train.eps' = '{}') is not a number ≥ 0; \
                 pass --eps",
                checkpoint.display(),
                printable(text)
            ),
        },
        (None, None) => bail!("the checkpoint does not say which ε it was trained for: pass --eps"),
    }
}
