//! Finite-difference gradient checks for every op that has a backward.
//!
//! The checker forms the scalar L = Σ r_i · out_i with fixed random weights r (so every output
//! entry matters and a transposed or mis-indexed gradient shows), takes the analytic gradient
//! of L from `backward`, and compares it, for every element of every input, with the central
//! difference (L(x+h) − L(x−h)) / 2h evaluated with gradients disabled and L accumulated in f64.

// `!(err <= bound)` on purpose: a NaN must fail the check.
#![allow(clippy::cloned_ref_to_slice_refs, clippy::neg_cmp_op_on_partial_ord)]

use cactus::autodiff;
use cactus::nn::{self, BatchNorm, Mode};
use cactus::ops::{self, Conv2dParams};
use cactus::rng::Rng;
use cactus::Tensor;

// ---------------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------------

/// Step and tolerance: an element passes when |a − n| ≤ atol + rtol · max(|a|, |n|).
#[derive(Clone, Copy, Debug)]
struct Tol {
    h: f32,
    atol: f64,
    rtol: f64,
}

/// For smooth ops with outputs of order 1.
const SMOOTH: Tol = Tol {
    h: 1e-2,
    atol: 1e-3,
    rtol: 1e-2,
};

impl Tol {
    fn h(self, h: f32) -> Tol {
        Tol { h, ..self }
    }
    fn atol(self, atol: f64) -> Tol {
        Tol { atol, ..self }
    }
}

/// Σ r_i · out_i in f64.
fn weighted_sum(out: &Tensor, r: &[f32]) -> f64 {
    assert_eq!(out.numel(), r.len());
    out.data()
        .iter()
        .zip(r)
        .map(|(&o, &w)| o as f64 * w as f64)
        .sum()
}

/// Compare the analytic gradients of L = Σ r·f(inputs) with central differences, for every
/// element of every input. `Err` lists the mismatching elements.
fn gradcheck(
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Tensor,
    tol: Tol,
    seed: u64,
) -> Result<(), String> {
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.detach().requires_grad()).collect();
    let out = f(&leaves);
    let mut rng = Rng::seed(seed ^ 0x5eed);
    let r: Vec<f32> = (0..out.numel())
        .map(|_| 2.0 * rng.uniform() - 1.0)
        .collect();
    let r_t = Tensor::from_vec(r.clone(), out.shape());
    let grads = out.mul(&r_t).sum().backward();

    let mut failures = Vec::new();
    let mut checked = 0usize;
    for (i, leaf) in leaves.iter().enumerate() {
        let analytic: Vec<f32> = match grads.get(leaf) {
            Some(g) => {
                if g.shape() != leaf.shape() {
                    return Err(format!(
                        "input {i}: gradient shape {:?} != input shape {:?}",
                        g.shape(),
                        leaf.shape()
                    ));
                }
                g.to_vec()
            }
            // No gradient recorded: the op claims L does not depend on this input.
            None => vec![0.0; leaf.numel()],
        };
        let base = inputs[i].to_vec();
        for j in 0..base.len() {
            let eval = |v: f32| -> f64 {
                let mut d = base.clone();
                d[j] = v;
                let mut xs: Vec<Tensor> = inputs.iter().map(Tensor::detach).collect();
                xs[i] = Tensor::from_vec(d, inputs[i].shape());
                autodiff::with_no_grad(|| weighted_sum(&f(&xs), &r))
            };
            let (xp, xm) = (base[j] + tol.h, base[j] - tol.h);
            let numeric = (eval(xp) - eval(xm)) / (xp as f64 - xm as f64);
            let a = analytic[j] as f64;
            checked += 1;
            let bound = tol.atol + tol.rtol * a.abs().max(numeric.abs());
            if !((a - numeric).abs() <= bound) {
                failures.push(format!(
                    "input {i} {:?} elem {j} (x = {}): analytic {a:.6} numeric {numeric:.6}",
                    inputs[i].shape(),
                    base[j]
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        let n = failures.len();
        failures.truncate(8);
        Err(format!(
            "{n} of {checked} gradient entries wrong:\n  {}",
            failures.join("\n  ")
        ))
    }
}

/// Panic with the checker's report unless every gradient matches.
fn assert_grad(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor, tol: Tol) {
    if let Err(e) = gradcheck(inputs, &f, tol, name.len() as u64) {
        panic!("gradcheck {name}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

fn rng_for(tag: &str) -> Rng {
    let h = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    Rng::seed(h)
}

/// Uniform in [lo, hi).
fn uni(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
    Tensor::rand_uniform(shape, lo, hi, rng)
}

/// Uniform in [lo, hi) but at least `margin` away from every kink.
fn away(shape: &[usize], lo: f32, hi: f32, kinks: &[f32], margin: f32, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| loop {
            let v = lo + (hi - lo) * rng.uniform();
            if kinks.iter().all(|k| (v - k).abs() > margin) {
                break v;
            }
        })
        .collect();
    Tensor::from_vec(data, shape)
}

/// Values whose pairwise gaps are at least `gap` (a shuffled, jittered grid): no near-ties.
fn distinct(shape: &[usize], gap: f32, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n)
        .map(|i| (i as f32 - n as f32 / 2.0) * 2.0 * gap + gap * 0.5 * rng.uniform())
        .collect();
    rng.shuffle(&mut v);
    Tensor::from_vec(v, shape)
}

// ---------------------------------------------------------------------------------------------
// The checker itself can fail
// ---------------------------------------------------------------------------------------------

/// Analytic path x·x, numeric path x·x·1.1: the checker must report a mismatch.
#[test]
fn checker_detects_a_wrong_gradient() {
    let mut rng = rng_for("wrong");
    let x = uni(&[3, 4], 0.5, 1.5, &mut rng);
    let f = |v: &[Tensor]| {
        let sq = v[0].mul(&v[0]);
        if autodiff::is_grad_enabled() {
            sq
        } else {
            sq.mul_scalar(1.1)
        }
    };
    let report = gradcheck(std::slice::from_ref(&x), &f, SMOOTH, 1);
    let msg = report.expect_err("the checker accepted a gradient 10% off");
    assert!(msg.contains("12 of 12"), "{msg}");
    // The same op without the deliberate error passes.
    gradcheck(&[x], &|v: &[Tensor]| v[0].mul(&v[0]), SMOOTH, 1).unwrap();
}

/// A gradient routed to the wrong elements (rows swapped) is caught thanks to the random weights.
#[test]
fn checker_detects_a_misrouted_gradient() {
    let mut rng = rng_for("misrouted");
    let x = uni(&[2, 3], -1.0, 1.0, &mut rng);
    let f = |v: &[Tensor]| {
        if autodiff::is_grad_enabled() {
            v[0].index_rows(&[0, 1])
        } else {
            v[0].index_rows(&[1, 0])
        }
    };
    assert!(gradcheck(&[x], &f, SMOOTH, 2).is_err());
}

/// A tolerance-level error (a missing factor of 2 on a small gradient) is caught too.
#[test]
fn checker_detects_a_factor_of_two() {
    let mut rng = rng_for("factor2");
    let x = uni(&[5], 0.05, 0.2, &mut rng);
    let f = |v: &[Tensor]| {
        if autodiff::is_grad_enabled() {
            v[0].mul(&v[0]).mul_scalar(0.5)
        } else {
            v[0].mul(&v[0])
        }
    };
    assert!(gradcheck(&[x], &f, SMOOTH, 3).is_err());
}

// ---------------------------------------------------------------------------------------------
// Element-wise ops
// ---------------------------------------------------------------------------------------------

/// add, sub, mul on equal shapes and with every broadcasting pattern.
#[test]
fn binary_arithmetic_with_broadcasting() {
    let mut rng = rng_for("binary");
    let shapes: [(&[usize], &[usize]); 7] = [
        (&[2, 3], &[2, 3]),
        (&[2, 3], &[3]),
        (&[3], &[2, 3]),
        (&[2, 1], &[1, 3]),
        (&[2, 3, 4], &[3, 1]),
        (&[2, 3], &[]),
        (&[], &[2, 3]),
    ];
    for (sa, sb) in shapes {
        let a = uni(sa, -1.0, 1.0, &mut rng);
        let b = uni(sb, -1.0, 1.0, &mut rng);
        let ins = [a, b];
        assert_grad(
            &format!("add {sa:?} {sb:?}"),
            &ins,
            |v| v[0].add(&v[1]),
            SMOOTH,
        );
        assert_grad(
            &format!("sub {sa:?} {sb:?}"),
            &ins,
            |v| v[0].sub(&v[1]),
            SMOOTH,
        );
        assert_grad(
            &format!("mul {sa:?} {sb:?}"),
            &ins,
            |v| v[0].mul(&v[1]),
            SMOOTH,
        );
    }
    // Same tensor on both sides: the two contributions must accumulate.
    let x = uni(&[2, 3], -1.0, 1.0, &mut rng);
    assert_grad("mul x x", &[x.clone()], |v| v[0].mul(&v[0]), SMOOTH);
    assert_grad("sub x x*x", &[x], |v| v[0].sub(&v[0].mul(&v[0])), SMOOTH);
}

/// div with denominators in [0.5, 2] (and negative), with broadcasting.
#[test]
fn division() {
    let mut rng = rng_for("div");
    let shapes: [(&[usize], &[usize]); 5] = [
        (&[2, 3], &[2, 3]),
        (&[2, 3], &[3]),
        (&[2, 1], &[1, 3]),
        (&[2, 3], &[]),
        (&[], &[3]),
    ];
    for (sa, sb) in shapes {
        let a = uni(sa, -1.0, 1.0, &mut rng);
        let sign = if sb.len() == 1 { -1.0 } else { 1.0 };
        let b = uni(sb, 0.5, 2.0, &mut rng).mul_scalar(sign);
        assert_grad(
            &format!("div {sa:?} {sb:?}"),
            &[a, b],
            |v| v[0].div(&v[1]),
            SMOOTH.h(1e-3),
        );
    }
}

/// minimum / maximum with operands at least 0.1 apart (ties are not differentiable).
#[test]
fn minimum_and_maximum() {
    let mut rng = rng_for("minmax");
    let shapes: [(&[usize], &[usize]); 4] = [
        (&[2, 3], &[2, 3]),
        (&[2, 3], &[3]),
        (&[2, 1], &[1, 3]),
        (&[2, 3], &[]),
    ];
    for (sa, sb) in shapes {
        let b = uni(sb, -0.5, 0.5, &mut rng);
        // a = broadcast-compatible values kept ≥ 0.1 from every b they meet.
        let a = loop {
            let a = uni(sa, -1.0, 1.0, &mut rng);
            let d = autodiff::with_no_grad(|| a.sub(&b).abs());
            if d.data().iter().all(|&v| v > 0.1) {
                break a;
            }
        };
        let ins = [a, b];
        assert_grad(
            &format!("min {sa:?} {sb:?}"),
            &ins,
            |v| v[0].minimum(&v[1]),
            SMOOTH,
        );
        assert_grad(
            &format!("max {sa:?} {sb:?}"),
            &ins,
            |v| v[0].maximum(&v[1]),
            SMOOTH,
        );
    }
}

/// Tie handling: at a == b the gradient is split evenly between the operands (PyTorch).
#[test]
fn minimum_maximum_split_ties() {
    let a = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3]).requires_grad();
    let b = Tensor::from_vec(vec![1.0, 0.0, 5.0], &[3]).requires_grad();
    let g = a.maximum(&b).sum().backward();
    assert_eq!(g.get(&a).unwrap().to_vec(), vec![0.5, 1.0, 0.0]);
    assert_eq!(g.get(&b).unwrap().to_vec(), vec![0.5, 0.0, 1.0]);
    let g = a.minimum(&b).sum().backward();
    assert_eq!(g.get(&a).unwrap().to_vec(), vec![0.5, 0.0, 1.0]);
    assert_eq!(g.get(&b).unwrap().to_vec(), vec![0.5, 1.0, 0.0]);
}

/// Unary maps: smooth ones on their domains, non-smooth ones away from their kinks.
#[test]
fn unary_ops() {
    let mut rng = rng_for("unary");
    let s = [3, 4];
    let x = uni(&s, -1.0, 1.0, &mut rng);
    assert_grad("neg", &[x.clone()], |v| v[0].neg(), SMOOTH);
    assert_grad("exp", &[x.clone()], |v| v[0].exp(), SMOOTH);
    assert_grad("add_scalar", &[x.clone()], |v| v[0].add_scalar(0.7), SMOOTH);
    assert_grad(
        "mul_scalar",
        &[x.clone()],
        |v| v[0].mul_scalar(-2.5),
        SMOOTH,
    );

    let pos = uni(&s, 0.5, 2.0, &mut rng);
    assert_grad("log", &[pos.clone()], |v| v[0].log(), SMOOTH.h(1e-3));
    assert_grad("sqrt", &[pos.clone()], |v| v[0].sqrt(), SMOOTH.h(1e-3));
    for p in [2.0, 3.0, 0.5, -0.5, -1.5, 1.7] {
        assert_grad(
            &format!("powf {p}"),
            &[pos.clone()],
            |v| v[0].powf(p),
            SMOOTH.h(1e-3),
        );
    }

    let k = away(&s, -1.0, 1.0, &[0.0], 0.05, &mut rng);
    assert_grad("relu", &[k.clone()], |v| v[0].relu(), SMOOTH);
    assert_grad("abs", &[k.clone()], |v| v[0].abs(), SMOOTH);
    assert_grad("sign", &[k], |v| v[0].sign(), SMOOTH);

    let c = away(&s, -1.0, 1.0, &[-0.4, 0.3], 0.05, &mut rng);
    assert_grad("clamp", &[c], |v| v[0].clamp(-0.4, 0.3), SMOOTH);
}

// ---------------------------------------------------------------------------------------------
// Reductions and shape ops
// ---------------------------------------------------------------------------------------------

/// sum_axes / mean_axes over several axis sets (negative axes too), with and without keepdim.
#[test]
fn sum_and_mean_over_axes() {
    let mut rng = rng_for("sum");
    let x = uni(&[2, 3, 4], -1.0, 1.0, &mut rng);
    let axis_sets: [&[isize]; 7] = [&[0], &[1], &[2], &[-1], &[0, 2], &[1, 2], &[0, 1, 2]];
    for axes in axis_sets {
        for keep in [false, true] {
            let ins = [x.clone()];
            assert_grad(
                &format!("sum_axes {axes:?} {keep}"),
                &ins,
                |v| v[0].sum_axes(axes, keep),
                SMOOTH,
            );
            assert_grad(
                &format!("mean_axes {axes:?} {keep}"),
                &ins,
                |v| v[0].mean_axes(axes, keep),
                SMOOTH,
            );
        }
    }
    let y = uni(&[2, 3, 2, 2], -1.0, 1.0, &mut rng);
    assert_grad(
        "sum_axes 4d [0,2,3]",
        &[y.clone()],
        |v| v[0].sum_axes(&[0, 2, 3], true),
        SMOOTH,
    );
    assert_grad("sum", &[y.clone()], |v| v[0].sum(), SMOOTH);
    assert_grad("mean", &[y.clone()], |v| v[0].mean(), SMOOTH);
    // Through a non-linearity, so the gradient differs per element.
    assert_grad(
        "sum(x^2) axis 1",
        &[y.clone()],
        |v| v[0].mul(&v[0]).sum_axes(&[1], false),
        SMOOTH,
    );
    assert_grad("mean(exp x)", &[y], |v| v[0].exp().mean(), SMOOTH);
}

/// max_axes on inputs without near-ties (the gradient goes to the single maximum).
#[test]
fn max_over_axes() {
    let mut rng = rng_for("max");
    let x = distinct(&[2, 3, 4], 0.05, &mut rng);
    let axis_sets: [&[isize]; 6] = [&[0], &[1], &[-1], &[0, 2], &[1, 2], &[0, 1, 2]];
    for axes in axis_sets {
        for keep in [false, true] {
            assert_grad(
                &format!("max_axes {axes:?} {keep}"),
                &[x.clone()],
                |v| v[0].max_axes(axes, keep),
                SMOOTH,
            );
        }
    }
}

/// max_axes with exact ties splits the gradient evenly.
#[test]
fn max_ties_split_gradient() {
    let x = Tensor::from_vec(vec![1.0, 3.0, 3.0, 0.0, 2.0, 1.0], &[2, 3]).requires_grad();
    let g = x.max_axes(&[1], false).sum().backward();
    assert_eq!(
        g.get(&x).unwrap().to_vec(),
        vec![0.0, 0.5, 0.5, 0.0, 1.0, 0.0]
    );
}

/// reshape, flatten, concat along axes 0 and 1 (and the last axis of a 3-d tensor), index_rows.
#[test]
fn shape_ops() {
    let mut rng = rng_for("shape");
    let x = uni(&[2, 3, 4], -1.0, 1.0, &mut rng);
    // Reshape followed by a non-uniform op, so a scrambled view would show.
    assert_grad(
        "reshape",
        &[x.clone()],
        |v| v[0].reshape(&[4, 6]).exp(),
        SMOOTH,
    );
    assert_grad(
        "reshape flat",
        &[x.clone()],
        |v| v[0].reshape(&[24]),
        SMOOTH,
    );
    let img = uni(&[2, 2, 3, 2], -1.0, 1.0, &mut rng);
    assert_grad(
        "flatten",
        &[img],
        |v| v[0].flatten().mul_scalar(2.0),
        SMOOTH,
    );

    let a = uni(&[2, 3], -1.0, 1.0, &mut rng);
    let b = uni(&[1, 3], -1.0, 1.0, &mut rng);
    let c = uni(&[3, 3], -1.0, 1.0, &mut rng);
    assert_grad(
        "concat axis 0",
        &[a.clone(), b, c],
        |v| Tensor::concat(&[&v[0], &v[1], &v[2]], 0),
        SMOOTH,
    );
    let d = uni(&[2, 1], -1.0, 1.0, &mut rng);
    let e = uni(&[2, 4], -1.0, 1.0, &mut rng);
    assert_grad(
        "concat axis 1",
        &[a, d, e],
        |v| Tensor::concat(&[&v[0], &v[1], &v[2]], 1),
        SMOOTH,
    );
    let p = uni(&[2, 2, 3], -1.0, 1.0, &mut rng);
    let q = uni(&[2, 2, 1], -1.0, 1.0, &mut rng);
    assert_grad(
        "concat axis -1",
        &[p.clone(), q],
        |v| Tensor::concat(&[&v[0], &v[1]], -1),
        SMOOTH,
    );
    // The same tensor twice: both halves' gradients accumulate.
    assert_grad(
        "concat x x",
        &[p],
        |v| Tensor::concat(&[&v[0], &v[0]], 1),
        SMOOTH,
    );

    let t = uni(&[4, 3], -1.0, 1.0, &mut rng);
    assert_grad(
        "index_rows repeats",
        &[t.clone()],
        |v| v[0].index_rows(&[2, 0, 2, 2, 3]),
        SMOOTH,
    );
    let t3 = uni(&[3, 2, 2], -1.0, 1.0, &mut rng);
    assert_grad(
        "index_rows 3d",
        &[t3],
        |v| v[0].index_rows(&[1, 1, 0]),
        SMOOTH,
    );
}

// ---------------------------------------------------------------------------------------------
// Matrix products and convolution
// ---------------------------------------------------------------------------------------------

/// matmul on non-square shapes, including vectors as 1×k / k×1 matrices.
#[test]
fn matmul() {
    let mut rng = rng_for("matmul");
    for (m, k, n) in [(3, 4, 5), (1, 3, 2), (4, 1, 3), (2, 5, 1), (5, 7, 3)] {
        let a = uni(&[m, k], -1.0, 1.0, &mut rng);
        let b = uni(&[k, n], -1.0, 1.0, &mut rng);
        assert_grad(
            &format!("matmul {m}x{k}x{n}"),
            &[a, b],
            |v| v[0].matmul(&v[1]),
            SMOOTH,
        );
    }
    // x on both sides: both contributions accumulate.
    let x = uni(&[3, 3], -1.0, 1.0, &mut rng);
    assert_grad("matmul x x", &[x], |v| v[0].matmul(&v[0]), SMOOTH);
}

/// linear (x·Wᵀ + b) with and without bias.
#[test]
fn linear() {
    let mut rng = rng_for("linear");
    for (n, i, o) in [(3, 4, 5), (1, 6, 2), (4, 3, 1)] {
        let x = uni(&[n, i], -1.0, 1.0, &mut rng);
        let w = uni(&[o, i], -1.0, 1.0, &mut rng);
        let b = uni(&[o], -1.0, 1.0, &mut rng);
        assert_grad(
            &format!("linear {n}x{i}->{o} bias"),
            &[x.clone(), w.clone(), b],
            |v| v[0].linear(&v[1], Some(&v[2])),
            SMOOTH,
        );
        assert_grad(
            &format!("linear {n}x{i}->{o} no bias"),
            &[x, w],
            |v| v[0].linear(&v[1], None),
            SMOOTH,
        );
    }
}

/// conv2d w.r.t. input, weight and bias over strides, paddings, kernel shapes and batch sizes.
#[test]
fn conv2d() {
    let mut rng = rng_for("conv2d");
    // (n, c, h, w, o, kh, kw, stride, padding, bias)
    let cases = [
        (2, 2, 5, 6, 3, 3, 3, (1, 1), (0, 0), true),
        (2, 2, 5, 6, 3, 3, 3, (1, 1), (1, 1), false),
        (2, 1, 6, 5, 2, 3, 3, (2, 2), (1, 1), true),
        (3, 2, 4, 5, 2, 3, 3, (1, 1), (2, 2), true),
        (2, 3, 7, 5, 2, 3, 2, (2, 1), (0, 1), true),
        (2, 3, 4, 5, 4, 1, 1, (1, 1), (0, 0), true),
        (2, 2, 6, 6, 2, 1, 1, (2, 2), (0, 0), false),
        (1, 2, 7, 7, 2, 4, 4, (2, 2), (1, 1), true),
        (2, 1, 5, 4, 2, 2, 3, (1, 2), (2, 1), true),
    ];
    for (n, c, h, w, o, kh, kw, stride, padding, bias) in cases {
        let p = Conv2dParams { stride, padding };
        let x = uni(&[n, c, h, w], -1.0, 1.0, &mut rng);
        let wt = uni(&[o, c, kh, kw], -0.5, 0.5, &mut rng);
        let name = format!(
            "conv2d x{:?} w{:?} {p:?} bias={bias}",
            x.shape(),
            wt.shape()
        );
        if bias {
            let b = uni(&[o], -0.5, 0.5, &mut rng);
            assert_grad(
                &name,
                &[x, wt, b],
                |v| v[0].conv2d(&v[1], Some(&v[2]), p),
                SMOOTH,
            );
        } else {
            assert_grad(&name, &[x, wt], |v| v[0].conv2d(&v[1], None, p), SMOOTH);
        }
    }
}

/// conv2d, its adjoint and interval_conv2d on batches of small images, whose forwards the CPU
/// kernels fold several samples into one GEMM for (the group size depends on the batch and the
/// thread count, so under pools of 1 thread, one run of samples, and 3, runs per worker with
/// groups cut at their ends and, in the interval stack, a run across the centre/radius split).
#[test]
fn conv2d_batched_samples() {
    let mut rng = rng_for("conv2d_batched_samples");
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for (stride, pad) in [(1, 1), (2, 0)] {
                let p = Conv2dParams::new(stride, pad);
                let x = uni(&[5, 2, 5, 4], -1.0, 1.0, &mut rng);
                let wt = uni(&[3, 2, 3, 3], -0.5, 0.5, &mut rng);
                let b = uni(&[3], -0.5, 0.5, &mut rng);
                assert_grad(
                    &format!("conv2d n=5 stride {stride} pad {pad}, {threads} threads"),
                    &[x, wt.clone(), b],
                    |v| v[0].conv2d(&v[1], Some(&v[2]), p),
                    SMOOTH,
                );
                let (h, w) = (5, 4);
                let (oh, ow) = (
                    (h + 2 * pad - 3) / stride + 1,
                    (w + 2 * pad - 3) / stride + 1,
                );
                let a = uni(&[5, 3, oh, ow], -1.0, 1.0, &mut rng);
                assert_grad(
                    &format!("conv2d_transpose n=5 stride {stride} pad {pad}, {threads} threads"),
                    &[a, wt],
                    |v| v[0].conv2d_transpose(&v[1], p, (h, w)),
                    SMOOTH,
                );
                let s = boxes(&[5, 2, 5, 4], 0.0, &mut rng);
                let w = away(&[3, 2, 3, 3], -0.5, 0.5, &[0.0], 0.05, &mut rng);
                let b = uni(&[3], -0.5, 0.5, &mut rng);
                assert_grad(
                    &format!("interval_conv2d n=5 stride {stride} pad {pad}, {threads} threads"),
                    &[s, w, b],
                    |v| v[0].interval_conv2d(&v[1], Some(&v[2]), p),
                    SMOOTH,
                );
            }
        });
    }
}

/// conv2d_transpose (the convolution's adjoint, which linear bounds go back through) w.r.t. the
/// coefficients and the weight, and its adjoint identity ⟨conv(x), a⟩ = ⟨x, convᵀ(a)⟩, over
/// strides (including sizes a strided convolution does not cover exactly) and paddings.
#[test]
fn conv2d_transpose() {
    let mut rng = rng_for("conv2d_transpose");
    // (n, c, h, w, o, kh, kw, stride, padding)
    let cases = [
        (2, 2, 5, 6, 3, 3, 3, (1, 1), (0, 0)),
        (2, 1, 6, 5, 2, 3, 3, (2, 2), (1, 1)),
        (1, 2, 7, 7, 2, 4, 4, (2, 2), (1, 1)),
        (2, 3, 7, 5, 2, 3, 2, (2, 1), (0, 1)),
        (2, 2, 4, 5, 3, 1, 1, (1, 1), (0, 0)),
    ];
    for (n, c, h, w, o, kh, kw, stride, padding) in cases {
        let p = Conv2dParams { stride, padding };
        let (oh, ow) = p.output_hw(h, w, kh, kw);
        let a = uni(&[n, o, oh, ow], -1.0, 1.0, &mut rng);
        let wt = uni(&[o, c, kh, kw], -0.5, 0.5, &mut rng);
        let name = format!("conv2d_transpose a{:?} w{:?} {p:?}", a.shape(), wt.shape());
        assert_grad(
            &name,
            &[a.clone(), wt.clone()],
            |v| v[0].conv2d_transpose(&v[1], p, (h, w)),
            SMOOTH,
        );
        let x = uni(&[n, c, h, w], -1.0, 1.0, &mut rng);
        let dot = |u: &Tensor, v: &Tensor| -> f64 {
            u.data()
                .iter()
                .zip(v.data())
                .map(|(&p, &q)| p as f64 * q as f64)
                .sum()
        };
        let lhs = dot(&x.conv2d(&wt, None, p), &a);
        let rhs = dot(&x, &a.conv2d_transpose(&wt, p, (h, w)));
        assert!(
            (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
            "{name}: <conv x, a> = {lhs}, <x, convT a> = {rhs}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

/// channel_mean on [N, C] and [N, C, H, W].
#[test]
fn channel_mean() {
    let mut rng = rng_for("cmean");
    for s in [&[4, 3][..], &[2, 3, 2, 3], &[3, 2, 5]] {
        let x = uni(s, -1.0, 1.0, &mut rng);
        assert_grad(
            &format!("channel_mean {s:?}"),
            &[x],
            |v| v[0].channel_mean(),
            SMOOTH,
        );
    }
}

/// channel_var w.r.t. x and w.r.t. the mean argument (at the true mean and at another value).
#[test]
fn channel_var() {
    let mut rng = rng_for("cvar");
    for s in [&[4, 3][..], &[2, 3, 2, 3]] {
        let x = uni(s, -1.0, 1.0, &mut rng);
        let c = s[1];
        // Any given mean: both gradients are non-trivial.
        let m = uni(&[c], -0.5, 0.5, &mut rng);
        assert_grad(
            &format!("channel_var {s:?} (x, m)"),
            &[x.clone(), m],
            |v| v[0].channel_var(&v[1]),
            SMOOTH,
        );
        // The batch-norm composition: var(x, mean(x)).
        assert_grad(
            &format!("channel_var {s:?} (x, mean(x))"),
            &[x],
            |v| v[0].channel_var(&v[0].channel_mean()),
            SMOOTH,
        );
    }
}

/// channel_affine w.r.t. x, scale and shift on [N, C] and [N, C, H, W].
#[test]
fn channel_affine() {
    let mut rng = rng_for("caffine");
    for s in [&[4, 3][..], &[2, 3, 2, 3], &[1, 2, 3]] {
        let c = s[1];
        let x = uni(s, -1.0, 1.0, &mut rng);
        let scale = uni(&[c], -2.0, 2.0, &mut rng);
        let shift = uni(&[c], -1.0, 1.0, &mut rng);
        assert_grad(
            &format!("channel_affine {s:?}"),
            &[x, scale, shift],
            |v| v[0].channel_affine(&v[1], &v[2]),
            SMOOTH,
        );
    }
}

/// BatchNorm in train mode end to end (batch statistics), w.r.t. input, weight and bias.
#[test]
fn batchnorm_train_mode() {
    let mut rng = rng_for("bn");
    for (s, dims) in [
        (&[3, 2, 3, 2][..], 2),
        (&[2, 3, 2, 2], 2),
        (&[5, 3], 1),
        (&[4, 2], 1),
    ] {
        let c = s[1];
        let x = uni(s, -1.0, 1.0, &mut rng).mul_scalar(2.0).add_scalar(0.3);
        let gamma = uni(&[c], 0.5, 1.5, &mut rng);
        let beta = uni(&[c], -0.5, 0.5, &mut rng);
        let f = move |v: &[Tensor]| {
            let mut bn = BatchNorm::new(c, dims);
            bn.weight = v[1].clone();
            bn.bias = v[2].clone();
            bn.forward_batch(&v[0]).0
        };
        assert_grad(
            &format!("batchnorm{dims}d {s:?}"),
            &[x, gamma, beta],
            f,
            SMOOTH.h(2e-3).atol(2e-3),
        );
    }
}

/// BatchNorm in eval mode (running statistics are constants) w.r.t. input, weight and bias.
#[test]
fn batchnorm_eval_mode() {
    let mut rng = rng_for("bn eval");
    let x = uni(&[2, 3, 2, 2], -1.0, 1.0, &mut rng);
    let gamma = uni(&[3], 0.5, 1.5, &mut rng);
    let beta = uni(&[3], -0.5, 0.5, &mut rng);
    let rm = uni(&[3], -0.5, 0.5, &mut rng);
    let rv = uni(&[3], 0.5, 2.0, &mut rng);
    assert_grad(
        "batchnorm eval",
        &[x, gamma, beta],
        |v| {
            let mut bn = BatchNorm::new(3, 2);
            bn.weight = v[1].clone();
            bn.bias = v[2].clone();
            bn.running_mean = rm.clone();
            bn.running_var = rv.clone();
            bn.forward_eval(&v[0])
        },
        SMOOTH,
    );
}

// ---------------------------------------------------------------------------------------------
// Losses
// ---------------------------------------------------------------------------------------------

/// log_softmax over rows, including a single row and two classes.
#[test]
fn log_softmax() {
    let mut rng = rng_for("logsoftmax");
    for s in [[3, 5], [1, 4], [4, 2]] {
        let x = uni(&s, -2.0, 2.0, &mut rng);
        assert_grad(
            &format!("log_softmax {s:?}"),
            &[x],
            |v| ops::log_softmax(&v[0]),
            SMOOTH,
        );
    }
    // Large, shifted logits: the gradient must not depend on the shift.
    let x = uni(&[2, 3], -2.0, 2.0, &mut rng).add_scalar(50.0);
    assert_grad(
        "log_softmax shifted",
        &[x],
        |v| ops::log_softmax(&v[0]),
        SMOOTH.h(2e-2).atol(3e-3),
    );
}

/// cross_entropy (mean over the batch) with repeated labels, and scaled by an upstream weight.
#[test]
fn cross_entropy() {
    let mut rng = rng_for("xent");
    for (s, labels) in [
        ([3, 5], vec![4, 0, 4]),
        ([1, 3], vec![1]),
        ([4, 2], vec![0, 1, 1, 0]),
    ] {
        let x = uni(&s, -2.0, 2.0, &mut rng);
        assert_grad(
            &format!("cross_entropy {s:?}"),
            &[x],
            |v| ops::cross_entropy(&v[0], &labels),
            SMOOTH.atol(2e-4),
        );
    }
    // Composed: linear → cross-entropy, the usual training loss.
    let x = uni(&[3, 4], -1.0, 1.0, &mut rng);
    let w = uni(&[5, 4], -1.0, 1.0, &mut rng);
    let b = uni(&[5], -1.0, 1.0, &mut rng);
    assert_grad(
        "linear + cross_entropy",
        &[x, w, b],
        |v| ops::cross_entropy(&v[0].linear(&v[1], Some(&v[2])), &[1, 4, 0]),
        SMOOTH.atol(2e-4),
    );
}

// ---------------------------------------------------------------------------------------------
// Some inputs constant
// ---------------------------------------------------------------------------------------------

/// Ops whose backward skips inputs that need no gradient (captured constants here) must still
/// route the others' gradients correctly.
#[test]
fn gradients_with_constant_operands() {
    let mut rng = rng_for("constants");
    let x = uni(&[2, 2, 5, 4], -1.0, 1.0, &mut rng);
    let w = uni(&[3, 2, 3, 3], -0.5, 0.5, &mut rng);
    let b = uni(&[3], -0.5, 0.5, &mut rng);
    let p = Conv2dParams::new(2, 1);
    let (wc, bc) = (w.clone(), b.clone());
    assert_grad(
        "conv2d x only",
        &[x.clone()],
        |v| v[0].conv2d(&wc, Some(&bc), p),
        SMOOTH,
    );
    let xc = x.clone();
    assert_grad(
        "conv2d w, b only",
        &[w.clone(), b.clone()],
        |v| xc.conv2d(&v[0], Some(&v[1]), p),
        SMOOTH,
    );
    let bc = b.clone();
    assert_grad(
        "conv2d x, w (constant b)",
        &[x, w],
        |v| v[0].conv2d(&v[1], Some(&bc), p),
        SMOOTH,
    );

    let a = uni(&[3, 4], -1.0, 1.0, &mut rng);
    let m = uni(&[5, 4], -1.0, 1.0, &mut rng);
    let bias = uni(&[5], -1.0, 1.0, &mut rng);
    let (ac, mc, biasc) = (a.clone(), m.clone(), bias.clone());
    assert_grad(
        "linear w only",
        &[m.clone()],
        |v| ac.linear(&v[0], Some(&biasc)),
        SMOOTH,
    );
    assert_grad(
        "linear x only",
        &[a.clone()],
        |v| v[0].linear(&mc, Some(&biasc)),
        SMOOTH,
    );
    let ac = a.clone();
    assert_grad(
        "linear bias only",
        &[bias],
        |v| ac.linear(&mc, Some(&v[0])),
        SMOOTH,
    );
    let mt = uni(&[4, 2], -1.0, 1.0, &mut rng);
    let mtc = mt.clone();
    assert_grad("matmul a only", &[a.clone()], |v| v[0].matmul(&mtc), SMOOTH);
    let ac = a.clone();
    assert_grad("matmul b only", &[mt], |v| ac.matmul(&v[0]), SMOOTH);

    let row = uni(&[4], 0.5, 1.5, &mut rng);
    let rowc = row.clone();
    assert_grad(
        "div constant denominator",
        &[a.clone()],
        |v| v[0].div(&rowc),
        SMOOTH,
    );
    let ac = a.clone();
    assert_grad(
        "div constant numerator",
        &[row],
        |v| ac.div(&v[0]),
        SMOOTH.h(1e-3),
    );

    let img = uni(&[2, 3, 2, 2], -1.0, 1.0, &mut rng);
    let scale = uni(&[3], -2.0, 2.0, &mut rng);
    let shift = uni(&[3], -1.0, 1.0, &mut rng);
    let (sc, sh) = (scale.clone(), shift.clone());
    assert_grad(
        "channel_affine x only",
        &[img.clone()],
        |v| v[0].channel_affine(&sc, &sh),
        SMOOTH,
    );
    let ic = img.clone();
    assert_grad(
        "channel_affine scale, shift only",
        &[scale, shift],
        |v| ic.channel_affine(&v[0], &v[1]),
        SMOOTH,
    );
    let mean = uni(&[3], -0.5, 0.5, &mut rng);
    assert_grad(
        "channel_var mean only",
        &[mean],
        |v| img.channel_var(&v[0]),
        SMOOTH,
    );
}

// ---------------------------------------------------------------------------------------------
// Whole models
// ---------------------------------------------------------------------------------------------

/// The model's logits and the sign pattern of every ReLU input (which side of the kink each
/// unit is on), computed without gradients by running the layers one by one.
fn forward_with_pattern(model: &nn::Model, x: &Tensor) -> (Tensor, Vec<bool>) {
    autodiff::with_no_grad(|| {
        let mut pattern = Vec::new();
        let mut h = model.normalize(x);
        for layer in &model.net.layers {
            if matches!(layer, nn::Layer::ReLU) {
                pattern.extend(h.data().iter().map(|&v| v > 0.0));
            }
            h = layer.forward(&h, Mode::Train);
        }
        (h, pattern)
    })
}

/// Check d(Σ r·logits)/dθ for `per_tensor` random entries of every parameter tensor of `model`
/// (batch norm in train mode). Entries whose ±h perturbation moves some ReLU input across its
/// kink are redrawn: the central difference is not a derivative there.
fn check_model(model: &mut nn::Model, x: &Tensor, per_tensor: usize, tol: Tol, seed: u64) {
    let mut rng = Rng::seed(seed);
    let logits = model.forward(x, Mode::Train);
    let (_, base_pattern) = forward_with_pattern(model, x);
    let r: Vec<f32> = (0..logits.numel())
        .map(|_| 2.0 * rng.uniform() - 1.0)
        .collect();
    let grads = logits
        .mul(&Tensor::from_vec(r.clone(), logits.shape()))
        .sum()
        .backward();
    let params: Vec<(String, Tensor)> = model
        .net
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    let mut failures = Vec::new();
    let (mut checked, mut redrawn) = (0, 0);
    for (pi, (name, original)) in params.iter().enumerate() {
        let analytic = grads
            .get(original)
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .to_vec();
        let shape = original.shape().to_vec();
        let mut done = 0;
        let mut tries = 0;
        while done < per_tensor && tries < 50 * per_tensor {
            tries += 1;
            let j = rng.below(original.numel());
            let mut eval = |v: f32| -> (f64, bool) {
                let mut d = original.to_vec();
                d[j] = v;
                *model.net.parameters_mut()[pi] = Tensor::from_vec(d, &shape);
                let (out, pattern) = forward_with_pattern(model, x);
                (weighted_sum(&out, &r), pattern == base_pattern)
            };
            let (xp, xm) = (original.data()[j] + tol.h, original.data()[j] - tol.h);
            let ((lp, same_p), (lm, same_m)) = (eval(xp), eval(xm));
            if !(same_p && same_m) {
                redrawn += 1;
                continue;
            }
            done += 1;
            checked += 1;
            let numeric = (lp - lm) / (xp as f64 - xm as f64);
            let a = analytic[j] as f64;
            if !((a - numeric).abs() <= tol.atol + tol.rtol * a.abs().max(numeric.abs())) {
                failures.push(format!("{name}[{j}]: analytic {a:.6} numeric {numeric:.6}"));
            }
        }
        *model.net.parameters_mut()[pi] = original.clone();
        assert_eq!(
            done, per_tensor,
            "{name}: every perturbation crossed a ReLU kink"
        );
    }
    eprintln!("checked {checked}, redrawn {redrawn}");
    assert!(
        failures.is_empty(),
        "model gradients wrong ({} of {checked}, {redrawn} redrawn):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The `small` architecture (conv s2 p1, conv s1 p1, two FC, ReLUs) end to end.
#[test]
fn small_model_gradients() {
    let mut rng = Rng::seed(11);
    let spec = nn::ModelSpec::new(nn::Arch::Small, [1, 12, 12], 10);
    let mut model = nn::Model::new(spec, &mut rng).unwrap();
    let x = uni(&[2, 1, 12, 12], 0.0, 1.0, &mut rng);
    check_model(&mut model, &x, 4, SMOOTH.h(1e-3).atol(2e-3), 12);
}

/// cnn7 at width 0.125 on 5×5 inputs (conv + batch norm in train mode + ReLU, FC + BN1d) end to end, with
/// input normalisation.
#[test]
fn cnn7_model_gradients() {
    let mut rng = Rng::seed(21);
    let mut spec = nn::ModelSpec::new(nn::Arch::Cnn7, [3, 5, 5], 10);
    spec.width = 0.125;
    spec.normalization = Some(nn::Normalization {
        mean: vec![0.5, 0.4, 0.3],
        std: vec![0.25, 0.2, 0.3],
    });
    let mut model = nn::Model::new(spec, &mut rng).unwrap();
    let x = uni(&[3, 3, 5, 5], 0.0, 1.0, &mut rng);
    check_model(&mut model, &x, 3, SMOOTH.h(5e-4).atol(3e-3), 22);
}

// ---------------------------------------------------------------------------------------------
// Interval ops and the certified loss
// ---------------------------------------------------------------------------------------------

/// An interval tensor [2, shape...] whose ends c ± r stay `margin` away from 0 (ReLU's kink)
/// and whose radii stay positive under the checker's steps.
fn boxes(shape: &[usize], margin: f32, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let mut c = Vec::with_capacity(n);
    let mut r = Vec::with_capacity(n);
    while c.len() < n {
        let (cv, rv) = (rng.uniform() * 2.0 - 1.0, 0.05 + 0.5 * rng.uniform());
        if (cv - rv).abs() > margin && (cv + rv).abs() > margin {
            c.push(cv);
            r.push(rv);
        }
    }
    Tensor::interval_stack(&Tensor::from_vec(c, shape), &Tensor::from_vec(r, shape))
}

#[test]
fn interval_affine_layers() {
    let mut rng = rng_for("interval");
    let s = boxes(&[3, 5], 0.0, &mut rng);
    // Weights away from 0: |W| has a kink there.
    let w = away(&[4, 5], -1.0, 1.0, &[0.0], 0.05, &mut rng);
    let b = uni(&[4], -0.5, 0.5, &mut rng);
    assert_grad(
        "interval_linear",
        &[s.clone(), w.clone(), b],
        |v| v[0].interval_linear(&v[1], Some(&v[2])),
        SMOOTH,
    );
    assert_grad(
        "interval_linear no bias",
        &[s, w],
        |v| v[0].interval_linear(&v[1], None),
        SMOOTH,
    );

    for (stride, pad) in [(1, 1), (2, 0)] {
        let s = boxes(&[2, 2, 5, 4], 0.0, &mut rng);
        let w = away(&[3, 2, 3, 3], -0.5, 0.5, &[0.0], 0.05, &mut rng);
        let b = uni(&[3], -0.5, 0.5, &mut rng);
        let p = Conv2dParams::new(stride, pad);
        assert_grad(
            &format!("interval_conv2d stride {stride} pad {pad}"),
            &[s, w, b],
            |v| v[0].interval_conv2d(&v[1], Some(&v[2]), p),
            SMOOTH,
        );
    }

    for half in [vec![3, 4], vec![2, 3, 2, 2]] {
        let s = boxes(&half, 0.0, &mut rng);
        let scale = away(&[half[1]], -2.0, 2.0, &[0.0], 0.1, &mut rng);
        let shift = uni(&[half[1]], -1.0, 1.0, &mut rng);
        assert_grad(
            &format!("interval_channel_affine {half:?}"),
            &[s, scale, shift],
            |v| v[0].interval_channel_affine(&v[1], &v[2]),
            SMOOTH,
        );
    }
}

#[test]
fn interval_relu_and_parts() {
    let mut rng = rng_for("interval_relu");
    let s = boxes(&[4, 6], 0.05, &mut rng);
    assert_grad(
        "interval_relu",
        &[s.clone()],
        |v| v[0].interval_relu(),
        SMOOTH,
    );
    assert_grad(
        "interval_bounds",
        &[s.clone()],
        |v| {
            let (lo, hi) = v[0].interval_bounds();
            lo.mul(&hi)
        },
        SMOOTH,
    );
    assert_grad(
        "interval_flatten",
        &[boxes(&[2, 2, 3], 0.0, &mut rng)],
        |v| v[0].interval_flatten(),
        SMOOTH,
    );
}

/// The IBP loss with last-layer elision, w.r.t. a few weights of every parameter tensor: of a
/// `small` network, and of a batch-norm `cnn7` whose bounds use the clean batch's statistics
/// (its ε is tiny because interval widths grow about tenfold per batch-norm layer at
/// initialisation, and the check needs a loss of order one).
#[test]
fn ibp_loss_gradients_wrt_weights() {
    let mut small = nn::ModelSpec::new(nn::Arch::Small, [1, 8, 8], 4);
    small.init = nn::Init::Ibp;
    check_cert_loss(small, CertLoss::Ibp, 0.01, 31, 1e-3);
    let mut cnn7 = nn::ModelSpec::new(nn::Arch::Cnn7, [2, 5, 5], 4);
    cnn7.width = 0.125;
    cnn7.init = nn::Init::Ibp;
    check_cert_loss(cnn7, CertLoss::Ibp, 2e-5, 21, 1e-4);
}

/// SABR's certified loss at a fixed adversarial point (the attack itself is not differentiated,
/// as in the reference implementation), w.r.t. the weights of `small`. Its box depends on the
/// inputs only, so past the box it is the IBP path the batch-norm `cnn7` check above covers.
#[test]
fn sabr_loss_gradients_wrt_weights() {
    let mut small = nn::ModelSpec::new(nn::Arch::Small, [1, 8, 8], 4);
    small.init = nn::Init::Ibp;
    check_cert_loss(small, CertLoss::Sabr, 0.05, 32, 1e-3);
}

/// CACTUS's set loss (full network, one pruned at 0.5 and the AWP-perturbed one, each with its
/// SABR loss) w.r.t. the weights of `small`. The masks, the AWP perturbation and the attacks are
/// piecewise constant in the weights (drawn with the same seed at every evaluation), so the
/// derivative is that of the mean of the members' losses at a fixed set; the few steps that
/// switch one of them are rejected like ReLU switches.
#[test]
fn cactus_loss_gradients_wrt_weights() {
    let mut small = nn::ModelSpec::new(nn::Arch::Small, [1, 8, 8], 4);
    small.init = nn::Init::Ibp;
    check_cert_loss(small, CertLoss::Cactus, 0.05, 33, 1e-3);
}

#[derive(Clone, Copy)]
enum CertLoss {
    Ibp,
    Sabr,
    Cactus,
}

fn check_cert_loss(spec: nn::ModelSpec, kind: CertLoss, eps: f32, seed: u64, h: f32) {
    use cactus::train::{ibp_cert_loss, sabr_cert_loss_at};
    let mut rng = Rng::seed(seed);
    let mut model = nn::Model::new(spec.clone(), &mut rng).unwrap();
    let mut shape = vec![8];
    shape.extend(spec.input_shape);
    let x = uni(&shape, 0.0, 1.0, &mut rng);
    let x_adv = x.add(&uni(&shape, -eps, eps, &mut rng)).clamp(0.0, 1.0);
    let labels = vec![0, 3, 3, 1, 2, 0, 1, 3];
    let loss_of = |m: &mut nn::Model| {
        let (_, stats) = m.forward_batch_stats(&x, false);
        match kind {
            CertLoss::Ibp => ibp_cert_loss(m, &x, &labels, eps, &stats),
            CertLoss::Sabr => sabr_cert_loss_at(m, &x, &x_adv, &labels, eps, 0.4, &stats),
            CertLoss::Cactus => {
                use cactus::train::{
                    cactus_loss, CactusConfig, CompressKind, Phase, Progress, Strategy,
                };
                let cfg = CactusConfig {
                    compress: CompressKind::PruneQuant,
                    strategy: Strategy::Fixed,
                    ratios: Some(vec![0.5]),
                    ..CactusConfig::default()
                };
                let phase = Phase {
                    eps,
                    cert_weight: 0.75,
                };
                let progress = Progress {
                    step: 0,
                    total_steps: 1,
                    ramp_end: 0,
                };
                cactus_loss(
                    m,
                    &x,
                    &labels,
                    phase,
                    0.4,
                    &cfg,
                    progress,
                    &mut Rng::seed(3),
                )
                .unwrap()
                .total
            }
        }
    };
    let base = loss_of(&mut model);
    assert!(
        base.item() > 0.5 && base.item() < 20.0,
        "loss {} out of the checkable range",
        base.item()
    );
    let grads = base.backward();
    let n_params = model.net.parameters_mut().len();
    for p in 0..n_params {
        let analytic = grads
            .get(model.net.parameters_mut()[p])
            .expect("gradient")
            .to_vec();
        let (mut checked, mut tries) = (0, 0);
        while checked < 3 && tries < 60 {
            tries += 1;
            let i = rng.below(analytic.len());
            let mut shifted = |delta: f32| {
                let set = |m: &mut nn::Model, d: f32| {
                    let t = &mut *m.net.parameters_mut()[p];
                    let mut v = t.to_vec();
                    v[i] += d;
                    *t = Tensor::from_vec(v, t.shape()).requires_grad();
                };
                set(&mut model, delta);
                // With gradients: CACTUS's AWP ascends by them (the others do not need them).
                let l = loss_of(&mut model).item() as f64;
                set(&mut model, -delta);
                l
            };
            // Central differences at several step sizes: their median rejects the f32 rounding
            // noise of a deep network; a wide spread means a ReLU switches within the steps,
            // where there is no derivative to compare with.
            let mut estimates: Vec<f64> = [10.0, 3.0, 1.0, 0.3]
                .iter()
                .map(|k| {
                    let hk = h * k;
                    (shifted(hk) - shifted(-hk)) / (2.0 * hk as f64)
                })
                .collect();
            estimates.sort_by(f64::total_cmp);
            let numeric = (estimates[1] + estimates[2]) / 2.0;
            let tol = |x: f64, y: f64| 1e-2 + 8e-2 * x.abs().max(y.abs());
            if estimates[3] - estimates[0] > 4.0 * tol(numeric, numeric) {
                continue;
            }
            let a = analytic[i] as f64;
            assert!(
                (a - numeric).abs() <= tol(a, numeric),
                "{:?} parameter {p} element {i}: analytic {a}, numeric {numeric}",
                spec.arch
            );
            checked += 1;
        }
        assert_eq!(
            checked, 3,
            "{:?} parameter {p}: too few smooth points",
            spec.arch
        );
    }
}
