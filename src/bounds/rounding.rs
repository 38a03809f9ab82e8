//! Bounds that hold in floating point: a rigorous a-posteriori bound on what f32 rounding can
//! have taken off a computed margin lower bound, subtracted before a point counts as certified
//! (`cactus eval --sound`).
//!
//! The bounds are computed in f32 with round-to-nearest, so a computed lower bound of
//! `z_y − z_j` can exceed the exact one by the accumulated rounding error, and a margin that is
//! positive only by that much would be certified falsely. The network whose margins are bounded
//! is the real-arithmetic function of the model's stored f32 parameters: weights and biases,
//! the normalisation's mean and std, batch norm's weight, bias, running statistics and ε — the
//! function PyTorch's twin or an exported ONNX graph defines, of which cactus's f32 forward
//! pass is one rounding.
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
//! - per-channel affine (normalisation, batch norm): the same with n = 2, plus the distance
//!   between the f32 scale and shift computed from the stored parameters and the exact ones
//!   (`δs·(|c| + r + E) + δt`), so that the certified network is the one its parameters
//!   define — what an exported ONNX graph computes;
//! - ReLU (1-Lipschitz, its box formed as `(relu(c − r), relu(c + r))` in centre/radius form):
//!   `E' = E + γ_6·(|c| + r)`;
//! - the margins `S·c + d − |S|·r` of the last layer (S = W_y − W_j, d = b_y − b_j, both
//!   rounded once): `slack = (1 + u)·|S|·E + γ_{n+4}·(|S|·(|c| + r) + |d|)`.
//!
//! Each bound is itself computed in f32 from non-negative terms (an affine layer's as one
//! product of `|W|` with `E + γ·(|c| + r)`), so it is inflated by `1 + 2·γ_n` per layer, which
//! covers its own rounding. The linear-relaxation certifiers
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

/// A computed box and its error bound E, layer by layer.
struct Tracked {
    boxes: Tensor,
    error: Tensor,
}

impl Tracked {
    /// `|c| + r`: a bound on the magnitude of every value the box holds.
    fn magnitude(&self) -> Tensor {
        self.boxes
            .interval_part(0)
            .abs()
            .add(&self.boxes.interval_part(1))
    }

    /// `E + γ·(|c| + r)`: what an affine map of absolute weights carries to the next layer
    /// (`|W|·E + γ·|W|·(|c| + r)` as one product).
    fn carried(&self, g: f32) -> Tensor {
        self.error.add(&self.magnitude().mul_scalar(g))
    }
}

/// Inflate a bound computed in f32 from non-negative sums of at most `n` terms so that it
/// bounds the exact value.
fn inflate(t: &Tensor, n: usize) -> Tensor {
    t.mul_scalar(1.0 + 2.0 * gamma(n.max(1)))
}

/// `γ·|b|`, the bias's share of an affine layer's rounding.
fn scaled_abs(b: Option<&Tensor>, g: f32) -> Option<Tensor> {
    b.map(|b| b.abs().mul_scalar(g))
}

/// The boxes of the hidden layers (all but the last linear layer), as `bounds::propagate`
/// computes them in evaluation mode, with the error bound E of each.
fn propagate_tracked(model: &Model, boxes: Tensor) -> Tracked {
    let device = boxes.device();
    let mut t = Tracked {
        error: zeros_like(&boxes.interval_part(1)),
        boxes,
    };
    if let Some(n) = &model.spec.normalization {
        let (scale, shift) = n.affine(device);
        let exact = normalization_exact(&n.mean, &n.std);
        t = channel_affine(t, &scale, &shift, exact);
    }
    let layers = &model.net.layers;
    for layer in &layers[..layers.len() - 1] {
        t = match layer {
            Layer::Linear(l) => {
                let n = l.weight.dim(1);
                let g = gamma(n + 1);
                let e = t
                    .carried(g)
                    .linear(&l.weight.abs(), scaled_abs(l.bias.as_ref(), g).as_ref());
                Tracked {
                    error: inflate(&e, n + 2),
                    boxes: t.boxes.interval_linear(&l.weight, l.bias.as_ref()),
                }
            }
            Layer::Conv2d(c) => {
                let w = &c.weight;
                let n = w.dim(1) * w.dim(2) * w.dim(3);
                let g = gamma(n + 1);
                let e = t.carried(g).conv2d(
                    &w.abs(),
                    scaled_abs(c.bias.as_ref(), g).as_ref(),
                    c.params,
                );
                Tracked {
                    error: inflate(&e, n + 2),
                    boxes: t.boxes.interval_conv2d(w, c.bias.as_ref(), c.params),
                }
            }
            Layer::BatchNorm(b) => {
                let (scale, shift) = b.affine(&b.running_mean, &b.running_var);
                let exact = batch_norm_exact(b);
                channel_affine(t, &scale, &shift, exact)
            }
            Layer::ReLU => Tracked {
                error: inflate(&t.carried(gamma(6)), 2),
                boxes: t.boxes.interval_relu(),
            },
            Layer::Flatten => {
                let n = t.error.dim(0);
                Tracked {
                    error: t.error.reshape(&[n, t.error.numel() / n.max(1)]),
                    boxes: t.boxes.interval_flatten(),
                }
            }
        };
    }
    t
}

/// The final linear layer of a model (last-layer elision needs one).
fn last_linear(model: &Model) -> &crate::nn::Linear {
    match model.net.layers.last() {
        Some(Layer::Linear(last)) => last,
        _ => panic!("last-layer elision needs a network that ends with a linear layer"),
    }
}

/// Upper bounds on how much f32 rounding can have raised each computed IBP margin lower bound
/// `z_y − z_j` of the box [x − ε, x + ε] ∩ [0, 1] (row-major [N, classes], 0 at j = y), for the
/// model in evaluation mode (running statistics). Subtract it (rounded down) from the IBP bound;
/// for the linear-relaxation certifiers, subtract it times [`LINEAR_RELAXATION_FACTOR`].
pub fn margin_slack(model: &Model, x: &Tensor, eps: f32, labels: &[usize]) -> Vec<f32> {
    margin_slack_of_boxes(model, input_box(x, eps), labels)
}

/// [`margin_slack`] for any input boxes (an interval tensor [2, N, ...], as
/// `bounds::enclosing_box` makes).
pub fn margin_slack_of_boxes(model: &Model, boxes: Tensor, labels: &[usize]) -> Vec<f32> {
    slack_of(&propagate_tracked(model, boxes), last_linear(model), labels)
}

/// The IBP margin lower bounds (`bounds::margin_lower_bounds` in evaluation mode, bit for bit)
/// and their [`margin_slack`], from one propagation.
pub fn ibp_margins_with_slack(
    model: &Model,
    x: &Tensor,
    eps: f32,
    labels: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    ibp_margins_with_slack_of_boxes(model, input_box(x, eps), labels)
}

/// [`ibp_margins_with_slack`] for any input boxes.
pub fn ibp_margins_with_slack_of_boxes(
    model: &Model,
    boxes: Tensor,
    labels: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let hidden = propagate_tracked(model, boxes);
    let last = last_linear(model);
    let lower = hidden
        .boxes
        .interval_elided_margins(&last.weight, last.bias.as_ref(), labels)
        .to_vec();
    (lower, slack_of(&hidden, last, labels))
}

/// The margins' slack from the last hidden layer's box and error bound.
fn slack_of(t: &Tracked, last: &crate::nn::Linear, labels: &[usize]) -> Vec<f32> {
    // |S|·((1 + u)·E + γ·(|c| + r)) through the elided last layer (the radius half of the
    // margins of the box (0, ·) is −|S|·(·)), plus γ·|d| per class.
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

/// A per-channel map's exact scale and shift (from the stored parameters, in f64) with a bound
/// on the f64 error of each, per channel.
struct ExactAffine {
    scale: Vec<f64>,
    shift: Vec<f64>,
    scale_err: Vec<f64>,
    shift_err: Vec<f64>,
}

/// Relative error of a few f64 operations, generously: 2⁻⁵⁰.
const F64_REL: f64 = 1.0 / (1u64 << 50) as f64;

/// The normalisation `(x − mean) / std` as the exact `x·(1/std) + (−mean/std)`.
fn normalization_exact(mean: &[f32], std: &[f32]) -> ExactAffine {
    let scale: Vec<f64> = std.iter().map(|&s| 1.0 / s as f64).collect();
    let shift: Vec<f64> = mean
        .iter()
        .zip(std)
        .map(|(&m, &s)| -(m as f64) / s as f64)
        .collect();
    ExactAffine {
        scale_err: scale.iter().map(|v| v.abs() * F64_REL).collect(),
        shift_err: shift.iter().map(|v| v.abs() * F64_REL).collect(),
        scale,
        shift,
    }
}

/// Batch norm in evaluation, `(x − μ)·w / √(σ² + ε) + b`, as the exact `x·s + (b − μ·s)`.
fn batch_norm_exact(b: &crate::nn::BatchNorm) -> ExactAffine {
    let (w, bias) = (b.weight.to_vec(), b.bias.to_vec());
    let (mean, var) = (b.running_mean.to_vec(), b.running_var.to_vec());
    let mut e = ExactAffine {
        scale: Vec::new(),
        shift: Vec::new(),
        scale_err: Vec::new(),
        shift_err: Vec::new(),
    };
    for c in 0..w.len() {
        let s = w[c] as f64 / (var[c] as f64 + b.eps as f64).sqrt();
        let ms = mean[c] as f64 * s;
        e.scale.push(s);
        e.scale_err.push(s.abs() * F64_REL);
        e.shift.push(bias[c] as f64 - ms);
        e.shift_err
            .push((bias[c].abs() as f64 + 2.0 * ms.abs()) * F64_REL);
    }
    e
}

/// `|computed − exact| + err` per channel, rounded up to f32.
fn distance(computed: &[f32], exact: &[f64], err: &[f64]) -> Vec<f32> {
    computed
        .iter()
        .zip(exact.iter().zip(err))
        .map(|(&v, (&x, &e))| {
            let d = ((v as f64 - x).abs() + e) * (1.0 + 4.0 * U);
            (d as f32).next_up()
        })
        .collect()
}

/// The per-channel affine map `scale·x + shift` (normalisation, batch norm in evaluation):
/// `E' = |scale|·(E + γ·(|c| + r)) + γ·|shift| + δs·(|c| + r + E) + δt`. The last two terms
/// bound the distance between the f32 `scale` and `shift` the model computes from its stored
/// parameters (mean and std, or batch norm's weight, bias and running statistics) and the
/// exact ones (δs, δt): the network certified is the one the parameters define in real
/// arithmetic, as another runtime or verifier reading them computes it (an exported ONNX
/// graph's `Sub`/`Div` and `BatchNormalization`), not only cactus's f32 rounding of it.
fn channel_affine(t: Tracked, scale: &Tensor, shift: &Tensor, exact: ExactAffine) -> Tracked {
    let g = gamma(3);
    let device = scale.device();
    let n = exact.scale.len();
    let delta = |v: Vec<f32>| {
        Tensor::from_vec(v, &[n])
            .to_device(device)
            .expect("device copy")
    };
    let ds = delta(distance(&scale.to_vec(), &exact.scale, &exact.scale_err));
    let dt = delta(distance(&shift.to_vec(), &exact.shift, &exact.shift_err));
    let e = t
        .carried(g)
        .channel_affine(&scale.abs(), &shift.abs().mul_scalar(g));
    let represent = t.magnitude().add(&t.error).channel_affine(&ds, &dt);
    Tracked {
        error: inflate(&e.add(&represent), 5),
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
