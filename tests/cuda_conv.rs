//! The CUDA convolution and GEMM kernels (`ops/conv/conv.cu`, `ops/matmul/matmul.cu`, launched by
//! `cactus::ops::conv::launch`) against the CPU engine: forward and every gradient of
//! `Tensor::conv2d` and `Tensor::interval_conv2d` (gradients from autodiff), and `matmul`, on
//! odd and random shapes (batch 1, stride 1 to 3, padding 0 to 2, kernels 1×1 to 5×5,
//! non-square inputs and kernels, channel counts across tile edges, split-K weight gradients).
//!
//! The GPU tests skip, printing why, on a machine without a device. Four tests run everywhere:
//! the geometry checks, the split-K plan, a self-check of the CPU references and tolerance
//! against the CPU backend's direct loops, and (with NVRTC) that every kernel the wrappers
//! launch is in its compiled module.
//!
//! Tolerance: an entry that is a sum of K terms t_k must satisfy
//! |gpu − cpu| ≤ 1e-4 · Σ|t_k| (+ 1e-7). Σ|t_k| is computed by running the same CPU op on the
//! absolute values of its inputs (a convolution of |x| with |W| sums |x·W|; its backward with
//! |gY| sums |W·gY| and |x·gY|). Why this bound: f32 summation of K terms in any order lands
//! within (K − 1)·u·Σ|t_k| of the exact sum (u = 2⁻²⁴ ≈ 6e-8), so two implementations that sum
//! in different orders (CPU GEMM blocks, GPU tiles, split-K partials, block trees) differ by at
//! most 2·K·u·Σ|t_k| ≤ 1e-4·Σ|t_k| for K ≤ 800, which `MAX_K` enforces for every case here.
//! A missing, doubled or misplaced term moves an entry by about Σ|t_k|/K ≥ 1.25e-3·Σ|t_k|,
//! over ten times the bound. The scale is Σ|t_k| rather than |result| because sums with
//! cancellation are the norm (random signs), where a relative-to-result bound would be either
//! flaky or blind.

// `!(err <= bound)` on purpose: a NaN must fail the check.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use cactus::ops::conv::launch::{self as gpu, ConvShape};
use cactus::ops::matmul::launch::{self as gemm, GemmSpec};
use cactus::ops::reduce::launch::channel_sum;
use cactus::ops::Conv2dParams;
use cactus::rng::Rng;
use cactus::runtime::cuda::tiles::MAX_ELEMENTS;
use cactus::runtime::cuda::KernelModule;
use cactus::runtime::cuda::Tiles;
use cactus::runtime::cuda::{compile_module, device_or_skip, nvrtc_available, DeviceBuffer};
use cactus::Tensor;

mod common;
use common::{down, up};

const REL: f64 = 1e-4;
const FLOOR: f64 = 1e-7;
/// The longest sum (terms per output entry) of any case, for the tolerance above.
const MAX_K: usize = 800;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn uniform(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| 2.0 * rng.uniform() - 1.0).collect()
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

fn pick(lo: usize, hi: usize, rng: &mut Rng) -> usize {
    lo + rng.below(hi - lo + 1)
}

/// The entries of `got` outside the tolerance, described.
fn entries_off(got: &[f32], want: &[f32], mag: &[f32]) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let err = (g as f64 - w as f64).abs();
        let allowed = REL * m as f64 + FLOOR;
        if !(err <= allowed) {
            bad.push(format!(
                "[{i}] gpu {g} cpu {w} (err {err:.3e}, allowed {allowed:.3e})"
            ));
        }
    }
    bad
}

fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(mag.len(), want.len(), "{what}: magnitude length");
    let bad = entries_off(got, want, mag);
    assert!(
        bad.is_empty(),
        "{what}: {} of {} entries off:\n  {}",
        bad.len(),
        got.len(),
        bad[..bad.len().min(8)].join("\n  ")
    );
}

#[allow(clippy::too_many_arguments)]
fn shape(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    (kh, kw): (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> ConvShape {
    ConvShape {
        n,
        c,
        h,
        w,
        o,
        kh,
        kw,
        stride,
        padding,
    }
}

fn params(s: &ConvShape) -> Conv2dParams {
    Conv2dParams {
        stride: s.stride,
        padding: s.padding,
    }
}

fn out_hw(s: &ConvShape) -> (usize, usize) {
    s.output_hw().expect("valid geometry")
}

/// Hand-picked geometries and random ones; every sum at most MAX_K terms long.
fn conv_cases() -> Vec<ConvShape> {
    let mut cases = vec![
        shape(1, 1, 5, 5, 1, (3, 3), (1, 1), (0, 0)),
        shape(1, 3, 7, 9, 4, (3, 3), (2, 2), (1, 1)),
        shape(2, 2, 8, 6, 3, (4, 4), (2, 2), (1, 1)),
        shape(3, 4, 6, 5, 2, (1, 1), (1, 1), (0, 0)),
        // 1×1 kernel, stride 2: three of the four input phases meet no tap (zero gradient).
        shape(2, 3, 6, 7, 4, (1, 1), (2, 2), (0, 0)),
        shape(2, 3, 9, 7, 5, (3, 2), (2, 1), (1, 2)),
        shape(1, 2, 5, 8, 3, (2, 5), (1, 3), (2, 0)),
        shape(2, 3, 4, 4, 2, (3, 3), (1, 1), (2, 2)),
        // Kernel as large as the padded input: one output pixel.
        shape(2, 2, 3, 3, 2, (5, 5), (1, 1), (1, 1)),
        // Input shorter than the stride: an empty phase.
        shape(2, 2, 1, 5, 3, (1, 3), (2, 2), (0, 1)),
        // Channels across the 64-wide tile edge, both ways.
        shape(1, 70, 6, 5, 67, (3, 3), (1, 1), (1, 1)),
        // Channels across the 128-wide tile edge (CACTUS_GEMM_TILES=128x128), both ways.
        shape(1, 131, 3, 4, 133, (2, 2), (1, 1), (1, 1)),
        // Several pixel tiles, 70 output channels.
        shape(2, 8, 17, 15, 70, (3, 3), (1, 1), (1, 1)),
        // 768 pixels: the weight gradient is split over K.
        shape(3, 4, 16, 16, 8, (3, 3), (1, 1), (1, 1)),
        shape(3, 5, 11, 13, 9, (4, 4), (2, 2), (2, 2)),
        shape(2, 6, 12, 10, 5, (3, 3), (3, 2), (1, 0)),
    ];
    let mut rng = Rng::seed(11);
    while cases.len() < 27 {
        let (kh, kw) = (pick(1, 5, &mut rng), pick(1, 5, &mut rng));
        let padding = (pick(0, 2, &mut rng), pick(0, 2, &mut rng));
        let (h, w) = (pick(1, 10, &mut rng), pick(1, 10, &mut rng));
        if h + 2 * padding.0 < kh || w + 2 * padding.1 < kw {
            continue;
        }
        cases.push(shape(
            pick(1, 3, &mut rng),
            pick(1, 6, &mut rng),
            h,
            w,
            pick(1, 6, &mut rng),
            (kh, kw),
            (pick(1, 3, &mut rng), pick(1, 3, &mut rng)),
            padding,
        ));
    }
    for s in &cases {
        let (oh, ow) = out_hw(s);
        let longest = (s.c * s.kh * s.kw)
            .max(s.o * s.kh * s.kw)
            .max(s.n * oh * ow);
        assert!(longest <= MAX_K, "{s:?}: sums of {longest} terms");
    }
    cases
}

fn input_shape(s: &ConvShape) -> [usize; 4] {
    [s.n, s.c, s.h, s.w]
}

fn weight_shape(s: &ConvShape) -> [usize; 4] {
    [s.o, s.c, s.kh, s.kw]
}

/// What the CPU computes, with Σ|terms| of every entry.
struct Reference {
    y: Vec<f32>,
    y_mag: Vec<f32>,
    dx: Vec<f32>,
    dx_mag: Vec<f32>,
    dw: Vec<f32>,
    dw_mag: Vec<f32>,
    db: Vec<f32>,
    db_mag: Vec<f32>,
}

/// Forward and autodiff gradients of L = Σ gy ⊙ f(x, w, b), where `f` is conv2d or (for
/// `interval`, x and gy stacked [2, …]) interval_conv2d; the magnitudes are the same op on
/// absolute values.
fn reference(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    gy: &[f32],
    interval: bool,
) -> Reference {
    let p = params(s);
    let mut xs = input_shape(s).to_vec();
    if interval {
        xs.insert(0, 2);
    }
    let run = |x: &[f32], w: &[f32], b: &[f32], gy: &[f32]| {
        let xt = Tensor::from_vec(x.to_vec(), &xs).requires_grad();
        let wt = Tensor::from_vec(w.to_vec(), &weight_shape(s)).requires_grad();
        let bt = Tensor::from_vec(b.to_vec(), &[s.o]).requires_grad();
        let y = if interval {
            xt.interval_conv2d(&wt, Some(&bt), p)
        } else {
            xt.conv2d(&wt, Some(&bt), p)
        };
        let grads = y
            .mul(&Tensor::from_vec(gy.to_vec(), y.shape()))
            .sum()
            .backward();
        let grad = |t: &Tensor| grads.get(t).expect("a gradient").data().to_vec();
        (y.data().to_vec(), grad(&xt), grad(&wt), grad(&bt))
    };
    let (y, dx, dw, db) = run(x, w, b, gy);
    let (y_mag, dx_mag, dw_mag, db_mag) = run(&abs(x), &abs(w), &abs(b), &abs(gy));
    Reference {
        y,
        y_mag,
        dx,
        dx_mag,
        dw,
        dw_mag,
        db,
        db_mag,
    }
}

/// Random data for a case: x (stacked when `interval`, radii ≥ 0), w, b, gy.
fn case_data(
    s: &ConvShape,
    interval: bool,
    rng: &mut Rng,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let halves = if interval { 2 } else { 1 };
    let mut x = uniform(halves * s.input_len(), rng);
    if interval {
        let n = s.input_len();
        for r in &mut x[n..] {
            *r = r.abs();
        }
    }
    let w = uniform(s.weight_len(), rng);
    let b = uniform(s.o, rng);
    let gy = uniform(halves * s.output_len().unwrap(), rng);
    (x, w, b, gy)
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

#[test]
fn conv2d_forward_matches_cpu() {
    let Some(_gpu) = device_or_skip("conv2d_forward_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(1);
    for s in conv_cases() {
        let (x, w, b, gy) = case_data(&s, false, &mut rng);
        let r = reference(&s, &x, &w, &b, &gy, false);
        let (xd, wd, bd) = (up(&x), up(&w), up(&b));
        let y = gpu::conv2d_forward(&xd, &wd, Some(&bd), &s).unwrap();
        assert_close(&format!("forward {s:?}"), &down(&y), &r.y, &r.y_mag);
        // Without the bias: the reference minus b (exact: the CPU adds b first, as a term).
        let (oh, ow) = out_hw(&s);
        let y = gpu::conv2d_forward(&xd, &wd, None, &s).unwrap();
        let want: Vec<f32> =
            r.y.iter()
                .enumerate()
                .map(|(i, v)| v - b[(i / (oh * ow)) % s.o])
                .collect();
        assert_close(
            &format!("forward, no bias {s:?}"),
            &down(&y),
            &want,
            &r.y_mag,
        );
    }
}

#[test]
fn conv2d_backward_matches_cpu() {
    let Some(_gpu) = device_or_skip("conv2d_backward_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(2);
    for s in conv_cases() {
        let (x, w, b, gy) = case_data(&s, false, &mut rng);
        let r = reference(&s, &x, &w, &b, &gy, false);
        let (xd, wd, gd) = (up(&x), up(&w), up(&gy));
        let what = format!("{s:?}");
        let dx = gpu::conv2d_backward_input(&gd, &wd, &s).unwrap();
        assert_close(&format!("dx {what}"), &down(&dx), &r.dx, &r.dx_mag);
        let dw = gpu::conv2d_backward_weight(&xd, &gd, &s).unwrap();
        assert_close(&format!("dw {what}"), &down(&dw), &r.dw, &r.dw_mag);
        let db = gpu::conv2d_backward_bias(&gd, &s).unwrap();
        assert_close(&format!("db {what}"), &down(&db), &r.db, &r.db_mag);

        let all = gpu::conv2d_backward(&xd, &wd, &gd, &s, true, true, true).unwrap();
        assert_close(
            &format!("all: dx {what}"),
            &down(all.input.as_ref().unwrap()),
            &r.dx,
            &r.dx_mag,
        );
        assert_close(
            &format!("all: dw {what}"),
            &down(all.weight.as_ref().unwrap()),
            &r.dw,
            &r.dw_mag,
        );
        assert_close(
            &format!("all: db {what}"),
            &down(all.bias.as_ref().unwrap()),
            &r.db,
            &r.db_mag,
        );
        let some = gpu::conv2d_backward(&xd, &wd, &gd, &s, false, true, false).unwrap();
        assert!(some.input.is_none() && some.weight.is_some() && some.bias.is_none());
    }
}

#[test]
fn interval_conv2d_forward_matches_cpu() {
    let Some(_gpu) = device_or_skip("interval_conv2d_forward_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(3);
    for s in conv_cases() {
        let (x, w, b, gy) = case_data(&s, true, &mut rng);
        let r = reference(&s, &x, &w, &b, &gy, true);
        let (n_in, n_out) = (s.input_len(), s.output_len().unwrap());
        let what = format!("{s:?}");
        let (wd, bd) = (up(&w), up(&b));
        let (c, rad) = (up(&x[..n_in]), up(&x[n_in..]));
        let (yc, yr) = gpu::interval_conv2d_forward(&c, &rad, &wd, Some(&bd), &s).unwrap();
        assert_close(
            &format!("centres {what}"),
            &down(&yc),
            &r.y[..n_out],
            &r.y_mag[..n_out],
        );
        assert_close(
            &format!("radii {what}"),
            &down(&yr),
            &r.y[n_out..],
            &r.y_mag[n_out..],
        );
        assert!(
            down(&yr).iter().all(|&v| v >= 0.0),
            "negative radius, {what}"
        );
        let stacked = gpu::interval_conv2d_forward_stacked(&up(&x), &wd, Some(&bd), &s).unwrap();
        assert_close(&format!("stacked {what}"), &down(&stacked), &r.y, &r.y_mag);
    }
}

#[test]
fn interval_conv2d_backward_matches_cpu() {
    let Some(_gpu) = device_or_skip("interval_conv2d_backward_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(4);
    for s in conv_cases() {
        let (x, w, b, gy) = case_data(&s, true, &mut rng);
        let r = reference(&s, &x, &w, &b, &gy, true);
        let (n_in, n_out) = (s.input_len(), s.output_len().unwrap());
        let what = format!("{s:?}");
        let wd = up(&w);
        let (c, rad) = (up(&x[..n_in]), up(&x[n_in..]));
        let (gc, gr) = (up(&gy[..n_out]), up(&gy[n_out..]));

        let (dc, dr) = gpu::interval_conv2d_backward_input(&gc, &gr, &wd, &s).unwrap();
        assert_close(
            &format!("dc {what}"),
            &down(&dc),
            &r.dx[..n_in],
            &r.dx_mag[..n_in],
        );
        assert_close(
            &format!("dr {what}"),
            &down(&dr),
            &r.dx[n_in..],
            &r.dx_mag[n_in..],
        );
        let dw = gpu::interval_conv2d_backward_weight(&c, &rad, &gc, &gr, &wd, &s).unwrap();
        assert_close(&format!("dw {what}"), &down(&dw), &r.dw, &r.dw_mag);

        let all =
            gpu::interval_conv2d_backward_stacked(&up(&x), &wd, &up(&gy), &s, true, true, true)
                .unwrap();
        assert_close(
            &format!("stacked dx {what}"),
            &down(all.input.as_ref().unwrap()),
            &r.dx,
            &r.dx_mag,
        );
        assert_close(
            &format!("stacked dw {what}"),
            &down(all.weight.as_ref().unwrap()),
            &r.dw,
            &r.dw_mag,
        );
        assert_close(
            &format!("stacked db {what}"),
            &down(all.bias.as_ref().unwrap()),
            &r.db,
            &r.db_mag,
        );
    }
}

/// Batch 0 and 0 output channels: empty or zero results, no launch errors.
#[test]
fn empty_batch_and_channels() {
    let Some(_gpu) = device_or_skip("empty_batch_and_channels") else {
        return;
    };
    let s = shape(0, 2, 4, 4, 3, (3, 3), (1, 1), (1, 1));
    let w = up(&vec![0.5; s.weight_len()]);
    let empty = || DeviceBuffer::uninit(0).unwrap();
    assert_eq!(
        gpu::conv2d_forward(&empty(), &w, None, &s).unwrap().len(),
        0
    );
    let g = gpu::conv2d_backward(&empty(), &w, &empty(), &s, true, true, true).unwrap();
    assert_eq!(g.input.unwrap().len(), 0);
    assert_eq!(down(&g.weight.unwrap()), vec![0.0; s.weight_len()]);
    assert_eq!(down(&g.bias.unwrap()), vec![0.0; 3]);

    let s = shape(2, 2, 4, 4, 0, (3, 3), (1, 1), (1, 1));
    let x = up(&vec![1.0; s.input_len()]);
    assert_eq!(
        gpu::conv2d_forward(&x, &empty(), None, &s).unwrap().len(),
        0
    );
    let g = gpu::conv2d_backward(&x, &empty(), &empty(), &s, true, true, true).unwrap();
    assert_eq!(down(&g.input.unwrap()), vec![0.0; s.input_len()]);
    assert_eq!(g.weight.unwrap().len(), 0);
    assert_eq!(g.bias.unwrap().len(), 0);
}

/// Wrong lengths and impossible geometries are errors, not panics or launches.
#[test]
fn bad_shapes_are_errors() {
    let Some(_gpu) = device_or_skip("bad_shapes_are_errors") else {
        return;
    };
    let s = shape(1, 2, 5, 5, 3, (3, 3), (1, 1), (0, 0));
    let x = up(&vec![0.0; s.input_len()]);
    let w = up(&vec![0.0; s.weight_len()]);
    let short = up(&[0.0; 7]);
    assert!(gpu::conv2d_forward(&short, &w, None, &s).is_err());
    assert!(gpu::conv2d_forward(&x, &short, None, &s).is_err());
    assert!(gpu::conv2d_forward(&x, &w, Some(&short), &s).is_err());
    assert!(gpu::interval_conv2d_forward(&x, &short, &w, None, &s).is_err());
    assert!(gpu::interval_conv2d_forward_stacked(&x, &w, None, &s).is_err());
    assert!(gpu::conv2d_backward_input(&short, &w, &s).is_err());
    assert!(gpu::conv2d_backward_weight(&x, &short, &s).is_err());
    assert!(gpu::conv2d_backward_bias(&short, &s).is_err());
    assert!(channel_sum(&short, 2, 2, 2).is_err());
    let too_big = shape(1, 2, 2, 2, 3, (5, 5), (1, 1), (0, 0));
    assert!(gpu::conv2d_forward(&x, &w, None, &too_big).is_err());
    assert!(gemm::matmul(&short, &short, 2, 2, 2, false, false).is_err());
    let mut c = up(&[0.0; 4]);
    let mut spec = GemmSpec::dense(2, 2, 2, false, false);
    spec.lda = 1; // shorter than a row
    assert!(gemm::sgemm(&spec, &c_copy(&c), &c_copy(&c), &mut c).is_err());
}

fn c_copy(b: &DeviceBuffer) -> DeviceBuffer {
    up(&down(b))
}

// ---------------------------------------------------------------------------------------------
// Matrix multiplication
// ---------------------------------------------------------------------------------------------

/// `rows × cols` row-major, transposed.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = v[i * cols + j];
        }
    }
    t
}

/// (2, 513, 3) and (16, 800, 33) have few output tiles and a K long enough to be split (2 and
/// 3 chunks, the last one shorter).
const MATMUL_SHAPES: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (1, 7, 1),
    (1, 13, 9),
    (5, 1, 3),
    (3, 5, 7),
    (17, 33, 9),
    (2, 513, 3),
    (64, 64, 64),
    (65, 70, 67),
    (130, 96, 40),
    (129, 17, 65),
    (16, 800, 33),
];

/// matmul (every combination of transposed operands) against Tensor::matmul.
#[test]
fn matmul_matches_cpu() {
    let Some(_gpu) = device_or_skip("matmul_matches_cpu") else {
        return;
    };
    let mut rng = Rng::seed(5);
    for (m, k, n) in MATMUL_SHAPES {
        assert!(k <= MAX_K);
        let a = uniform(m * k, &mut rng);
        let b = uniform(k * n, &mut rng);
        let want =
            Tensor::from_vec(a.clone(), &[m, k]).matmul(&Tensor::from_vec(b.clone(), &[k, n]));
        let mag = Tensor::from_vec(abs(&a), &[m, k]).matmul(&Tensor::from_vec(abs(&b), &[k, n]));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a_stored = if ta { transpose(&a, m, k) } else { a.clone() };
            let b_stored = if tb { transpose(&b, k, n) } else { b.clone() };
            let got = gemm::matmul(&up(&a_stored), &up(&b_stored), m, n, k, ta, tb).unwrap();
            assert_close(
                &format!("matmul {m}x{k}x{n} trans ({ta}, {tb})"),
                &down(&got),
                want.data(),
                mag.data(),
            );
        }
    }
}

/// sgemm with alpha, beta and row pitches wider than the rows, against a direct f64 loop; the
/// pitch padding of C must stay untouched.
#[test]
fn sgemm_alpha_beta_and_pitches() {
    let Some(_gpu) = device_or_skip("sgemm_alpha_beta_and_pitches") else {
        return;
    };
    let mut rng = Rng::seed(6);
    for (m, k, n) in [(3, 5, 7), (65, 70, 67), (17, 1, 80)] {
        for (ta, tb, beta) in [
            (false, true, 0.5f32),
            (true, false, 0.0),
            (true, true, -1.0),
        ] {
            let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
            let (b_rows, b_cols) = if tb { (n, k) } else { (k, n) };
            let spec = GemmSpec {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
                lda: a_cols + 3,
                ldb: b_cols + 1,
                ldc: n + 2,
                alpha: 1.5,
                beta,
            };
            let a = uniform(a_rows * spec.lda, &mut rng);
            let b = uniform(b_rows * spec.ldb, &mut rng);
            let mut c = uniform(m * spec.ldc, &mut rng);
            if beta == 0.0 {
                // beta = 0 must not read C.
                for i in 0..m {
                    c[i * spec.ldc..i * spec.ldc + n].fill(f32::NAN);
                }
            }
            let mut want = c.clone();
            let mut mag = vec![0.0f32; c.len()];
            for i in 0..m {
                for j in 0..n {
                    let (mut acc, mut am) = (0.0f64, 0.0f64);
                    for l in 0..k {
                        let av = if ta {
                            a[l * spec.lda + i]
                        } else {
                            a[i * spec.lda + l]
                        };
                        let bv = if tb {
                            b[j * spec.ldb + l]
                        } else {
                            b[l * spec.ldb + j]
                        };
                        acc += av as f64 * bv as f64;
                        am += (av as f64 * bv as f64).abs();
                    }
                    let at = i * spec.ldc + j;
                    let old = if beta == 0.0 {
                        0.0
                    } else {
                        beta as f64 * c[at] as f64
                    };
                    want[at] = (1.5 * acc + old) as f32;
                    mag[at] = (1.5 * am + old.abs()) as f32;
                }
            }
            let mut cd = up(&c);
            gemm::sgemm(&spec, &up(&a), &up(&b), &mut cd).unwrap();
            let got = down(&cd);
            // The pitch padding: bit for bit as it was.
            for i in 0..m {
                for j in n..spec.ldc {
                    let at = i * spec.ldc + j;
                    assert_eq!(got[at].to_bits(), c[at].to_bits(), "C padding [{i}, {j}]");
                }
            }
            assert_close(
                &format!("sgemm {m}x{k}x{n} ({ta}, {tb}, beta {beta})"),
                &got,
                &want,
                &mag,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Without a GPU
// ---------------------------------------------------------------------------------------------

/// Geometry checks are errors with a message, never panics.
#[test]
fn conv_shape_checks_without_gpu() {
    let p = Conv2dParams::new(2, 1);
    let s = ConvShape::new([2, 3, 7, 9], [4, 3, 3, 3], p).unwrap();
    assert_eq!(s.output_hw().unwrap(), (4, 5));
    assert_eq!(s.output_len().unwrap(), 2 * 4 * 4 * 5);
    assert_eq!((s.input_len(), s.weight_len()), (2 * 3 * 7 * 9, 4 * 3 * 9));
    let err = |r: cactus::Result<ConvShape>| r.unwrap_err().to_string();
    assert!(err(ConvShape::new([2, 3, 7, 9], [4, 2, 3, 3], p)).contains("channels"));
    assert!(err(ConvShape::new(
        [2, 3, 2, 2],
        [4, 3, 5, 5],
        Conv2dParams::new(1, 0)
    ))
    .contains("kernel"));
    assert!(err(ConvShape::new(
        [2, 3, 7, 9],
        [4, 3, 3, 3],
        Conv2dParams::new(0, 0)
    ))
    .contains("stride"));
    assert!(err(ConvShape::new([2, 3, 0, 9], [4, 3, 1, 1], p)).contains("positive"));
    let huge = ConvShape::new(
        [1 << 12, 64, 64, 64],
        [8, 64, 3, 3],
        Conv2dParams::new(1, 1),
    );
    assert!(err(huge).contains("too large"));
    let overflow = ConvShape::new([usize::MAX, 2, 2, 2], [1, 2, 1, 1], Conv2dParams::new(1, 0));
    assert!(err(overflow).contains("too large"));
    // Zero batch and zero output channels are valid (empty results).
    assert!(ConvShape::new([0, 3, 7, 9], [0, 3, 3, 3], p).is_ok());
    // The CPU geometry converts field for field.
    let g = p.geometry(&[2, 3, 7, 9], &[4, 3, 3, 3]);
    assert_eq!(ConvShape::from(g), s);
    assert!(MAX_ELEMENTS < i32::MAX as usize);
}

/// The split-K plan of the weight gradient covers every pixel exactly once, in chunks of whole
/// K-steps, and splits only long sums.
#[test]
fn weight_gradient_splits_cover_every_pixel() {
    let mut cases = conv_cases();
    cases.push(shape(128, 64, 32, 32, 64, (3, 3), (1, 1), (1, 1)));
    cases.push(shape(128, 3, 32, 32, 16, (4, 4), (2, 2), (1, 1)));
    cases.push(shape(1, 512, 4, 4, 512, (3, 3), (1, 1), (1, 1)));
    for s in cases {
        let (oh, ow) = out_hw(&s);
        let pixels = s.n * oh * ow;
        for (sms, shape) in [1, 108, 132]
            .into_iter()
            .flat_map(|m| Tiles::ALL.map(|t| (m, t)))
        {
            let (splits, chunk) = gpu::weight_gradient_splits(&s, sms, shape).unwrap();
            assert!(splits >= 1 && chunk % 16 == 0 && chunk > 0, "{s:?}");
            assert!(
                splits * chunk >= pixels,
                "{s:?}: {splits} × {chunk} < {pixels}"
            );
            assert!(
                (splits - 1) * chunk < pixels.max(1),
                "{s:?}: an empty split"
            );
            assert!(
                splits == 1 || chunk >= 256,
                "{s:?}: chunks of {chunk} pixels"
            );
            assert!(splits * s.weight_len() < MAX_ELEMENTS);
        }
    }
    // A long sum over few output tiles is split.
    let s = shape(128, 64, 32, 32, 64, (3, 3), (1, 1), (1, 1));
    for shape in Tiles::ALL {
        assert!(gpu::weight_gradient_splits(&s, 132, shape).unwrap().0 > 1);
    }
}

/// The harness itself, against the CPU backend's direct f64 loops: the autodiff references and
/// their magnitudes agree with them within the tolerance, for plain and interval convolutions,
/// and the tolerance does see a single missing term.
#[test]
fn cpu_reference_and_tolerance_self_check() {
    use cactus::ops::conv::cpu::{reference as direct, ConvGeometry};
    let mut rng = Rng::seed(7);
    for s in conv_cases() {
        let g: ConvGeometry = params(&s).geometry(&input_shape(&s), &weight_shape(&s));
        let what = format!("{s:?}");
        let (x, w, b, gy) = case_data(&s, false, &mut rng);
        let r = reference(&s, &x, &w, &b, &gy, false);
        let y = direct::conv2d_forward(&x, &w, Some(&b), &g);
        assert_close(&format!("cpu forward {what}"), &r.y, &y, &r.y_mag);
        let d = direct::conv2d_backward(&x, &w, &gy, &g, true, true, true);
        assert_close(
            &format!("cpu dx {what}"),
            &r.dx,
            &d.input.unwrap(),
            &r.dx_mag,
        );
        assert_close(
            &format!("cpu dw {what}"),
            &r.dw,
            &d.weight.unwrap(),
            &r.dw_mag,
        );
        assert_close(
            &format!("cpu db {what}"),
            &r.db,
            &d.bias.unwrap(),
            &r.db_mag,
        );

        // Without one term: the largest weight that some output uses (a tap can lie wholly in
        // the padding) set to 0 must take some output out of the tolerance.
        let mut order: Vec<usize> = (0..w.len()).collect();
        order.sort_by(|&i, &j| w[j].abs().total_cmp(&w[i].abs()));
        let missing = order.iter().find_map(|&i| {
            let mut w_missing = w.clone();
            w_missing[i] = 0.0;
            let y_missing = direct::conv2d_forward(&x, &w_missing, Some(&b), &g);
            (y_missing != y).then_some(y_missing)
        });
        let y_missing = missing.expect("some weight is used");
        assert!(
            !entries_off(&y_missing, &r.y, &r.y_mag).is_empty(),
            "a missing term passes the tolerance, {what}"
        );

        let (x, w, b, gy) = case_data(&s, true, &mut rng);
        let r = reference(&s, &x, &w, &b, &gy, true);
        let (n_in, n_out) = (s.input_len(), s.output_len().unwrap());
        let aw = abs(&w);
        let yc = direct::conv2d_forward(&x[..n_in], &w, Some(&b), &g);
        let yr = direct::conv2d_forward(&x[n_in..], &aw, None, &g);
        assert_close(
            &format!("cpu interval forward {what}"),
            &r.y,
            &[yc, yr].concat(),
            &r.y_mag,
        );
        let dc = direct::conv2d_backward(&x[..n_in], &w, &gy[..n_out], &g, true, true, true);
        let dr = direct::conv2d_backward(&x[n_in..], &aw, &gy[n_out..], &g, true, true, false);
        let dx = [dc.input.unwrap(), dr.input.unwrap()].concat();
        assert_close(&format!("cpu interval dx {what}"), &r.dx, &dx, &r.dx_mag);
        let dw: Vec<f32> = dc
            .weight
            .unwrap()
            .iter()
            .zip(dr.weight.unwrap())
            .zip(&w)
            .map(|((a, b), w)| a + b * w.signum())
            .collect();
        assert_close(&format!("cpu interval dw {what}"), &r.dw, &dw, &r.dw_mag);
        assert_close(
            &format!("cpu interval db {what}"),
            &r.db,
            &dc.bias.unwrap(),
            &r.db_mag,
        );
    }
}

/// Every kernel the wrappers launch is an entry point of its compiled module (a misspelt name
/// would otherwise only fail on a GPU). Needs NVRTC, not a GPU.
#[test]
fn every_launched_kernel_is_compiled() {
    if !nvrtc_available() {
        eprintln!(
            "every_launched_kernel_is_compiled: SKIPPED — NVRTC (libnvrtc.so.13) is not loadable"
        );
        return;
    }
    let launched: Vec<(&str, &str)> = [gpu::kernels(), gemm::kernels()].concat();
    for module in ["conv", "matmul"] {
        let cubin = compile_module(KernelModule::named(module).unwrap(), "sm_80")
            .unwrap_or_else(|e| panic!("{e}"));
        for (_, name) in launched.iter().filter(|(m, _)| *m == module) {
            // The ELF string tables hold each entry point's symbol ("\0name\0") and sections
            // (".text.name\0"); the leading delimiter keeps `conv2d_fwd` from matching inside
            // `interval_conv2d_fwd`.
            let found = [b"\0", b"."].iter().any(|lead| {
                let needle: Vec<u8> = [&lead[..], name.as_bytes(), b"\0"].concat();
                cubin.windows(needle.len()).any(|w| w == needle.as_slice())
            });
            assert!(found, "{module}.cu has no kernel '{name}'");
        }
    }
}
