//! The paper's evaluation grid: the same network pruned with several methods and ratios and
//! quantized to several formats, each setting evaluated like the uncompressed network (clean,
//! PGD, IBP-certified), one report row per setting.
//!
//! A compressed network keeps the full network's batch-norm running statistics (DESIGN.md, "BN
//! in a compression set"). Quantized settings are certified on the dequantized weights: the
//! bounds are about the network that would be deployed.

use crate::compress::prune::{apply_masks, prune_masks, PruneMethod};
use crate::compress::quant::{quantize_model, Format, Granularity};
use crate::data::Dataset;
use crate::eval::{evaluate, EvalConfig, Row};
use crate::nn::Model;
use crate::Result;

/// One point of the grid: an optional pruning, then a number format.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Setting {
    /// `None`: not pruned.
    pub prune: Option<PruneMethod>,
    pub ratio: f64,
    pub format: Format,
}

impl Setting {
    /// The uncompressed network.
    pub const NONE: Setting = Setting {
        prune: None,
        ratio: 0.0,
        format: Format::Fp32,
    };

    /// The name of the pruning column (`none`, `gul1`, ...).
    pub fn compression(&self) -> String {
        self.prune.map_or("none".into(), |m| m.name().into())
    }
}

/// The settings of `--prune`, `--ratios` and `--quant`, in report order: the uncompressed
/// network first; the unpruned network in every format other than fp32; each pruning method at
/// each non-zero ratio in fp32 — or, with `joint`, in every format listed.
pub fn grid(
    prune: &[Option<PruneMethod>],
    ratios: &[f64],
    formats: &[Format],
    joint: bool,
) -> Vec<Setting> {
    let mut out = vec![Setting::NONE];
    let mut push = |s: Setting| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for &format in formats {
        push(Setting {
            format,
            ..Setting::NONE
        });
    }
    let pruned_formats: Vec<Format> = if joint {
        formats.to_vec()
    } else {
        vec![Format::Fp32]
    };
    for method in prune.iter().flatten() {
        for &ratio in ratios.iter().filter(|&&r| r > 0.0) {
            for &format in &pruned_formats {
                push(Setting {
                    prune: Some(*method),
                    ratio,
                    format,
                });
            }
        }
    }
    out
}

/// `model` compressed as `setting` says, and the fraction of its conv/linear weights that are
/// zero (the pruning's, before quantization).
pub fn compressed(
    model: &Model,
    setting: &Setting,
    granularity: Granularity,
) -> Result<(Model, f64)> {
    let (pruned, sparsity) = match setting.prune {
        None => (model.clone(), 0.0),
        Some(method) => {
            let masks = prune_masks(model, method, setting.ratio)?;
            (apply_masks(model, &masks), masks.weight_sparsity())
        }
    };
    Ok((
        quantize_model(&pruned, setting.format, granularity),
        sparsity,
    ))
}

/// Evaluate every setting on `data`; `progress(setting index, points done in it)` after each
/// batch.
pub fn evaluate_grid(
    model: &Model,
    data: &Dataset,
    cfg: &EvalConfig,
    settings: &[Setting],
    granularity: Granularity,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Row>> {
    let model = model.detached();
    settings
        .iter()
        .enumerate()
        .map(|(i, setting)| {
            let (net, sparsity) = compressed(&model, setting, granularity)?;
            let outcomes = evaluate(&net, data, cfg, |done| progress(i, done))?;
            Ok(Row {
                compression: setting.compression(),
                ratio: setting.ratio,
                sparsity,
                format: setting.format.to_string(),
                certifier: "ibp".into(),
                clean: outcomes.clean_accuracy(),
                pgd: outcomes.pgd_accuracy(),
                certified: outcomes.certified_accuracy(),
            })
        })
        .collect()
}
