//! Soundness of interval bound propagation (IBP).
//!
//! A bound is sound when every input of the box maps inside it. The tests check this
//! empirically, against an independent point forward pass (batch norm applied as the affine map
//! of fixed statistics, computed here in f64):
//!
//! - sampled points of the ε-ball ∩ [0, 1] (uniform, random vertices, the corners, the centre,
//!   for each layer the vertices picked by the sign of the gradient of a few units, which reach
//!   the exact bound of an affine layer, and the vertices that minimise each margin to first
//!   order) stay inside the bounds after *every* layer, for mlp, small, cnn7 and hand-built
//!   linear and one-hidden-layer networks, with and without input normalisation, with batch
//!   norm from running statistics and from a clean batch's statistics (random, partly negative
//!   scales), and their margins z_y − z_j stay above the elided margin lower bounds;
//! - the bounds are not vacuous: at ε = 0 they collapse to the forward pass, they grow
//!   monotonically with ε, and bounds shrunk on purpose are caught by the same sampling;
//! - an IBP-trained `small` (mnist-mini at 14×14) certifies a good share of test points, and
//!   none of them is broken by a strong PGD (every iterate checked) or by sampling; the same
//!   holds for it quantized, pruned by magnitude and pruned 2:4.
//!
//! Tolerance: a value v passes when lo − tol ≤ v ≤ hi + tol with tol = 1e-4·(1 + |v|), far
//! below any real error of the bounds but above f32 rounding.

// `!(v >= lo)` on purpose: a NaN must fail the checks.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use cactus::attack::{pgd_outcome, PgdConfig, Region};
use cactus::autodiff::with_no_grad;
use cactus::bounds::{certified, ibp_loss, input_box, margin_lower_bounds, propagate, BnSource};
use cactus::data::{mnist_mini, Split};
use cactus::nn::{
    Arch, BatchNorm, BatchStats, Init, Layer, Linear, Mode, Model, ModelSpec, Normalization,
    Sequential,
};
use cactus::rng::Rng;
use cactus::train::{Adam, AdamConfig};
use cactus::Tensor;

const CLASSES: usize = 5;

/// (lower, upper) bounds after each prefix of a network, flattened.
type Bounds = Vec<(Vec<f32>, Vec<f32>)>;

fn tol(v: f32) -> f32 {
    1e-4 * (1.0 + v.abs())
}

// ---------------------------------------------------------------------------------------------
// Networks
// ---------------------------------------------------------------------------------------------

/// A random network with non-trivial batch norm: random affine parameters (about half of the
/// scales negative) and running statistics from several random batches of differing spread.
fn random_model(arch: Arch, input: [usize; 3], normalized: bool, init: Init, seed: u64) -> Model {
    let mut rng = Rng::seed(seed);
    let mut spec = ModelSpec::new(arch, input, CLASSES);
    spec.width = 0.125;
    spec.init = init;
    if normalized {
        let c = input[0];
        spec.normalization = Some(Normalization {
            mean: [0.3, 0.6, 0.45][..c].to_vec(),
            std: [0.2, 0.5, 0.3][..c].to_vec(),
        });
    }
    let mut model = Model::new(spec, &mut rng).unwrap();
    for layer in &mut model.net.layers {
        if let Layer::BatchNorm(b) = layer {
            let c = b.channels();
            b.weight = Tensor::rand_uniform(&[c], -1.5, 1.5, &mut rng).requires_grad();
            b.bias = Tensor::rand_uniform(&[c], -0.5, 0.5, &mut rng).requires_grad();
        }
    }
    with_no_grad(|| {
        for k in 0..6 {
            let spread = 0.4 + 0.12 * k as f32;
            let x = images(16, input, spread, &mut rng);
            model.forward_batch_stats(&x, true);
        }
    });
    for layer in &model.net.layers {
        if let Layer::BatchNorm(b) = layer {
            assert!(
                b.running_mean.data().iter().any(|&m| m != 0.0)
                    && b.running_var.data().iter().any(|&v| v != 1.0)
                    && b.weight.data().iter().any(|&w| w < 0.0),
                "batch norm of {} kept trivial statistics or scales",
                arch.name()
            );
        }
    }
    model
}

/// Images in [0, 1], an eighth of the pixels exactly 0 and an eighth exactly 1 (so that the
/// boxes are clipped at the pixel range), the rest uniform in [0, spread].
fn images(n: usize, input: [usize; 3], spread: f32, rng: &mut Rng) -> Tensor {
    let len = n * input.iter().product::<usize>();
    let data = (0..len)
        .map(|_| match rng.below(8) {
            0 => 0.0,
            1 => 1.0,
            _ => spread * rng.uniform(),
        })
        .collect();
    Tensor::from_vec(data, &[n, input[0], input[1], input[2]])
}

/// Hand-built networks on [2, 3, 3] inputs (normalised): `linear` (Flatten, Linear), where IBP
/// with elision is exact, and `shallow` (one hidden ReLU layer).
fn hand_built(seed: u64) -> Vec<(String, Model)> {
    let mut rng = Rng::seed(seed);
    let mut spec = ModelSpec::new(Arch::Mlp, [2, 3, 3], CLASSES);
    spec.normalization = Some(Normalization {
        mean: vec![0.4, 0.5],
        std: vec![0.3, 0.7],
    });
    let linear = vec![
        Layer::Flatten,
        Layer::Linear(Linear::new(18, CLASSES, &mut rng)),
    ];
    let shallow = vec![
        Layer::Flatten,
        Layer::Linear(Linear::new(18, 12, &mut rng)),
        Layer::ReLU,
        Layer::Linear(Linear::new(12, CLASSES, &mut rng)),
    ];
    [("linear", linear), ("shallow", shallow)]
        .into_iter()
        .map(|(name, layers)| {
            let model = Model {
                spec: spec.clone(),
                net: Sequential::new(layers),
            };
            (format!("{name} seed {seed}"), model)
        })
        .collect()
}

/// The networks of the sampling tests: every architecture with and without normalisation,
/// both initialisations, a few seeds.
fn zoo(arch: Arch) -> Vec<(String, Model)> {
    let input = match arch {
        Arch::Small => [1, 8, 8],
        _ => [2, 6, 6],
    };
    [
        (1, false, Init::Pytorch),
        (2, true, Init::Ibp),
        (3, true, Init::Pytorch),
    ]
    .into_iter()
    .map(|(seed, normalized, init)| {
        let name = format!(
            "{} {:?} seed {seed} init {init:?}{}",
            arch.name(),
            input,
            if normalized { " normalised" } else { "" }
        );
        (name, random_model(arch, input, normalized, init, seed))
    })
    .collect()
}

// ---------------------------------------------------------------------------------------------
// The reference: an exact point forward pass with fixed batch-norm statistics
// ---------------------------------------------------------------------------------------------

/// Per-channel (scale, shift) computed here in f64, independently of the library's helpers.
fn affine_f64(weight: &[f32], bias: &[f32], mean: &[f32], var: &[f32], eps: f32) -> [Tensor; 2] {
    let c = weight.len();
    let mut scale = Vec::with_capacity(c);
    let mut shift = Vec::with_capacity(c);
    for k in 0..c {
        let s = weight[k] as f64 / (var[k] as f64 + eps as f64).sqrt();
        scale.push(s as f32);
        shift.push((bias[k] as f64 - mean[k] as f64 * s) as f32);
    }
    [Tensor::from_vec(scale, &[c]), Tensor::from_vec(shift, &[c])]
}

fn bn_map(b: &BatchNorm, mean: &Tensor, var: &Tensor) -> [Tensor; 2] {
    affine_f64(
        b.weight.data(),
        b.bias.data(),
        mean.data(),
        var.data(),
        b.eps,
    )
}

/// The values of a batch of points after the input normalisation (index 0) and after each of
/// the first `layers` layers (index k), batch norm being the fixed affine map of `bn`'s
/// statistics. Differentiable in `x`.
fn point_forward(model: &Model, x: &Tensor, bn: BnSource<'_>, layers: usize) -> Vec<Tensor> {
    let mut h = match &model.spec.normalization {
        None => x.clone(),
        Some(n) => {
            let ones = vec![1.0; n.mean.len()];
            let zeros = vec![0.0; n.mean.len()];
            // (x − mean) / std: the batch-norm map with weight 1, bias 0, variance std², ε 0.
            let var: Vec<f32> = n.std.iter().map(|s| s * s).collect();
            let [scale, shift] = affine_f64(&ones, &zeros, &n.mean, &var, 0.0);
            x.channel_affine(&scale, &shift)
        }
    };
    let mut outs = vec![h.clone()];
    let mut bn_index = 0;
    for layer in &model.net.layers[..layers] {
        h = match layer {
            Layer::BatchNorm(b) => {
                let [scale, shift] = match bn {
                    BnSource::Running => bn_map(b, &b.running_mean, &b.running_var),
                    BnSource::Batch(stats) => {
                        bn_map(b, &stats[bn_index].mean, &stats[bn_index].var)
                    }
                };
                bn_index += 1;
                h.channel_affine(&scale, &shift)
            }
            other => other.forward(&h, Mode::Eval),
        };
        outs.push(h.clone());
    }
    outs
}

// ---------------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------------

/// Points of one input box with a description of each.
struct Points {
    data: Vec<f32>,
    kind: Vec<String>,
}

impl Points {
    fn push(&mut self, p: Vec<f32>, kind: String) {
        self.data.extend(p);
        self.kind.push(kind);
    }
}

/// Points of the box [lo, hi]: the centre (first) and both corners, `n` uniform points, `n`
/// random vertices, for `units` random units of every layer's output the two vertices that the
/// sign of the unit's gradient at the centre picks (they attain the exact bounds of an affine
/// layer, and come close to the true extremes further on), and for each class j ≠ `label` the
/// vertex that the gradient of the margin z_label − z_j picks to minimise it.
#[allow(clippy::too_many_arguments)]
fn box_points(
    model: &Model,
    bn: BnSource<'_>,
    lo: &[f32],
    hi: &[f32],
    n: usize,
    units: usize,
    label: usize,
    rng: &mut Rng,
) -> Points {
    let d = lo.len();
    let mut pts = Points {
        data: Vec::new(),
        kind: Vec::new(),
    };
    let centre: Vec<f32> = lo.iter().zip(hi).map(|(l, h)| 0.5 * (l + h)).collect();
    pts.push(centre.clone(), "centre".into());
    pts.push(lo.to_vec(), "lower corner".into());
    pts.push(hi.to_vec(), "upper corner".into());
    for s in 0..n {
        let p = (0..d)
            .map(|i| (lo[i] + (hi[i] - lo[i]) * rng.uniform()).min(hi[i]))
            .collect();
        pts.push(p, format!("uniform point {s}"));
    }
    for s in 0..n {
        let p = (0..d)
            .map(|i| if rng.below(2) == 0 { lo[i] } else { hi[i] })
            .collect();
        pts.push(p, format!("random vertex {s}"));
    }
    let [c, h, w] = model.spec.input_shape;
    let detached = model.detached();
    for k in 0..=model.net.layers.len() {
        let leaf = Tensor::from_vec(centre.repeat(units), &[units, c, h, w]).requires_grad();
        let out = point_forward(&detached, &leaf, bn, k).pop().unwrap();
        let width = out.numel() / units;
        let chosen: Vec<usize> = (0..units).map(|_| rng.below(width)).collect();
        let mut mask = vec![0.0; units * width];
        for (row, &u) in chosen.iter().enumerate() {
            mask[row * width + u] = 1.0;
        }
        let grads = out
            .reshape(&[units, width])
            .mul(&Tensor::from_vec(mask, &[units, width]))
            .sum()
            .backward();
        let g = grads
            .get(&leaf)
            .map(Tensor::to_vec)
            .unwrap_or_else(|| vec![0.0; units * d]);
        for (row, &u) in chosen.iter().enumerate() {
            for up in [true, false] {
                let p = (0..d)
                    .map(|i| {
                        let gi = g[row * d + i];
                        let high = if gi == 0.0 {
                            rng.below(2) == 0
                        } else {
                            (gi > 0.0) == up
                        };
                        if high {
                            hi[i]
                        } else {
                            lo[i]
                        }
                    })
                    .collect();
                let dir = if up { "max" } else { "min" };
                pts.push(
                    p,
                    format!("gradient vertex ({dir} of unit {u} at layer {k})"),
                );
            }
        }
    }
    let classes = model.spec.num_classes;
    let others: Vec<usize> = (0..classes).filter(|&j| j != label).collect();
    let m = others.len();
    let leaf = Tensor::from_vec(centre.repeat(m), &[m, c, h, w]).requires_grad();
    let logits = point_forward(&detached, &leaf, bn, model.net.layers.len())
        .pop()
        .unwrap();
    let mut spec = vec![0.0; m * classes];
    for (row, &j) in others.iter().enumerate() {
        spec[row * classes + label] = 1.0;
        spec[row * classes + j] = -1.0;
    }
    let grads = logits
        .mul(&Tensor::from_vec(spec, &[m, classes]))
        .sum()
        .backward();
    let g = grads
        .get(&leaf)
        .map(Tensor::to_vec)
        .unwrap_or_else(|| vec![0.0; m * d]);
    for (row, &j) in others.iter().enumerate() {
        let p = (0..d)
            .map(|i| match g[row * d + i] {
                gi if gi > 0.0 => lo[i],
                gi if gi < 0.0 => hi[i],
                _ if rng.below(2) == 0 => lo[i],
                _ => hi[i],
            })
            .collect();
        pts.push(p, format!("margin vertex (min of z_{label} − z_{j})"));
    }
    pts
}

/// What the sampling check runs on.
struct Probe<'a> {
    name: &'a str,
    model: &'a Model,
    bn: BnSource<'a>,
    bn_name: &'a str,
    /// Uniform points and random vertices per box (each).
    samples: usize,
}

/// Check, for the boxes of radius `eps` around the rows of `x`, that sampled points stay inside
/// the propagated bounds after every layer (the radii multiplied by `shrink`: 1 for the real
/// test) and that their margins respect `margin_lower_bounds` (shrunk towards the centre
/// point's margins by the same factor). Returns every violation found,
/// each described (model, BN source, ε, box, layer, unit, point, value and bounds). Boxes
/// flagged in `must_classify` must also have every point classified as their label.
fn violations(
    probe: &Probe<'_>,
    x: &Tensor,
    labels: &[usize],
    eps: f32,
    shrink: f32,
    must_classify: Option<&[bool]>,
    rng: &mut Rng,
) -> Vec<String> {
    let Probe {
        name,
        model,
        bn,
        bn_name,
        samples,
    } = *probe;
    let n_layers = model.net.layers.len();
    let boxes = input_box(x, eps);
    // The ε-ball ∩ [0, 1] itself, not its centre/radius form (which can round a corner in).
    let lo_in: Vec<f32> = x.data().iter().map(|&v| (v - eps).max(0.0)).collect();
    let hi_in: Vec<f32> = x.data().iter().map(|&v| (v + eps).min(1.0)).collect();
    let n = x.dim(0);
    let d = x.numel() / n;
    let mut found = Vec::new();
    let mut report = |msg: String| found.push(msg);

    // Bounds after every prefix of the network, radii scaled by `shrink`.
    let bounds: Bounds = with_no_grad(|| {
        (0..=n_layers)
            .map(|k| {
                let s = propagate(model, &boxes, bn, k);
                let (c, r) = (s.interval_part(0), s.interval_part(1).mul_scalar(shrink));
                let (lo, hi) = Tensor::interval_stack(&c, &r).interval_bounds();
                (lo.to_vec(), hi.to_vec())
            })
            .collect()
    });
    let margins = with_no_grad(|| margin_lower_bounds(model, &boxes, labels, bn)).to_vec();

    for i in 0..n {
        let lo = &lo_in[i * d..(i + 1) * d];
        let hi = &hi_in[i * d..(i + 1) * d];
        let pts = box_points(model, bn, lo, hi, samples, 4, labels[i], rng);
        let m = pts.kind.len();
        let [c, h, w] = model.spec.input_shape;
        let outs = with_no_grad(|| {
            point_forward(
                model,
                &Tensor::from_vec(pts.data, &[m, c, h, w]),
                bn,
                n_layers,
            )
        });
        for (k, out) in outs.iter().enumerate() {
            let (blo, bhi) = &bounds[k];
            let width = out.numel() / m;
            assert_eq!(
                blo.len(),
                n * width,
                "{name}: bounds after layer {k} have the wrong size"
            );
            let (blo, bhi) = (
                &blo[i * width..(i + 1) * width],
                &bhi[i * width..(i + 1) * width],
            );
            for (p, row) in out.data().chunks(width).enumerate() {
                for (u, &v) in row.iter().enumerate() {
                    let t = tol(v);
                    if !(v >= blo[u] - t && v <= bhi[u] + t) {
                        report(format!(
                            "{name}, BN {bn_name}, eps {eps}, box {i}, after layer {k} ({}), unit \
                             {u}: {} gives {v}, outside [{}, {}]",
                            layer_name(model, k),
                            pts.kind[p],
                            blo[u],
                            bhi[u]
                        ));
                    }
                }
            }
        }
        let logits = outs[n_layers].data();
        let y = labels[i];
        let classes = model.spec.num_classes;
        // Shrunk margin bounds: towards the centre point's margins (exact for a linear model).
        let bounds_i: Vec<f32> = (0..classes)
            .map(|j| {
                let (lb, mc) = (margins[i * classes + j], logits[y] - logits[j]);
                if shrink == 1.0 {
                    lb
                } else {
                    mc - shrink * (mc - lb)
                }
            })
            .collect();
        for p in 0..m {
            let z = &logits[p * classes..(p + 1) * classes];
            if must_classify.is_some_and(|c| c[i]) && (0..classes).any(|j| j != y && z[j] >= z[y]) {
                report(format!(
                    "{name}, BN {bn_name}, eps {eps}, certified box {i} (label {y}): {} is \
                     classified as {} (logits {z:?})",
                    pts.kind[p],
                    (0..classes).fold(0, |b, j| if z[j] > z[b] { j } else { b })
                ));
            }
            for j in 0..classes {
                let (margin, bound) = (z[y] - z[j], bounds_i[j]);
                if !(margin >= bound - tol(z[y]).max(tol(z[j]))) {
                    report(format!(
                        "{name}, BN {bn_name}, eps {eps}, box {i} (label {y}): {} has margin \
                         z_{y} − z_{j} = {margin} below its lower bound {bound}",
                        pts.kind[p]
                    ));
                }
            }
        }
    }
    found
}

fn layer_name(model: &Model, k: usize) -> String {
    if k == 0 {
        "input normalisation".into()
    } else {
        model.net.layers[k - 1].describe()
    }
}

fn assert_none(found: &[String]) {
    assert!(
        found.is_empty(),
        "{} sampled values outside their bounds, e.g.:\n  {}",
        found.len(),
        found[..found.len().min(8)].join("\n  ")
    );
}

/// The sampling check over the zoo of one architecture, with running and batch statistics.
fn check_zoo(arch: Arch) {
    let mut nets = zoo(arch);
    if arch == Arch::Mlp {
        nets.extend(hand_built(4));
    }
    for (name, mut model) in nets {
        let mut rng = Rng::seed(100 + name.len() as u64);
        let clean = images(16, model.spec.input_shape, 1.0, &mut rng);
        let (_, stats) = with_no_grad(|| model.forward_batch_stats(&clean, false));
        let x = clean.index_rows(&[0, 1, 2]);
        let labels: Vec<usize> = (0..3).map(|_| rng.below(CLASSES)).collect();
        reference_matches_the_model(&name, &mut model, &clean, &stats);
        if !stats.is_empty() {
            // The two batch-norm sources are really different maps here.
            let bounds =
                |bn| with_no_grad(|| margin_lower_bounds(&model, &input_box(&x, 0.1), &labels, bn));
            let (a, b) = (bounds(BnSource::Running), bounds(BnSource::Batch(&stats)));
            assert!(
                a.data()
                    .iter()
                    .zip(b.data())
                    .any(|(u, v)| (u - v).abs() > 1e-3 * (1.0 + u.abs())),
                "{name}: running and batch statistics give the same bounds"
            );
        }
        for (bn, bn_name) in [
            (BnSource::Running, "running"),
            (BnSource::Batch(&stats), "batch"),
        ] {
            let probe = Probe {
                name: &name,
                model: &model,
                bn,
                bn_name,
                samples: 100,
            };
            for eps in [0.01, 0.1, 0.4] {
                assert_none(&violations(&probe, &x, &labels, eps, 1.0, None, &mut rng));
            }
        }
    }
}

/// The reference forward pass is the network: with running statistics it gives the eval-mode
/// logits, with a batch's statistics the train-mode logits of that batch.
fn reference_matches_the_model(name: &str, model: &mut Model, x: &Tensor, stats: &[BatchStats]) {
    let layers = model.net.layers.len();
    let pairs = with_no_grad(|| {
        [
            (
                "eval",
                model.forward(x, Mode::Eval),
                point_forward(model, x, BnSource::Running, layers)
                    .pop()
                    .unwrap(),
            ),
            (
                "train",
                model.forward_batch_stats(x, false).0,
                point_forward(model, x, BnSource::Batch(stats), layers)
                    .pop()
                    .unwrap(),
            ),
        ]
    });
    for (mode, lib, reference) in pairs {
        for (i, (a, b)) in lib.data().iter().zip(reference.data()).enumerate() {
            assert!(
                (a - b).abs() <= tol(*a),
                "{name}: {mode}-mode logit {i} is {a}, the reference forward gives {b}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Sampled points never leave the bounds
// ---------------------------------------------------------------------------------------------

#[test]
fn mlp_bounds_contain_sampled_points_at_every_layer() {
    check_zoo(Arch::Mlp);
}

#[test]
fn small_bounds_contain_sampled_points_at_every_layer() {
    check_zoo(Arch::Small);
}

#[test]
fn cnn7_bounds_contain_sampled_points_with_running_and_batch_statistics() {
    check_zoo(Arch::Cnn7);
}

// ---------------------------------------------------------------------------------------------
// 2. The bounds are not vacuous
// ---------------------------------------------------------------------------------------------

/// At ε = 0 every box has radius exactly 0 and its centre is the forward pass, at every layer;
/// the margin bounds are the margins.
#[test]
fn zero_radius_boxes_reproduce_the_forward_pass() {
    for arch in [Arch::Mlp, Arch::Small, Arch::Cnn7] {
        for (name, mut model) in zoo(arch) {
            let mut rng = Rng::seed(7);
            let x = images(6, model.spec.input_shape, 1.0, &mut rng);
            let labels: Vec<usize> = (0..6).map(|_| rng.below(CLASSES)).collect();
            let (_, stats) = with_no_grad(|| model.forward_batch_stats(&x, false));
            let layers = model.net.layers.len();
            for (bn, bn_name) in [
                (BnSource::Running, "running"),
                (BnSource::Batch(&stats), "batch"),
            ] {
                with_no_grad(|| {
                    let boxes = input_box(&x, 0.0);
                    let outs = point_forward(&model, &x, bn, layers);
                    for (k, out) in outs.iter().enumerate() {
                        let s = propagate(&model, &boxes, bn, k);
                        let (c, r) = (s.interval_part(0), s.interval_part(1));
                        assert_eq!(c.shape(), out.shape(), "{name}: layer {k} shape");
                        for (u, (&a, &b)) in c.data().iter().zip(out.data()).enumerate() {
                            assert!(
                                (a - b).abs() <= tol(b),
                                "{name}, BN {bn_name}, after layer {k} ({}), element {u}: \
                                 centre {a} of the ε = 0 box, forward pass {b}",
                                layer_name(&model, k)
                            );
                        }
                        assert!(
                            r.data().iter().all(|&v| v == 0.0),
                            "{name}, BN {bn_name}, after layer {k}: ε = 0 box has a non-zero \
                             radius (max {})",
                            r.data().iter().fold(0.0f32, |a, &b| a.max(b))
                        );
                    }
                    let margins = margin_lower_bounds(&model, &boxes, &labels, bn).to_vec();
                    let z = outs[layers].data();
                    for (i, &y) in labels.iter().enumerate() {
                        for j in 0..CLASSES {
                            let (m, want) = (
                                margins[i * CLASSES + j],
                                z[i * CLASSES + y] - z[i * CLASSES + j],
                            );
                            assert!(
                                (m - want).abs() <= tol(want),
                                "{name}, BN {bn_name}, sample {i}: ε = 0 margin bound {m} for \
                                 class {j}, the margin is {want}"
                            );
                        }
                    }
                });
            }
        }
    }
}

/// Nested input boxes give nested bounds at every layer, and margin bounds that only fall; a
/// positive ε gives a positive width at the output.
#[test]
fn bounds_grow_monotonically_with_eps() {
    let epsilons = [0.0, 0.002, 0.01, 0.05, 0.2, 1.0];
    for arch in [Arch::Mlp, Arch::Small, Arch::Cnn7] {
        for (name, mut model) in zoo(arch) {
            let mut rng = Rng::seed(8);
            let x = images(6, model.spec.input_shape, 1.0, &mut rng);
            let labels: Vec<usize> = (0..6).map(|_| rng.below(CLASSES)).collect();
            let (_, stats) = with_no_grad(|| model.forward_batch_stats(&x, false));
            let layers = model.net.layers.len();
            for (bn, bn_name) in [
                (BnSource::Running, "running"),
                (BnSource::Batch(&stats), "batch"),
            ] {
                with_no_grad(|| {
                    let mut prev: Option<(Bounds, Vec<f32>)> = None;
                    for eps in epsilons {
                        let boxes = input_box(&x, eps);
                        let bounds: Bounds = (0..=layers)
                            .map(|k| {
                                let (lo, hi) = propagate(&model, &boxes, bn, k).interval_bounds();
                                (lo.to_vec(), hi.to_vec())
                            })
                            .collect();
                        let margins = margin_lower_bounds(&model, &boxes, &labels, bn).to_vec();
                        let (out_lo, out_hi) = &bounds[layers];
                        if eps > 0.0 {
                            assert!(
                                out_lo.iter().zip(out_hi).all(|(l, h)| h > l),
                                "{name}, BN {bn_name}: eps {eps} gives a zero-width logit bound"
                            );
                        }
                        if let Some((pb, pm)) = &prev {
                            for k in 0..=layers {
                                let ((lo, hi), (plo, phi)) = (&bounds[k], &pb[k]);
                                for u in 0..lo.len() {
                                    assert!(
                                        lo[u] <= plo[u] + tol(plo[u])
                                            && hi[u] >= phi[u] - tol(phi[u]),
                                        "{name}, BN {bn_name}, after layer {k} ({}), element \
                                         {u}: eps {eps} gives [{}, {}], not containing the \
                                         smaller eps's [{}, {}]",
                                        layer_name(&model, k),
                                        lo[u],
                                        hi[u],
                                        plo[u],
                                        phi[u]
                                    );
                                }
                            }
                            for (u, (&m, &pm)) in margins.iter().zip(pm).enumerate() {
                                assert!(
                                    m <= pm + tol(pm),
                                    "{name}, BN {bn_name}: margin bound {u} rose from {pm} to \
                                     {m} at eps {eps}"
                                );
                            }
                        }
                        prev = Some((bounds, margins));
                    }
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The sampling check can fail
// ---------------------------------------------------------------------------------------------

/// Bounds whose radii are shrunk are not sound, and the sampling check must say so: halved, at
/// the normalised input and at the first affine layer (where IBP is exact, so the
/// gradient-sign vertices reach the true bound) of every architecture, with both batch-norm
/// sources, and in the margins of a linear network (where elided IBP is exact); shrunk by only
/// 2%, still at the first affine layer.
#[test]
fn shrunken_bounds_are_caught_by_sampling() {
    let mut nets: Vec<(String, Model)> = [Arch::Mlp, Arch::Small, Arch::Cnn7]
        .into_iter()
        .map(|arch| zoo(arch).swap_remove(1))
        .collect();
    nets.extend(hand_built(5).into_iter().take(1));
    for (name, mut model) in nets {
        let mut rng = Rng::seed(9);
        let clean = images(16, model.spec.input_shape, 1.0, &mut rng);
        let (_, stats) = with_no_grad(|| model.forward_batch_stats(&clean, false));
        let x = clean.index_rows(&[0, 1]);
        let labels = [0, 1];
        let first_affine = 1 + model
            .net
            .layers
            .iter()
            .position(|l| matches!(l, Layer::Linear(_) | Layer::Conv2d(_)))
            .unwrap();
        let is_linear = model.net.layers.len() == first_affine;
        for (bn, bn_name) in [
            (BnSource::Running, "running"),
            (BnSource::Batch(&stats), "batch"),
        ] {
            let probe = Probe {
                name: &name,
                model: &model,
                bn,
                bn_name,
                samples: 100,
            };
            for (shrink, layers) in [(0.5, vec![0, first_affine]), (0.98, vec![first_affine])] {
                let found = violations(&probe, &x, &labels, 0.1, shrink, None, &mut rng);
                for k in layers {
                    let tag = format!("after layer {k} (");
                    assert!(
                        found.iter().any(|f| f.contains(&tag)),
                        "{name}, BN {bn_name}: bounds after layer {k} ({}) shrunk by the factor \
                         {shrink} went unnoticed by the sampling check",
                        layer_name(&model, k)
                    );
                }
                if is_linear {
                    assert!(
                        found.iter().any(|f| f.contains("below its lower bound")),
                        "{name}, BN {bn_name}: margin bounds shrunk by {shrink} went unnoticed"
                    );
                }
            }
            // The unshrunk bounds of the same boxes are clean: the violations come from the
            // shrinking alone.
            assert_none(&violations(&probe, &x, &labels, 0.1, 1.0, None, &mut rng));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A trained network: certificates against attacks and sampling
// ---------------------------------------------------------------------------------------------

/// mnist-mini images averaged over 2×2 pixels (14×14: the test trains in seconds), in a seeded
/// random order, with their labels.
fn mnist_14(split: Split, n: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let data = mnist_mini::load(split).unwrap();
    let mut order: Vec<usize> = (0..data.len()).collect();
    Rng::seed(seed).shuffle(&mut order);
    let mut pixels = Vec::with_capacity(n * 196);
    for &i in &order[..n] {
        let img = data.image(i);
        for r in 0..14 {
            for c in 0..14 {
                let at = |dr: usize, dc: usize| img[(2 * r + dr) * 28 + 2 * c + dc];
                pixels.push(0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)));
            }
        }
    }
    let labels = order[..n].iter().map(|&i| data.labels[i]).collect();
    (Tensor::from_vec(pixels, &[n, 1, 14, 14]), labels)
}

const TRAIN_EPS: f32 = 0.1;

/// `small` trained with the IBP loss: CE warm-up, then ε and the certified weight ramp up.
fn ibp_trained_small() -> Model {
    let (xs, ys) = mnist_14(Split::Train, 4000, 1);
    let mut rng = Rng::seed(2);
    let mut model = Model::new(ModelSpec::new(Arch::Small, [1, 14, 14], 10), &mut rng).unwrap();
    let mut opt = Adam::new(AdamConfig {
        lr: 1e-3,
        max_grad_norm: Some(10.0),
        ..AdamConfig::default()
    });
    let (steps, warmup, ramp, batch) = (WARMUP + RAMP + FINAL, WARMUP, RAMP, 64);
    for step in 0..steps {
        let idx: Vec<usize> = (0..batch).map(|_| rng.below(ys.len())).collect();
        let x = xs.index_rows(&idx);
        let y: Vec<usize> = idx.iter().map(|&i| ys[i]).collect();
        let t = (step.saturating_sub(warmup) as f32 / ramp as f32).min(1.0);
        let (logits, stats) = model.forward_batch_stats(&x, true);
        let mut loss = cactus::ops::cross_entropy(&logits, &y);
        if step >= warmup {
            let margins = margin_lower_bounds(
                &model,
                &input_box(&x, t * TRAIN_EPS),
                &y,
                BnSource::Batch(&stats),
            );
            let w = 0.75 * t;
            loss = loss
                .mul_scalar(1.0 - w)
                .add(&ibp_loss(&margins, &y).mul_scalar(w));
        }
        let grads = loss.backward();
        drop(loss);
        opt.step(&mut model.net.parameters_mut(), &grads).unwrap();
    }
    model
}

const WARMUP: usize = 50;
const RAMP: usize = 150;
const FINAL: usize = 200;

#[test]
fn certified_points_of_a_trained_network_survive_pgd_and_sampling() {
    let start = std::time::Instant::now();
    let model = ibp_trained_small();
    eprintln!("training: {:?}", start.elapsed());
    certified_points_hold(&model, "IBP-trained small", 5);
    eprintln!("total: {:?}", start.elapsed());
}

/// The same checks on the *compressed* weights: what `cactus eval` certifies for a quantized or
/// pruned network (bounds on the dequantized weights, running statistics of the full network)
/// must hold for that network, not for the original.
#[test]
fn certified_points_of_quantized_and_pruned_networks_survive_pgd_and_sampling() {
    use cactus::compress::prune::prune;
    use cactus::compress::quant::{quantize_model, Format, Granularity};
    let model = ibp_trained_small();
    for (format, granularity) in [
        (Format::INT8, Granularity::PerTensor),
        (Format::INT4, Granularity::PerTensor),
        (Format::Int(3), Granularity::PerChannel),
        (Format::Fp16, Granularity::PerTensor),
    ] {
        let q = quantize_model(&model, format, granularity).detached();
        certified_points_hold(&q, &format!("small at {format} {granularity}"), 10);
    }
    let (pruned, _) = prune(&model, "gul1".parse().unwrap(), 0.7).unwrap();
    certified_points_hold(&pruned.detached(), "small pruned gul1 0.7", 10);
    // N:M sparsity: half of every group of four weights gone, in every layer.
    let (pruned, masks) = prune(&model, "2:4".parse().unwrap(), 0.5).unwrap();
    assert_eq!(masks.weight_sparsity(), 0.5);
    certified_points_hold(&pruned.detached(), "small pruned 2:4", 10);
}

/// Certify 300 test points of `model` at ε = 0.08 (at least one in `min_share`), then attack
/// every certified point with a strong PGD (no iterate may be misclassified, and the best points
/// respect the margin bounds) and sample 20 of them (every layer inside its bounds).
fn certified_points_hold(model: &Model, name: &str, min_share: usize) {
    let eps = 0.08;
    let (x, y) = mnist_14(Split::Test, 300, 3);
    let (cert, clean) = with_no_grad(|| {
        let margins = margin_lower_bounds(model, &input_box(&x, eps), &y, BnSource::Running);
        let pred = model.forward(&x, Mode::Eval).argmax_rows();
        (certified(&margins, &y), pred)
    });
    let n_cert = cert.iter().filter(|&&c| c).count();
    let n_clean = clean.iter().zip(&y).filter(|(p, t)| p == t).count();
    eprintln!("{name}: clean {n_clean}/300, certified {n_cert}/300 at eps {eps}");
    assert!(
        n_cert * min_share >= y.len(),
        "only {n_cert} of {} test points certified at eps {eps} (clean {n_clean}): the \
         soundness checks below would test too little",
        y.len()
    );
    for (i, (&c, (&p, &t))) in cert.iter().zip(clean.iter().zip(&y)).enumerate() {
        assert!(
            !c || p == t,
            "test point {i} is certified but misclassified ({p} for {t})"
        );
    }

    // A strong PGD on every certified point: no iterate may be misclassified.
    let idx: Vec<usize> = (0..y.len()).filter(|&i| cert[i]).collect();
    let xc = x.index_rows(&idx);
    let yc: Vec<usize> = idx.iter().map(|&i| y[i]).collect();
    let steps = 50;
    let cfg = PgdConfig {
        steps,
        restarts: 3,
        decay: cactus::attack::StepDecay::at_fractions(steps, &[0.5, 0.75], 0.5),
        ..PgdConfig::evaluation()
    };
    let region = Region::linf_ball(&xc, eps);
    let out = pgd_outcome(
        model,
        &xc,
        &yc,
        &region,
        &cfg,
        Mode::Eval,
        &mut Rng::seed(4),
    );
    assert!(region.contains(&out.x_adv), "PGD left the ε-ball");
    for (k, &fooled) in out.fooled.iter().enumerate() {
        assert!(
            !fooled,
            "certified test point {} (label {}) misclassified by a PGD iterate at eps {eps}",
            idx[k], yc[k]
        );
    }
    // The attack's best points respect the margin bounds too.
    let margins = with_no_grad(|| {
        margin_lower_bounds(model, &input_box(&xc, eps), &yc, BnSource::Running).to_vec()
    });
    let adv_logits = with_no_grad(|| model.forward(&out.x_adv, Mode::Eval)).to_vec();
    for (k, &t) in yc.iter().enumerate() {
        let z = &adv_logits[k * 10..(k + 1) * 10];
        for j in 0..10 {
            let lb = margins[k * 10 + j];
            assert!(
                z[t] - z[j] >= lb - tol(z[t]).max(tol(z[j])),
                "certified test point {}: PGD point has margin z_{t} − z_{j} = {} below its \
                 lower bound {lb}",
                idx[k],
                z[t] - z[j]
            );
        }
    }
    // The same attack is not toothless: at 3ε it breaks some of these points.
    let wide = Region::linf_ball(&xc, 3.0 * eps);
    let broken = pgd_outcome(model, &xc, &yc, &wide, &cfg, Mode::Eval, &mut Rng::seed(5))
        .fooled
        .iter()
        .filter(|&&f| f)
        .count();
    eprintln!("PGD at 3 eps breaks {broken}/{} certified points", yc.len());
    assert!(
        broken > 0,
        "PGD at 3ε broke none of the {} certified points",
        yc.len()
    );

    // Sampling: 20 certified points, about 200 points each plus gradient vertices.
    let some: Vec<usize> = (0..idx.len().min(20)).collect();
    let probe = Probe {
        name,
        model,
        bn: BnSource::Running,
        bn_name: "running",
        samples: 100,
    };
    let found = violations(
        &probe,
        &xc.index_rows(&some),
        &some.iter().map(|&k| yc[k]).collect::<Vec<_>>(),
        eps,
        1.0,
        Some(&vec![true; some.len()]),
        &mut Rng::seed(6),
    );
    assert_none(&found);
}

/// The input box holds its exact corners max(x − ε, 0) and min(x + ε, 1) in f32: the
/// centre/radius form is rounded outward, so no attack or sample can land outside the box
/// that was bounded.
#[test]
fn input_boxes_contain_their_exact_corners() {
    let mut rng = Rng::seed(77);
    for eps in [1e-3f32, 0.01, 0.1, 0.3, 8.0 / 255.0] {
        let x = Tensor::rand_uniform(&[64, 1, 7, 7], 0.0, 1.0, &mut rng);
        let (lo, hi) = input_box(&x, eps).interval_bounds();
        for (i, &v) in x.data().iter().enumerate() {
            let (l, h) = ((v - eps).clamp(0.0, 1.0), (v + eps).clamp(0.0, 1.0));
            assert!(
                lo.data()[i] <= l && hi.data()[i] >= h,
                "ε {eps}, x {v}: box [{}, {}] misses [{l}, {h}]",
                lo.data()[i],
                hi.data()[i]
            );
        }
    }
}

/// The tighter verifiers on the trained network, at an ε where IBP leaves many points open: every
/// point certified by CROWN, α-CROWN or branch and bound survives a strong PGD (margin loss and
/// cross-entropy restarts, every iterate checked), the attack's best points respect the CROWN
/// margin bounds, and each falsified point's counterexample is misclassified and in the box.
#[test]
fn points_certified_by_crown_alpha_crown_and_bab_survive_pgd() {
    use cactus::verify::bab::verify_point;
    use cactus::verify::{margin_bounds, BoundNet, Certifier, Verdict, VerifyConfig};
    let model = ibp_trained_small().detached();
    let net = BoundNet::new(&model).unwrap();
    let eps = 0.12;
    let (x, y) = mnist_14(Split::Test, 120, 6);
    let mut cfg = VerifyConfig::default();
    cfg.alpha.iterations = 8;
    cfg.bab.timeout = 2.0;
    let k = 10;
    let proved = |m: &[f32], p: usize| (0..k).all(|j| j == y[p] || m[p * k + j] > 0.0);
    let mut certified = vec![false; y.len()];
    let mut counts = Vec::new();
    for c in [Certifier::Ibp, Certifier::Crown, Certifier::AlphaCrown] {
        let m = margin_bounds(&model, &net, &x, &y, eps, c, &cfg).unwrap();
        let n = (0..y.len()).filter(|&p| proved(&m, p)).count();
        counts.push((c, n));
        for (p, cert) in certified.iter_mut().enumerate() {
            *cert |= proved(&m, p);
        }
    }
    // Branch and bound on (up to 15) correct points α-CROWN leaves open.
    let pred = with_no_grad(|| model.forward(&x, Mode::Eval)).argmax_rows();
    let open: Vec<usize> = (0..y.len())
        .filter(|&p| !certified[p] && pred[p] == y[p])
        .take(15)
        .collect();
    let (mut bab_verified, mut falsified) = (0, 0);
    for &p in &open {
        let xp = x.index_rows(&[p]);
        let out = verify_point(&model, &net, &xp, y[p], eps, None, &cfg).unwrap();
        match out.verdict {
            Verdict::Verified => {
                certified[p] = true;
                bab_verified += 1;
            }
            Verdict::Falsified(cex) => {
                falsified += 1;
                let xp = xp.data();
                for (c, v) in cex.iter().zip(xp) {
                    assert!(*c >= (v - eps).max(0.0) && *c <= (v + eps).min(1.0));
                }
                let ct = Tensor::from_vec(cex, &[1, 1, 14, 14]);
                let pc = with_no_grad(|| model.forward(&ct, Mode::Eval)).argmax_rows();
                let logits = with_no_grad(|| model.forward(&ct, Mode::Eval)).to_vec();
                assert!(
                    (0..k).any(|j| j != y[p] && logits[j] > logits[y[p]]),
                    "point {p}: the counterexample is classified {} (label {})",
                    pc[0],
                    y[p]
                );
            }
            Verdict::Unknown => {}
        }
    }
    eprintln!(
        "certified at eps {eps}: {counts:?}; branch and bound on {} open points: {bab_verified} \
         verified, {falsified} falsified",
        open.len()
    );
    let (ibp, crown) = (counts[0].1, counts[1].1);
    assert!(
        crown > ibp,
        "CROWN ({crown}) certifies no more than IBP ({ibp}) here"
    );

    let idx: Vec<usize> = (0..y.len()).filter(|&p| certified[p]).collect();
    let xc = x.index_rows(&idx);
    let yc: Vec<usize> = idx.iter().map(|&p| y[p]).collect();
    let steps = 50;
    let pgd = PgdConfig {
        steps,
        restarts: 4,
        decay: cactus::attack::StepDecay::at_fractions(steps, &[0.5, 0.75], 0.5),
        ..PgdConfig::evaluation()
    };
    let region = Region::linf_ball(&xc, eps);
    let out = pgd_outcome(
        &model,
        &xc,
        &yc,
        &region,
        &pgd,
        Mode::Eval,
        &mut Rng::seed(8),
    );
    for (i, &fooled) in out.fooled.iter().enumerate() {
        assert!(
            !fooled,
            "test point {} certified (by CROWN, alpha-CROWN or BaB) is misclassified by PGD",
            idx[i]
        );
    }
    let crown = margin_bounds(&model, &net, &xc, &yc, eps, Certifier::Crown, &cfg).unwrap();
    let adv = with_no_grad(|| model.forward(&out.x_adv, Mode::Eval)).to_vec();
    for (i, &t) in yc.iter().enumerate() {
        let z = &adv[i * k..(i + 1) * k];
        for j in 0..k {
            let lb = crown[i * k + j];
            assert!(
                z[t] - z[j] >= lb - tol(z[t]).max(tol(z[j])),
                "point {}: PGD margin z_{t} − z_{j} = {} below its CROWN bound {lb}",
                idx[i],
                z[t] - z[j]
            );
        }
    }
}
