//! How a training step uses the cores: inside each op (`Ops`: every op splits its own work, as
//! a GEMM or a convolution over samples does), or across the batch (`Batch`: each thread takes
//! a slice of the batch through the whole forward and backward pass, and the slices'
//! gradients are summed once). Small networks spend much of an op-split step in per-op
//! overhead (tiny GEMMs, synchronisation at every op); a batch split runs whole passes without
//! synchronising.
//!
//! A batch split computes the same loss: the mean over the batch is the sum of the slices'
//! means weighted by their share, so losses and gradients agree with the op split within
//! rounding — for networks without batch norm (whose batch statistics would become the
//! slices') and methods whose randomness is per batch or none (std, IBP; SABR's attack draws
//! its random starts per slice, from one stream per slice). CACTUS splits when its set is
//! pruned networks only: the set is selected once for the batch (the masks depend on the
//! weights alone), then every slice takes the full network's and the members' losses.

use crate::autodiff::Gradients;
use crate::nn::{Layer, Model};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::cactus::{pruned_set_loss, CompressionSet};
use crate::train::losses::{batch_loss, BatchLoss, Method};
use crate::train::Phase;
use crate::train::TrainConfig;
use crate::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, OnceLock};

/// Where a training step's parallelism lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Parallelism {
    /// Across the batch where that computes the same step (mlp and small with std, IBP, SABR
    /// or CACTUS with pruning only, on the CPU, with more than one thread), inside each op
    /// elsewhere.
    #[default]
    Auto,
    /// Inside each op.
    Ops,
    /// Across the batch: one slice per thread through the whole step.
    Batch,
}

impl Parallelism {
    /// What runs saved before the setting existed used.
    pub fn saved_default() -> Parallelism {
        Parallelism::Ops
    }

    /// Whether this batch's step is split across the threads.
    pub fn splits(self, cfg: &TrainConfig, model: &Model, device: Device, batch: usize) -> bool {
        self != Parallelism::Ops && batch_split_applies(cfg, model, device, batch)
    }
}

/// Whether a batch split computes the op split's step for this run: CPU, no batch norm, more
/// than one thread, at least two samples per slice, and a loss that is a mean of per-sample
/// terms once its randomness is drawn — std, IBP, SABR, and CACTUS with a pruning-only set
/// (AWP's perturbation is an ascent step on the whole batch's loss).
pub fn batch_split_applies(cfg: &TrainConfig, model: &Model, device: Device, batch: usize) -> bool {
    let threads = rayon::current_num_threads();
    let per_sample = match cfg.method {
        Method::Std | Method::Ibp | Method::Sabr => true,
        Method::Cactus => !cfg.cactus.compress.quantizes(),
    };
    device == Device::Cpu
        && per_sample
        && !model
            .net
            .layers
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm(_)))
        && threads > 1
        && batch >= 2 * threads
}

/// `parts` one-thread pools, made once and kept: a slice runs inside its own, so that its ops
/// (whose loops and GEMMs split over the current pool's threads) run on one thread instead of
/// queueing tasks that no idle thread is left to take.
fn slice_pools(parts: usize) -> Vec<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<Vec<Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    while pools.len() < parts {
        let k = pools.len();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(move |_| format!("cactus-slice-{k}"))
            .build()
            .expect("cannot start a thread for a batch slice");
        pools.push(Arc::new(pool));
    }
    pools[..parts].to_vec()
}

/// What a batch-split step computed: the batch's loss and its gradients, and the statistics
/// the trainer reports.
pub struct SplitStep {
    pub loss: f32,
    pub grads: Gradients,
    pub clean_ce: f32,
    pub cert: Option<f32>,
    /// Clean logits of the whole batch, in order.
    pub logits: Tensor,
}

/// The batch's loss and gradients for `method` (std, IBP or SABR), one slice per thread.
/// `rng` seeds one stream per slice.
pub fn batch_split_step(
    model: &Model,
    method: Method,
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    rng: &mut Rng,
) -> SplitStep {
    assert!(
        method != Method::Cactus,
        "CACTUS splits with its set: cactus_batch_split_step"
    );
    split_step(model, x, y, rng, |m, xs, ys, r| {
        batch_loss(m, method, xs, ys, phase, sabr_lambda, r)
    })
}

/// CACTUS's loss and gradients for a pruning-only set selected for the whole batch (the
/// masks depend on the weights alone), one slice per thread: each slice takes the full
/// network's and every member's loss on its samples.
pub fn cactus_batch_split_step(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    set: &CompressionSet,
    rng: &mut Rng,
) -> SplitStep {
    split_step(model, x, y, rng, |m, xs, ys, r| {
        pruned_set_loss(m, xs, ys, phase, sabr_lambda, set, r)
    })
}

/// The batch split: `slice_loss` (a loss whose value is the mean over its samples) on each
/// thread's slice, its gradients scaled by the slice's share and summed.
fn split_step(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    rng: &mut Rng,
    slice_loss: impl Fn(&mut Model, &Tensor, &[usize], &mut Rng) -> BatchLoss + Sync,
) -> SplitStep {
    let n = y.len();
    let parts = rayon::current_num_threads().min(n).max(1);
    let bounds: Vec<(usize, usize)> = (0..parts)
        .map(|k| (k * n / parts, (k + 1) * n / parts))
        .collect();
    let seeds: Vec<u64> = (0..parts)
        .map(|_| ((rng.below(1 << 31) as u64) << 32) | rng.below(1 << 31) as u64)
        .collect();
    struct Part {
        loss: f32,
        clean_ce: f32,
        cert: Option<f32>,
        logits: Tensor,
        grads: Gradients,
        share: f32,
    }
    let pools = slice_pools(parts);
    let results: Vec<Part> = bounds
        .par_iter()
        .zip(seeds)
        .zip(pools)
        .map(|((&(a, b), seed), pool)| {
            pool.install(|| {
                let rows: Vec<usize> = (a..b).collect();
                let xs = {
                    let _g = crate::autodiff::no_grad();
                    x.index_rows(&rows)
                };
                // Shares the weights; no batch norm, so nothing in it changes.
                let mut m = model.clone();
                let out = slice_loss(&mut m, &xs, &y[a..b], &mut Rng::seed(seed));
                let share = (b - a) as f32 / n as f32;
                let loss = out.total.item();
                let grads = out.total.mul_scalar(share).backward();
                Part {
                    loss,
                    clean_ce: out.clean_ce,
                    cert: out.cert,
                    logits: out.logits,
                    grads,
                    share,
                }
            })
        })
        .collect();
    let mut grads = Gradients::default();
    let (mut loss, mut clean_ce, mut cert) = (0.0f64, 0.0f64, None::<f64>);
    let mut logits = Vec::new();
    let mut classes = 0;
    for p in results {
        loss += (p.loss * p.share) as f64;
        clean_ce += (p.clean_ce * p.share) as f64;
        if let Some(c) = p.cert {
            *cert.get_or_insert(0.0) += (c * p.share) as f64;
        }
        classes = p.logits.dim(1);
        logits.extend(p.logits.to_vec());
        grads = grads.merge(p.grads);
    }
    SplitStep {
        loss: loss as f32,
        grads,
        clean_ce: clean_ce as f32,
        cert: cert.map(|c| c as f32),
        logits: Tensor::from_vec(logits, &[n, classes]),
    }
}
