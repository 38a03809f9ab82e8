//! Certificates that hold under f32 rounding (`cactus eval --sound`, `bounds::rounding`):
//! a margin positive only by rounding is certified by the plain bounds and refused by the sound
//! ones; the rounding slack bounds the difference between f32 and (nearly exact) f64 interval
//! propagation; sound bounds are never above plain ones; and the command line applies them.

use cactus::bounds::rounding::{margin_slack, sound_lower_bounds, LINEAR_RELAXATION_FACTOR};
use cactus::nn::{Arch, Layer, Linear, Mode, Model, ModelSpec, Normalization, Sequential};
use cactus::rng::Rng;
use cactus::verify::{margin_bounds, BoundNet, Certifier, VerifyConfig};
use cactus::Tensor;
use std::path::PathBuf;
use std::process::{Command, Output};

fn cactus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cactus"))
        .args(args)
        .output()
        .expect("the cactus binary runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cactus-sound-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A linear layer with the given weight rows and bias.
fn linear(rows: &[&[f32]], bias: &[f32]) -> Layer {
    let (out, inp) = (rows.len(), rows[0].len());
    let mut l = Linear::new(inp, out, &mut Rng::seed(0));
    l.weight = Tensor::from_vec(rows.concat(), &[out, inp]);
    l.bias = Some(Tensor::from_vec(bias.to_vec(), &[out]));
    Layer::Linear(l)
}

/// One input pixel through three `h ← relu(h + β)` layers, then logits `(1 + 2⁻²³, h)`.
/// β = 2⁻²⁴ − 2⁻³⁰ is just below half an ulp of 1, so each `1 + β` rounds down to 1 in f32:
/// at x = 1 the computed margin z₀ − z₁ is 2⁻²³ > 0, the exact one 2⁻²³ − 3β < 0.
fn rounding_only_network() -> (Model, f64) {
    let beta = (2f64.powi(-24) - 2f64.powi(-30)) as f32;
    assert_eq!(beta as f64, 2f64.powi(-24) - 2f64.powi(-30), "β is an f32");
    let z0 = 1.0 + 2f32.powi(-23);
    let mut layers = vec![Layer::Flatten];
    for _ in 0..3 {
        layers.push(linear(&[&[1.0]], &[beta]));
        layers.push(Layer::ReLU);
    }
    layers.push(linear(&[&[0.0], &[1.0]], &[z0, 0.0]));
    let model = Model {
        spec: ModelSpec::new(Arch::Mlp, [1, 1, 1], 2),
        net: Sequential::new(layers),
    };
    let exact_margin = z0 as f64 - (1.0 + 3.0 * beta as f64);
    (model, exact_margin)
}

fn bounds(
    model: &Model,
    x: &Tensor,
    labels: &[usize],
    eps: f32,
    c: Certifier,
    sound: bool,
) -> Vec<f32> {
    let net = BoundNet::new(model).unwrap();
    let cfg = VerifyConfig {
        sound,
        ..Default::default()
    };
    margin_bounds(model, &net, x, labels, eps, c, &cfg).unwrap()
}

#[test]
fn a_margin_positive_only_by_rounding_is_refused_by_the_sound_bounds() {
    let (model, exact) = rounding_only_network();
    assert!(exact < 0.0, "the exact margin is negative: {exact}");
    let x = Tensor::from_vec(vec![1.0], &[1, 1, 1, 1]);
    // The f32 forward pass agrees with the plain bounds: the rounding is the network's own.
    let logits = model.forward(&x, Mode::Eval).to_vec();
    assert!(logits[0] > logits[1], "{logits:?}");
    let plain = bounds(&model, &x, &[0], 0.0, Certifier::Ibp, false);
    assert!(
        plain[1] > 0.0,
        "the plain IBP bound certifies the point by rounding alone: {plain:?}"
    );
    for c in [
        Certifier::Ibp,
        Certifier::CrownIbp,
        Certifier::Crown,
        Certifier::AlphaCrown,
    ] {
        let sound = bounds(&model, &x, &[0], 0.0, c, true);
        assert!(
            sound[1] <= exact as f32,
            "{c}: the sound bound {} is above the exact margin {exact}",
            sound[1]
        );
        assert!(sound[1] <= 0.0, "{c} --sound certifies it: {sound:?}");
    }
}

/// f64 interval propagation of a Flatten/Linear/ReLU network with last-layer elision: the
/// exact margins up to f64 rounding (2⁻⁵³, far below f32's).
fn margins_f64(model: &Model, x: &[f32], eps: f32, label: usize) -> Vec<f64> {
    let mut lo: Vec<f64> = x
        .iter()
        .map(|&v| ((v - eps).clamp(0.0, 1.0)) as f64)
        .collect();
    let mut hi: Vec<f64> = x
        .iter()
        .map(|&v| ((v + eps).clamp(0.0, 1.0)) as f64)
        .collect();
    let layers = &model.net.layers;
    for layer in &layers[..layers.len() - 1] {
        match layer {
            Layer::Flatten => {}
            Layer::ReLU => {
                lo.iter_mut().for_each(|v| *v = v.max(0.0));
                hi.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            Layer::Linear(l) => {
                let (out, inp) = (l.weight.dim(0), l.weight.dim(1));
                let w = l.weight.to_vec();
                let b = l
                    .bias
                    .as_ref()
                    .map(|b| b.to_vec())
                    .unwrap_or(vec![0.0; out]);
                let (mut nl, mut nh) = (vec![0.0; out], vec![0.0; out]);
                for o in 0..out {
                    let (mut a, mut z) = (b[o] as f64, b[o] as f64);
                    for i in 0..inp {
                        let wi = w[o * inp + i] as f64;
                        if wi >= 0.0 {
                            a += wi * lo[i];
                            z += wi * hi[i];
                        } else {
                            a += wi * hi[i];
                            z += wi * lo[i];
                        }
                    }
                    nl[o] = a;
                    nh[o] = z;
                }
                lo = nl;
                hi = nh;
            }
            _ => panic!("margins_f64 handles Flatten, Linear and ReLU layers only"),
        }
    }
    let Some(Layer::Linear(last)) = layers.last() else {
        panic!("ends with a linear layer")
    };
    let (k, inp) = (last.weight.dim(0), last.weight.dim(1));
    let w = last.weight.to_vec();
    let b = last
        .bias
        .as_ref()
        .map(|b| b.to_vec())
        .unwrap_or(vec![0.0; k]);
    (0..k)
        .map(|j| {
            if j == label {
                return 0.0;
            }
            let mut m = b[label] as f64 - b[j] as f64;
            for i in 0..inp {
                let s = w[label * inp + i] as f64 - w[j * inp + i] as f64;
                m += if s >= 0.0 { s * lo[i] } else { s * hi[i] };
            }
            m
        })
        .collect()
}

/// Deep, wide random MLPs with large weights and normalisation-free inputs, where f32
/// rounding is at its largest.
fn deep_mlp(seed: u64, width: usize, depth: usize, scale: f32) -> Model {
    let mut rng = Rng::seed(seed);
    let mut layers = vec![Layer::Flatten];
    let mut inp = 16;
    for _ in 0..depth {
        let mut l = Linear::new(inp, width, &mut rng);
        l.weight = l.weight.mul_scalar(scale);
        layers.push(Layer::Linear(l));
        layers.push(Layer::ReLU);
        inp = width;
    }
    layers.push(Layer::Linear(Linear::new(inp, 10, &mut rng)));
    Model {
        spec: ModelSpec::new(Arch::Mlp, [1, 4, 4], 10),
        net: Sequential::new(layers),
    }
}

#[test]
fn the_slack_bounds_the_rounding_of_interval_propagation() {
    let mut worst: f64 = 0.0;
    let mut checked = 0;
    for seed in 0..6 {
        for (width, depth, scale) in [(64, 3, 1.0), (256, 4, 3.0), (32, 6, 1.7)] {
            let model = deep_mlp(seed, width, depth, scale);
            let mut rng = Rng::seed(100 + seed);
            let x = Tensor::rand_uniform(&[4, 1, 4, 4], 0.0, 1.0, &mut rng);
            let labels = [0, 3, 7, 9];
            for eps in [0.0, 0.01, 0.1] {
                let plain = bounds(&model, &x, &labels, eps, Certifier::Ibp, false);
                let slack = margin_slack(&model, &x, eps, &labels);
                for (n, &y) in labels.iter().enumerate() {
                    let exact = margins_f64(&model, &x.to_vec()[n * 16..(n + 1) * 16], eps, y);
                    for (j, &exact_j) in exact.iter().enumerate() {
                        let i = n * 10 + j;
                        let err = (plain[i] as f64 - exact_j).abs();
                        // f64's own error is below 1e-9 of these magnitudes.
                        assert!(
                            err <= slack[i] as f64 + 1e-9 * exact_j.abs().max(1.0),
                            "seed {seed} {width}x{depth} ε={eps} point {n} class {j}: f32 bound \
                             {} vs f64 {}, error {err:e} above the slack {:e}",
                            plain[i],
                            exact_j,
                            slack[i]
                        );
                        if slack[i] > 0.0 {
                            worst = worst.max(err / slack[i] as f64);
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "{checked} margins: the largest error was {:.3} of its slack",
        worst
    );
}

#[test]
fn sound_bounds_never_exceed_plain_ones_and_certify_a_subset() {
    let mut rng = Rng::seed(5);
    let model = deep_mlp(1, 64, 2, 1.0);
    let x = Tensor::rand_uniform(&[16, 1, 4, 4], 0.0, 1.0, &mut rng);
    let labels: Vec<usize> = (0..16).map(|i| i % 10).collect();
    for c in [
        Certifier::Ibp,
        Certifier::CrownIbp,
        Certifier::Crown,
        Certifier::AlphaCrown,
    ] {
        let plain = bounds(&model, &x, &labels, 0.001, c, false);
        let sound = bounds(&model, &x, &labels, 0.001, c, true);
        for (p, s) in plain.iter().zip(&sound) {
            assert!(s <= p, "{c}: sound {s} above plain {p}");
        }
        let slack = margin_slack(&model, &x, 0.001, &labels);
        let expect = sound_lower_bounds(
            &plain,
            &slack,
            if c == Certifier::Ibp {
                1.0
            } else {
                LINEAR_RELAXATION_FACTOR
            },
        );
        assert_eq!(sound, expect, "{c}");
    }
}

#[test]
fn the_slack_is_small_next_to_the_margins_of_a_normalised_network() {
    // A network as trained: normalised input, moderate weights. The slack must not swallow
    // ordinary margins (it is a few ulps of the terms' magnitudes per layer).
    let mut rng = Rng::seed(2);
    let mut model = deep_mlp(2, 128, 3, 1.0);
    model.spec.normalization = Some(Normalization {
        mean: vec![0.13],
        std: vec![0.31],
    });
    let x = Tensor::rand_uniform(&[8, 1, 4, 4], 0.0, 1.0, &mut rng);
    let labels: Vec<usize> = (0..8).collect();
    let slack = margin_slack(&model, &x, 0.01, &labels);
    let plain = bounds(&model, &x, &labels, 0.01, Certifier::Ibp, false);
    let (max_slack, max_margin) = slack
        .iter()
        .zip(&plain)
        .fold((0f32, 0f32), |(a, b), (s, p)| (a.max(*s), b.max(p.abs())));
    assert!(max_slack > 0.0);
    assert!(
        max_slack < 1e-3 * max_margin.max(1.0),
        "slack {max_slack:e} against margins up to {max_margin}"
    );
}

#[test]
fn eval_sound_reports_it_and_refuses_branch_and_bound() {
    let dir = scratch("cli");
    let ckpt = dir.join("m.safetensors");
    let ckpt_s = ckpt.to_str().unwrap();
    let init = cactus(&["init", "--model", "mlp", "--out", ckpt_s]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = dir.join("r");
    let run = cactus(&[
        "eval",
        "--checkpoint",
        ckpt_s,
        "--dataset",
        "mnist-mini",
        "--eps",
        "0.01",
        "--limit",
        "20",
        "--sound",
        "--quiet",
        "--certifier",
        "ibp,crown",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(json.contains("\"sound\": true"), "{json}");
    let bab = cactus(&[
        "eval",
        "--checkpoint",
        ckpt_s,
        "--dataset",
        "mnist-mini",
        "--eps",
        "0.01",
        "--limit",
        "5",
        "--sound",
        "--certifier",
        "ibp,bab",
        "--out",
        dir.join("b").to_str().unwrap(),
    ]);
    assert!(!bab.status.success());
    let err = String::from_utf8_lossy(&bab.stderr);
    assert!(err.contains("--unsound") && err.contains("bab"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
