//! PGD accuracy for evaluation: which points survive the evaluation attack. Only points that
//! are correct and not already certified are attacked, so the per-point order
//! certified ≤ PGD-robust ≤ clean holds by construction and evaluation stays cheap.

use crate::attack::pgd::{run, PgdConfig, Region};
use crate::autodiff;
use crate::nn::{Mode, Model};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Per-sample evaluation flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobustFlags {
    /// The clean point is classified correctly (argmax = label, first index on ties).
    pub clean: Vec<bool>,
    /// Correct, and either certified or not misclassified by any point the attack tried.
    pub robust: Vec<bool>,
}

/// Attack the correct, uncertified points of `x` (L-inf radius `eps`, batch norm in eval mode)
/// with `cfg` (normally `PgdConfig::evaluation()`); one restart at a time, each on the points
/// no earlier restart broke.
///
/// A point marked certified but misclassified at its clean input (an unsound certificate) is
/// reported not robust: a robust point is always a correct one. Needs gradients enabled.
pub fn pgd_robust_flags(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    eps: f32,
    certified: Option<&[bool]>,
    cfg: &PgdConfig,
    rng: &mut Rng,
) -> RobustFlags {
    let n = y.len();
    assert_eq!(x.dim(0), n, "{} inputs, {n} labels", x.dim(0));
    if let Some(c) = certified {
        assert_eq!(c.len(), n, "{} certified flags for {n} inputs", c.len());
    }
    let x = x.detach();
    let pred = autodiff::with_no_grad(|| model.forward(&x, Mode::Eval)).argmax_rows();
    let clean: Vec<bool> = pred.iter().zip(y).map(|(p, t)| p == t).collect();
    let mut robust = clean.clone();
    let is_certified = |i: usize| certified.is_some_and(|c| c[i]);
    let mut todo: Vec<usize> = (0..n).filter(|&i| clean[i] && !is_certified(i)).collect();

    for r in 0..cfg.restarts {
        if todo.is_empty() {
            break;
        }
        let xs = autodiff::with_no_grad(|| x.index_rows(&todo));
        let ys: Vec<usize> = todo.iter().map(|&i| y[i]).collect();
        let one = PgdConfig {
            restarts: 1,
            losses: vec![cfg.loss_for_restart(r)],
            ..cfg.clone()
        };
        let region = Region::linf_ball(&xs, eps);
        let out = run(model, &xs, &ys, &region, &one, Mode::Eval, rng, true);
        for (&i, &fooled) in todo.iter().zip(&out.fooled) {
            robust[i] &= !fooled;
        }
        todo.retain(|&i| robust[i]);
    }
    RobustFlags { clean, robust }
}
