//! Evaluation as the paper reports it: clean, PGD and IBP-certified accuracy on a test set,
//! the grid of compression settings (`grid`), and the reports (`report`, `plot`) that hold one
//! row per setting.

pub mod grid;
pub mod plot;
pub mod report;

pub use grid::{evaluate_grid, grid, recalibrate_bn, Recalibration, Setting};
pub use report::{Report, Row};

use crate::attack::{pgd_robust_flags, PgdConfig};
use crate::autodiff;
use crate::bounds::{certified, input_box, margin_lower_bounds, BnSource};
use crate::data::Dataset;
use crate::nn::Model;
use crate::rng::Rng;
use crate::{Error, Result};

/// Per-point outcomes; certified ⊆ PGD-robust ⊆ clean-correct, point by point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcomes {
    pub clean: Vec<bool>,
    pub pgd: Vec<bool>,
    pub certified: Vec<bool>,
}

impl Outcomes {
    pub fn len(&self) -> usize {
        self.clean.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clean.is_empty()
    }

    fn fraction(flags: &[bool]) -> f64 {
        if flags.is_empty() {
            return 0.0;
        }
        flags.iter().filter(|&&f| f).count() as f64 / flags.len() as f64
    }

    pub fn clean_accuracy(&self) -> f64 {
        Self::fraction(&self.clean)
    }

    pub fn pgd_accuracy(&self) -> f64 {
        Self::fraction(&self.pgd)
    }

    pub fn certified_accuracy(&self) -> f64 {
        Self::fraction(&self.certified)
    }
}

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub eps: f32,
    pub batch_size: usize,
    pub attack: PgdConfig,
    /// Seed of the attack's random starts.
    pub seed: u64,
}

impl EvalConfig {
    pub fn new(eps: f32) -> EvalConfig {
        EvalConfig {
            eps,
            batch_size: 256,
            attack: PgdConfig::evaluation(),
            seed: 0,
        }
    }
}

/// Evaluate `model` (batch norm in eval mode) on every point of `data`; `progress` is called
/// with the number of points done after each batch.
pub fn evaluate(
    model: &Model,
    data: &Dataset,
    cfg: &EvalConfig,
    mut progress: impl FnMut(usize),
) -> Result<Outcomes> {
    if !(cfg.eps.is_finite() && cfg.eps >= 0.0) {
        return Err(Error::Invalid(format!(
            "--eps must be ≥ 0, got {}",
            cfg.eps
        )));
    }
    if cfg.batch_size == 0 {
        return Err(Error::Invalid("batch size must be positive".into()));
    }
    if data.shape != model.spec.input_shape {
        return Err(Error::Shape(format!(
            "the model takes {:?} inputs, dataset {} has {:?} images",
            model.spec.input_shape, data.name, data.shape
        )));
    }
    if let Some(&bad) = data.labels.iter().find(|&&l| l >= model.spec.num_classes) {
        return Err(Error::Invalid(format!(
            "dataset {} has label {bad}, the model has {} classes",
            data.name, model.spec.num_classes
        )));
    }
    let model = &model.detached();
    let mut rng = Rng::seed(cfg.seed);
    let mut out = Outcomes::default();
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(cfg.batch_size) {
        let (x, y) = data.batch(chunk);
        let cert = autodiff::with_no_grad(|| {
            let margins =
                margin_lower_bounds(model, &input_box(&x, cfg.eps), &y, BnSource::Running);
            certified(&margins, &y)
        });
        let flags = pgd_robust_flags(model, &x, &y, cfg.eps, Some(&cert), &cfg.attack, &mut rng);
        // A certificate counts only for a correctly classified point (it always is, unless
        // rounding makes a bound claim what the forward pass contradicts).
        let cert: Vec<bool> = cert
            .iter()
            .zip(&flags.clean)
            .map(|(&c, &ok)| c && ok)
            .collect();
        out.clean.extend(&flags.clean);
        out.pgd.extend(&flags.robust);
        out.certified.extend(cert);
        progress(out.len());
    }
    debug_assert!(
        (0..out.len()).all(|i| (!out.certified[i] || out.pgd[i]) && (!out.pgd[i] || out.clean[i]))
    );
    Ok(out)
}
