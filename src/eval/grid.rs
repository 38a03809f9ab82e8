//! The paper's evaluation grid: the same network pruned with several methods and ratios and
//! quantized to several formats, each setting evaluated like the uncompressed network (clean,
//! PGD, certified), one report row per setting and certifier.
//!
//! A compressed network keeps the full network's batch-norm running statistics (docs/design.md,
//! "BN in a compression set") unless the caller asks for recalibration ([`Recalibration`]): then
//! its running statistics are re-estimated on training images first, as a deployment would.
//! Quantized settings are certified on the dequantized weights: the bounds are about the network
//! that would be deployed.

use crate::autodiff::with_no_grad;
use crate::compress::quant::{quantize_model, Format, Granularity};
use crate::compress::{apply_masks, prune_masks, PruneMethod};
use crate::data::Dataset;
use crate::eval::{evaluate, EvalConfig, PointRecord, Row};
use crate::nn::{Layer, Model};
use crate::tensor::Tensor;
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
        self.prune.map_or("none".into(), |m| m.name())
    }
}

/// The settings of `--prune`, `--ratios` and `--quant`, in report order: the uncompressed
/// network first; the unpruned network in every format other than fp32; each pruning method at
/// each non-zero ratio in fp32 — or, with `joint`, in every format listed. A method that fixes
/// its own ratio is evaluated once, at that ratio, whatever `ratios` holds.
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
        let method_ratios = match method.implied_ratio() {
            Some(fixed) => vec![fixed],
            None => ratios.iter().copied().filter(|&r| r > 0.0).collect(),
        };
        for ratio in method_ratios {
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

/// Re-estimate batch norm's running statistics of compressed networks on training images.
#[derive(Clone, Copy)]
pub struct Recalibration<'a> {
    /// Training images (the first `batches · batch_size` are used, in order).
    pub data: &'a Dataset,
    pub batches: usize,
    pub batch_size: usize,
}

/// A copy of `model` whose batch-norm running statistics are the averages, over the first
/// `batches` batches of `data`, of each layer's batch mean and unbiased batch variance in
/// training mode (PyTorch's cumulative average, `momentum=None`). Without batch norm, or with no
/// images, the copy is unchanged.
pub fn recalibrate_bn(model: &Model, r: &Recalibration<'_>) -> Model {
    let mut net = model.detached();
    let n = r
        .data
        .len()
        .min(r.batches.saturating_mul(r.batch_size.max(1)));
    let indices: Vec<usize> = (0..n).collect();
    let bn_layers = net
        .net
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::BatchNorm(_)))
        .count();
    if bn_layers == 0 || n == 0 {
        return net;
    }
    // Per batch-norm layer: sums of batch means and unbiased variances, per channel.
    let mut sums: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let mut count = 0usize;
    with_no_grad(|| {
        for chunk in indices.chunks(r.batch_size.max(2)) {
            if chunk.len() < 2 {
                continue; // one sample has no variance
            }
            let (x, _) = r.data.batch(chunk);
            // The batch's own statistics at every batch-norm layer; running ones untouched.
            let (_, stats) = net.forward_batch_stats(&x, false);
            for (k, st) in stats.iter().enumerate() {
                let unbias = st.count as f64 / (st.count.max(2) - 1) as f64;
                if sums.len() <= k {
                    sums.push((vec![0.0; st.mean.numel()], vec![0.0; st.var.numel()]));
                }
                for (s, &m) in sums[k].0.iter_mut().zip(st.mean.data()) {
                    *s += m as f64;
                }
                for (s, &v) in sums[k].1.iter_mut().zip(st.var.data()) {
                    *s += v as f64 * unbias;
                }
            }
            count += 1;
        }
    });
    if count == 0 {
        return net;
    }
    let mut k = 0;
    for layer in &mut net.net.layers {
        if let Layer::BatchNorm(bn) = layer {
            let (mean, var) = &sums[k];
            let avg =
                |v: &[f64]| -> Vec<f32> { v.iter().map(|s| (s / count as f64) as f32).collect() };
            let c = bn.channels();
            bn.running_mean = Tensor::from_vec(avg(mean), &[c]);
            bn.running_var = Tensor::from_vec(avg(var), &[c]);
            k += 1;
        }
    }
    net
}

/// Evaluate every setting on `data`; `progress(setting index, points done in it)` after each
/// batch. With `recalibration`, every compressed setting (not the network as it is) gets its
/// batch-norm statistics re-estimated first. One row per setting and certifier of the cascade
/// (a certifier's row counts the points it or a weaker one certified), and the per-point
/// records (with `cfg.per_point`), each naming its row.
pub fn evaluate_grid(
    model: &Model,
    data: &Dataset,
    cfg: &EvalConfig,
    settings: &[Setting],
    granularity: Granularity,
    recalibration: Option<&Recalibration<'_>>,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<Row>, Vec<PointRecord>)> {
    let model = model.detached();
    let (mut rows, mut points) = (Vec::new(), Vec::new());
    for (i, setting) in settings.iter().enumerate() {
        let (net, sparsity) = compressed(&model, setting, granularity)?;
        let net = match recalibration {
            Some(r) if *setting != Setting::NONE => recalibrate_bn(&net, r),
            _ => net,
        };
        let outcomes = evaluate(&net, data, cfg, |done| progress(i, done))?;
        let first_row = rows.len();
        for (k, c) in outcomes.by_certifier.iter().enumerate() {
            rows.push(Row {
                compression: setting.compression(),
                ratio: setting.ratio,
                sparsity,
                format: setting.format.to_string(),
                certifier: c.certifier.name().into(),
                clean: outcomes.clean_accuracy(),
                pgd: outcomes.pgd_accuracy(),
                certified: outcomes.certified_accuracy_by(k),
                seconds: c.seconds,
            });
        }
        points.extend(outcomes.points.into_iter().map(|mut p| {
            let k = cfg
                .certifiers
                .iter()
                .position(|c| c.name() == p.certifier)
                .expect("a record names a certifier of the cascade");
            p.row = first_row + k;
            p.compression = setting.compression();
            p
        }));
    }
    Ok((rows, points))
}
