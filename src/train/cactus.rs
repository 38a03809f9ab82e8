//! CACTUS, compression-aware certified training (the paper's §4): the loss of a network `f` is
//! the mean over a compression set `C(f)` of `(1 − w)·CE + w·L_SABR`, so that `f` stays
//! certifiable when it is pruned or quantized.
//!
//! The set (docs/design.md, "Compression-set strategies") is rebuilt every batch from the current weights:
//! - the full network `f`, whose clean pass alone updates batch norm's running statistics;
//! - for pruning, `f` pruned with `prune_method` at the ratios the [`Strategy`] picks (masks
//!   multiplied into the weights, so gradients reach only the kept weights); a method that fixes
//!   its own ratio gives one pruned member at that ratio, and the strategies' options do not
//!   apply to it;
//! - for quantization, `f + Δ*`, the adversarial weight perturbation of [`crate::attack::awp`]
//!   found by ascending `CE + L_cert` (the SABR box of `f`'s adversarial centre), a
//!   differentiable proxy of int8 rounding.
//!
//! Every member runs its own clean pass (its own batch statistics, used for its bounds) and its
//! own SABR attack.
//!
//! With `refresh_every` K > 1 the set's *selection* (the ratios and their masks, and AWP's
//! `Δ*`) is cached in a [`SetCache`] and rebuilt only at batches 0, K, 2K, … of each epoch;
//! in between, the pruned members are the current weights times the cached masks and the AWP
//! member the current weights plus the cached `Δ*`. The cache starts empty every epoch, so a
//! run resumed at an epoch boundary needs nothing of it saved.

use crate::attack::{awp_perturbation, perturbed, AwpConfig, Perturbation};
use crate::compress::{apply_masks, prune_masks, Masks, PruneMethod};
use crate::nn::{Layer, Model};
use crate::ops::cross_entropy;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::losses::{network_loss, sabr_cert_loss_at, BatchLoss, Method};
use crate::train::schedule::Phase;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What the compression set guards against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum CompressKind {
    /// Pruned networks.
    #[serde(rename = "prune")]
    #[value(name = "prune")]
    Prune,
    /// The AWP-perturbed network (quantization proxy).
    #[serde(rename = "quant")]
    #[value(name = "quant")]
    Quant,
    /// Both: pruned networks and the AWP-perturbed one.
    #[serde(rename = "prune+quant")]
    #[value(name = "prune+quant")]
    PruneQuant,
}

impl CompressKind {
    pub fn prunes(self) -> bool {
        self != CompressKind::Quant
    }

    pub fn quantizes(self) -> bool {
        self != CompressKind::Prune
    }

    pub fn name(self) -> &'static str {
        match self {
            CompressKind::Prune => "prune",
            CompressKind::Quant => "quant",
            CompressKind::PruneQuant => "prune+quant",
        }
    }
}

impl fmt::Display for CompressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the pruning ratios of the set are chosen (paper §4.4 and appendix D.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `samples` ratios drawn each batch from U(0.25, 0.75), or uniformly from `ratios`.
    Sampling,
    /// Every ratio of `ratios` (default 0.25, 0.5, 0.75) each batch.
    Fixed,
    /// One ratio rising linearly from 0.25 to 0.75 over the batches after the ramp.
    Progressive,
    /// 0.15, 0.3, 0.45, 0.6, 0.75 each batch.
    Dense,
    /// The ratios at which the pruned weights hold 1%, 5% and 10% of the l1 weight mass,
    /// clamped to [0.25, 0.75] (the paper names the strategy without an algorithm; ours).
    Adaptive,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Sampling => "sampling",
            Strategy::Fixed => "fixed",
            Strategy::Progressive => "progressive",
            Strategy::Dense => "dense",
            Strategy::Adaptive => "adaptive",
        }
    }
}

/// The range `sampling` draws from and `progressive` walks, and `adaptive`'s clamp.
pub const RATIO_RANGE: (f64, f64) = (0.25, 0.75);
/// `fixed`'s ratios unless given.
pub const FIXED_RATIOS: [f64; 3] = [0.25, 0.5, 0.75];
/// `dense`'s ratios.
pub const DENSE_RATIOS: [f64; 5] = [0.15, 0.3, 0.45, 0.6, 0.75];
/// `adaptive`'s shares of the total l1 weight mass held by the pruned weights.
pub const ADAPTIVE_MASS: [f64; 3] = [0.01, 0.05, 0.10];

/// CACTUS's settings (`cactus train --method cactus ...`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CactusConfig {
    pub compress: CompressKind,
    /// How the pruned members are pruned (the paper trains with GUL1).
    pub prune_method: PruneMethod,
    pub strategy: Strategy,
    /// Ratios for `sampling` (a list to draw from) and `fixed`.
    pub ratios: Option<Vec<f64>>,
    /// Pruned members drawn per batch by `sampling`.
    pub samples: usize,
    pub awp: AwpConfig,
    /// Rebuild the set's masks and AWP perturbation every this many batches of an epoch (and
    /// at each epoch's first), reusing them in between; 1 rebuilds every batch. Runs saved
    /// before the option read as 1.
    #[serde(default = "every_batch")]
    pub refresh_every: u64,
}

fn every_batch() -> u64 {
    1
}

impl Default for CactusConfig {
    fn default() -> Self {
        CactusConfig {
            compress: CompressKind::Prune,
            prune_method: "gul1".parse().expect("a method name"),
            strategy: Strategy::Sampling,
            ratios: None,
            samples: 1,
            awp: AwpConfig::default(),
            refresh_every: every_batch(),
        }
    }
}

/// Most pruned networks per batch, and most AWP steps, a run may ask for.
pub const MAX_MEMBERS: usize = 1000;

impl CactusConfig {
    /// An error naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if let Some(ratios) = &self.ratios {
            if ratios.is_empty() {
                return bad("--ratios needs at least one ratio".into());
            }
            if let Some(r) = ratios
                .iter()
                .find(|r| !(r.is_finite() && (0.0..1.0).contains(*r)))
            {
                return bad(format!("--ratios: {r} is not in [0, 1)"));
            }
            if !matches!(self.strategy, Strategy::Sampling | Strategy::Fixed) {
                return bad(format!(
                    "--ratios applies to --strategy sampling and fixed, not {}",
                    self.strategy.name()
                ));
            }
        }
        // Upper bounds too: settings read back from a training state must not ask for an
        // endless batch.
        if !(1..=MAX_MEMBERS).contains(&self.samples) {
            return bad(format!(
                "--samples must be in 1..={MAX_MEMBERS}, got {}",
                self.samples
            ));
        }
        if self.awp.steps > MAX_MEMBERS {
            return bad(format!(
                "--awp-steps must be at most {MAX_MEMBERS}, got {}",
                self.awp.steps
            ));
        }
        if self.ratios.as_ref().is_some_and(|r| r.len() > MAX_MEMBERS) {
            return bad(format!("--ratios lists more than {MAX_MEMBERS} ratios"));
        }
        if self.samples != 1 && self.strategy != Strategy::Sampling {
            return bad(format!(
                "--samples applies to --strategy sampling, not {}",
                self.strategy.name()
            ));
        }
        if let Some(fixed) = self
            .prune_method
            .implied_ratio()
            .filter(|_| self.compress.prunes())
        {
            // Such a method prunes one ratio: nothing for a strategy to choose.
            let stray = [
                (self.ratios.is_some(), "--ratios"),
                (self.samples != 1, "--samples"),
                (self.strategy != Strategy::Sampling, "--strategy"),
            ];
            if let Some((_, option)) = stray.iter().find(|(given, _)| *given) {
                return bad(format!(
                    "{option} does not apply to --prune-method {}, which prunes a fixed ratio \
                     of {fixed}: its compression set is the network and its one pruned copy",
                    self.prune_method
                ));
            }
        }
        if self.refresh_every == 0 {
            return bad(
                "--refresh-every must be at least 1 (1 rebuilds the compression set \
                        every batch, K every K batches)"
                    .into(),
            );
        }
        if !(self.awp.eta.is_finite() && self.awp.eta >= 0.0) {
            return bad(format!("--awp-eta must be ≥ 0, got {}", self.awp.eta));
        }
        Ok(())
    }
}

/// Where the run stands, for strategies that move with it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// 0-based batch (optimiser step) of the whole run.
    pub step: u64,
    /// Batches in the whole run.
    pub total_steps: u64,
    /// First batch after warm-up and ramp.
    pub ramp_end: u64,
}

/// The pruning ratios of this batch's set: the strategy's, or the one ratio the pruning method
/// fixes.
pub fn set_ratios(
    cfg: &CactusConfig,
    model: &Model,
    progress: Progress,
    rng: &mut Rng,
) -> Vec<f64> {
    if let Some(fixed) = cfg.prune_method.implied_ratio() {
        return vec![fixed];
    }
    let (lo, hi) = RATIO_RANGE;
    match cfg.strategy {
        Strategy::Sampling => (0..cfg.samples)
            .map(|_| match &cfg.ratios {
                Some(list) => list[rng.below(list.len())],
                None => lo + (hi - lo) * rng.uniform() as f64,
            })
            .collect(),
        Strategy::Fixed => cfg.ratios.clone().unwrap_or_else(|| FIXED_RATIOS.to_vec()),
        Strategy::Dense => DENSE_RATIOS.to_vec(),
        Strategy::Progressive => {
            let span = progress.total_steps.saturating_sub(progress.ramp_end);
            let t = if span <= 1 {
                if progress.step >= progress.ramp_end {
                    1.0
                } else {
                    0.0
                }
            } else {
                (progress.step.saturating_sub(progress.ramp_end) as f64 / (span - 1) as f64)
                    .min(1.0)
            };
            vec![lo + (hi - lo) * t]
        }
        Strategy::Adaptive => ADAPTIVE_MASS
            .iter()
            .map(|&m| mass_ratio(model, m).clamp(lo, hi))
            .collect(),
    }
}

/// The fraction of conv and linear weights that, pruned smallest-first by `|w|`, hold at most the
/// share `mass` of the total l1 weight mass. A histogram of `|w|` finds the bin where the running
/// mass crosses the target; only that bin's weights are sorted, so no full sort is needed.
pub fn mass_ratio(model: &Model, mass: f64) -> f64 {
    const BINS: usize = 4096;
    let weights: Vec<&Tensor> = model.net.layers.iter().filter_map(Layer::weight).collect();
    let values = || {
        weights
            .iter()
            .flat_map(|w| w.data().iter().map(|v| v.abs() as f64))
    };
    let (n, max, total) = values().fold((0usize, 0.0f64, 0.0f64), |(n, m, t), v| {
        (n + 1, m.max(v), t + v)
    });
    if n == 0 || !(total > 0.0 && total.is_finite()) {
        return 0.0;
    }
    let bin = |v: f64| ((v / max * BINS as f64) as usize).min(BINS - 1);
    let mut count = vec![0usize; BINS];
    let mut sum = vec![0.0f64; BINS];
    for v in values() {
        count[bin(v)] += 1;
        sum[bin(v)] += v;
    }
    let target = mass * total;
    let (mut below_n, mut below_mass) = (0usize, 0.0f64);
    for b in 0..BINS {
        if below_mass + sum[b] > target {
            let mut inside: Vec<f64> = values().filter(|&v| bin(v) == b).collect();
            inside.sort_by(f64::total_cmp);
            for v in inside {
                if below_mass + v > target {
                    break;
                }
                below_mass += v;
                below_n += 1;
            }
            return below_n as f64 / n as f64;
        }
        below_n += count[b];
        below_mass += sum[b];
    }
    1.0
}

/// The selection of a compression set: the pruning masks (each with the ratio that produced
/// it, `Masks::ratio`) and AWP's `Δ*`, either of them absent when the set has no such member.
/// Members are built from it and the current weights.
#[derive(Clone, Default)]
pub struct CompressionSet {
    pub masks: Vec<Masks>,
    pub deltas: Option<Perturbation>,
}

/// The compression set of the current epoch, rebuilt when [`SetCache::refresh_due`]: at the
/// epoch's batch 0 and every `refresh_every` batches after. Make a new one at each epoch start
/// (the trainer does), so that nothing of it outlives an epoch's commit.
#[derive(Clone)]
pub struct SetCache {
    refresh_every: u64,
    set: Option<CompressionSet>,
    refreshed_at: Vec<u64>,
}

impl SetCache {
    /// An empty cache rebuilding every `refresh_every` batches (0 is taken as 1).
    pub fn new(refresh_every: u64) -> SetCache {
        SetCache {
            refresh_every: refresh_every.max(1),
            set: None,
            refreshed_at: Vec::new(),
        }
    }

    /// Whether the set is rebuilt at this 0-based batch of the epoch: at multiples of
    /// `refresh_every`, and whenever nothing is cached yet.
    pub fn refresh_due(&self, batch: u64) -> bool {
        self.set.is_none() || batch.is_multiple_of(self.refresh_every)
    }

    /// The batches at which the set was rebuilt, in order (for tests and diagnostics).
    pub fn refreshed_at(&self) -> &[u64] {
        &self.refreshed_at
    }

    /// The cached selection, if any.
    pub fn set(&self) -> Option<&CompressionSet> {
        self.set.as_ref()
    }

    /// The selection of a pruning-only set at this 0-based batch of the epoch, rebuilt from the
    /// current weights when due (the ratios drawn from `rng`). The masks depend on the weights
    /// alone, so a set selected here serves every slice of a batch split.
    pub fn pruning_set(
        &mut self,
        model: &Model,
        cfg: &CactusConfig,
        progress: Progress,
        rng: &mut Rng,
        batch: u64,
    ) -> Result<&CompressionSet> {
        assert!(
            !cfg.compress.quantizes(),
            "AWP's perturbation is selected with the batch's loss"
        );
        if self.refresh_due(batch) {
            self.set = Some(CompressionSet {
                masks: select_masks(model, cfg, progress, rng)?,
                deltas: None,
            });
            self.refreshed_at.push(batch);
        }
        Ok(self.set.as_ref().expect("selected above"))
    }
}

/// The CACTUS loss of one batch: the mean over the compression set of each member's
/// `(1 − w)·CE + w·L_SABR`. The logits and clean CE reported are the full network's; the
/// certified loss reported is the members' mean. The set is rebuilt from the current weights
/// (the same as [`cactus_loss_cached`] with a fresh cache).
#[allow(clippy::too_many_arguments)]
pub fn cactus_loss(
    model: &mut Model,
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    cfg: &CactusConfig,
    progress: Progress,
    rng: &mut Rng,
) -> Result<BatchLoss> {
    let mut fresh = SetCache::new(1);
    cactus_loss_cached(
        model,
        x,
        y,
        phase,
        sabr_lambda,
        cfg,
        progress,
        rng,
        &mut fresh,
        0,
    )
}

/// [`cactus_loss`] at the 0-based `batch` of an epoch, taking the set's masks and `Δ*` from
/// `cache` unless a rebuild is due there. A rebuild draws the ratios (and consumes `rng`) exactly
/// as `cactus_loss` does; a reuse draws nothing for them.
#[allow(clippy::too_many_arguments)]
pub fn cactus_loss_cached(
    model: &mut Model,
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    cfg: &CactusConfig,
    progress: Progress,
    rng: &mut Rng,
    cache: &mut SetCache,
    batch: u64,
) -> Result<BatchLoss> {
    let full = network_loss(model, Method::Cactus, x, y, phase, sabr_lambda, true, rng);
    if cache.refresh_due(batch) {
        cache.set = None;
        cache.refreshed_at.push(batch);
    }
    let refreshing = cache.set.is_none();
    let set = cache.set.get_or_insert_with(CompressionSet::default);
    let mut members = Vec::new();
    if cfg.compress.prunes() {
        if refreshing {
            set.masks = select_masks(model, cfg, progress, rng)?;
        }
        members = pruned_members(model, &set.masks, x, y, phase, sabr_lambda, rng);
    }
    if cfg.compress.quantizes() {
        if refreshing {
            let centre = full.sabr_centre.as_ref();
            set.deltas = Some(awp_perturbation(model, &cfg.awp, |net| {
                let (logits, stats) = net.forward_batch_stats(x, false);
                let ce = cross_entropy(&logits, y);
                match centre {
                    Some(c) if phase.cert_weight > 0.0 => ce.add(&sabr_cert_loss_at(
                        net,
                        x,
                        c,
                        y,
                        phase.eps,
                        sabr_lambda,
                        &stats,
                    )),
                    _ => ce,
                }
            }));
        }
        let deltas = set
            .deltas
            .as_ref()
            .expect("AWP's Δ* was computed with the set");
        members.push(member_loss(
            &mut perturbed(model, deltas),
            x,
            y,
            phase,
            sabr_lambda,
            rng,
        ));
    }
    Ok(set_mean(full, members))
}

/// The CACTUS loss from the full network's loss and the members': their mean.
fn set_mean(full: BatchLoss, members: Vec<BatchLoss>) -> BatchLoss {
    let size = (members.len() + 1) as f32;
    let total = members
        .iter()
        .fold(full.total.clone(), |acc, m| acc.add(&m.total))
        .mul_scalar(1.0 / size);
    let cert = full
        .cert
        .map(|c| (c + members.iter().map(|m| m.cert.unwrap_or(0.0)).sum::<f32>()) / size);
    BatchLoss {
        total,
        logits: full.logits,
        clean_ce: full.clean_ce,
        cert,
        sabr_centre: full.sabr_centre,
    }
}

/// The CACTUS loss of a batch (or a slice of one) for a set already selected: the full network
/// and one member per cached mask. Pruning-only sets: AWP's `Δ*` is selected with the batch.
#[allow(clippy::too_many_arguments)]
pub fn pruned_set_loss(
    model: &mut Model,
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    set: &CompressionSet,
    rng: &mut Rng,
) -> BatchLoss {
    let full = network_loss(model, Method::Cactus, x, y, phase, sabr_lambda, true, rng);
    let members = pruned_members(model, &set.masks, x, y, phase, sabr_lambda, rng);
    set_mean(full, members)
}

/// One pruning mask set per ratio of the set, from the current weights (the ratios drawn from
/// `rng` where the strategy draws).
fn select_masks(
    model: &Model,
    cfg: &CactusConfig,
    progress: Progress,
    rng: &mut Rng,
) -> Result<Vec<Masks>> {
    set_ratios(cfg, model, progress, rng)
        .into_iter()
        .map(|ratio| {
            let _timed = crate::runtime::cuda::profile::scope("step: pruning masks");
            prune_masks(model, cfg.prune_method, ratio)
        })
        .collect()
}

/// The loss of each pruned member: the current weights under each mask set.
fn pruned_members(
    model: &Model,
    masks: &[Masks],
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    rng: &mut Rng,
) -> Vec<BatchLoss> {
    masks
        .iter()
        .map(|m| member_loss(&mut apply_masks(model, m), x, y, phase, sabr_lambda, rng))
        .collect()
}

/// A member's loss: its own clean pass and attack; batch norm's running statistics are the
/// full network's alone.
fn member_loss(
    net: &mut Model,
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    rng: &mut Rng,
) -> BatchLoss {
    network_loss(net, Method::Cactus, x, y, phase, sabr_lambda, false, rng)
}
