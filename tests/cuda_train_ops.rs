//! CPU-vs-CUDA parity of the training kernels (the `.cu` files of the element-wise, loss,
//! norm, Adam and PGD kernels, wrappers in each folder's `launch.rs`): element-wise ops and gradients, softmax cross-entropy, the
//! batch-norm statistics and affine map with every gradient, the global gradient norm, Adam and
//! the PGD step, each against the CPU op (and its autodiff) on random sizes including odd ones
//! and batch 1. Each test skips, saying why, where no GPU is present.
//!
//! Tolerances. Results computed by the same correctly rounded f32 operations in the same order
//! as the CPU (element-wise ops, Adam, the PGD step) must be identical. Sums are held to the
//! worst-case bound for two f32 evaluations of one sum in different orders, 2·γ_n·Σ|terms|
//! (γ_n = n·u/(1 − n·u), u = 2⁻²⁴, n the number of f32 roundings on the longest path; the CPU
//! sums each plane of `spatial` values in f32 and the planes in f64, the GPU all in f64), with
//! Σ|terms| computed per element on the host in f64. `expf`/`logf` on the device are within
//! 2 ulp, the host's within 1: the cross-entropy bounds add those few ulp per term. An
//! indexing or formula error moves a result by O(Σ|terms|), far outside any of these bounds.

// `!(err <= bound)` on purpose: a NaN must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use cactus::attack::pgd::launch::pgd_keep_best;
use cactus::attack::pgd::launch::pgd_step;
use cactus::attack::pgd::launch::PgdBest;
use cactus::attack::{margin_loss, per_sample_cross_entropy};
use cactus::nn::BatchNorm;
use cactus::ops::cross_entropy;
use cactus::ops::elementwise::launch::abs;
use cactus::ops::elementwise::launch::abs_backward;
use cactus::ops::elementwise::launch::add;
use cactus::ops::elementwise::launch::add_scaled;
use cactus::ops::elementwise::launch::mul;
use cactus::ops::elementwise::launch::mul_backward;
use cactus::ops::elementwise::launch::relu;
use cactus::ops::elementwise::launch::relu_backward;
use cactus::ops::elementwise::launch::scale;
use cactus::ops::elementwise::launch::sign;
use cactus::ops::loss::launch::softmax_cross_entropy;
use cactus::ops::loss::launch::softmax_cross_entropy_backward;
use cactus::ops::loss::launch::DeviceLabels;
use cactus::ops::norm::launch::batch_norm_affine;
use cactus::ops::norm::launch::batch_norm_affine_backward;
use cactus::ops::norm::launch::batch_stats_backward;
use cactus::ops::norm::launch::channel_mean;
use cactus::ops::norm::launch::channel_var;
use cactus::ops::norm::launch::BatchNormParams;
use cactus::ops::norm::launch::ChannelDims;
use cactus::ops::reduce::launch::global_norm;
use cactus::ops::reduce::launch::sum_squares;
use cactus::rng::Rng;
use cactus::runtime::cuda::{device_or_skip, DeviceBuffer};
use cactus::train::optim::launch::adam_step;
use cactus::train::optim::launch::clip_scale;
use cactus::train::{Adam, AdamConfig, WeightDecay};
use cactus::Tensor;

mod common;
use common::{assert_same, down, gamma, uniform, up, U};

/// |got − want| ≤ bound[i] for every element.
fn within(what: &str, got: &[f32], want: &[f32], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    assert_eq!(bound.len(), want.len(), "{what}: bounds");
    for i in 0..want.len() {
        let err = (got[i] as f64 - want[i] as f64).abs();
        assert!(
            err <= bound[i],
            "{what}: element {i}: GPU {} vs CPU {} (error {err:e} > bound {:e})",
            got[i],
            want[i],
            bound[i]
        );
    }
}

/// The sum bound 2·γ_terms·mag for each magnitude.
fn sum_bound(mag: &[f64], terms: usize) -> Vec<f64> {
    let g = 2.0 * gamma(terms);
    mag.iter().map(|m| g * m).collect()
}

/// Uniform values with some exact zeros, and one NaN when `nan`.
fn with_specials(len: usize, nan: bool, rng: &mut Rng) -> Vec<f32> {
    let mut v = uniform(len, -2.0, 2.0, rng);
    for x in v.iter_mut().step_by(9) {
        *x = 0.0;
    }
    if nan && len > 3 {
        v[len / 2 + 1] = f32::NAN;
    }
    v
}

/// The gradient of Σ g ⊙ f(x) with respect to x, by the CPU's autodiff.
fn cpu_grad(x: &[f32], g: &[f32], f: impl Fn(&Tensor) -> Tensor) -> Vec<f32> {
    let n = x.len();
    let xt = Tensor::from_vec(x.to_vec(), &[n]).requires_grad();
    let grads = f(&xt)
        .mul(&Tensor::from_vec(g.to_vec(), &[n]))
        .sum()
        .backward();
    grads.get(&xt).unwrap().to_vec()
}

const SIZES: [usize; 6] = [1, 7, 256, 257, 1000, 4099];

// ---------------------------------------------------------------------------------------------
// Element-wise
// ---------------------------------------------------------------------------------------------

#[test]
fn elementwise_ops_match_cpu() {
    let Some(_gpu) = device_or_skip("elementwise_ops_match_cpu") else {
        return;
    };
    let mut rng = Rng::seed(201);
    for n in SIZES {
        let a = with_specials(n, true, &mut rng);
        let b = with_specials(n, false, &mut rng);
        let g = uniform(n, -1.0, 1.0, &mut rng);
        let (at, bt) = (
            Tensor::from_vec(a.clone(), &[n]),
            Tensor::from_vec(b.clone(), &[n]),
        );
        let (ad, bd, gd) = (up(&a), up(&b), up(&g));
        let what = |op: &str| format!("{op}, {n} values");

        assert_same(
            &what("add"),
            &down(&add(&ad, &bd).unwrap()),
            at.add(&bt).data(),
        );
        assert_same(
            &what("mul"),
            &down(&mul(&ad, &bd).unwrap()),
            at.mul(&bt).data(),
        );
        let (da, db) = mul_backward(&gd, &ad, &bd).unwrap();
        assert_same(
            &what("mul backward a"),
            &down(&da),
            &cpu_grad(&a, &g, |x| x.mul(&bt)),
        );
        assert_same(
            &what("mul backward b"),
            &down(&db),
            &cpu_grad(&b, &g, |x| at.mul(x)),
        );
        assert_same(&what("relu"), &down(&relu(&ad).unwrap()), at.relu().data());
        assert_same(
            &what("relu backward"),
            &down(&relu_backward(&gd, &ad).unwrap()),
            &cpu_grad(&a, &g, Tensor::relu),
        );
        assert_same(&what("abs"), &down(&abs(&ad).unwrap()), at.abs().data());
        assert_same(
            &what("abs backward"),
            &down(&abs_backward(&gd, &ad).unwrap()),
            &cpu_grad(&a, &g, Tensor::abs),
        );
        assert_same(&what("sign"), &down(&sign(&ad).unwrap()), at.sign().data());
        for s in [0.0, -1.0, 0.37, 3.0e5] {
            assert_same(
                &what(&format!("scale {s}")),
                &down(&scale(&ad, s).unwrap()),
                at.mul_scalar(s).data(),
            );
            let mut y = up(&b);
            add_scaled(&mut y, &ad, s).unwrap();
            assert_same(
                &what(&format!("add_scaled {s}")),
                &down(&y),
                bt.add(&at.mul_scalar(s)).data(),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy
// ---------------------------------------------------------------------------------------------

#[test]
fn softmax_cross_entropy_matches_cpu() {
    let Some(_gpu) = device_or_skip("softmax_cross_entropy_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(202);
    let shapes = [
        (1, 2, 1.0),
        (1, 10, 3.0),
        (7, 3, 3.0),
        (128, 10, 5.0),
        (33, 100, 5.0),
        (5, 1000, 3.0),
        (9, 10, 60.0), // large logits: the max shift keeps exp finite
    ];
    for (rows, classes, spread) in shapes {
        let z = uniform(rows * classes, -spread, spread, &mut rng);
        let labels: Vec<usize> = (0..rows).map(|_| rng.below(classes)).collect();
        for upstream in [1.0f32, -0.37] {
            let what = format!("cross-entropy {rows} × {classes} (±{spread}), gradient {upstream}");
            let zt = Tensor::from_vec(z.clone(), &[rows, classes]).requires_grad();
            let loss = cross_entropy(&zt, &labels);
            let grads = loss.mul_scalar(upstream).backward();

            let ld = DeviceLabels::new(&labels, classes).unwrap();
            let zd = up(&z);
            let fwd = softmax_cross_entropy(&zd, rows, classes, &ld).unwrap();
            let dz =
                softmax_cross_entropy_backward(&zd, &fwd, &ld, &up(&[upstream]), rows, classes)
                    .unwrap();

            // log p = z − lse with lse = m + ln Σ exp(z − m): the sum of `classes` exponentials
            // (each within 2 ulp) is within (classes + 4)·u relative, its log within that
            // absolutely plus 2 ulp of |lse|, z − lse one more rounding; both sides err.
            let zmax = z.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            let lse_err =
                2.0 * ((classes + 6) as f64 * U + 4.0 * U * (zmax + (classes as f64).ln()));
            let loss_bound = lse_err + 2.0 * U * loss.item().abs() as f64;
            within(
                &format!("{what}: loss"),
                &down(&fwd.loss),
                loss.data(),
                &[loss_bound],
            );
            // d = p·s − [j = y]·s with s = upstream/rows: p = exp(z − lse) carries lse's error,
            // the rounding of z − lse (u·|log p| each side) and exp's few ulp, then one product
            // and one subtraction.
            let ln_k = (classes as f64).ln();
            let s = (upstream / rows as f32).abs() as f64;
            let want = grads.get(&zt).unwrap().to_vec();
            let bound: Vec<f64> = want
                .iter()
                .enumerate()
                .map(|(t, &w)| {
                    let hit = if labels[t / classes] == t % classes {
                        s
                    } else {
                        0.0
                    };
                    let p_s = (w as f64).abs() + hit;
                    (lse_err + 2.0 * U * (2.0 * zmax + ln_k) + 12.0 * U) * p_s
                        + 2.0 * U * (w as f64).abs()
                })
                .collect();
            within(&format!("{what}: d logits"), &down(&dz), &want, &bound);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Batch norm
// ---------------------------------------------------------------------------------------------

const BN_SHAPES: [&[usize]; 6] = [
    &[1, 1],
    &[130, 4],
    &[2, 3, 1, 1],
    &[3, 5, 7, 1],
    &[16, 8, 6, 6],
    &[4, 6, 32, 32],
];

/// Inputs with a per-channel offset (non-zero means) and spread.
fn bn_input(dims: ChannelDims, rng: &mut Rng) -> Vec<f32> {
    let offsets = uniform(dims.channels, -1.0, 2.0, rng);
    let spreads = uniform(dims.channels, 0.2, 2.0, rng);
    (0..dims.numel())
        .map(|i| {
            let c = (i / dims.spatial) % dims.channels;
            offsets[c] + spreads[c] * (rng.uniform() - 0.5)
        })
        .collect()
}

/// Σ f(x, channel) per channel in f64.
fn per_channel(x: &[f32], dims: ChannelDims, f: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut out = vec![0.0; dims.channels];
    for i in 0..x.len() {
        let c = (i / dims.spatial) % dims.channels;
        out[c] += f(i, c);
    }
    out
}

#[test]
fn channel_statistics_match_cpu() {
    let Some(_gpu) = device_or_skip("channel_statistics_match_cpu") else {
        return;
    };
    let mut rng = Rng::seed(203);
    for shape in BN_SHAPES {
        let dims = ChannelDims::of_shape(shape).unwrap();
        let x = bn_input(dims, &mut rng);
        let xt = Tensor::from_vec(x.clone(), shape);
        let mean = xt.channel_mean();
        let var = xt.channel_var(&mean);
        let xd = up(&x);
        let mean_d = channel_mean(&xd, dims).unwrap();
        // The variance about the CPU's mean, so that both sum the same squares.
        let var_d = channel_var(&xd, &up(mean.data()), dims).unwrap();
        let count = dims.count() as f64;
        let what = format!("channel statistics {shape:?}");
        // Per plane f32 sums on the CPU, then f64; a cast and a division on both sides.
        let terms = dims.spatial + 4;
        let mag = per_channel(&x, dims, |i, _| x[i].abs() as f64 / count);
        within(
            &format!("{what}: mean"),
            &down(&mean_d),
            mean.data(),
            &sum_bound(&mag, terms),
        );
        // The same squared deviations (one f32 subtraction and product each) on both sides.
        within(
            &format!("{what}: var"),
            &down(&var_d),
            var.data(),
            &sum_bound(
                &var.data().iter().map(|&v| v as f64).collect::<Vec<_>>(),
                terms,
            ),
        );
    }
}

fn bn_layer(shape: &[usize], rng: &mut Rng) -> BatchNorm {
    let dims = ChannelDims::of_shape(shape).unwrap();
    // BatchNorm2d for [N, C, H, W], BatchNorm1d for [N, C].
    let mut bn = BatchNorm::new(dims.channels, if shape.len() == 4 { 2 } else { 1 });
    let mut gamma = uniform(dims.channels, -1.5, 1.5, rng);
    gamma[0] = 1.0;
    bn.weight = Tensor::from_vec(gamma, &[dims.channels]).requires_grad();
    bn.bias =
        Tensor::from_vec(uniform(dims.channels, -0.5, 0.5, rng), &[dims.channels]).requires_grad();
    bn
}

/// The normalise-and-affine map with given statistics (evaluation mode, or the statistics as
/// inputs of their own): y and the gradients of x, γ, β, mean and var.
#[test]
fn batch_norm_affine_matches_cpu() {
    let Some(_gpu) = device_or_skip("batch_norm_affine_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(204);
    for shape in BN_SHAPES {
        let dims = ChannelDims::of_shape(shape).unwrap();
        let ch = dims.channels;
        let bn = bn_layer(shape, &mut rng);
        let x = bn_input(dims, &mut rng);
        let g = uniform(dims.numel(), -1.0, 1.0, &mut rng);
        let mean = uniform(ch, -1.0, 2.0, &mut rng);
        let var = uniform(ch, 0.05, 3.0, &mut rng);

        let xt = Tensor::from_vec(x.clone(), shape).requires_grad();
        let (mt, vt) = (
            Tensor::from_vec(mean.clone(), &[ch]).requires_grad(),
            Tensor::from_vec(var.clone(), &[ch]).requires_grad(),
        );
        let (sc, sh) = bn.affine(&mt, &vt);
        let y = xt.channel_affine(&sc, &sh);
        let grads = y.mul(&Tensor::from_vec(g.clone(), shape)).sum().backward();

        let (mean_d, var_d) = (up(&mean), up(&var));
        let (gamma_d, beta_d) = (up(bn.weight.data()), up(bn.bias.data()));
        let params = BatchNormParams {
            mean: &mean_d,
            var: &var_d,
            gamma: &gamma_d,
            beta: &beta_d,
            eps: bn.eps,
        };
        let xd = up(&x);
        let yd = batch_norm_affine(&xd, params, dims).unwrap();
        let back = batch_norm_affine_backward(&xd, &up(&g), params, dims).unwrap();
        let what = format!("batch_norm_affine {shape:?}");

        // p = 1/√(var + ε) is correctly rounded here and within 1 ulp on the CPU (powf): scale
        // differs by at most 5u relative, and with the roundings of mean·scale, β − mean·scale,
        // x·scale and the sum on both sides y by at most 11u·(|x·scale| + |mean·scale|) +
        // 4u·|β|; the bound is 16u of each.
        let (scale, beta) = (sc.data(), bn.bias.data());
        let bound: Vec<f64> = (0..dims.numel())
            .map(|i| {
                let c = (i / dims.spatial) % ch;
                let s = scale[c].abs() as f64;
                16.0 * U * (x[i].abs() as f64 * s + mean[c].abs() as f64 * s + beta[c].abs() as f64)
            })
            .collect();
        within(&format!("{what}: forward"), &down(&yd), y.data(), &bound);
        let bound: Vec<f64> = (0..dims.numel())
            .map(|i| 16.0 * U * (g[i] as f64 * scale[(i / dims.spatial) % ch] as f64).abs())
            .collect();
        within(
            &format!("{what}: d input"),
            &down(&back.input),
            grads.get(&xt).unwrap().data(),
            &bound,
        );

        // Parameter gradients: Σg and Σg·x − mean·Σg (CPU) vs Σg·(x − mean) (GPU), each a sum
        // over the channel (planes of `spatial` in f32 on the CPU), times a few per-channel
        // factors. Magnitudes: Σ|g|, Σ|g|·(|x| + |mean|).
        let sg = per_channel(&g, dims, |i, _| g[i].abs() as f64);
        let sgx = per_channel(&g, dims, |i, c| {
            g[i].abs() as f64 * (x[i].abs() as f64 + mean[c].abs() as f64)
        });
        let terms = dims.spatial + 12;
        let p: Vec<f64> = var
            .iter()
            .map(|&v| 1.0 / ((v + bn.eps) as f64).sqrt())
            .collect();
        let gw = bn.weight.data();
        let mag_gamma: Vec<f64> = (0..ch).map(|c| p[c] * sgx[c]).collect();
        let mag_mean: Vec<f64> = (0..ch).map(|c| scale[c].abs() as f64 * sg[c]).collect();
        let mag_var: Vec<f64> = (0..ch)
            .map(|c| 0.5 * gw[c].abs() as f64 * p[c].powi(3) * sgx[c])
            .collect();
        within(
            &format!("{what}: d beta"),
            &down(&back.beta),
            grads.get(&bn.bias).unwrap().data(),
            &sum_bound(&sg, terms),
        );
        within(
            &format!("{what}: d gamma"),
            &down(&back.gamma),
            grads.get(&bn.weight).unwrap().data(),
            &sum_bound(&mag_gamma, terms),
        );
        within(
            &format!("{what}: d mean"),
            &down(&back.mean),
            grads.get(&mt).unwrap().data(),
            &sum_bound(&mag_mean, terms),
        );
        within(
            &format!("{what}: d var"),
            &down(&back.var),
            grads.get(&vt).unwrap().data(),
            &sum_bound(&mag_var, terms),
        );
    }
}

/// Training-mode batch norm end to end: y = affine(x; channel_mean(x), channel_var(x)), with
/// extra gradients on the statistics (interval bound propagation reuses them), against the CPU's
/// `BatchNorm::forward_batch`. The GPU composes batch_norm_affine_backward with
/// batch_stats_backward.
#[test]
fn batch_norm_training_chain_matches_cpu() {
    let Some(_gpu) = device_or_skip("batch_norm_training_chain_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(205);
    for shape in BN_SHAPES.iter().skip(1) {
        let dims = ChannelDims::of_shape(shape).unwrap();
        let ch = dims.channels;
        let bn = bn_layer(shape, &mut rng);
        let x = bn_input(dims, &mut rng);
        let g = uniform(dims.numel(), -1.0, 1.0, &mut rng);
        let (gm, gv) = (
            uniform(ch, -1.0, 1.0, &mut rng),
            uniform(ch, -1.0, 1.0, &mut rng),
        );

        let xt = Tensor::from_vec(x.clone(), shape).requires_grad();
        let (y, stats) = bn.forward_batch(&xt);
        let loss = y
            .mul(&Tensor::from_vec(g.clone(), shape))
            .sum()
            .add(&stats.mean.mul(&Tensor::from_vec(gm.clone(), &[ch])).sum())
            .add(&stats.var.mul(&Tensor::from_vec(gv.clone(), &[ch])).sum());
        let grads = loss.backward();

        let xd = up(&x);
        let mean_d = channel_mean(&xd, dims).unwrap();
        let var_d = channel_var(&xd, &mean_d, dims).unwrap();
        let (gamma_d, beta_d) = (up(bn.weight.data()), up(bn.bias.data()));
        let params = BatchNormParams {
            mean: &mean_d,
            var: &var_d,
            gamma: &gamma_d,
            beta: &beta_d,
            eps: bn.eps,
        };
        let yd = batch_norm_affine(&xd, params, dims).unwrap();
        let back = batch_norm_affine_backward(&xd, &up(&g), params, dims).unwrap();
        let g_mean = add(&back.mean, &up(&gm)).unwrap();
        let g_var = add(&back.var, &up(&gv)).unwrap();
        let dx_stats = batch_stats_backward(&xd, &mean_d, &g_mean, &g_var, dims).unwrap();
        let dx = add(&back.input, &dx_stats).unwrap();
        let what = format!("batch norm training {shape:?}");

        // Magnitudes per channel, from the host's f64 statistics: the three parts of dx
        // (g·scale, the variance path 2·dvar·(x − mean)/count and the mean path
        // dmean/count) are each far larger than their sum, which cancels.
        let count = dims.count() as f64;
        let m64 = per_channel(&x, dims, |i, _| x[i] as f64 / count);
        let v64 = per_channel(&x, dims, |i, c| (x[i] as f64 - m64[c]).powi(2) / count);
        let gw = bn.weight.data();
        let p: Vec<f64> = v64
            .iter()
            .map(|v| 1.0 / (v + bn.eps as f64).sqrt())
            .collect();
        let sc: Vec<f64> = (0..ch).map(|c| gw[c].abs() as f64 * p[c]).collect();
        let sg = per_channel(&g, dims, |i, _| g[i].abs() as f64);
        let sgx = per_channel(&g, dims, |i, c| {
            g[i].abs() as f64 * (x[i].abs() as f64 + m64[c].abs())
        });
        let sdev = per_channel(&x, dims, |i, c| (x[i] as f64 - m64[c]).abs());
        // The two sides' means differ by up to γ·Σ|x|/count, which enters every use of
        // x − mean: Σ|x|/count joins the deviations in the magnitudes below.
        let sabs = per_channel(&x, dims, |i, _| x[i].abs() as f64 / count);
        let sgx: Vec<f64> = (0..ch).map(|c| sgx[c] + sg[c] * sabs[c]).collect();
        let dvar: Vec<f64> = (0..ch)
            .map(|c| 0.5 * gw[c].abs() as f64 * p[c].powi(3) * sgx[c] + gv[c].abs() as f64)
            .collect();
        let dmean: Vec<f64> = (0..ch)
            .map(|c| {
                sc[c] * sg[c] + gm[c].abs() as f64 + 2.0 * dvar[c] * (sdev[c] / count + sabs[c])
            })
            .collect();
        // Worst case over the chain: sums of `spatial` f32 values per plane on the CPU, fed
        // through up to four further ops; a generous constant on top of γ keeps the bound
        // rigorous for the compounded relative errors of the statistics.
        let terms = dims.spatial + 16;
        let tol = 8.0 * gamma(terms);
        let bound_y: Vec<f64> = (0..dims.numel())
            .map(|i| {
                let c = (i / dims.spatial) % ch;
                tol * sc[c] * (x[i].abs() as f64 + m64[c].abs() + (v64[c] + 1e-3).sqrt())
                    + 8.0 * U * bn.bias.data()[c].abs() as f64
            })
            .collect();
        within(&format!("{what}: forward"), &down(&yd), y.data(), &bound_y);
        let bound_dx: Vec<f64> = (0..dims.numel())
            .map(|i| {
                let c = (i / dims.spatial) % ch;
                tol * ((g[i] as f64).abs() * sc[c]
                    + 2.0 * dvar[c] * ((x[i] as f64 - m64[c]).abs() + sabs[c]) / count
                    + dmean[c] / count)
            })
            .collect();
        within(
            &format!("{what}: d input"),
            &down(&dx),
            grads.get(&xt).unwrap().data(),
            &bound_dx,
        );
        within(
            &format!("{what}: d beta"),
            &down(&back.beta),
            grads.get(&bn.bias).unwrap().data(),
            &sg.iter().map(|s| tol * s).collect::<Vec<_>>(),
        );
        within(
            &format!("{what}: d gamma"),
            &down(&back.gamma),
            grads.get(&bn.weight).unwrap().data(),
            &(0..ch).map(|c| tol * p[c] * sgx[c]).collect::<Vec<_>>(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Gradient norm and Adam
// ---------------------------------------------------------------------------------------------

#[test]
fn sum_squares_matches_host() {
    let Some(_gpu) = device_or_skip("sum_squares_matches_host") else {
        return;
    };
    let mut rng = Rng::seed(206);
    let lens = [0usize, 1, 7, 1000, 300_001, 1 << 20];
    let host: Vec<Vec<f32>> = lens
        .iter()
        .map(|&n| uniform(n, -3.0, 3.0, &mut rng))
        .collect();
    let dev: Vec<DeviceBuffer> = host.iter().map(|v| up(v)).collect();
    for k in 0..=lens.len() {
        let refs: Vec<&DeviceBuffer> = dev[..k].iter().collect();
        let want: f64 = host[..k]
            .iter()
            .flatten()
            .map(|&x| x as f64 * x as f64)
            .sum();
        let terms: usize = lens[..k].iter().sum::<usize>() + 2;
        let got = sum_squares(&refs).unwrap();
        // Two f64 sums of the same non-negative terms: 2·n·2⁻⁵³ relative, and more.
        let bound = 4.0 * terms as f64 * f64::EPSILON * want;
        assert!(
            (got - want).abs() <= bound,
            "sum of squares of {k} buffers: GPU {got} vs host {want}"
        );
        let norm = global_norm(&refs).unwrap();
        assert_eq!(norm, want.sqrt() as f32, "global norm of {k} buffers");
    }
    assert_eq!(sum_squares(&[]).unwrap(), 0.0);
}

/// Several Adam steps on two parameters, against the CPU optimiser: identical weights and
/// moments, for both weight-decay forms, with and without clipping.
#[test]
fn adam_matches_cpu_bit_for_bit() {
    let Some(_gpu) = device_or_skip("adam_matches_cpu_bit_for_bit") else {
        return;
    };
    let mut rng = Rng::seed(207);
    let configs = [
        AdamConfig::default(),
        AdamConfig {
            lr: 5e-3,
            weight_decay: 1e-2,
            decay: WeightDecay::L2,
            max_grad_norm: Some(0.5),
            ..AdamConfig::default()
        },
        AdamConfig {
            lr: 1e-2,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 5e-2,
            decay: WeightDecay::Decoupled,
            max_grad_norm: Some(1e3),
        },
    ];
    for config in configs {
        let lens = [1usize, 1037];
        let mut params: Vec<Tensor> = lens
            .iter()
            .map(|&n| Tensor::from_vec(uniform(n, -1.0, 1.0, &mut rng), &[n]).requires_grad())
            .collect();
        let mut dev: Vec<DeviceBuffer> = params.iter().map(|p| up(p.data())).collect();
        let mut m: Vec<DeviceBuffer> = lens
            .iter()
            .map(|&n| DeviceBuffer::zeros(n).unwrap())
            .collect();
        let mut v: Vec<DeviceBuffer> = lens
            .iter()
            .map(|&n| DeviceBuffer::zeros(n).unwrap())
            .collect();
        let mut adam = Adam::new(config);
        for step in 1..=5u64 {
            let g: Vec<Vec<f32>> = lens
                .iter()
                .map(|&n| with_specials(n, false, &mut rng))
                .collect();
            // Σ p ⊙ g has gradient g exactly.
            let loss = params
                .iter()
                .zip(&g)
                .map(|(p, g)| p.mul(&Tensor::from_vec(g.clone(), p.shape())).sum())
                .reduce(|a, b| a.add(&b))
                .unwrap();
            let grads = loss.backward();
            let mut refs: Vec<&mut Tensor> = params.iter_mut().collect();
            let info = adam.step(&mut refs, &grads).unwrap();

            let gd: Vec<DeviceBuffer> = g.iter().map(|g| up(g)).collect();
            let norm = global_norm(&gd.iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(norm, info.grad_norm, "step {step}: gradient norm");
            let clip = clip_scale(norm, config.max_grad_norm).unwrap();
            assert_eq!(clip < 1.0, info.clipped, "step {step}: clipping");
            for i in 0..lens.len() {
                adam_step(
                    &mut dev[i],
                    &gd[i],
                    &mut m[i],
                    &mut v[i],
                    &config,
                    step,
                    clip,
                )
                .unwrap();
            }
            let (_, cm, cv) = adam.state().unwrap();
            for i in 0..lens.len() {
                let what = format!("{config:?} step {step} parameter {i}");
                assert_same(
                    &format!("{what}: weights"),
                    &down(&dev[i]),
                    params[i].data(),
                );
                assert_same(&format!("{what}: m"), &down(&m[i]), &cm[i]);
                assert_same(&format!("{what}: v"), &down(&v[i]), &cv[i]);
            }
        }
    }
    // Non-finite norms stop the step; step 0 does not exist.
    assert!(clip_scale(f32::NAN, None).is_err());
    assert!(clip_scale(f32::INFINITY, Some(1.0)).is_err());
    let (mut w, g) = (up(&[1.0]), up(&[1.0]));
    let (mut m, mut v) = (up(&[0.0]), up(&[0.0]));
    assert!(adam_step(&mut w, &g, &mut m, &mut v, &AdamConfig::default(), 0, 1.0).is_err());
    assert!(adam_step(
        &mut w,
        &up(&[1.0, 2.0]),
        &mut m,
        &mut v,
        &AdamConfig::default(),
        1,
        1.0
    )
    .is_err());
}

// ---------------------------------------------------------------------------------------------
// PGD
// ---------------------------------------------------------------------------------------------

#[test]
fn pgd_step_matches_cpu() {
    let Some(_gpu) = device_or_skip("pgd_step_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(208);
    for n in SIZES {
        let x: Vec<f32> = uniform(n, 0.0, 1.0, &mut rng);
        let eps = 0.1f32;
        let lo: Vec<f32> = x.iter().map(|&v| (v - eps).max(0.0)).collect();
        let hi: Vec<f32> = x.iter().map(|&v| (v + eps).min(1.0)).collect();
        // Zero and NaN gradient entries leave their pixel alone.
        let g = with_specials(n, true, &mut rng);
        let (gd, lod, hid) = (up(&g), up(&lo), up(&hi));
        let mut cur = x.clone();
        let mut dev = up(&x);
        for (k, step) in [0.03f32, 0.05, 0.2, 0.0].into_iter().enumerate() {
            // The CPU's `Region::step` (private there): sign step, then max(lo), min(hi).
            cur = cur
                .iter()
                .zip(&g)
                .zip(lo.iter().zip(&hi))
                .map(|((&v, &gv), (&l, &h))| {
                    let s = if gv > 0.0 {
                        step
                    } else if gv < 0.0 {
                        -step
                    } else {
                        0.0
                    };
                    (v + s).max(l).min(h)
                })
                .collect();
            pgd_step(&mut dev, &gd, &lod, &hid, step).unwrap();
            assert_same(&format!("pgd step {k} of {n} values"), &down(&dev), &cur);
        }
    }
}

/// PGD's best-point bookkeeping on the device against the CPU's rule (`attack::pgd`'s `Best`):
/// the first maximum logit is the prediction (ties and NaN logits included), a loss must beat
/// the best strictly (NaN never does), and only `keep` offers move points.
#[test]
fn pgd_keep_best_matches_cpu() {
    let Some(_gpu) = device_or_skip("pgd_keep_best_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(311);
    for (rows, classes, row_len) in [(1, 2, 1), (5, 10, 37), (33, 3, 300), (7, 10, 1000)] {
        let labels: Vec<usize> = (0..rows).map(|i| (i * 7 + 3) % classes).collect();
        let start = uniform(rows * row_len, 0.0, 1.0, &mut rng);
        let mut best = PgdBest::new(up(&start), rows).unwrap();
        let dev_labels = DeviceLabels::new(&labels, classes).unwrap();
        let (mut want_x, mut want_loss, mut want_fooled) = (
            start.clone(),
            vec![f32::NEG_INFINITY; rows],
            vec![0.0f32; rows],
        );
        for offer in 0..6 {
            let x = uniform(rows * row_len, 0.0, 1.0, &mut rng);
            // Logits in a few levels, so that rows tie; a NaN now and then.
            let mut logits: Vec<f32> = (0..rows * classes)
                .map(|_| (rng.uniform() * 3.0).floor())
                .collect();
            let mut loss = uniform(rows, -1.0, 2.0, &mut rng);
            if offer % 2 == 1 {
                logits[offer % (rows * classes)] = f32::NAN;
                loss[offer % rows] = f32::NAN;
            }
            let keep = offer != 3;
            for i in 0..rows {
                let row = &logits[i * classes..(i + 1) * classes];
                let pred = (1..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
                if pred != labels[i] {
                    want_fooled[i] = 1.0;
                }
                if keep && loss[i] > want_loss[i] {
                    want_loss[i] = loss[i];
                    want_x[i * row_len..(i + 1) * row_len]
                        .copy_from_slice(&x[i * row_len..(i + 1) * row_len]);
                }
            }
            pgd_keep_best(
                &mut best,
                &up(&x),
                &up(&logits),
                &up(&loss),
                &dev_labels,
                keep,
            )
            .unwrap();
            let what = format!("{rows}×{classes}, offer {offer}");
            assert_same(&format!("{what}: points"), &down(&best.x), &want_x);
            assert_same(&format!("{what}: losses"), &down(&best.loss), &want_loss);
            assert_same(
                &format!("{what}: fooled"),
                &down(&best.fooled),
                &want_fooled,
            );
        }
        // Shapes are checked.
        assert!(pgd_keep_best(
            &mut best,
            &up(&start[1..]),
            &up(&[0.0; 1]),
            &up(&[0.0]),
            &dev_labels,
            true
        )
        .is_err());
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
    let (a, b) = (up(&[1.0; 6]), up(&[1.0; 5]));
    assert!(add(&a, &b).is_err());
    assert!(mul_backward(&a, &a, &b).is_err());
    assert!(relu_backward(&a, &b).is_err());
    let mut y = up(&[0.0; 6]);
    assert!(add_scaled(&mut y, &b, 1.0).is_err());
    let labels = DeviceLabels::new(&[0, 1], 3).unwrap();
    assert!(softmax_cross_entropy(&a, 2, 3, &labels).is_ok());
    assert!(softmax_cross_entropy(&a, 3, 2, &labels).is_err());
    assert!(softmax_cross_entropy(&b, 2, 3, &labels).is_err());
    assert!(softmax_cross_entropy(&a, 0, 3, &labels).is_err());
    assert!(softmax_cross_entropy(&a, 2, 3, &DeviceLabels::new(&[0, 3], 4).unwrap()).is_err());
    assert!(DeviceLabels::new(&[3], 3).is_err());
    let dims = ChannelDims {
        batch: 2,
        channels: 3,
        spatial: 1,
    };
    assert!(channel_mean(&a, dims).is_ok());
    assert!(channel_mean(&b, dims).is_err());
    assert!(channel_var(&a, &b, dims).is_err());
    let empty = ChannelDims {
        batch: 0,
        channels: 3,
        spatial: 1,
    };
    assert!(channel_mean(&up(&[]), empty).is_err());
    let c3 = up(&[1.0; 3]);
    let bad_eps = BatchNormParams {
        mean: &c3,
        var: &c3,
        gamma: &c3,
        beta: &c3,
        eps: -1.0,
    };
    assert!(batch_norm_affine(&a, bad_eps, dims).is_err());
    let short = BatchNormParams {
        gamma: &b,
        eps: 1e-5,
        ..bad_eps
    };
    assert!(batch_norm_affine(&a, short, dims).is_err());
    assert!(batch_norm_affine_backward(
        &a,
        &b,
        BatchNormParams {
            eps: 1e-5,
            ..bad_eps
        },
        dims
    )
    .is_err());
    assert!(batch_stats_backward(&a, &c3, &c3, &b, dims).is_err());
    let mut x = up(&[0.5; 6]);
    assert!(pgd_step(&mut x, &a, &a, &b, 0.1).is_err());
}

/// The attacks' per-sample cross-entropy on GPU tensors (the device op, with its backward for a
/// per-row upstream gradient) against the CPU's log-softmax formulation.
#[test]
fn per_sample_cross_entropy_matches_cpu() {
    let Some(_gpu) = device_or_skip("per_sample_cross_entropy_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(203);
    for (rows, classes, spread) in [(1, 2, 1.0), (7, 3, 3.0), (128, 10, 5.0), (9, 10, 60.0)] {
        let z = uniform(rows * classes, -spread, spread, &mut rng);
        let labels: Vec<usize> = (0..rows).map(|_| rng.below(classes)).collect();
        let upstream = uniform(rows, -1.0, 1.0, &mut rng);
        let run = |device| {
            per_sample_loss_on(
                device,
                per_sample_cross_entropy,
                &z,
                classes,
                &labels,
                &upstream,
            )
        };
        let (cpu_loss, cpu_grad) = run(cactus::Device::Cpu);
        let (gpu_loss, gpu_grad) = run(cactus::Device::Cuda);
        let what = format!("per-sample cross-entropy {rows} × {classes} (±{spread})");
        // Both compute z_y − lse in f32 from a sum of exponentials: a few ulp of |lse|, which
        // is also the relative error of each probability exp(z − lse) in the gradient.
        let tol = 1e-5 * (spread + (classes as f32).ln()).max(1.0);
        for (a, b) in gpu_loss.iter().zip(&cpu_loss) {
            assert!((a - b).abs() <= tol, "{what}: loss {a} vs {b}");
        }
        for (a, b) in gpu_grad.iter().zip(&cpu_grad) {
            assert!((a - b).abs() <= tol, "{what}: gradient {a} vs {b}");
        }
    }
}

/// A per-sample attack loss of logits `z` [rows, classes] on `device`: its values, and the
/// gradient of Σ upstream·loss with respect to the logits (both on the host).
fn per_sample_loss_on(
    device: cactus::Device,
    loss: fn(&Tensor, &[usize]) -> Tensor,
    z: &[f32],
    classes: usize,
    labels: &[usize],
    upstream: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let rows = labels.len();
    let zt = Tensor::from_vec(z.to_vec(), &[rows, classes])
        .to_device(device)
        .unwrap()
        .requires_grad();
    let g = Tensor::from_vec(upstream.to_vec(), &[rows])
        .to_device(device)
        .unwrap();
    let l = loss(&zt, labels);
    assert_eq!(l.device(), device);
    let grads = l.mul(&g).sum().backward();
    (l.to_vec(), grads.get(&zt).unwrap().to_vec())
}

/// The margin attack loss on the device is the CPU's bit for bit, value and gradient, ties in
/// the maximum (split evenly) and NaN logits included.
#[test]
fn margin_loss_matches_cpu() {
    let Some(_gpu) = device_or_skip("margin_loss_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(204);
    for (rows, classes) in [(1, 2), (7, 3), (128, 10), (9, 10)] {
        // Few levels, so that rows tie; a NaN in one row.
        let mut z: Vec<f32> = (0..rows * classes)
            .map(|_| (rng.uniform() * 4.0).floor() - 2.0)
            .collect();
        if rows > 1 {
            z[classes + 1] = f32::NAN;
        }
        let labels: Vec<usize> = (0..rows).map(|_| rng.below(classes)).collect();
        let upstream = uniform(rows, -1.0, 1.0, &mut rng);
        let run = |device| per_sample_loss_on(device, margin_loss, &z, classes, &labels, &upstream);
        let (cpu_loss, cpu_grad) = run(cactus::Device::Cpu);
        let (gpu_loss, gpu_grad) = run(cactus::Device::Cuda);
        let what = format!("margin loss {rows} × {classes}");
        assert_same(&format!("{what}: values"), &gpu_loss, &cpu_loss);
        assert_same(&format!("{what}: gradients"), &gpu_grad, &cpu_grad);
    }
}
