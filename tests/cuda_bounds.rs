//! CPU-vs-CUDA parity of the interval bound propagation kernels (`ops/interval/interval.cu`, wrappers
//! in `ops::interval::launch`): every wrapper, forward and backward, against the CPU ops and
//! their autodiff gradients (`Tensor::interval_*`, `bounds::margin_lower_bounds`), on random
//! shapes that include odd sizes, sizes around the 64-wide GEMM tiles and batch 1. Each test
//! skips, saying why, where no GPU is present.
//!
//! Tolerances. Element-wise results whose every operation is one correctly rounded f32 op in
//! the CPU's order (interval ReLU, the channel affine map and its input gradient) must be
//! equal. Everything that sums must agree to the classical worst-case bound for two f32 sums
//! of the same terms taken in different orders: each differs from the exact value by at most
//! γ_n·Σ|terms| (γ_n = n·u/(1 − n·u), u = 2⁻²⁴, n the number of terms, whatever the order or
//! FMA use), so the two differ by at most 2·γ_n·Σ|terms|. `within` checks exactly that, with
//! Σ|terms| computed on the host in f64 for each element and n counting the few extra roundings
//! (bias, final subtraction). An indexing error moves a result by O(Σ|terms|), far outside it.

// `!(err <= bound)` on purpose: a NaN must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use cactus::bounds::{margin_lower_bounds, BnSource};
use cactus::nn::{Arch, Layer, Linear, Model, ModelSpec, Sequential};
use cactus::ops::interval::launch::{
    elided_margins, elided_margins_backward, interval_channel_affine,
    interval_channel_affine_backward, interval_linear, interval_linear_backward_bias,
    interval_linear_backward_input, interval_linear_backward_weight, interval_relu,
    interval_relu_backward, sabr_box, LinearDims,
};
use cactus::ops::loss::launch::DeviceLabels;
use cactus::ops::norm::launch::ChannelDims;
use cactus::rng::Rng;
use cactus::runtime::cuda::device_or_skip;
use cactus::Tensor;

mod common;
use common::{assert_same, down, gamma, uniform, up};

/// |got − want| ≤ 2·γ_terms·mag[i] for every element.
fn within(what: &str, got: &[f32], want: &[f32], mag: &[f64], terms: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    assert_eq!(mag.len(), want.len(), "{what}: magnitudes");
    let g = 2.0 * gamma(terms);
    for i in 0..want.len() {
        let err = (got[i] as f64 - want[i] as f64).abs();
        let bound = g * mag[i];
        assert!(
            err <= bound,
            "{what}: element {i}: GPU {} vs CPU {} (error {err:e} > bound {bound:e})",
            got[i],
            want[i]
        );
    }
}

/// Weights in [-1, 1) with every 7th exactly 0 (sign(0) = 0: no gradient through |W|).
fn weights(len: usize, rng: &mut Rng) -> Vec<f32> {
    let mut w = uniform(len, -1.0, 1.0, rng);
    for v in w.iter_mut().step_by(7) {
        *v = 0.0;
    }
    w
}

fn cat(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut v = a.to_vec();
    v.extend_from_slice(b);
    v
}

// ---------------------------------------------------------------------------------------------
// interval_linear
// ---------------------------------------------------------------------------------------------

fn linear_case(batch: usize, fin: usize, fout: usize, with_bias: bool, rng: &mut Rng) {
    let what = format!("interval_linear batch {batch} in {fin} out {fout} bias {with_bias}");
    let c = uniform(batch * fin, -1.0, 1.0, rng);
    let r = uniform(batch * fin, 0.0, 0.5, rng);
    let w = weights(fout * fin, rng);
    let b = uniform(fout, -1.0, 1.0, rng);
    let g = uniform(2 * batch * fout, -1.0, 1.0, rng);
    let x = cat(&c, &r);

    // CPU: the op and its gradients for the loss Σ g ⊙ out.
    let s = Tensor::from_vec(x.clone(), &[2, batch, fin]).requires_grad();
    let wt = Tensor::from_vec(w.clone(), &[fout, fin]).requires_grad();
    let bt = Tensor::from_vec(b.clone(), &[fout]).requires_grad();
    let out = s.interval_linear(&wt, with_bias.then_some(&bt));
    let grads = out
        .mul(&Tensor::from_vec(g.clone(), &[2, batch, fout]))
        .sum()
        .backward();

    // GPU.
    let dims = LinearDims {
        batch,
        in_features: fin,
        out_features: fout,
    };
    let (xd, wd, bd, gd) = (up(&x), up(&w), up(&b), up(&g));
    let y = interval_linear(&xd, &wd, with_bias.then_some(&bd), dims).unwrap();
    let dx = interval_linear_backward_input(&gd, &wd, dims).unwrap();
    let dw = interval_linear_backward_weight(&gd, &xd, &wd, dims).unwrap();
    let db = interval_linear_backward_bias(&gd, dims).unwrap();

    // Σ|terms| of each result.
    let (gc, gr) = g.split_at(batch * fout);
    let mut mag_y = vec![0.0f64; 2 * batch * fout];
    for n in 0..batch {
        for o in 0..fout {
            let (mut mc, mut mr) = (0.0, 0.0);
            for i in 0..fin {
                let a = w[o * fin + i].abs() as f64;
                mc += c[n * fin + i].abs() as f64 * a;
                mr += r[n * fin + i] as f64 * a;
            }
            mag_y[n * fout + o] = mc + if with_bias { b[o].abs() as f64 } else { 0.0 };
            mag_y[batch * fout + n * fout + o] = mr;
        }
    }
    within(
        &format!("{what}: forward"),
        &down(&y),
        out.data(),
        &mag_y,
        fin + 2,
    );

    let mut mag_dx = vec![0.0f64; 2 * batch * fin];
    for n in 0..batch {
        for i in 0..fin {
            let (mut mc, mut mr) = (0.0, 0.0);
            for o in 0..fout {
                let a = w[o * fin + i].abs() as f64;
                mc += gc[n * fout + o].abs() as f64 * a;
                mr += gr[n * fout + o].abs() as f64 * a;
            }
            mag_dx[n * fin + i] = mc;
            mag_dx[batch * fin + n * fin + i] = mr;
        }
    }
    within(
        &format!("{what}: d boxes"),
        &down(&dx),
        grads.get(&s).unwrap().data(),
        &mag_dx,
        fout + 1,
    );

    let mut mag_dw = vec![0.0f64; fout * fin];
    for o in 0..fout {
        for i in 0..fin {
            mag_dw[o * fin + i] = (0..batch)
                .map(|n| {
                    (gc[n * fout + o] * c[n * fin + i]).abs() as f64
                        + (gr[n * fout + o] * r[n * fin + i]).abs() as f64
                })
                .sum();
        }
    }
    within(
        &format!("{what}: d weight"),
        &down(&dw),
        grads.get(&wt).unwrap().data(),
        &mag_dw,
        batch + 2,
    );

    if with_bias {
        let mag_db: Vec<f64> = (0..fout)
            .map(|o| (0..batch).map(|n| gc[n * fout + o].abs() as f64).sum())
            .collect();
        within(
            &format!("{what}: d bias"),
            &down(&db),
            grads.get(&bt).unwrap().data(),
            &mag_db,
            batch + 1,
        );
    }
}

#[test]
fn interval_linear_matches_cpu() {
    let Some(_gpu) = device_or_skip("interval_linear_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(101);
    // Batch 1, single features, odd sizes, exact tiles (64) and one past them, long sums.
    let shapes = [
        (1, 1, 1),
        (1, 17, 5),
        (3, 64, 64),
        (7, 65, 130),
        (130, 33, 10),
        (2, 300, 1),
        (65, 7, 129),
        (1, 784, 100),
    ];
    for (batch, fin, fout) in shapes {
        for with_bias in [true, false] {
            linear_case(batch, fin, fout, with_bias, &mut rng);
        }
    }
    for _ in 0..6 {
        let (batch, fin, fout) = (1 + rng.below(90), 1 + rng.below(150), 1 + rng.below(90));
        linear_case(batch, fin, fout, true, &mut rng);
    }
}

// ---------------------------------------------------------------------------------------------
// interval_relu
// ---------------------------------------------------------------------------------------------

/// SABR's small boxes on the device are the CPU's bit for bit (`train::losses::sabr_box`): pixels
/// at 0 and 1, attacks inside and outside the ε-box, λ above 0.5 (where the small box is cut by
/// the clipped ε-box), and the enclosing radius widened past rounding.
#[test]
fn sabr_box_matches_cpu() {
    let Some(_gpu) = device_or_skip("sabr_box_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(41);
    for (n, eps, lambda) in [
        (1usize, 0.1f32, 0.4f32),
        (257, 8.0 / 255.0, 0.1),
        (1000, 0.3, 0.7),
        (3 * 32 * 32 * 2, 2.0 / 255.0, 0.05),
    ] {
        let mut x = uniform(n, 0.0, 1.0, &mut rng);
        for v in x.iter_mut().step_by(7) {
            *v = if rng.uniform() < 0.5 { 0.0 } else { 1.0 };
        }
        // Attacks around x, some beyond the ε-box on either side.
        let adv: Vec<f32> = x
            .iter()
            .map(|&v| v + (2.0 * rng.uniform() - 1.0) * 1.5 * eps)
            .collect();
        let want = cactus::train::losses::sabr_box(
            &Tensor::from_vec(x.clone(), &[n]),
            &Tensor::from_vec(adv.clone(), &[n]),
            eps,
            lambda,
        );
        let got = sabr_box(&up(&x), &up(&adv), eps, lambda * eps).unwrap();
        assert_same(
            &format!("sabr_box n={n} eps={eps} lambda={lambda}"),
            &down(&got),
            want.data(),
        );
    }
    assert!(sabr_box(&up(&[0.5; 4]), &up(&[0.5; 3]), 0.1, 0.01).is_err());
}

#[test]
fn interval_relu_matches_cpu() {
    let Some(_gpu) = device_or_skip("interval_relu_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(102);
    for (batch, features) in [(1, 1), (1, 37), (5, 300), (64, 257), (3, 4099)] {
        let half = batch * features;
        let mut c = uniform(half, -1.0, 1.0, &mut rng);
        let r = uniform(half, 0.0, 0.6, &mut rng);
        // Ends exactly at 0 (the subgradient 0 there) and zero radii.
        for i in (0..half).step_by(5) {
            c[i] = if i % 2 == 0 { r[i] } else { -r[i] };
        }
        let mut r = r;
        for v in r.iter_mut().step_by(11) {
            *v = 0.0;
        }
        let x = cat(&c, &r);
        let g = uniform(2 * half, -1.0, 1.0, &mut rng);
        let s = Tensor::from_vec(x.clone(), &[2, batch, features]).requires_grad();
        let out = s.interval_relu();
        let grads = out
            .mul(&Tensor::from_vec(g.clone(), &[2, batch, features]))
            .sum()
            .backward();
        let (xd, gd) = (up(&x), up(&g));
        let what = format!("interval_relu [2, {batch}, {features}]");
        assert_same(
            &format!("{what}: forward"),
            &down(&interval_relu(&xd).unwrap()),
            out.data(),
        );
        assert_same(
            &format!("{what}: backward"),
            &down(&interval_relu_backward(&xd, &gd).unwrap()),
            grads.get(&s).unwrap().data(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// interval_channel_affine
// ---------------------------------------------------------------------------------------------

#[test]
fn interval_channel_affine_matches_cpu() {
    let Some(_gpu) = device_or_skip("interval_channel_affine_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(103);
    // [2, N, C] (BatchNorm1d, spatial 1) and [2, N, C, H, W].
    let shapes: [&[usize]; 6] = [
        &[1, 1],
        &[3, 5],
        &[1, 3, 1, 1],
        &[3, 5, 7, 1],
        &[2, 16, 6, 6],
        &[4, 3, 17, 13],
    ];
    for half_shape in shapes {
        let dims = ChannelDims::of_shape(half_shape).unwrap();
        let half = dims.numel();
        let ch = dims.channels;
        let x = cat(
            &uniform(half, -1.0, 1.0, &mut rng),
            &uniform(half, 0.0, 0.5, &mut rng),
        );
        // Negative scales and an exact zero.
        let mut a = uniform(ch, -2.0, 2.0, &mut rng);
        a[ch / 2] = 0.0;
        let b = uniform(ch, -1.0, 1.0, &mut rng);
        let g = uniform(2 * half, -1.0, 1.0, &mut rng);
        let mut shape = vec![2];
        shape.extend_from_slice(half_shape);

        let s = Tensor::from_vec(x.clone(), &shape).requires_grad();
        let (at, bt) = (
            Tensor::from_vec(a.clone(), &[ch]).requires_grad(),
            Tensor::from_vec(b.clone(), &[ch]).requires_grad(),
        );
        let out = s.interval_channel_affine(&at, &bt);
        let grads = out
            .mul(&Tensor::from_vec(g.clone(), &shape))
            .sum()
            .backward();

        let (xd, ad, bd, gd) = (up(&x), up(&a), up(&b), up(&g));
        let what = format!("interval_channel_affine {shape:?}");
        let y = interval_channel_affine(&xd, &ad, &bd, dims).unwrap();
        assert_same(&format!("{what}: forward"), &down(&y), out.data());
        let back = interval_channel_affine_backward(&xd, &ad, &gd, dims).unwrap();
        assert_same(
            &format!("{what}: d boxes"),
            &down(&back.boxes),
            grads.get(&s).unwrap().data(),
        );
        // Σ|g·x| and Σ|g| per channel, over both halves.
        let sp = dims.spatial;
        let (mut mag_a, mut mag_b) = (vec![0.0f64; ch], vec![0.0f64; ch]);
        for (i, (gv, xv)) in g.iter().zip(&x).enumerate() {
            let k = (i / sp) % ch;
            mag_a[k] += (gv * xv).abs() as f64;
            if i < half {
                mag_b[k] += gv.abs() as f64;
            }
        }
        // The CPU sums each plane of `sp` values in f32, then the planes in f64.
        within(
            &format!("{what}: d scale"),
            &down(&back.scale),
            grads.get(&at).unwrap().data(),
            &mag_a,
            sp + 3,
        );
        within(
            &format!("{what}: d shift"),
            &down(&back.shift),
            grads.get(&bt).unwrap().data(),
            &mag_b,
            sp + 3,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// elided_margins
// ---------------------------------------------------------------------------------------------

/// A network that is only its last linear layer, so `margin_lower_bounds` applies the elided
/// specification directly to the boxes it is given (no normalisation).
fn last_layer_model(weight: &Tensor, bias: Option<&Tensor>, fin: usize, classes: usize) -> Model {
    Model {
        spec: ModelSpec::new(Arch::Mlp, [1, 1, fin], classes),
        net: Sequential::new(vec![Layer::Linear(Linear {
            weight: weight.clone(),
            bias: bias.cloned(),
        })]),
    }
}

fn margins_case(
    batch: usize,
    fin: usize,
    classes: usize,
    with_bias: bool,
    one_label: bool,
    rng: &mut Rng,
) {
    let what = format!(
        "elided_margins batch {batch} in {fin} classes {classes} bias {with_bias} one label \
         {one_label}"
    );
    let c = uniform(batch * fin, -1.0, 1.0, rng);
    let r = uniform(batch * fin, 0.0, 0.3, rng);
    let mut w = weights(classes * fin, rng);
    // Two classes share some weights, so W_y − W_j has exact zeros off the label too.
    if classes >= 3 {
        for i in (0..fin).step_by(3) {
            w[2 * fin + i] = w[fin + i];
        }
    }
    let b = uniform(classes, -1.0, 1.0, rng);
    let labels: Vec<usize> = (0..batch)
        .map(|_| {
            if one_label {
                classes - 1
            } else {
                rng.below(classes)
            }
        })
        .collect();
    // Gradients at the label entries too: they must have no effect.
    let g = uniform(batch * classes, -1.0, 1.0, rng);
    let x = cat(&c, &r);

    let s = Tensor::from_vec(x.clone(), &[2, batch, fin]).requires_grad();
    let wt = Tensor::from_vec(w.clone(), &[classes, fin]).requires_grad();
    let bt = Tensor::from_vec(b.clone(), &[classes]).requires_grad();
    let model = last_layer_model(&wt, with_bias.then_some(&bt), fin, classes);
    let lb = margin_lower_bounds(&model, &s, &labels, BnSource::Running);
    assert_eq!(lb.shape(), &[batch, classes]);
    let grads = lb
        .mul(&Tensor::from_vec(g.clone(), &[batch, classes]))
        .sum()
        .backward();

    let dims = LinearDims {
        batch,
        in_features: fin,
        out_features: classes,
    };
    let (xd, wd, bd, gd) = (up(&x), up(&w), up(&b), up(&g));
    let ld = DeviceLabels::new(&labels, classes).unwrap();
    let got = down(&elided_margins(&xd, &wd, with_bias.then_some(&bd), &ld, dims).unwrap());
    let back = elided_margins_backward(&xd, &wd, &ld, &gd, dims).unwrap();

    // The label's own entry is exactly 0.
    for (n, &y) in labels.iter().enumerate() {
        assert_eq!(got[n * classes + y], 0.0, "{what}: lb[{n}, y]");
    }
    let d = |y: usize, j: usize, i: usize| (w[y * fin + i] - w[j * fin + i]) as f64;
    let mut mag = vec![0.0f64; batch * classes];
    let mut mag_dx = vec![0.0f64; 2 * batch * fin];
    for n in 0..batch {
        let y = labels[n];
        for j in 0..classes {
            let mut m = if with_bias {
                (b[y] - b[j]).abs() as f64
            } else {
                0.0
            };
            for i in 0..fin {
                m += d(y, j, i).abs() * (c[n * fin + i].abs() + r[n * fin + i]) as f64;
                let gd = g[n * classes + j].abs() as f64 * d(y, j, i).abs();
                mag_dx[n * fin + i] += gd;
                mag_dx[batch * fin + n * fin + i] += gd;
            }
            mag[n * classes + j] = m;
        }
    }
    within(&format!("{what}: forward"), &got, lb.data(), &mag, fin + 3);
    within(
        &format!("{what}: d boxes"),
        &down(&back.hidden),
        grads.get(&s).unwrap().data(),
        &mag_dx,
        classes + 2,
    );
    // Every W entry's gradient is a sum over samples and classes of g[n, j]·(c ± r): the
    // total of those magnitudes bounds all of them (the CPU forms it through the grouped
    // specification matrices, the GPU directly).
    let mut mag_dw = vec![0.0f64; classes * fin];
    let mut mag_db = vec![0.0f64; classes];
    for n in 0..batch {
        let gsum: f64 = (0..classes).map(|j| g[n * classes + j].abs() as f64).sum();
        for k in 0..classes {
            for i in 0..fin {
                mag_dw[k * fin + i] += 2.0 * gsum * (c[n * fin + i].abs() + r[n * fin + i]) as f64;
            }
            mag_db[k] += 2.0 * gsum;
        }
    }
    let terms = batch * classes + 4;
    within(
        &format!("{what}: d weight"),
        &down(&back.weight),
        grads.get(&wt).unwrap().data(),
        &mag_dw,
        terms,
    );
    if with_bias {
        within(
            &format!("{what}: d bias"),
            &down(&back.bias),
            grads.get(&bt).unwrap().data(),
            &mag_db,
            terms,
        );
    }
}

#[test]
fn elided_margins_match_cpu() {
    let Some(_gpu) = device_or_skip("elided_margins_match_cpu") else {
        return;
    };
    let mut rng = Rng::seed(104);
    let shapes = [
        (1, 1, 2),
        (1, 10, 10),
        (7, 33, 3),
        (64, 100, 10),
        (5, 513, 37),
        (130, 17, 10),
    ];
    for (batch, fin, classes) in shapes {
        for with_bias in [true, false] {
            margins_case(batch, fin, classes, with_bias, false, &mut rng);
        }
        margins_case(batch, fin, classes, true, true, &mut rng);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_shapes_are_errors() {
    let Some(_gpu) = device_or_skip("bad_shapes_are_errors") else {
        return;
    };
    let dims = LinearDims {
        batch: 2,
        in_features: 3,
        out_features: 4,
    };
    let x = up(&[0.5; 12]);
    let w = up(&[0.1; 12]);
    let short = up(&[0.0; 5]);
    assert!(interval_linear(&x, &w, None, dims).is_ok());
    assert!(interval_linear(&short, &w, None, dims).is_err());
    assert!(interval_linear(&x, &short, None, dims).is_err());
    assert!(interval_linear(&x, &w, Some(&short), dims).is_err());
    assert!(interval_linear_backward_input(&x, &w, dims).is_err());
    assert!(interval_linear_backward_weight(&short, &x, &w, dims).is_err());
    assert!(interval_linear_backward_bias(&short, dims).is_err());
    assert!(interval_relu(&short).is_err());
    assert!(interval_relu_backward(&x, &short).is_err());
    let cd = ChannelDims {
        batch: 2,
        channels: 3,
        spatial: 1,
    };
    assert!(interval_channel_affine(&x, &short, &short, cd).is_err());
    assert!(interval_channel_affine_backward(&short, &up(&[1.0; 3]), &x, cd).is_err());
    // Labels: out of range at upload, wrong count or class bound at use.
    assert!(DeviceLabels::new(&[0, 4], 4).is_err());
    let md = LinearDims {
        batch: 2,
        in_features: 3,
        out_features: 4,
    };
    let three = DeviceLabels::new(&[0, 1, 2], 4).unwrap();
    assert!(elided_margins(&x, &w, None, &three, md).is_err());
    let wide = DeviceLabels::new(&[0, 4], 5).unwrap();
    assert!(elided_margins(&x, &w, None, &wide, md).is_err());
    let ok = DeviceLabels::new(&[0, 3], 4).unwrap();
    assert!(elided_margins(&x, &w, None, &ok, md).is_ok());
    assert!(elided_margins_backward(&x, &w, &ok, &short, md).is_err());
}
