//! Adversarial weight perturbation (AWP, the paper's eq. 9): the differentiable proxy CACTUS
//! trains against instead of quantization itself.
//!
//! The perturbation `Δ` of each conv and linear weight tensor `W` lies in the l-inf ball of
//! radius `r = η·q(W)`, where `q(W)` is `W`'s per-tensor int8 quantization step (docs/design.md,
//! "AWP"). Quantization moves every weight by at most half a step, so `η ≥ ½` covers
//! int8 rounding (Theorem C.1). `Δ` starts at zero and takes signed-gradient ascent steps of size
//! `α = r·min(1, 2/steps)` on the caller's objective, each followed by a clamp to the ball: one
//! step (the default) goes straight to the ball's corner `r·sign(∇)`, several steps can turn.
//! Biases and batch norm are not perturbed.

use crate::compress::quant::quant_step;
use crate::nn::Model;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Radius (in quantization steps) and number of ascent steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AwpConfig {
    /// Radius of each weight's perturbation in units of its tensor's int8 step.
    pub eta: f32,
    /// Signed-gradient ascent steps (0: no perturbation).
    pub steps: usize,
}

impl Default for AwpConfig {
    fn default() -> Self {
        AwpConfig { eta: 0.5, steps: 1 }
    }
}

/// One perturbation per layer of the model (`None` for layers without a weight).
pub type Perturbation = Vec<Option<Tensor>>;

/// The radius `η·q(W)` of each weighted layer's ball (`None` elsewhere).
pub fn awp_radii(model: &Model, eta: f32) -> Vec<Option<f32>> {
    model
        .net
        .layers
        .iter()
        .map(|layer| layer.weight().map(|w| eta * quant_step(w, 8)))
        .collect()
}

/// A copy of `model` with `W + Δ` for every perturbed weight. The sum is recorded by autodiff,
/// so a loss on the copy reaches `model`'s weight leaves (and `Δ`, when it is a leaf).
pub fn perturbed(model: &Model, deltas: &[Option<Tensor>]) -> Model {
    let mut copy = model.clone();
    assert_eq!(
        deltas.len(),
        copy.net.layers.len(),
        "one perturbation per layer"
    );
    for (layer, delta) in copy.net.layers.iter_mut().zip(deltas) {
        if let (Some(w), Some(d)) = (layer.weight_mut(), delta) {
            *w = w.add(d);
        }
    }
    copy
}

/// The perturbation `Δ*` that ascends `objective` (a scalar loss of the perturbed network) from
/// `Δ = 0` within the balls of [`awp_radii`]. Only `Δ` is differentiated: `model`'s parameters
/// are detached for the ascent. The result holds constants (no autodiff history).
///
/// # Panics
/// Under `autodiff::no_grad()`: the ascent needs gradients.
pub fn awp_perturbation(
    model: &Model,
    cfg: &AwpConfig,
    mut objective: impl FnMut(&mut Model) -> Tensor,
) -> Perturbation {
    assert!(
        crate::autodiff::is_grad_enabled(),
        "AWP ascends by gradients: do not run it under autodiff::no_grad()"
    );
    let radii = awp_radii(model, cfg.eta);
    let base = model.detached();
    let shapes: Vec<Option<Vec<usize>>> = base
        .net
        .layers
        .iter()
        .map(|layer| layer.weight().map(|w| w.shape().to_vec()))
        .collect();
    let mut deltas: Vec<Option<Vec<f32>>> = base
        .net
        .layers
        .iter()
        .map(|layer| layer.weight().map(|w| vec![0.0; w.numel()]))
        .collect();
    let as_tensors = |deltas: &[Option<Vec<f32>>], leaves: bool| -> Perturbation {
        deltas
            .iter()
            .zip(&shapes)
            .map(|(d, s)| {
                d.as_ref().map(|d| {
                    let t = Tensor::from_vec(d.clone(), s.as_ref().expect("weighted layer"));
                    if leaves {
                        t.requires_grad()
                    } else {
                        t
                    }
                })
            })
            .collect()
    };
    let step_fraction = (2.0 / cfg.steps.max(1) as f32).min(1.0);
    for _ in 0..cfg.steps {
        let leaves = as_tensors(&deltas, true);
        let mut net = perturbed(&base, &leaves);
        let loss = objective(&mut net);
        let grads = loss.backward();
        for ((delta, leaf), r) in deltas.iter_mut().zip(&leaves).zip(&radii) {
            let (Some(delta), Some(leaf), Some(r)) = (delta, leaf, r) else {
                continue;
            };
            let Some(g) = grads.get(leaf) else { continue };
            let alpha = r * step_fraction;
            for (d, &g) in delta.iter_mut().zip(g.data()) {
                let step = if g > 0.0 {
                    alpha
                } else if g < 0.0 {
                    -alpha
                } else {
                    0.0
                };
                *d = (*d + step).clamp(-r, *r);
            }
        }
    }
    as_tensors(&deltas, false)
}
