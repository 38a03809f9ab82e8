//! Forward (and kernel-level backward) results against straightforward reference
//! implementations written here, with f64 accumulation, on random shapes.
//!
//! Tolerances are relative to the magnitude of what is summed: an entry that is a sum of terms
//! t_k must satisfy |got − want| ≤ rel · Σ|t_k| (+ a tiny floor). A single missing, extra or
//! misplaced term is of order Σ|t_k| / K, far above that bound for the sizes used here.

// `!(err <= bound)` on purpose: a NaN must fail the check.
#![allow(clippy::too_many_arguments, clippy::neg_cmp_op_on_partial_ord)]

use cactus::nn::{BatchNorm, Layer, Sequential};
use cactus::ops::conv::cpu::{conv2d_backward, conv2d_forward, ConvGeometry};
use cactus::ops::{self, Conv2dParams};
use cactus::rng::Rng;
use cactus::Tensor;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Relative tolerance (to Σ|terms|) for GEMM / im2col based ops with long sums.
const GEMM_REL: f64 = 1e-4;
/// Relative tolerance for short, directly computed sums and element-wise formulas.
const ELEM_REL: f64 = 1e-5;

fn uniform(n: usize, lo: f32, hi: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

/// Integer in [lo, hi].
fn pick(lo: usize, hi: usize, rng: &mut Rng) -> usize {
    lo + rng.below(hi - lo + 1)
}

/// Check `got` against `want` entry by entry: |got − want| ≤ rel · scale + 1e-6 · rel.
fn assert_close(what: &str, got: &[f32], want: &[f64], scale: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut bad = Vec::new();
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g as f64 - w).abs();
        if !(err <= rel * s + 1e-6 * rel) {
            bad.push(format!(
                "[{i}] got {g} want {w} (err {err:.3e}, allowed {:.3e})",
                rel * s
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} entries off:\n  {}",
        bad.len(),
        got.len(),
        bad[..bad.len().min(8)].join("\n  ")
    );
}

/// Like `assert_close` with the scale taken as |want| (for values that are not plain sums).
fn assert_rel(what: &str, got: &[f32], want: &[f64], rel: f64) {
    let scale: Vec<f64> = want.iter().map(|w| w.abs().max(1.0)).collect();
    assert_close(what, got, want, &scale, rel);
}

fn as_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

/// Direct convolution: every output is the sum over (c, i, j) of in-range input × weight.
/// Returns the outputs and, per output, Σ|terms|.
fn conv_ref(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &ConvGeometry) -> (Vec<f64>, Vec<f64>) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = Vec::with_capacity(g.output_len());
    let mut mag = Vec::with_capacity(g.output_len());
    for n in 0..g.n {
        for o in 0..g.c_out {
            for y in 0..oh {
                for xx in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[o] as f64);
                    let mut abs = acc.abs();
                    for c in 0..g.c_in {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let iy = (y * g.stride.0 + i) as isize - g.padding.0 as isize;
                                let ix = (xx * g.stride.1 + j) as isize - g.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((n * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize];
                                let wv = w[((o * g.c_in + c) * g.kh + i) * g.kw + j];
                                let t = xv as f64 * wv as f64;
                                acc += t;
                                abs += t.abs();
                            }
                        }
                    }
                    out.push(acc);
                    mag.push(abs);
                }
            }
        }
    }
    (out, mag)
}

/// Direct gradients of Σ go·conv(x, w, b): dx by gathering, for each input pixel, the outputs
/// whose window covers it; dw by correlating go with x; db by summing go. Each with Σ|terms|.
#[allow(clippy::type_complexity)]
fn conv_backward_ref(
    x: &[f32],
    w: &[f32],
    go: &[f32],
    g: &ConvGeometry,
) -> (
    (Vec<f64>, Vec<f64>),
    (Vec<f64>, Vec<f64>),
    (Vec<f64>, Vec<f64>),
) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let go_at =
        |n: usize, o: usize, y: usize, xx: usize| go[((n * g.c_out + o) * oh + y) * ow + xx];
    // Output row y covers input row iy through kernel row i when y·s + i − p = iy.
    let out_index = |iv: usize, i: usize, s: usize, p: usize, len: usize| -> Option<usize> {
        let num = iv as isize + p as isize - i as isize;
        (num >= 0 && num % s as isize == 0 && ((num / s as isize) as usize) < len)
            .then(|| (num / s as isize) as usize)
    };
    let (mut dx, mut dx_mag) = (Vec::new(), Vec::new());
    for n in 0..g.n {
        for c in 0..g.c_in {
            for iy in 0..g.h {
                for ix in 0..g.w {
                    let (mut acc, mut abs) = (0.0f64, 0.0f64);
                    for o in 0..g.c_out {
                        for i in 0..g.kh {
                            let Some(y) = out_index(iy, i, g.stride.0, g.padding.0, oh) else {
                                continue;
                            };
                            for j in 0..g.kw {
                                let Some(xx) = out_index(ix, j, g.stride.1, g.padding.1, ow) else {
                                    continue;
                                };
                                let t = go_at(n, o, y, xx) as f64
                                    * w[((o * g.c_in + c) * g.kh + i) * g.kw + j] as f64;
                                acc += t;
                                abs += t.abs();
                            }
                        }
                    }
                    dx.push(acc);
                    dx_mag.push(abs);
                }
            }
        }
    }
    let (mut dw, mut dw_mag) = (Vec::new(), Vec::new());
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let (mut acc, mut abs) = (0.0f64, 0.0f64);
                    for n in 0..g.n {
                        for y in 0..oh {
                            for xx in 0..ow {
                                let iy = (y * g.stride.0 + i) as isize - g.padding.0 as isize;
                                let ix = (xx * g.stride.1 + j) as isize - g.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((n * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize];
                                let t = go_at(n, o, y, xx) as f64 * xv as f64;
                                acc += t;
                                abs += t.abs();
                            }
                        }
                    }
                    dw.push(acc);
                    dw_mag.push(abs);
                }
            }
        }
    }
    let (mut db, mut db_mag) = (vec![0.0; g.c_out], vec![0.0; g.c_out]);
    for n in 0..g.n {
        for o in 0..g.c_out {
            for y in 0..oh {
                for xx in 0..ow {
                    db[o] += go_at(n, o, y, xx) as f64;
                    db_mag[o] += (go_at(n, o, y, xx) as f64).abs();
                }
            }
        }
    }
    ((dx, dx_mag), (dw, dw_mag), (db, db_mag))
}

/// Hand-picked geometries (n, c, h, w, o, kh, kw, stride, padding) covering batch 1, stride 2,
/// padding, non-square inputs and kernels, 1×1 kernels and larger layers.
fn conv_cases(rng: &mut Rng) -> Vec<ConvGeometry> {
    let geo = |n, c_in, h, w, c_out, kh, kw, stride, padding| ConvGeometry {
        n,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        stride,
        padding,
    };
    let mut cases = vec![
        geo(1, 1, 5, 5, 1, 3, 3, (1, 1), (0, 0)),
        geo(1, 3, 7, 9, 4, 3, 3, (2, 2), (1, 1)),
        geo(2, 2, 8, 6, 3, 4, 4, (2, 2), (1, 1)),
        geo(3, 4, 6, 5, 2, 1, 1, (1, 1), (0, 0)),
        geo(2, 3, 9, 7, 5, 3, 2, (2, 1), (1, 2)),
        geo(1, 2, 5, 8, 3, 2, 5, (1, 3), (2, 0)),
        geo(2, 3, 4, 4, 2, 3, 3, (1, 1), (2, 2)),
        geo(2, 2, 3, 3, 2, 5, 5, (1, 1), (1, 1)),
        geo(2, 16, 16, 12, 24, 3, 3, (1, 1), (1, 1)),
        geo(3, 8, 15, 15, 16, 3, 3, (2, 2), (1, 1)),
        // 1×1 kernels off the pointwise fast path (strided, padded).
        geo(2, 3, 6, 7, 4, 1, 1, (2, 2), (0, 0)),
        geo(1, 2, 4, 5, 3, 1, 1, (1, 1), (1, 1)),
        // im2col matrices above the kernel's band size (2^18 floats): several bands per sample.
        geo(2, 32, 32, 32, 8, 3, 3, (1, 1), (1, 1)),
        geo(1, 64, 50, 46, 4, 3, 3, (2, 2), (1, 1)),
    ];
    // Random geometries: sizes 1..=10, kernels up to 5, strides up to 3, padding up to 2.
    while cases.len() < 26 {
        let (kh, kw) = (pick(1, 5, rng), pick(1, 5, rng));
        let padding = (pick(0, 2, rng), pick(0, 2, rng));
        let h = pick(1, 10, rng);
        let w = pick(1, 10, rng);
        if h + 2 * padding.0 < kh || w + 2 * padding.1 < kw {
            continue;
        }
        cases.push(geo(
            pick(1, 3, rng),
            pick(1, 4, rng),
            h,
            w,
            pick(1, 5, rng),
            kh,
            kw,
            (pick(1, 3, rng), pick(1, 3, rng)),
            padding,
        ));
    }
    cases
}

/// Tensor::conv2d and the backend's conv2d_forward against the direct convolution.
#[test]
fn conv2d_forward_matches_direct() {
    let mut rng = Rng::seed(1);
    for g in conv_cases(&mut rng) {
        let x = uniform(g.input_len(), -1.0, 1.0, &mut rng);
        let w = uniform(g.weight_len(), -1.0, 1.0, &mut rng);
        let b = uniform(g.c_out, -1.0, 1.0, &mut rng);
        for bias in [None, Some(&b[..])] {
            let what = format!("conv2d {g:?} bias={}", bias.is_some());
            let (want, mag) = conv_ref(&x, &w, bias, &g);
            let kernel = conv2d_forward(&x, &w, bias, &g);
            assert_close(&format!("backend {what}"), &kernel, &want, &mag, GEMM_REL);

            let xt = Tensor::from_vec(x.clone(), &[g.n, g.c_in, g.h, g.w]);
            let wt = Tensor::from_vec(w.clone(), &[g.c_out, g.c_in, g.kh, g.kw]);
            let bt = bias.map(|b| Tensor::from_vec(b.to_vec(), &[g.c_out]));
            let p = Conv2dParams {
                stride: g.stride,
                padding: g.padding,
            };
            let y = xt.conv2d(&wt, bt.as_ref(), p);
            assert_eq!(y.shape(), &[g.n, g.c_out, g.out_h(), g.out_w()], "{what}");
            assert_close(&format!("Tensor {what}"), y.data(), &want, &mag, GEMM_REL);
        }
    }
}

/// The backend's conv2d_backward (each gradient alone and all together), and the gradients
/// that Tensor::conv2d's backward produces, against the direct gradients.
#[test]
fn conv2d_backward_matches_direct() {
    let mut rng = Rng::seed(2);
    for g in conv_cases(&mut rng) {
        let x = uniform(g.input_len(), -1.0, 1.0, &mut rng);
        let w = uniform(g.weight_len(), -1.0, 1.0, &mut rng);
        let b = uniform(g.c_out, -1.0, 1.0, &mut rng);
        let go = uniform(g.output_len(), -1.0, 1.0, &mut rng);
        let ((dx, dx_mag), (dw, dw_mag), (db, db_mag)) = conv_backward_ref(&x, &w, &go, &g);
        let what = format!("{g:?}");

        let all = conv2d_backward(&x, &w, &go, &g, true, true, true);
        let got = |v: &Option<Vec<f32>>, name: &str| -> Vec<f32> {
            v.clone()
                .unwrap_or_else(|| panic!("{name} not computed for {what}"))
        };
        assert_close(
            &format!("dx {what}"),
            &got(&all.input, "dx"),
            &dx,
            &dx_mag,
            GEMM_REL,
        );
        assert_close(
            &format!("dw {what}"),
            &got(&all.weight, "dw"),
            &dw,
            &dw_mag,
            GEMM_REL,
        );
        assert_close(
            &format!("db {what}"),
            &got(&all.bias, "db"),
            &db,
            &db_mag,
            GEMM_REL,
        );
        // One at a time (the kernels may take different paths).
        let only_x = conv2d_backward(&x, &w, &go, &g, true, false, false);
        assert_close(
            &format!("dx alone {what}"),
            &got(&only_x.input, "dx"),
            &dx,
            &dx_mag,
            GEMM_REL,
        );
        let only_w = conv2d_backward(&x, &w, &go, &g, false, true, false);
        assert_close(
            &format!("dw alone {what}"),
            &got(&only_w.weight, "dw"),
            &dw,
            &dw_mag,
            GEMM_REL,
        );
        let only_b = conv2d_backward(&x, &w, &go, &g, false, false, true);
        assert_close(
            &format!("db alone {what}"),
            &got(&only_b.bias, "db"),
            &db,
            &db_mag,
            GEMM_REL,
        );

        // Through autodiff: the gradient of Σ go·conv2d(x, w, b).
        let xt = Tensor::from_vec(x.clone(), &[g.n, g.c_in, g.h, g.w]).requires_grad();
        let wt = Tensor::from_vec(w.clone(), &[g.c_out, g.c_in, g.kh, g.kw]).requires_grad();
        let bt = Tensor::from_vec(b.clone(), &[g.c_out]).requires_grad();
        let p = Conv2dParams {
            stride: g.stride,
            padding: g.padding,
        };
        let y = xt.conv2d(&wt, Some(&bt), p);
        let grads = y
            .mul(&Tensor::from_vec(go.clone(), y.shape()))
            .sum()
            .backward();
        assert_close(
            &format!("autodiff dx {what}"),
            grads.get(&xt).unwrap().data(),
            &dx,
            &dx_mag,
            GEMM_REL,
        );
        assert_close(
            &format!("autodiff dw {what}"),
            grads.get(&wt).unwrap().data(),
            &dw,
            &dw_mag,
            GEMM_REL,
        );
        assert_close(
            &format!("autodiff db {what}"),
            grads.get(&bt).unwrap().data(),
            &db,
            &db_mag,
            GEMM_REL,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix products
// ---------------------------------------------------------------------------------------------

/// a [m, k] · b [k, n] in f64, with Σ|terms| per entry. `at` / `bt` read the operand transposed.
fn matmul_ref(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    at: bool,
    bt: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for l in 0..k {
                let av = if at { a[l * m + i] } else { a[i * k + l] };
                let bv = if bt { b[j * k + l] } else { b[l * n + j] };
                let t = av as f64 * bv as f64;
                out[i * n + j] += t;
                mag[i * n + j] += t.abs();
            }
        }
    }
    (out, mag)
}

/// (m, k, n): vectors, odd sizes, long inner sums, and sizes big enough for the blocked and
/// multi-threaded GEMM paths.
const MATMUL_SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (1, 7, 1),
    (1, 13, 9),
    (5, 1, 3),
    (3, 5, 7),
    (17, 33, 9),
    (2, 513, 3),
    (65, 70, 67),
    (130, 96, 40),
];

/// matmul forward, and its backward (G·Bᵀ, Aᵀ·G), against direct triple loops.
#[test]
fn matmul_matches_direct() {
    let mut rng = Rng::seed(3);
    for (m, k, n) in MATMUL_SHAPES {
        let a = uniform(m * k, -1.0, 1.0, &mut rng);
        let b = uniform(k * n, -1.0, 1.0, &mut rng);
        let g = uniform(m * n, -1.0, 1.0, &mut rng);
        let at = Tensor::from_vec(a.clone(), &[m, k]).requires_grad();
        let bt = Tensor::from_vec(b.clone(), &[k, n]).requires_grad();
        let y = at.matmul(&bt);
        assert_eq!(y.shape(), &[m, n]);
        let (want, mag) = matmul_ref(&a, &b, m, k, n, false, false);
        assert_close(
            &format!("matmul {m}x{k}x{n}"),
            y.data(),
            &want,
            &mag,
            GEMM_REL,
        );

        let grads = y
            .mul(&Tensor::from_vec(g.clone(), &[m, n]))
            .sum()
            .backward();
        let (da, da_mag) = matmul_ref(&g, &b, m, n, k, false, true);
        let (db, db_mag) = matmul_ref(&a, &g, k, m, n, true, false);
        assert_close(
            &format!("matmul dA {m}x{k}x{n}"),
            grads.get(&at).unwrap().data(),
            &da,
            &da_mag,
            GEMM_REL,
        );
        assert_close(
            &format!("matmul dB {m}x{k}x{n}"),
            grads.get(&bt).unwrap().data(),
            &db,
            &db_mag,
            GEMM_REL,
        );
    }
}

/// linear (x·Wᵀ + b) forward with and without bias, and its backward, against direct loops.
#[test]
fn linear_matches_direct() {
    let mut rng = Rng::seed(4);
    for (batch, fin, fout) in MATMUL_SHAPES {
        let x = uniform(batch * fin, -1.0, 1.0, &mut rng);
        let w = uniform(fout * fin, -1.0, 1.0, &mut rng);
        let b = uniform(fout, -1.0, 1.0, &mut rng);
        let g = uniform(batch * fout, -1.0, 1.0, &mut rng);
        let what = format!("linear {batch}x{fin}->{fout}");
        let (xw, xw_mag) = matmul_ref(&x, &w, batch, fin, fout, false, true);
        let xt = Tensor::from_vec(x.clone(), &[batch, fin]).requires_grad();
        let wt = Tensor::from_vec(w.clone(), &[fout, fin]).requires_grad();
        let bt = Tensor::from_vec(b.clone(), &[fout]).requires_grad();

        let plain = xt.linear(&wt, None);
        assert_close(
            &format!("{what} no bias"),
            plain.data(),
            &xw,
            &xw_mag,
            GEMM_REL,
        );

        let y = xt.linear(&wt, Some(&bt));
        assert_eq!(y.shape(), &[batch, fout]);
        let want: Vec<f64> = xw
            .iter()
            .enumerate()
            .map(|(i, v)| v + b[i % fout] as f64)
            .collect();
        let mag: Vec<f64> = xw_mag
            .iter()
            .enumerate()
            .map(|(i, v)| v + b[i % fout].abs() as f64)
            .collect();
        assert_close(&format!("{what} bias"), y.data(), &want, &mag, GEMM_REL);

        let grads = y
            .mul(&Tensor::from_vec(g.clone(), &[batch, fout]))
            .sum()
            .backward();
        let (dx, dx_mag) = matmul_ref(&g, &w, batch, fout, fin, false, false);
        let (dw, dw_mag) = matmul_ref(&g, &x, fout, batch, fin, true, false);
        let (db, db_mag) = matmul_ref(&vec![1.0; batch], &g, 1, batch, fout, false, false);
        assert_close(
            &format!("{what} dx"),
            grads.get(&xt).unwrap().data(),
            &dx,
            &dx_mag,
            GEMM_REL,
        );
        assert_close(
            &format!("{what} dW"),
            grads.get(&wt).unwrap().data(),
            &dw,
            &dw_mag,
            GEMM_REL,
        );
        assert_close(
            &format!("{what} db"),
            grads.get(&bt).unwrap().data(),
            &db,
            &db_mag,
            GEMM_REL,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Batch norm
// ---------------------------------------------------------------------------------------------

/// Per-channel mean and biased variance of x read as [N, C, S], in f64.
fn channel_stats(x: &[f32], n: usize, c: usize, s: usize) -> (Vec<f64>, Vec<f64>) {
    let count = (n * s) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        for i in 0..n {
            for k in 0..s {
                mean[ch] += x[(i * c + ch) * s + k] as f64;
            }
        }
        mean[ch] /= count;
        for i in 0..n {
            for k in 0..s {
                let d = x[(i * c + ch) * s + k] as f64 - mean[ch];
                var[ch] += d * d;
            }
        }
        var[ch] /= count;
    }
    (mean, var)
}

/// y = (x − mean) / √(var + ε) · γ + β per channel, in f64.
fn bn_ref(
    x: &[f32],
    c: usize,
    s: usize,
    mean: &[f64],
    var: &[f64],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / s) % c;
            (v as f64 - mean[ch]) / (var[ch] + eps).sqrt() * gamma[ch] as f64 + beta[ch] as f64
        })
        .collect()
}

/// Random batch-norm input shapes: [N, C, H, W] (2-d) and [N, C] (1-d).
fn bn_shapes(rng: &mut Rng) -> Vec<(Vec<usize>, usize)> {
    let mut shapes = vec![
        (vec![2, 3, 4, 5], 2),
        (vec![1, 2, 3, 3], 2),
        (vec![5, 4], 1),
        (vec![2, 7], 1),
        (vec![16, 8, 7, 9], 2),
        (vec![64, 33], 1),
    ];
    for _ in 0..4 {
        let (n, c) = (pick(1, 5, rng), pick(1, 6, rng));
        let (h, w) = (pick(1, 6, rng), pick(1, 6, rng));
        if n * h * w > 1 {
            shapes.push((vec![n, c, h, w], 2));
        }
        let n1 = pick(2, 9, rng);
        shapes.push((vec![n1, c], 1));
    }
    shapes
}

/// BatchNorm in train mode: output, batch mean, biased batch variance, and the PyTorch running
/// statistics update (momentum 0.1, unbiased variance), both directly and via forward_train.
#[test]
fn batchnorm_train_mode_matches_reference() {
    let mut rng = Rng::seed(5);
    for (shape, dims) in bn_shapes(&mut rng) {
        let (n, c) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let count = n * s;
        let what = format!("batchnorm{dims}d {shape:?}");
        // An offset and a scale per run so that the statistics are not trivially 0 and 1.
        let x: Vec<f32> = uniform(n * c * s, -1.0, 1.0, &mut rng)
            .into_iter()
            .map(|v| 3.0 * v + 1.5)
            .collect();
        let gamma = uniform(c, 0.5, 1.5, &mut rng);
        let beta = uniform(c, -0.5, 0.5, &mut rng);
        let rm0 = uniform(c, -1.0, 1.0, &mut rng);
        let rv0 = uniform(c, 0.5, 2.0, &mut rng);

        let mut bn = BatchNorm::new(c, dims);
        bn.weight = Tensor::from_vec(gamma.clone(), &[c]).requires_grad();
        bn.bias = Tensor::from_vec(beta.clone(), &[c]).requires_grad();
        bn.running_mean = Tensor::from_vec(rm0.clone(), &[c]);
        bn.running_var = Tensor::from_vec(rv0.clone(), &[c]);
        assert_eq!((bn.eps, bn.momentum), (1e-5, 0.1), "PyTorch defaults");
        let xt = Tensor::from_vec(x.clone(), &shape);
        let (y, stats) = bn.forward_batch(&xt);

        let (mean, var) = channel_stats(&x, n, c, s);
        assert_rel(&format!("{what} mean"), stats.mean.data(), &mean, ELEM_REL);
        assert_rel(
            &format!("{what} biased var"),
            stats.var.data(),
            &var,
            ELEM_REL,
        );
        let want = bn_ref(&x, c, s, &mean, &var, &gamma, &beta, 1e-5);
        assert_eq!(y.shape(), &shape[..]);
        assert_rel(&format!("{what} output"), y.data(), &want, 1e-4);

        // Running statistics: r ← 0.9·r + 0.1·batch, with the variance made unbiased.
        let unbias = count as f64 / (count as f64 - 1.0);
        let rm: Vec<f64> = rm0
            .iter()
            .zip(&mean)
            .map(|(&r, m)| 0.9 * r as f64 + 0.1 * m)
            .collect();
        let rv: Vec<f64> = rv0
            .iter()
            .zip(&var)
            .map(|(&r, v)| 0.9 * r as f64 + 0.1 * v * unbias)
            .collect();
        bn.update_running_stats(&stats, count);
        assert_rel(
            &format!("{what} running mean"),
            bn.running_mean.data(),
            &rm,
            ELEM_REL,
        );
        assert_rel(
            &format!("{what} running var"),
            bn.running_var.data(),
            &rv,
            ELEM_REL,
        );
        assert_eq!(bn.num_batches_tracked, 1);

        // Sequential::forward_train works out the count itself.
        let mut bn2 = BatchNorm::new(c, dims);
        bn2.weight = Tensor::from_vec(gamma.clone(), &[c]).requires_grad();
        bn2.bias = Tensor::from_vec(beta.clone(), &[c]).requires_grad();
        bn2.running_mean = Tensor::from_vec(rm0.clone(), &[c]);
        bn2.running_var = Tensor::from_vec(rv0.clone(), &[c]);
        let mut seq = Sequential::new(vec![Layer::BatchNorm(bn2)]);
        let y2 = seq.forward_train(&xt);
        assert_rel(
            &format!("{what} forward_train output"),
            y2.data(),
            &want,
            1e-4,
        );
        let Layer::BatchNorm(bn2) = &seq.layers[0] else {
            unreachable!()
        };
        assert_rel(
            &format!("{what} forward_train running mean"),
            bn2.running_mean.data(),
            &rm,
            ELEM_REL,
        );
        assert_rel(
            &format!("{what} forward_train running var"),
            bn2.running_var.data(),
            &rv,
            ELEM_REL,
        );
    }
}

/// BatchNorm in eval mode normalises with the running statistics.
#[test]
fn batchnorm_eval_mode_matches_reference() {
    let mut rng = Rng::seed(6);
    for (shape, dims) in bn_shapes(&mut rng) {
        let (n, c) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let x = uniform(n * c * s, -2.0, 2.0, &mut rng);
        let gamma = uniform(c, -1.5, 1.5, &mut rng);
        let beta = uniform(c, -0.5, 0.5, &mut rng);
        let rm = uniform(c, -1.0, 1.0, &mut rng);
        let rv = uniform(c, 0.01, 2.0, &mut rng);
        let mut bn = BatchNorm::new(c, dims);
        bn.weight = Tensor::from_vec(gamma.clone(), &[c]).requires_grad();
        bn.bias = Tensor::from_vec(beta.clone(), &[c]).requires_grad();
        bn.running_mean = Tensor::from_vec(rm.clone(), &[c]);
        bn.running_var = Tensor::from_vec(rv.clone(), &[c]);
        let y = bn.forward_eval(&Tensor::from_vec(x.clone(), &shape));
        let want = bn_ref(&x, c, s, &as_f64(&rm), &as_f64(&rv), &gamma, &beta, 1e-5);
        assert_rel(&format!("batchnorm eval {shape:?}"), y.data(), &want, 1e-4);
        // Eval mode leaves the running statistics alone.
        assert_eq!(bn.running_mean.to_vec(), rm);
        assert_eq!(bn.num_batches_tracked, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Log-softmax and cross-entropy
// ---------------------------------------------------------------------------------------------

/// log-softmax of each row in f64 (max-shifted).
fn log_softmax_ref(x: &[f32], k: usize) -> Vec<f64> {
    x.chunks(k)
        .flat_map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            row.iter().map(move |&v| v as f64 - lse).collect::<Vec<_>>()
        })
        .collect()
}

/// Logit batches: random ones of several shapes, plus rows with logits of ±1000.
fn logit_cases(rng: &mut Rng) -> Vec<(Vec<f32>, usize)> {
    let mut cases = vec![
        (
            vec![
                1000.0, 0.0, -1000.0, 1000.0, 1000.0, 999.0, -1000.0, -1000.0, -1000.0,
            ],
            3,
        ),
        (vec![1000.0, 1.0, 2.0, 3.0, -5.0, 1000.0, -1000.0, 0.5], 4),
        (vec![88.0, 89.0, 90.0, -104.0], 2),
        (vec![0.0], 1),
    ];
    for (n, k) in [(1, 2), (3, 5), (7, 10), (4, 1), (16, 100)] {
        cases.push((uniform(n * k, -5.0, 5.0, rng), k));
    }
    cases
}

/// log_softmax against the f64 reference, stable for large logits.
#[test]
fn log_softmax_matches_reference() {
    let mut rng = Rng::seed(7);
    for (x, k) in logit_cases(&mut rng) {
        let n = x.len() / k;
        let y = ops::log_softmax(&Tensor::from_vec(x.clone(), &[n, k]));
        assert_eq!(y.shape(), &[n, k]);
        assert!(
            y.data().iter().all(|v| v.is_finite()),
            "log_softmax {x:?}: {:?}",
            y.data()
        );
        // Errors are relative to the logits' size (v − lse loses digits of |v|).
        let want = log_softmax_ref(&x, k);
        let scale: Vec<f64> = x
            .iter()
            .zip(&want)
            .map(|(&v, w)| (v as f64).abs().max(w.abs()).max(1.0))
            .collect();
        assert_close(
            &format!("log_softmax [{n}, {k}]"),
            y.data(),
            &want,
            &scale,
            ELEM_REL,
        );
    }
}

/// cross_entropy (mean over the batch) and its gradient (softmax − onehot)/n, large logits too.
#[test]
fn cross_entropy_matches_reference() {
    let mut rng = Rng::seed(8);
    for (x, k) in logit_cases(&mut rng) {
        let n = x.len() / k;
        let labels: Vec<usize> = (0..n).map(|_| rng.below(k)).collect();
        let logits = Tensor::from_vec(x.clone(), &[n, k]).requires_grad();
        let loss = ops::cross_entropy(&logits, &labels);
        assert_eq!(loss.shape(), &[] as &[usize]);
        let lsm = log_softmax_ref(&x, k);
        let want = -labels
            .iter()
            .enumerate()
            .map(|(i, &y)| lsm[i * k + y])
            .sum::<f64>()
            / n as f64;
        let scale = x
            .iter()
            .fold(1.0f64, |m, &v| m.max((v as f64).abs()))
            .max(want.abs());
        let what = format!("cross_entropy [{n}, {k}] labels {labels:?}");
        assert!(loss.item().is_finite(), "{what}: {}", loss.item());
        assert_close(&what, &[loss.item()], &[want], &[scale], ELEM_REL);

        let grads = loss.backward();
        let mut dwant: Vec<f64> = lsm.iter().map(|l| l.exp() / n as f64).collect();
        for (i, &y) in labels.iter().enumerate() {
            dwant[i * k + y] -= 1.0 / n as f64;
        }
        let g = grads.get(&logits).unwrap();
        assert!(
            g.data().iter().all(|v| v.is_finite()),
            "{what} grad {:?}",
            g.data()
        );
        // f32 logits lose digits of |x| in x − lse: allow for that on top of 1e-5.
        let xmax = x.iter().fold(1.0f64, |m, &v| m.max((v as f64).abs()));
        let gscale = vec![(1.0 + xmax / 10.0) / n as f64; n * k];
        assert_close(&format!("{what} grad"), g.data(), &dwant, &gscale, 1e-5);
    }
    // The two worked examples: a confident right answer costs ~0, a confident wrong one ~1000.
    let x = Tensor::from_vec(vec![1000.0, 0.0, -1000.0, 0.0, 1000.0, 0.0], &[2, 3]);
    assert!(ops::cross_entropy(&x.index_rows(&[0]), &[0]).item().abs() < 1e-6);
    assert!((ops::cross_entropy(&x.index_rows(&[1]), &[0]).item() - 1000.0).abs() < 1e-3);
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------

/// Row-major multi-index of flat index `i`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = i % shape[a];
        i /= shape[a];
    }
    idx
}

/// Reduce `axes` of x with `f` over the f64 values of each group; result in keepdim layout.
fn reduce_ref(
    x: &[f32],
    shape: &[usize],
    axes: &[usize],
    f: impl Fn(&[f64]) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(a, &d)| if axes.contains(&a) { 1 } else { d })
        .collect();
    let out_len: usize = kept.iter().product();
    let mut groups = vec![Vec::new(); out_len];
    for (i, &v) in x.iter().enumerate() {
        let idx = unravel(i, shape);
        let o = idx
            .iter()
            .zip(&kept)
            .fold(0, |o, (&ix, &d)| o * d + if d == 1 { 0 } else { ix });
        groups[o].push(v as f64);
    }
    (groups.iter().map(|g| f(g)).collect(), kept)
}

/// sum_axes, mean_axes, max_axes (keepdim or not, negative axes), sum and mean on random shapes
/// and random axis sets.
#[test]
fn reductions_match_reference() {
    let mut rng = Rng::seed(9);
    for _ in 0..40 {
        let rank = pick(1, 4, &mut rng);
        let shape: Vec<usize> = (0..rank).map(|_| pick(1, 5, &mut rng)).collect();
        let x = uniform(shape.iter().product(), -2.0, 2.0, &mut rng);
        let xt = Tensor::from_vec(x.clone(), &shape);
        // A random non-empty axis subset, given partly as negative axes.
        let mut axes: Vec<usize> = (0..rank).filter(|_| rng.below(2) == 0).collect();
        if axes.is_empty() {
            axes.push(rng.below(rank));
        }
        let signed: Vec<isize> = axes
            .iter()
            .map(|&a| {
                if rng.below(2) == 0 {
                    a as isize
                } else {
                    a as isize - rank as isize
                }
            })
            .collect();
        let keepdim = rng.below(2) == 0;
        let what = format!("{shape:?} axes {signed:?} keepdim {keepdim}");
        let (sum, kept) = reduce_ref(&x, &shape, &axes, |g| g.iter().sum());
        let (abs, _) = reduce_ref(&x, &shape, &axes, |g| g.iter().map(|v| v.abs()).sum());
        let (mean, _) = reduce_ref(&x, &shape, &axes, |g| {
            g.iter().sum::<f64>() / g.len() as f64
        });
        let (mean_abs, _) = reduce_ref(&x, &shape, &axes, |g| {
            g.iter().map(|v| v.abs()).sum::<f64>() / g.len() as f64
        });
        let (max, _) = reduce_ref(&x, &shape, &axes, |g| {
            g.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        });
        let out_shape: Vec<usize> = if keepdim {
            kept.clone()
        } else {
            shape
                .iter()
                .enumerate()
                .filter(|(a, _)| !axes.contains(a))
                .map(|(_, &d)| d)
                .collect()
        };

        let s = xt.sum_axes(&signed, keepdim);
        assert_eq!(s.shape(), &out_shape[..], "sum_axes {what}");
        assert_close(&format!("sum_axes {what}"), s.data(), &sum, &abs, ELEM_REL);
        let m = xt.mean_axes(&signed, keepdim);
        assert_eq!(m.shape(), &out_shape[..], "mean_axes {what}");
        assert_close(
            &format!("mean_axes {what}"),
            m.data(),
            &mean,
            &mean_abs,
            ELEM_REL,
        );
        let mx = xt.max_axes(&signed, keepdim);
        assert_eq!(mx.shape(), &out_shape[..], "max_axes {what}");
        assert_eq!(
            mx.data(),
            max.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            "max_axes {what}"
        );

        let total: f64 = x.iter().map(|&v| v as f64).sum();
        let total_abs: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
        assert_eq!(xt.sum().shape(), &[] as &[usize]);
        assert_close(
            &format!("sum {shape:?}"),
            &[xt.sum().item()],
            &[total],
            &[total_abs],
            ELEM_REL,
        );
        let count = x.len() as f64;
        assert_close(
            &format!("mean {shape:?}"),
            &[xt.mean().item()],
            &[total / count],
            &[total_abs / count],
            ELEM_REL,
        );
    }
}

/// argmax along every axis (first index on ties) and argmax_rows, against a direct scan.
#[test]
fn argmax_matches_reference() {
    let mut rng = Rng::seed(10);
    for _ in 0..20 {
        let rank = pick(1, 4, &mut rng);
        let shape: Vec<usize> = (0..rank).map(|_| pick(1, 5, &mut rng)).collect();
        // Few distinct values, so ties are common.
        let x: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.below(4) as f32)
            .collect();
        let xt = Tensor::from_vec(x.clone(), &shape);
        for axis in 0..rank {
            let (want, kept) = reduce_ref(&x, &shape, &[axis], |_| 0.0);
            // Direct scan: for each output position, the first index of the maximum.
            let mut want = want;
            for (o, w) in want.iter_mut().enumerate() {
                let base = unravel(o, &kept);
                let mut best = 0;
                let at = |l: usize| {
                    let mut idx = base.clone();
                    idx[axis] = l;
                    let flat = idx.iter().zip(&shape).fold(0, |f, (&i, &d)| f * d + i);
                    x[flat]
                };
                for l in 1..shape[axis] {
                    if at(l) > at(best) {
                        best = l;
                    }
                }
                *w = best as f64;
            }
            for keepdim in [false, true] {
                let a = xt.argmax(axis as isize, keepdim);
                let mut s = kept.clone();
                if !keepdim {
                    s.remove(axis);
                }
                assert_eq!(a.shape(), &s[..], "argmax {shape:?} axis {axis}");
                assert_eq!(
                    as_f64(a.data()),
                    want,
                    "argmax {shape:?} axis {axis} of {x:?}"
                );
            }
            if rank == 2 && axis == 1 {
                let rows: Vec<f64> = xt.argmax_rows().iter().map(|&v| v as f64).collect();
                assert_eq!(rows, want, "argmax_rows {shape:?} of {x:?}");
            }
        }
    }
    let m = Tensor::from_vec(vec![0.0, 2.0, 2.0, -1.0, -3.0, -1.0], &[2, 3]);
    assert_eq!(m.argmax_rows(), vec![1, 0]);
}
