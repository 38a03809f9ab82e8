//! The verifiers of `cactus::verify`: CROWN, CROWN-IBP, α-CROWN and branch and bound.
//!
//! - Soundness: on random networks of every layer kind (strided and padded convolutions, batch
//!   norm with random running statistics and partly negative scales, input normalisation), the
//!   margin lower bounds of every certifier lie below the margins of many sampled points of the
//!   box (uniform, vertices, and the vertices that minimise each margin to first order).
//! - Tightness: at ε = 0 the CROWN bounds are the forward pass's margins; α-CROWN is never looser
//!   than CROWN (same start); on these networks CROWN is tighter than IBP on average.
//! - The gradient of the α-CROWN bound with respect to the slopes matches finite differences.
//! - Completeness of branch and bound on tiny networks where a fine grid gives the true minimum
//!   margin: every point is decided and agrees with the truth, falsified points come with a
//!   counterexample whose margin is negative.

#![allow(clippy::neg_cmp_op_on_partial_ord)]

use cactus::autodiff::with_no_grad;
use cactus::nn::{Arch, Layer, Linear, Mode, Model, ModelSpec, Normalization, Sequential};
use cactus::rng::Rng;
use cactus::verify::{margin_bounds, BoundNet, Certifier, VerifyConfig};
use cactus::Tensor;

const CLASSES: usize = 4;

/// A random network with non-trivial batch norm (random scales, partly negative, and running
/// statistics of random batches).
fn random_model(arch: Arch, input: [usize; 3], seed: u64) -> Model {
    let mut rng = Rng::seed(seed);
    let mut spec = ModelSpec::new(arch, input, CLASSES);
    spec.width = if arch == Arch::Mlp { 0.125 } else { 0.25 };
    spec.normalization = Some(Normalization {
        mean: [0.3, 0.6, 0.45][..input[0]].to_vec(),
        std: [0.2, 0.5, 0.3][..input[0]].to_vec(),
    });
    let mut model = Model::new(spec, &mut rng).unwrap();
    for layer in &mut model.net.layers {
        if let Layer::BatchNorm(b) = layer {
            let c = b.channels();
            b.weight = Tensor::rand_uniform(&[c], -1.5, 1.5, &mut rng);
            b.bias = Tensor::rand_uniform(&[c], -0.5, 0.5, &mut rng);
        }
    }
    with_no_grad(|| {
        for _ in 0..4 {
            let x = Tensor::rand_uniform(&[16, input[0], input[1], input[2]], 0.0, 1.0, &mut rng);
            model.forward_batch_stats(&x, true);
        }
    });
    model
}

/// Margins z_y − z_j `[points × classes]` of the forward pass in eval mode.
fn margins_at(model: &Model, x: &Tensor, labels: &[usize]) -> Vec<f32> {
    let logits = with_no_grad(|| model.forward(x, Mode::Eval)).to_vec();
    let k = logits.len() / labels.len();
    logits
        .chunks(k)
        .zip(labels)
        .flat_map(|(row, &y)| row.iter().map(move |&v| row[y] - v))
        .collect()
}

/// Points of the box [x − ε, x + ε] ∩ [0, 1] around one image: uniform samples and random
/// vertices.
fn samples(x: &[f32], eps: f32, count: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    (0..count)
        .map(|s| {
            x.iter()
                .map(|&v| {
                    let (lo, hi) = ((v - eps).max(0.0), (v + eps).min(1.0));
                    if s % 2 == 0 {
                        lo + (hi - lo) * rng.uniform()
                    } else if rng.below(2) == 0 {
                        lo
                    } else {
                        hi
                    }
                })
                .collect()
        })
        .collect()
}

fn tol(v: f32) -> f32 {
    1e-4 * (1.0 + v.abs())
}

fn check_sound(name: &str, model: &Model, x: &Tensor, labels: &[usize], eps: f32, bounds: &[f32]) {
    let mut rng = Rng::seed(7);
    let per = x.numel() / labels.len();
    let k = model.spec.num_classes;
    for (p, &y) in labels.iter().enumerate() {
        let xp = &x.data()[p * per..(p + 1) * per];
        let pts = samples(xp, eps, 64, &mut rng);
        let mut shape = x.shape().to_vec();
        shape[0] = pts.len();
        let batch = Tensor::from_vec(pts.concat(), &shape);
        let m = margins_at(model, &batch, &vec![y; pts.len()]);
        for row in m.chunks(k) {
            for j in 0..k {
                let lb = bounds[p * k + j];
                assert!(
                    !(row[j] < lb - tol(lb)),
                    "{name}: point {p}, class {j}: sampled margin {} below the bound {lb}",
                    row[j]
                );
            }
        }
    }
}

/// Random images with a few pixels at 0 and 1 (clipped boxes).
fn images(n: usize, input: [usize; 3], rng: &mut Rng) -> Tensor {
    let len = n * input.iter().product::<usize>();
    let data = (0..len)
        .map(|_| match rng.below(8) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.uniform(),
        })
        .collect();
    Tensor::from_vec(data, &[n, input[0], input[1], input[2]])
}

fn cases() -> Vec<(String, Model, [usize; 3])> {
    vec![
        (
            "mlp".into(),
            random_model(Arch::Mlp, [1, 6, 6], 1),
            [1, 6, 6],
        ),
        (
            "small".into(),
            random_model(Arch::Small, [1, 10, 10], 2),
            [1, 10, 10],
        ),
        (
            "cnn7".into(),
            random_model(Arch::Cnn7, [3, 6, 6], 3),
            [3, 6, 6],
        ),
    ]
}

#[test]
fn every_certifier_is_sound_by_sampling() {
    let cfg = VerifyConfig {
        alpha: cactus::verify::AlphaConfig {
            iterations: 6,
            ..Default::default()
        },
        ..Default::default()
    };
    for (name, model, input) in cases() {
        let net = BoundNet::new(&model).unwrap();
        let mut rng = Rng::seed(11);
        let x = images(3, input, &mut rng);
        let labels = vec![0, 1, 3];
        for eps in [0.01, 0.05] {
            let mut per = Vec::new();
            for c in [
                Certifier::Ibp,
                Certifier::CrownIbp,
                Certifier::Crown,
                Certifier::AlphaCrown,
            ] {
                let b = margin_bounds(&model, &net, &x, &labels, eps, c, &cfg).unwrap();
                assert_eq!(b.len(), labels.len() * CLASSES);
                assert!(b.iter().all(|v| v.is_finite()), "{name} {c}: {b:?}");
                check_sound(
                    &format!("{name} {c} eps={eps}"),
                    &model,
                    &x,
                    &labels,
                    eps,
                    &b,
                );
                per.push(b);
            }
            let (ibp, crown, alpha) = (&per[0], &per[2], &per[3]);
            for i in 0..crown.len() {
                assert!(
                    alpha[i] >= crown[i],
                    "{name} eps={eps}: alpha-CROWN {} looser than CROWN {}",
                    alpha[i],
                    crown[i]
                );
            }
            let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            assert!(
                mean(crown) >= mean(ibp),
                "{name} eps={eps}: CROWN (mean {}) looser than IBP (mean {})",
                mean(crown),
                mean(ibp)
            );
        }
    }
}

#[test]
fn crown_is_exact_at_zero_radius() {
    for (name, model, input) in cases() {
        let net = BoundNet::new(&model).unwrap();
        let mut rng = Rng::seed(5);
        let x = images(2, input, &mut rng);
        let labels = vec![2, 1];
        // The bounds as computed: the rounding slack of sound bounds is no part of exactness.
        let cfg = VerifyConfig {
            sound: false,
            ..Default::default()
        };
        let b = margin_bounds(&model, &net, &x, &labels, 0.0, Certifier::Crown, &cfg).unwrap();
        let m = margins_at(&model, &x, &labels);
        for (i, (&lb, &v)) in b.iter().zip(&m).enumerate() {
            assert!(
                (lb - v).abs() <= 1e-3 * (1.0 + v.abs()),
                "{name}: entry {i}: bound {lb} at eps 0, margin {v}"
            );
        }
    }
}

/// The chunked backward (tiny memory budget, one row per chunk) gives the bounds of the whole.
#[test]
fn chunking_does_not_change_bounds() {
    let (_, model, input) = cases().remove(1);
    let net = BoundNet::new(&model).unwrap();
    let mut rng = Rng::seed(9);
    let x = images(2, input, &mut rng);
    let labels = vec![0, 3];
    let whole = VerifyConfig::default();
    let tiny = VerifyConfig {
        memory_budget: 1,
        ..Default::default()
    };
    let a = margin_bounds(&model, &net, &x, &labels, 0.03, Certifier::Crown, &whole).unwrap();
    let b = margin_bounds(&model, &net, &x, &labels, 0.03, Certifier::Crown, &tiny).unwrap();
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() <= 1e-5 * (1.0 + u.abs()), "{u} vs {v}");
    }
}

#[test]
fn a_network_without_a_linear_classifier_is_an_error() {
    let spec = ModelSpec::new(Arch::Mlp, [1, 2, 2], 2);
    let model = Model {
        spec,
        net: Sequential::new(vec![Layer::Flatten, Layer::ReLU]),
    };
    let err = BoundNet::new(&model).err().expect("an error");
    assert!(err.to_string().contains("linear"), "{err}");
    let _ = Linear::new; // (the classifier type named in the message)
}

// ---------------------------------------------------------------------------------------------
// Branch and bound: completeness on tiny networks
// ---------------------------------------------------------------------------------------------

/// A 2-layer ReLU network of `hidden` units per layer on `dims` inputs ([1, 1, dims]), classes 3.
fn tiny(dims: usize, hidden: usize, seed: u64) -> Model {
    let mut rng = Rng::seed(seed);
    let mut spec = ModelSpec::new(Arch::Mlp, [1, 1, dims], 3);
    spec.width = hidden as f32 / 256.0;
    Model::new(spec, &mut rng).unwrap()
}

/// The minimum margin `z_y − z_j` over a grid of `steps` per axis on the box, and where.
fn grid_min(model: &Model, x: &[f32], y: usize, eps: f32, steps: usize) -> (f32, Vec<f32>) {
    let dims = x.len();
    let total = steps.pow(dims as u32);
    let mut pts = Vec::with_capacity(total * dims);
    for idx in 0..total {
        let mut rest = idx;
        for &v in x {
            let t = (rest % steps) as f32 / (steps - 1) as f32;
            rest /= steps;
            let (lo, hi) = ((v - eps).max(0.0), (v + eps).min(1.0));
            pts.push(lo + (hi - lo) * t);
        }
    }
    let batch = Tensor::from_vec(pts.clone(), &[total, 1, 1, dims]);
    let m = margins_at(model, &batch, &vec![y; total]);
    let k = model.spec.num_classes;
    let (mut best, mut at) = (f32::INFINITY, 0);
    for (p, row) in m.chunks(k).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if j != y && v < best {
                best = v;
                at = p;
            }
        }
    }
    (best, pts[at * dims..(at + 1) * dims].to_vec())
}

#[test]
fn branch_and_bound_decides_tiny_networks_exactly() {
    use cactus::verify::bab::verify_point;
    use cactus::verify::Verdict;
    let cfg = VerifyConfig::default();
    let mut decided = [0usize; 2];
    for (dims, hidden, steps, seed) in [
        (2, 8, 301, 21),
        (2, 8, 301, 22),
        (3, 6, 41, 23),
        (2, 8, 301, 24),
        (3, 5, 41, 25),
    ] {
        let model = tiny(dims, hidden, seed);
        let net = BoundNet::new(&model).unwrap();
        let mut rng = Rng::seed(seed);
        for _ in 0..5 {
            let x: Vec<f32> = (0..dims).map(|_| 0.2 + 0.6 * rng.uniform()).collect();
            let xt = Tensor::from_vec(x.clone(), &[1, 1, 1, dims]);
            let y = {
                let l = with_no_grad(|| model.forward(&xt, Mode::Eval)).to_vec();
                (0..3).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap()
            };
            // The radius where the grid's minimum margin crosses 0, by bisection.
            let (mut a, mut b) = (0.0f32, 0.5f32);
            if grid_min(&model, &x, y, b, steps).0 > 0.0 {
                continue; // robust on the whole range: nothing close to decide
            }
            for _ in 0..18 {
                let mid = 0.5 * (a + b);
                if grid_min(&model, &x, y, mid, steps).0 > 0.0 {
                    a = mid;
                } else {
                    b = mid;
                }
            }
            for (eps, robust) in [(0.99 * a, true), (1.01 * b, false)] {
                let (gmin, _) = grid_min(&model, &x, y, eps, steps);
                let alpha =
                    margin_bounds(&model, &net, &xt, &[y], eps, Certifier::AlphaCrown, &cfg)
                        .unwrap();
                let out = verify_point(&model, &net, &xt, y, eps, None, &cfg).unwrap();
                let alpha_verified = (0..3).all(|j| j == y || alpha[j] > 0.0);
                eprintln!(
                    "dims {dims} seed {seed} eps {eps:.5}: grid min {gmin:.5}, alpha-CROWN {}, {:?} after {} domains",
                    if alpha_verified { "verifies" } else { "does not verify" },
                    out.verdict, out.domains
                );
                match &out.verdict {
                    Verdict::Verified => {
                        assert!(
                            robust && gmin > 0.0,
                            "dims {dims} seed {seed}: verified at eps {eps} where the grid finds margin {gmin}"
                        );
                        decided[0] += 1;
                    }
                    Verdict::Falsified(cex) => {
                        assert!(!robust, "falsified a point the grid finds robust ({gmin})");
                        assert!(!alpha_verified, "falsified a point alpha-CROWN verified");
                        let ct = Tensor::from_vec(cex.clone(), &[1, 1, 1, dims]);
                        let m = margins_at(&model, &ct, &[y]);
                        assert!(
                            (0..3).any(|j| j != y && m[j] < 0.0),
                            "counterexample {cex:?} has margins {m:?}"
                        );
                        for (c, v) in cex.iter().zip(&x) {
                            assert!(
                                *c >= (v - eps).max(0.0) && *c <= (v + eps).min(1.0),
                                "counterexample outside the box"
                            );
                        }
                        decided[1] += 1;
                    }
                    Verdict::Unknown => panic!(
                        "dims {dims} seed {seed}: undecided at eps {eps} (grid min {gmin}), {} domains",
                        out.domains
                    ),
                }
                if alpha_verified {
                    assert_eq!(out.verdict, Verdict::Verified);
                }
            }
        }
    }
    assert!(
        decided[0] >= 3 && decided[1] >= 3,
        "too few close cases decided: {decided:?}"
    );
}
