//! Fake quantization: fp16 and intN against direct computation, the half-step error bound, the
//! straight-through gradient, and quantizing a whole model.

use cactus::compress::quant::{
    dequantize_int, fake_quantize, int_range, quant_step, quantize_int, quantize_model, Format,
    Granularity, QuantParams, FP16_MAX,
};
use cactus::nn::{Arch, Layer, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::Tensor;
use std::collections::HashSet;

// ---------------------------------------------------------------------------------------------
// Direct computations the implementation is checked against
// ---------------------------------------------------------------------------------------------

/// The spec's formula, written out with no shared code: per channel (rows of `row` values),
/// s = (max − min)/(qmax − qmin) stored as f32 (rounded up so s·(qmax − qmin) ≥ max − min),
/// z = qmin − round(min/s), q = clamp(round(w/s) + z), ŵ = s·(q − z); ties to even.
/// Returns (ŵ, q, s per channel, z per channel). Not for constant or near-constant channels.
fn naive_int(w: &[f32], row: usize, bits: u8) -> (Vec<f32>, Vec<i32>, Vec<f32>, Vec<i64>) {
    let qmin = -(1i64 << (bits - 1));
    let qmax = (1i64 << (bits - 1)) - 1;
    let (mut out, mut qs, mut ss, mut zs) = (vec![], vec![], vec![], vec![]);
    for ch in w.chunks(row) {
        let lo = ch.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = ch.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert!(hi > lo, "naive_int: constant channel");
        let k = (qmax - qmin) as f64;
        let mut s = ((hi as f64 - lo as f64) / k) as f32;
        if (s as f64) * k < hi as f64 - lo as f64 {
            s = f32::from_bits(s.to_bits() + 1);
        }
        let z = qmin - (lo as f64 / s as f64).round_ties_even() as i64;
        for &x in ch {
            let q = ((x as f64 / s as f64).round_ties_even() as i64 + z).clamp(qmin, qmax);
            qs.push(q as i32);
            out.push((s as f64 * (q - z) as f64) as f32);
        }
        ss.push(s);
        zs.push(z);
    }
    (out, qs, ss, zs)
}

fn randn(shape: &[usize], std: f32, seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, std, &mut Rng::seed(seed))
}

/// |ŵ − w| ≤ s/2 up to f32 rounding of the result.
fn assert_half_step(w: &[f32], what: &[f32], row: usize, scales: &[f32]) {
    for (i, (&x, &y)) in w.iter().zip(what).enumerate() {
        let s = scales[i / row];
        let slack = 4.0 * f32::EPSILON * x.abs().max(s) + f32::MIN_POSITIVE;
        assert!(
            (y - x).abs() <= s / 2.0 + slack,
            "element {i}: w = {x}, ŵ = {y}, s = {s}: error {} > s/2",
            (y - x).abs()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

#[test]
fn formats_parse_and_print() {
    for (s, f) in [
        ("fp32", Format::Fp32),
        ("fp16", Format::Fp16),
        ("int8", Format::Int(8)),
        ("int4", Format::Int(4)),
        ("int2", Format::Int(2)),
        ("INT6", Format::Int(6)),
    ] {
        let parsed: Format = s.parse().unwrap();
        assert_eq!(parsed, f);
        assert_eq!(parsed.to_string(), s.to_lowercase());
    }
    for bad in [
        "int1", "int9", "int0", "int", "int16", "foo", "", "fp8", "int-4", "int+4",
    ] {
        let e = bad.parse::<Format>().unwrap_err().to_string();
        assert!(e.contains(&format!("{bad:?}")), "error {e:?} names {bad:?}");
    }
    assert_eq!(
        "per-channel".parse::<Granularity>().unwrap(),
        Granularity::PerChannel
    );
    assert_eq!(
        "tensor".parse::<Granularity>().unwrap(),
        Granularity::PerTensor
    );
    assert!("per-row"
        .parse::<Granularity>()
        .unwrap_err()
        .to_string()
        .contains("per-row"));
    let json = serde_json::to_string(&Format::Int(4)).unwrap();
    assert_eq!(json, "\"int4\"");
    assert_eq!(
        serde_json::from_str::<Format>(&json).unwrap(),
        Format::Int(4)
    );
    assert_eq!(int_range(8), (-128, 127));
    assert_eq!(int_range(4), (-8, 7));
    assert_eq!(int_range(2), (-2, 1));
}

#[test]
fn fp32_is_the_identity() {
    let w = randn(&[5, 7], 1.0, 1);
    assert!(fake_quantize(&w, Format::Fp32, Granularity::PerTensor).bit_eq(&w));
}

// ---------------------------------------------------------------------------------------------
// fp16
// ---------------------------------------------------------------------------------------------

#[test]
fn fp16_matches_half_on_random_and_edge_values() {
    let mut v = randn(&[4096], 3.0, 2).to_vec();
    v.extend(randn(&[512], 1e-5, 3).to_vec()); // around and below the half subnormal range
    v.extend(randn(&[512], 2e4, 4).to_vec()); // large, some beyond 65504
    let sub = 2f32.powi(-24); // smallest half subnormal
    v.extend([
        0.0,
        -0.0,
        sub,
        -sub,
        sub / 2.0,                  // tie between 0 and the smallest subnormal: to even (0)
        sub * 1.5,                  // tie between 1 and 2 subnormal steps: to even (2)
        sub * 0.49,                 // to 0
        2f32.powi(-14),             // smallest normal half
        1.0 + 2f32.powi(-11),       // tie between 1 and 1 + 2^-10: to even (1)
        1.0 + 3.0 * 2f32.powi(-11), // tie: to even (1 + 2^-9)
        65504.0,
        65519.0, // rounds to 65504 in half
        65520.0, // would overflow to inf: clamped
        1e6,
        -1e6,
        f32::MAX,
        -f32::MAX,
        1e-10,
    ]);
    let w = Tensor::from_vec(v.clone(), &[v.len()]);
    let out = fake_quantize(&w, Format::Fp16, Granularity::PerTensor);
    for (&x, &y) in v.iter().zip(out.data()) {
        let direct = half::f16::from_f32(x).to_f32();
        if x.abs() <= FP16_MAX {
            assert_eq!(
                y.to_bits(),
                direct.to_bits(),
                "fp16({x}) = {y}, half says {direct}"
            );
        } else if x.abs() < 65520.0 {
            assert_eq!(y, direct.signum() * FP16_MAX, "fp16({x})");
        } else {
            assert!(direct.is_infinite(), "half overflows {x}");
            assert_eq!(y, x.signum() * FP16_MAX, "fp16({x}) clamps");
        }
        assert!(y.is_finite());
    }
    // Spot checks of ties and subnormals against hand values.
    let f = |x: f32| {
        fake_quantize(
            &Tensor::from_vec(vec![x], &[1]),
            Format::Fp16,
            Granularity::PerTensor,
        )
        .item()
    };
    assert_eq!(f(sub / 2.0), 0.0);
    assert_eq!(f(sub * 1.5), 2.0 * sub);
    assert_eq!(f(1.0 + 2f32.powi(-11)), 1.0);
    assert_eq!(f(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2f32.powi(-9));
    assert_eq!(f(70000.0), 65504.0);
    assert_eq!(f(-1e30), -65504.0);
    assert!(f(f32::NAN).is_nan());
    assert_eq!(f(f32::INFINITY), f32::INFINITY);
}

#[test]
fn fp16_on_a_large_tensor_runs_in_parallel_and_agrees() {
    let w = randn(&[300, 300], 1.0, 5);
    let out = fake_quantize(&w, Format::Fp16, Granularity::PerTensor);
    for (&x, &y) in w.data().iter().zip(out.data()) {
        assert_eq!(y.to_bits(), half::f16::from_f32(x).to_f32().to_bits());
    }
}

// ---------------------------------------------------------------------------------------------
// intN
// ---------------------------------------------------------------------------------------------

/// Every property of one int quantization of `w` (rows of `row` values per scale).
fn check_int(w: &Tensor, bits: u8, granularity: Granularity) {
    let row = match granularity {
        Granularity::PerTensor => w.numel(),
        Granularity::PerChannel => w.numel() / w.dim(0),
    };
    let out = fake_quantize(w, Format::Int(bits), granularity);
    assert_eq!(out.shape(), w.shape());
    let (nq, nqv, ns, nz) = naive_int(w.data(), row, bits);
    // Against the direct computation, bit for bit.
    for (i, (&a, &b)) in out.data().iter().zip(&nq).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{bits} bits {granularity}: element {i}"
        );
    }
    // The integer form agrees and dequantizes to the same tensor.
    let (q, scales, zps) = quantize_int(w, bits, granularity);
    assert_eq!(scales, ns);
    assert_eq!(zps.iter().map(|&z| z as i64).collect::<Vec<_>>(), nz);
    assert_eq!(q.iter().map(|&q| q as i32).collect::<Vec<_>>(), nqv);
    let (qmin, qmax) = int_range(bits);
    assert!(q.iter().all(|&q| (qmin..=qmax).contains(&(q as i32))));
    let back = dequantize_int(&q, &scales, &zps, w.shape()).unwrap();
    assert!(
        back.bit_eq(&out),
        "dequantize_int(quantize_int) = fake_quantize"
    );
    // s is (max − min)/(qmax − qmin), to within one f32 rounding.
    for (ch, &s) in w.data().chunks(row).zip(&scales) {
        let lo = ch.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = ch.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exact = (hi as f64 - lo as f64) / (qmax - qmin) as f64;
        assert!(((s as f64) - exact).abs() <= exact * 2.0 * f32::EPSILON as f64);
    }
    // Half-step error bound.
    assert_half_step(w.data(), out.data(), row, &scales);
    // At most 2^N distinct levels per scale; min and max represented within s/2.
    for (c, (ch, och)) in w.data().chunks(row).zip(out.data().chunks(row)).enumerate() {
        let distinct: HashSet<u32> = och.iter().map(|y| (y + 0.0).to_bits()).collect();
        assert!(
            distinct.len() <= 1 << bits,
            "{} levels with {bits} bits",
            distinct.len()
        );
        let s = scales[c];
        let lo = ch.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = ch.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let qlo = och.iter().cloned().fold(f32::INFINITY, f32::min);
        let qhi = och.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let slack = 4.0 * f32::EPSILON * hi.abs().max(lo.abs());
        assert!(
            (qlo - lo).abs() <= s / 2.0 + slack,
            "min {lo} -> {qlo}, s = {s}"
        );
        assert!(
            (qhi - hi).abs() <= s / 2.0 + slack,
            "max {hi} -> {qhi}, s = {s}"
        );
    }
    // Quantizing twice changes nothing more than the new range allows: levels stay levels.
    let twice = fake_quantize(&out, Format::Int(bits), granularity);
    assert_half_step(out.data(), twice.data(), row, &scales);
}

#[test]
fn int8_and_int4_per_tensor_match_direct_computation() {
    for (seed, shape) in [(10, vec![64, 3, 3, 3]), (11, vec![100, 50]), (12, vec![7])] {
        let w = randn(&shape, 0.1, seed);
        for bits in [8, 4, 2, 3, 5, 6, 7] {
            check_int(&w, bits, Granularity::PerTensor);
        }
    }
    // Ranges that do not straddle zero (zero point outside [qmin, qmax]).
    let w = Tensor::from_vec((0..200).map(|i| 3.0 + i as f32 * 0.0137).collect(), &[200]);
    check_int(&w, 8, Granularity::PerTensor);
    check_int(&w, 4, Granularity::PerTensor);
    let w = Tensor::from_vec((0..200).map(|i| -5.0 - i as f32 * 0.01).collect(), &[200]);
    check_int(&w, 8, Granularity::PerTensor);
    // Large enough for the parallel paths.
    let w = randn(&[256, 400], 0.05, 13);
    check_int(&w, 8, Granularity::PerTensor);
    check_int(&w, 4, Granularity::PerChannel);
}

#[test]
fn int8_and_int4_per_channel_match_direct_computation() {
    // Channels with very different ranges.
    let mut rng = Rng::seed(20);
    let (c, row) = (16, 45);
    let mut v = Vec::new();
    for ch in 0..c {
        let scale = 10f32.powi(ch as i32 % 5 - 3);
        let shift = if ch % 3 == 0 { 2.0 * scale } else { 0.0 };
        v.extend((0..row).map(|_| shift + scale * (rng.uniform() * 2.0 - 1.0)));
    }
    let w = Tensor::from_vec(v, &[c, 5, 3, 3]);
    for bits in [8, 4, 2] {
        check_int(&w, bits, Granularity::PerChannel);
        check_int(&w, bits, Granularity::PerTensor);
    }
}

#[test]
fn ties_and_exact_grids() {
    // Values exactly on a grid come back unchanged; midpoints stay within s/2 either way.
    // Range [-1, 2] with int2: s = 1, z = -2 - (-1) = -1, levels -1, 0, 1, 2.
    let w = Tensor::from_vec(vec![-1.0, 0.0, 1.0, 2.0, 0.5, 1.5, -0.5, -0.0], &[8]);
    let out = fake_quantize(&w, Format::Int(2), Granularity::PerTensor);
    assert_eq!(out.to_vec(), vec![-1.0, 0.0, 1.0, 2.0, 0.0, 2.0, -0.0, 0.0]);
    let (q, s, z) = quantize_int(&w, 2, Granularity::PerTensor);
    assert_eq!((s, z), (vec![1.0], vec![-1]));
    assert_eq!(q, vec![-2, -1, 0, 1, -1, 1, -1, -1]);
    // An odd number of steps from a half-integer min: max/s is a tie that rounds up (to even);
    // the clamp keeps it within s/2 and the STE still passes it.
    // min = 0.5, max = 3.5 with int2: s = 1, round(0.5) = 0 → z = -2, round(3.5) = 4 → q = 2,
    // clamped to 1 → ŵ = 3.
    let w = Tensor::from_vec(vec![0.5, 3.5, 2.0], &[3]).requires_grad();
    let out = fake_quantize(&w, Format::Int(2), Granularity::PerTensor);
    assert_eq!(out.to_vec(), vec![0.0, 3.0, 2.0]);
    assert_eq!(
        quantize_int(&w, 2, Granularity::PerTensor).0,
        vec![-2, 1, 0]
    );
    assert_half_step(&[0.5, 3.5, 2.0], out.data(), 3, &[1.0]);
    let g = out.sum().backward();
    assert_eq!(g.get(&w).unwrap().to_vec(), vec![1.0, 1.0, 1.0]);
}

#[test]
fn constant_tensors_are_exact() {
    for c in [0.0f32, 0.731, -2.5e-3, 1e30, -7.0] {
        let w = Tensor::full(&[4, 3], c);
        for bits in [8, 4, 2] {
            for g in [Granularity::PerTensor, Granularity::PerChannel] {
                let out = fake_quantize(&w, Format::Int(bits), g);
                assert!(out.data().iter().all(|&y| y == c), "int{bits} {g} of {c}");
                let (q, s, z) = quantize_int(&w, bits, g);
                let back = dequantize_int(&q, &s, &z, w.shape()).unwrap();
                assert!(back.data().iter().all(|&y| y == c));
                assert!(s.iter().all(|s| s.is_finite() && *s > 0.0));
            }
            assert_eq!(quant_step(&w, bits), 0.0);
        }
    }
    // One constant channel among others: that channel exact, the others quantized.
    let mut v = vec![0.25f32; 10];
    v.extend((0..10).map(|i| i as f32 * 0.1 - 0.3));
    let w = Tensor::from_vec(v, &[2, 10]);
    let out = fake_quantize(&w, Format::Int(4), Granularity::PerChannel);
    assert!(out.data()[..10].iter().all(|&y| y == 0.25));
    assert_half_step(
        &w.data()[10..],
        &out.data()[10..],
        10,
        &[0.9 / 15.0 * 1.000001],
    );
    // A single element and an empty tensor.
    let one = Tensor::from_vec(vec![3.5], &[1, 1]);
    assert_eq!(
        fake_quantize(&one, Format::INT8, Granularity::PerChannel).item(),
        3.5
    );
    let empty = Tensor::from_vec(vec![], &[0, 4]);
    assert_eq!(
        fake_quantize(&empty, Format::INT8, Granularity::PerChannel).numel(),
        0
    );
    assert_eq!(
        fake_quantize(&empty, Format::INT8, Granularity::PerTensor).numel(),
        0
    );
}

#[test]
fn nearly_constant_tensors_stay_finite_and_bounded() {
    // A range of one ulp around a large value: the zero point would overflow i32 with the plain
    // formula; the scale is raised and the bound still holds for it.
    let a = 1000.0f32;
    let b = f32::from_bits(a.to_bits() + 1);
    let w = Tensor::from_vec(vec![a, b, a, b, a], &[5]);
    for bits in [8, 7, 4] {
        let out = fake_quantize(&w, Format::Int(bits), Granularity::PerTensor);
        let (q, s, z) = quantize_int(&w, bits, Granularity::PerTensor);
        assert!(s[0] > 0.0 && s[0].is_finite());
        assert_half_step(w.data(), out.data(), 5, &s);
        assert!(dequantize_int(&q, &s, &z, &[5]).unwrap().bit_eq(&out));
    }
    // Tiny subnormal values.
    let w = Tensor::from_vec(vec![0.0, f32::from_bits(1), f32::from_bits(3)], &[3]);
    let out = fake_quantize(&w, Format::INT8, Granularity::PerTensor);
    let (_, s, _) = quantize_int(&w, 8, Granularity::PerTensor);
    assert_half_step(w.data(), out.data(), 3, &s);
}

#[test]
fn per_channel_differs_from_per_tensor_when_ranges_differ() {
    let mut v: Vec<f32> = (0..20).map(|i| (i as f32 - 10.0) * 0.001).collect();
    v.extend((0..20).map(|i| (i as f32 - 10.0) * 1.0));
    let w = Tensor::from_vec(v, &[2, 20]);
    let pt = fake_quantize(&w, Format::Int(4), Granularity::PerTensor);
    let pc = fake_quantize(&w, Format::Int(4), Granularity::PerChannel);
    assert!(!pt.bit_eq(&pc));
    // The small channel is crushed to (nearly) one level per tensor but resolved per channel.
    let err = |o: &Tensor| -> f32 {
        o.data()[..20]
            .iter()
            .zip(&w.data()[..20])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    assert!(err(&pc) < err(&pt) / 10.0, "{} vs {}", err(&pc), err(&pt));
    let (_, s, z) = quantize_int(&w, 4, Granularity::PerChannel);
    assert_eq!((s.len(), z.len()), (2, 2));
    // When all channels share one range, the two agree.
    let row: Vec<f32> = (0..20).map(|i| i as f32 * 0.05 - 0.4).collect();
    let w = Tensor::from_vec([row.clone(), row].concat(), &[2, 20]);
    assert!(
        fake_quantize(&w, Format::INT8, Granularity::PerTensor).bit_eq(&fake_quantize(
            &w,
            Format::INT8,
            Granularity::PerChannel
        ))
    );
}

#[test]
fn quant_step_is_the_per_tensor_scale() {
    let w = randn(&[32, 16], 0.2, 30);
    let (lo, hi) = w
        .data()
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    for bits in [8u8, 4] {
        let s = quant_step(&w, bits);
        let exact = (hi - lo) / ((1u32 << bits) - 1) as f32;
        assert!(
            (s - exact).abs() <= 2.0 * f32::EPSILON * exact,
            "{s} vs {exact}"
        );
        assert_eq!(
            s,
            quantize_int(&w, bits, Granularity::PerTensor).1[0],
            "same scale as the export"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Straight-through estimator
// ---------------------------------------------------------------------------------------------

#[test]
fn ste_gradient_is_the_identity_inside_the_range() {
    let w = randn(&[8, 4, 3, 3], 0.3, 40).requires_grad();
    let c = randn(&[8, 4, 3, 3], 1.0, 41);
    for format in [Format::Fp16, Format::INT8, Format::INT4, Format::Int(2)] {
        for g in [Granularity::PerTensor, Granularity::PerChannel] {
            let loss = fake_quantize(&w, format, g).mul(&c).sum();
            let grads = loss.backward();
            let gw = grads.get(&w).expect("gradient reaches the weight");
            assert!(gw.bit_eq(&c), "{format} {g}: STE gradient = c");
        }
    }
}

#[test]
fn ste_gradient_is_zero_outside_the_range() {
    // Parameters calibrated on [-1, 1]; applied to values partly outside.
    let calib = Tensor::from_vec((0..=20).map(|i| i as f32 * 0.1 - 1.0).collect(), &[21]);
    let p = QuantParams::from_tensor(&calib, 4, Granularity::PerTensor);
    let (s, z) = (p.channels[0].scale, p.channels[0].zero_point);
    let (qmin, qmax) = int_range(4);
    let top = s * (qmax - z) as f32; // the largest level
    let bottom = s * (qmin - z) as f32;
    assert!(top >= 1.0 - s / 2.0 && bottom <= -1.0 + s / 2.0);
    let inside_edge = top + 0.4 * s; // rounds to the top level
    let outside = top + 0.6 * s; // clamped further than half a step
    let w = Tensor::from_vec(
        vec![-3.0, bottom - 0.4 * s, 0.3, 1.0, inside_edge, outside, 5.0],
        &[7],
    )
    .requires_grad();
    let c = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], &[7]);
    let out = p.apply(&w);
    // Out-of-range values clamp to the extreme levels.
    for i in [4, 5, 6] {
        assert_eq!(out.data()[i], top, "element {i}");
    }
    assert_eq!(out.data()[0], bottom);
    assert_eq!(out.data()[1], bottom);
    let g = out.mul(&c).sum().backward();
    assert_eq!(
        g.get(&w).unwrap().to_vec(),
        vec![0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]
    );
    // Non-finite values: ±inf clamp, NaN stays NaN; no gradient through either.
    let w =
        Tensor::from_vec(vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN], &[3]).requires_grad();
    let out = p.apply(&w);
    assert_eq!(&out.data()[..2], &[top, bottom]);
    assert!(out.data()[2].is_nan());
    let g = out.mul(&Tensor::ones(&[3])).sum().backward();
    assert_eq!(g.get(&w).unwrap().to_vec(), vec![0.0, 0.0, 0.0]);
    // Per channel: each channel's own range.
    let calib = Tensor::from_vec(vec![-1.0, 1.0, -10.0, 10.0], &[2, 2]);
    let p = QuantParams::from_tensor(&calib, 8, Granularity::PerChannel);
    let w = Tensor::from_vec(vec![5.0, 0.5, 5.0, 0.5], &[2, 2]).requires_grad();
    let g = p.apply(&w).sum().backward();
    assert_eq!(g.get(&w).unwrap().to_vec(), vec![0.0, 1.0, 1.0, 1.0]);
}

// ---------------------------------------------------------------------------------------------
// Whole models
// ---------------------------------------------------------------------------------------------

fn cnn7() -> Model {
    let mut spec = ModelSpec::new(Arch::Cnn7, [1, 12, 12], 10);
    spec.width = 0.125;
    let mut m = Model::new(spec, &mut Rng::seed(50)).unwrap();
    // Non-trivial batch-norm parameters and statistics, so "untouched" means something.
    let mut rng = Rng::seed(51);
    for layer in &mut m.net.layers {
        if let Layer::BatchNorm(bn) = layer {
            let c = bn.channels();
            bn.weight = Tensor::rand_uniform(&[c], 0.5, 1.5, &mut rng).requires_grad();
            bn.bias = Tensor::randn(&[c], 0.0, 0.1, &mut rng).requires_grad();
            bn.running_mean = Tensor::randn(&[c], 0.0, 0.1, &mut rng);
            bn.running_var = Tensor::rand_uniform(&[c], 0.5, 2.0, &mut rng);
        }
    }
    m
}

#[test]
fn quantize_model_quantizes_weights_only() {
    let model = cnn7();
    for (format, g) in [
        (Format::INT8, Granularity::PerTensor),
        (Format::INT4, Granularity::PerChannel),
        (Format::Fp16, Granularity::PerTensor),
    ] {
        let q = quantize_model(&model, format, g);
        assert_eq!(q.net.layers.len(), model.net.layers.len());
        let mut weights = 0;
        for (a, b) in model.net.layers.iter().zip(&q.net.layers) {
            match (a, b) {
                (Layer::Linear(a), Layer::Linear(b)) => {
                    assert!(b.weight.bit_eq(&fake_quantize(&a.weight, format, g)));
                    assert!(!b.weight.bit_eq(&a.weight), "{format}: weight changed");
                    assert!(a.bias.as_ref().unwrap().bit_eq(b.bias.as_ref().unwrap()));
                    weights += 1;
                }
                (Layer::Conv2d(a), Layer::Conv2d(b)) => {
                    assert!(b.weight.bit_eq(&fake_quantize(&a.weight, format, g)));
                    assert!(!b.weight.bit_eq(&a.weight), "{format}: weight changed");
                    assert!(a.bias.as_ref().unwrap().bit_eq(b.bias.as_ref().unwrap()));
                    assert_eq!(a.params, b.params);
                    weights += 1;
                }
                (Layer::BatchNorm(a), Layer::BatchNorm(b)) => {
                    assert!(a.weight.bit_eq(&b.weight) && a.bias.bit_eq(&b.bias));
                    assert!(a.running_mean.bit_eq(&b.running_mean));
                    assert!(a.running_var.bit_eq(&b.running_var));
                    assert_eq!(a.eps, b.eps);
                }
                (Layer::ReLU, Layer::ReLU) | (Layer::Flatten, Layer::Flatten) => {}
                _ => panic!("layer kinds differ"),
            }
        }
        assert_eq!(weights, 7, "cnn7 has 5 conv and 2 linear layers");
        assert_eq!(q.spec, model.spec);
    }
    let same = quantize_model(&model, Format::Fp32, Granularity::PerTensor);
    for (a, b) in model.net.layers.iter().zip(&same.net.layers) {
        for ((_, x), (_, y)) in a.parameters().iter().zip(b.parameters()) {
            assert!(x.bit_eq(y));
        }
    }
}

#[test]
fn quantize_model_sends_gradients_to_the_original_weights() {
    let model = cnn7();
    let q = quantize_model(&model, Format::INT8, Granularity::PerChannel);
    let x = Tensor::rand_uniform(&[3, 1, 12, 12], 0.0, 1.0, &mut Rng::seed(60));
    let loss = q.forward(&x, cactus::nn::Mode::Eval).sum();
    let grads = loss.backward();
    for layer in &model.net.layers {
        match layer {
            Layer::Linear(l) => assert!(grads.get(&l.weight).is_some()),
            Layer::Conv2d(c) => assert!(grads.get(&c.weight).is_some()),
            _ => {}
        }
    }
    // Straight through: the gradient w.r.t. the original weight equals the gradient w.r.t. the
    // quantized weight, used as a leaf.
    let mut leafy = q.clone();
    let mut leaves = vec![];
    for layer in &mut leafy.net.layers {
        if let Layer::Linear(l) = layer {
            l.weight = l.weight.detach().requires_grad();
            leaves.push(l.weight.clone());
        }
    }
    let g2 = leafy.forward(&x, cactus::nn::Mode::Eval).sum().backward();
    let originals: Vec<&Tensor> = model
        .net
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Linear(l) => Some(&l.weight),
            _ => None,
        })
        .collect();
    for (orig, leaf) in originals.iter().zip(&leaves) {
        assert!(grads.get(orig).unwrap().bit_eq(g2.get(leaf).unwrap()));
    }
}

#[test]
fn dequantize_int_rejects_bad_input() {
    assert!(dequantize_int(&[1, 2, 3], &[1.0], &[0], &[4]).is_err());
    assert!(dequantize_int(&[1, 2, 3, 4], &[1.0, 1.0, 1.0], &[0, 0, 0], &[2, 2]).is_err());
    assert!(dequantize_int(&[1, 2, 3, 4], &[1.0, 1.0], &[0], &[2, 2]).is_err());
    assert!(dequantize_int(&[1, 2, 3, 4], &[0.0], &[0], &[2, 2]).is_err());
    assert!(dequantize_int(&[1, 2, 3, 4], &[1.0, 2.0], &[0, 1], &[2, 2]).is_ok());
}

#[test]
#[should_panic(expected = "NaN or infinite")]
fn int_quantization_of_nan_weights_panics() {
    let w = Tensor::from_vec(vec![1.0, f32::NAN, 0.0], &[3]);
    fake_quantize(&w, Format::INT8, Granularity::PerTensor);
}

/// Timing of the 13 M-weight case (cnn7's size); run with `--ignored --nocapture`.
#[test]
#[ignore]
fn timing_13m() {
    let w = randn(&[512, 25_600], 0.05, 70).requires_grad();
    for (format, g) in [
        (Format::INT8, Granularity::PerTensor),
        (Format::INT8, Granularity::PerChannel),
        (Format::Fp16, Granularity::PerTensor),
    ] {
        let t = std::time::Instant::now();
        let out = fake_quantize(&w, format, g);
        let fwd = t.elapsed();
        let t = std::time::Instant::now();
        let grads = out.sum().backward();
        let bwd = t.elapsed();
        assert!(grads.get(&w).is_some());
        println!("{format} {g}: forward {fwd:?}, backward (with sum) {bwd:?}");
    }
    let t = std::time::Instant::now();
    let p = QuantParams::from_tensor(&w, 8, Granularity::PerTensor);
    println!("int8 per-tensor parameters (min/max) {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let _ = p.apply(&w.detach());
    println!("int8 per-tensor apply {:?}", t.elapsed());
}
