//! Bounds that hold in floating point: a rigorous a-posteriori bound on what f32 rounding can
//! have taken off a computed margin lower bound, subtracted before a point counts as certified
//! (`cactus eval --sound`).
//!
//! The bounds are computed in f32 with round-to-nearest, so a computed lower bound of
//! `z_y − z_j` can exceed the exact one by the accumulated rounding error, and a margin that is
//! positive only by that much would be certified falsely. The network whose margins are bounded
//! is the real-arithmetic function of the model's f32 parameters, with the normalisation and
//! batch-norm maps as the f32 per-channel `scale` and `shift` both the forward pass and the
//! bounds use.
//!
//! The error is tracked layer by layer along the interval bound propagation of the box, as in
//! the floating-point-sound analyses of DeepPoly/ERAN. For a computed box (c, r) at some layer
//! every exact reachable value v satisfies `|v − c| ≤ r + E`, with `E = 0` at the input (the
//! input box encloses its exact corners, `ops::interval::enclosing_box`) and, with
//! `γ_n = n·u / (1 − n·u)`, `u = 2⁻²⁴` (Higham's bound on a sum of n products in any order,
//! fused or not):
//! - affine (linear or conv, fan-in n): `E' = |W|·E + γ_{n+1}·(|W|·(|c| + r) + |b|)` — the
//!   centre `W·c + b` is off by at most the second term, the radius `|W|·r` is short by at most
//!   `γ_n·|W|·r`;
//! - per-channel affine (normalisation, batch norm): the same with n = 2;
//! - ReLU (1-Lipschitz, its box formed as `(relu(c − r), relu(c + r))` in centre/radius form):
//!   `E' = E + γ_6·(|c| + r)`;
//! - the margins `S·c + d − |S|·r` of the last layer (S = W_y − W_j, d = b_y − b_j, both
//!   rounded once): `slack = (1 + u)·|S|·E + γ_{n+4}·(|S|·(|c| + r) + |d|)`.
//!
//! Each bound is itself computed in f32 from non-negative terms, so it is inflated by
//! `1 + 2·γ_n` per layer, which covers its own rounding. The linear-relaxation certifiers
//! (CROWN, CROWN-IBP, α-CROWN) round in the same products plus their backward coefficient
//! products, relaxation intercepts and concretisation, each bounded by the same magnitudes
//! (relaxation slopes lie in [0, 1]; an intermediate bound off by e moves any ReLU relaxation by
//! at most e): their slack is [`LINEAR_RELAXATION_FACTOR`] times this one.

use crate::bounds::ibp::input_box;
use crate::nn::{Layer, Model};
use crate::tensor::Tensor;

/// The unit roundoff of f32 (round to nearest).
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// How many times the interval propagation's slack bounds the rounding of the
/// linear-relaxation certifiers: the forward intermediate bounds, the backward coefficient
/// products, and the intercepts with the concretisation, each bounded by the slack's
/// magnitudes, with one more for the relaxations built on intermediate bounds that are off by
/// their own slack.
pub const LINEAR_RELAXATION_FACTOR: f32 = 4.0;

/// `γ_n = n·u / (1 − n·u)`.
fn gamma(n: usize) -> f32 {
    let nu = n as f64 * U;
    assert!(
        nu < 0.5,
        "a sum of {n} terms is beyond the rounding analysis"
    );
    (nu / (1.0 - nu)) as f32
}

/// Zeros shaped and placed as `t`.
fn zeros_like(t: &Tensor) -> Tensor {
    Tensor::full_on(t.shape(), 0.0, t.device())
        .unwrap_or_else(|e| panic!("zeros on {}: {e}", t.device()))
}

/// The box (0, v): radius `v`, centre 0.
fn radius_box(v: &Tensor) -> Tensor {
    Tensor::interval_stack(&zeros_like(v), v)
}

/// `|W|·v` for a linear layer's weight and a batch of non-negative vectors [N, in]: the radius
/// half of an interval map of the box (0, v).
fn abs_linear(v: &Tensor, weight: &Tensor) -> Tensor {
    radius_box(v).interval_linear(weight, None).interval_part(1)
}

/// Slack and its layer-to-layer state: the box's magnitude `|c| + r` and the error bound E.
struct Tracked {
    boxes: Tensor,
    error: Tensor,
}

impl Tracked {
    fn magnitude(&self) -> Tensor {
        self.boxes
            .interval_part(0)
            .abs()
            .add(&self.boxes.interval_part(1))
    }
}

/// Inflate a bound computed in f32 from non-negative sums of at most `n` terms so that it
/// bounds the exact value.
fn inflate(t: &Tensor, n: usize) -> Tensor {
    t.mul_scalar(1.0 + 2.0 * gamma(n.max(1)))
}

/// Upper bounds on how much f32 rounding can have raised each computed IBP margin lower bound
/// `z_y − z_j` of the box [x − ε, x + ε] ∩ [0, 1] (row-major [N, classes], 0 at j = y), for the
/// model in evaluation mode (running statistics). Subtract it (rounded down) from the IBP bound;
/// for the linear-relaxation certifiers, subtract it times [`LINEAR_RELAXATION_FACTOR`].
pub fn margin_slack(model: &Model, x: &Tensor, eps: f32, labels: &[usize]) -> Vec<f32> {
    let layers = &model.net.layers;
    let Some(Layer::Linear(last)) = layers.last() else {
        panic!("last-layer elision needs a network that ends with a linear layer");
    };
    let boxes = input_box(x, eps);
    let mut t = Tracked {
        error: zeros_like(&boxes.interval_part(0)),
        boxes,
    };
    if let Some(n) = &model.spec.normalization {
        let (scale, shift) = n.affine(x.device());
        t = channel_affine(t, &scale, &shift);
    }
    for layer in &layers[..layers.len() - 1] {
        t = match layer {
            Layer::Linear(l) => {
                let n = l.weight.dim(1);
                let m = t.magnitude();
                let mut local = abs_linear(&m, &l.weight);
                if let Some(b) = &l.bias {
                    local = local.add(&b.abs());
                }
                let carried = abs_linear(&t.error, &l.weight);
                Tracked {
                    error: inflate(&carried.add(&local.mul_scalar(gamma(n + 1))), n + 1),
                    boxes: t.boxes.interval_linear(&l.weight, l.bias.as_ref()),
                }
            }
            Layer::Conv2d(c) => {
                let w = &c.weight;
                let n = w.dim(1) * w.dim(2) * w.dim(3);
                let abs_conv = |v: &Tensor| {
                    radius_box(v)
                        .interval_conv2d(w, None, c.params)
                        .interval_part(1)
                };
                let m = t.magnitude();
                let mut local = abs_conv(&m);
                if let Some(b) = &c.bias {
                    // |b| per output channel, broadcast over the batch and the pixels.
                    let ch = b.abs().reshape(&[b.numel(), 1, 1]);
                    local = local.add(&ch);
                }
                let carried = abs_conv(&t.error);
                Tracked {
                    error: inflate(&carried.add(&local.mul_scalar(gamma(n + 1))), n + 1),
                    boxes: t.boxes.interval_conv2d(w, c.bias.as_ref(), c.params),
                }
            }
            Layer::BatchNorm(b) => {
                let (scale, shift) = b.affine(&b.running_mean, &b.running_var);
                channel_affine(t, &scale, &shift)
            }
            Layer::ReLU => {
                let m = t.magnitude();
                Tracked {
                    error: inflate(&t.error.add(&m.mul_scalar(gamma(6))), 2),
                    boxes: t.boxes.interval_relu(),
                }
            }
            Layer::Flatten => {
                let n = t.error.dim(0);
                Tracked {
                    error: t.error.reshape(&[n, t.error.numel() / n.max(1)]),
                    boxes: t.boxes.interval_flatten(),
                }
            }
        };
    }
    // The margins: |S|·((1 + u)·E + γ·(|c| + r)) through the elided last layer (the radius
    // half of the margins of the box (0, ·) is −|S|·(·)), plus γ·|d| per class.
    let n = last.weight.dim(1);
    let g = gamma(n + 4);
    let spread = t
        .error
        .mul_scalar((1.0 + U) as f32)
        .add(&t.magnitude().mul_scalar(g));
    let through = radius_box(&spread)
        .interval_elided_margins(&last.weight, None, labels)
        .neg();
    let through = inflate(&through, n + 1).to_vec();
    let bias: Vec<f32> = match &last.bias {
        Some(b) => b.to_vec(),
        None => vec![0.0; last.weight.dim(0)],
    };
    let k = bias.len();
    let mut slack = through;
    for (row, &y) in slack.chunks_mut(k).zip(labels) {
        for (j, s) in row.iter_mut().enumerate() {
            if j == y {
                *s = 0.0;
            } else {
                let d = (bias[y] as f64 - bias[j] as f64).abs();
                // Up, so that the sum bounds the exact one.
                *s = ((*s as f64 + g as f64 * d) * (1.0 + 4.0 * U)) as f32;
                *s = s.next_up();
            }
        }
    }
    slack
}

/// The per-channel affine map `scale·x + shift` (normalisation, batch norm in evaluation).
fn channel_affine(t: Tracked, scale: &Tensor, shift: &Tensor) -> Tracked {
    let m = t.magnitude();
    let zero = zeros_like(scale);
    // |scale|·(|c| + r) + |shift|, the shift broadcast per channel as the map does.
    let local = Tensor::interval_stack(&m, &zeros_like(&m))
        .interval_channel_affine(&scale.abs(), &shift.abs())
        .interval_part(0);
    let carried = radius_box(&t.error)
        .interval_channel_affine(scale, &zero)
        .interval_part(1);
    Tracked {
        error: inflate(&carried.add(&local.mul_scalar(gamma(3))), 2),
        boxes: t.boxes.interval_channel_affine(scale, shift),
    }
}

/// `lower − slack·factor` for every margin, rounded down: what a sound certificate may use.
pub fn sound_lower_bounds(lower: &[f32], slack: &[f32], factor: f32) -> Vec<f32> {
    assert_eq!(lower.len(), slack.len(), "one slack per margin bound");
    lower
        .iter()
        .zip(slack)
        .map(|(&l, &s)| {
            let v = l as f64 - factor as f64 * s as f64;
            // The nearest f32, then one step down: never above the exact difference.
            (v as f32).next_down()
        })
        .collect()
}
