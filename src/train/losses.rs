//! The training losses: standard cross-entropy, IBP and SABR certified losses, and their mix
//! `(1 − w)·CE + w·L_cert` (DESIGN "Specification").
//!
//! Every certified loss takes the statistics of the clean batch's pass, so that batch norm maps
//! boxes with the same affine map as the clean inputs (Shi et al. 2021).

use crate::attack::{pgd_search, PgdConfig, Region};
use crate::bounds::{ibp_loss, input_box, margin_lower_bounds, BnSource};
use crate::nn::{BatchStats, Mode, Model};
use crate::ops::cross_entropy;
use crate::rng::Rng;
use crate::runtime::cuda::profile;
use crate::tensor::Tensor;
use crate::train::schedule::Phase;
use serde::{Deserialize, Serialize};

/// How a network is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Standard training: cross-entropy on clean inputs.
    Std,
    /// Interval bound propagation over the whole ε-box.
    Ibp,
    /// SABR: IBP over a small box around an adversarial point (Müller et al. 2023).
    Sabr,
    /// CACTUS: the SABR loss averaged over a set of compressed versions of the network.
    Cactus,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Std => "std",
            Method::Ibp => "ibp",
            Method::Sabr => "sabr",
            Method::Cactus => "cactus",
        }
    }

    pub fn is_certified(self) -> bool {
        self != Method::Std
    }
}

/// IBP's certified loss: the worst case over the box [x − ε, x + ε] ∩ [0, 1].
pub fn ibp_cert_loss(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    eps: f32,
    stats: &[BatchStats],
) -> Tensor {
    let margins = margin_lower_bounds(model, &input_box(x, eps), y, BnSource::Batch(stats));
    ibp_loss(&margins, y)
}

/// SABR's small box: centre `x_adv` clamped to `[lo + τ, hi − τ]` (lo, hi: the clipped ε-box
/// around `x`), then `[c − τ, c + τ] ∩ [lo, hi]`, with τ = `lambda`·ε. The intersection matters
/// only where the clipped box is narrower than 2τ (λ > 0.5 near 0 or 1): the small box never
/// leaves the ε-box.
pub fn sabr_box(x: &Tensor, x_adv: &Tensor, eps: f32, lambda: f32) -> Tensor {
    assert_eq!(
        x.shape(),
        x_adv.shape(),
        "sabr_box: point and attack differ in shape"
    );
    let tau = lambda * eps;
    crate::ops::interval::sabr_box(x, x_adv, eps, tau)
}

/// SABR's certified loss for a given adversarial point (the gradient does not flow into the
/// attack, as in the reference implementation).
pub fn sabr_cert_loss_at(
    model: &Model,
    x: &Tensor,
    x_adv: &Tensor,
    y: &[usize],
    eps: f32,
    lambda: f32,
    stats: &[BatchStats],
) -> Tensor {
    let boxes = sabr_box(x, x_adv, eps, lambda);
    ibp_loss(
        &margin_lower_bounds(model, &boxes, y, BnSource::Batch(stats)),
        y,
    )
}

/// SABR's adversarial centre: PGD over the clipped ε-box with batch norm in eval mode.
pub fn sabr_centre(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    eps: f32,
    attack: &PgdConfig,
    rng: &mut Rng,
) -> Tensor {
    pgd_search(
        model,
        x,
        y,
        &Region::linf_ball(x, eps),
        attack,
        Mode::Eval,
        rng,
    )
}

/// SABR's certified loss: PGD over the clipped ε-box (batch norm in eval mode) finds the centre.
#[allow(clippy::too_many_arguments)]
pub fn sabr_cert_loss(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    eps: f32,
    lambda: f32,
    stats: &[BatchStats],
    attack: &PgdConfig,
    rng: &mut Rng,
) -> Tensor {
    let x_adv = sabr_centre(model, x, y, eps, attack, rng);
    sabr_cert_loss_at(model, x, &x_adv, y, eps, lambda, stats)
}

/// One batch's loss with its parts, for logging.
pub struct BatchLoss {
    /// What the optimiser minimises.
    pub total: Tensor,
    /// Clean logits (batch norm in train mode), detached.
    pub logits: Tensor,
    pub clean_ce: f32,
    /// The certified loss, where it was computed (certified methods past the warm-up).
    pub cert: Option<f32>,
    /// SABR's adversarial centre, where it was computed.
    pub sabr_centre: Option<Tensor>,
}

/// The training loss of `method` on one batch at schedule phase `phase`: a clean pass in train
/// mode (updating batch norm's running statistics), then, for certified methods with a
/// non-zero certified weight, `(1 − w)·CE + w·L_cert`. CACTUS's set loss is
/// [`crate::train::cactus::cactus_loss`]; here `Method::Cactus` is the loss of one member of a
/// set, which is SABR's.
pub fn batch_loss(
    model: &mut Model,
    method: Method,
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    rng: &mut Rng,
) -> BatchLoss {
    network_loss(model, method, x, y, phase, sabr_lambda, true, rng)
}

/// `batch_loss` of one network; its clean pass updates batch norm's running statistics only
/// when `update_running` (in a compression set, only the full network's pass does).
#[allow(clippy::too_many_arguments)]
pub fn network_loss(
    model: &mut Model,
    method: Method,
    x: &Tensor,
    y: &[usize],
    phase: Phase,
    sabr_lambda: f32,
    update_running: bool,
    rng: &mut Rng,
) -> BatchLoss {
    let clean = profile::scope("step: clean pass");
    let (logits, stats) = model.forward_batch_stats(x, update_running);
    let ce = cross_entropy(&logits, y);
    drop(clean);
    let clean_ce = ce.item();
    let w = phase.cert_weight;
    let mut sabr_centre_found = None;
    let cert = match method {
        _ if !method.is_certified() || w <= 0.0 => None,
        Method::Ibp => {
            let _p = profile::scope("step: certified loss");
            Some(ibp_cert_loss(model, x, y, phase.eps, &stats))
        }
        Method::Sabr | Method::Cactus => {
            let attack = profile::scope("step: PGD for the SABR centre");
            let centre = sabr_centre(model, x, y, phase.eps, &PgdConfig::sabr(), rng);
            drop(attack);
            let _p = profile::scope("step: certified loss");
            let loss = sabr_cert_loss_at(model, x, &centre, y, phase.eps, sabr_lambda, &stats);
            sabr_centre_found = Some(centre);
            Some(loss)
        }
        Method::Std => unreachable!("handled above"),
    };
    let (total, cert) = match cert {
        None => (ce, None),
        Some(c) => {
            let value = c.item();
            (ce.mul_scalar(1.0 - w).add(&c.mul_scalar(w)), Some(value))
        }
    };
    BatchLoss {
        total,
        logits: logits.detach(),
        clean_ce,
        cert,
        sabr_centre: sabr_centre_found,
    }
}
