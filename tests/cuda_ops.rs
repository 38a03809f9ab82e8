//! Every op's GPU version (each family's `src/ops/<family>/cuda.rs`) against the CPU engine, through the public `Tensor`
//! API: the same op on the same values, once with CPU tensors and once with GPU tensors, must
//! give the same output and, through autodiff, the same gradient of a random weighted sum of
//! it with respect to every input. On the GPU the op must run there: its result lives on the
//! device and no tensor was copied to the host while it or its backward ran. Skips, saying why,
//! where no GPU is present.

use cactus::attack::per_sample_cross_entropy;
use cactus::compress::quant::{fake_quantize, Format, Granularity};
use cactus::ops::{cross_entropy, Conv2dParams};
use cactus::rng::Rng;
use cactus::runtime::cuda::device_or_skip;
use cactus::tensor::transfers;
use cactus::{Device, Tensor};

mod common;
use common::assert_close;

type Op<'a> = &'a dyn Fn(&[Tensor]) -> Tensor;

/// The output and each input's gradient of Σ w·op(inputs), on `device`.
fn run(op: Op<'_>, inputs: &[Tensor], weights: &Tensor, device: Device) -> (Tensor, Vec<Tensor>) {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_device(device).unwrap().requires_grad())
        .collect();
    let w = weights.to_device(device).unwrap();
    let downloads = transfers::thread_counts().1;
    let y = op(&leaves);
    if device == Device::Cuda {
        assert_eq!(
            transfers::thread_counts().1,
            downloads,
            "the op copied a tensor to the host"
        );
        assert!(y.is_cuda(), "the op's result is not on the GPU");
    }
    let downloads = transfers::thread_counts().1;
    let grads = y.mul(&w).sum().backward();
    if device == Device::Cuda {
        assert_eq!(
            transfers::thread_counts().1,
            downloads,
            "the op's backward copied a tensor to the host"
        );
    }
    let g = leaves
        .iter()
        .map(|l| {
            grads
                .get(l)
                .cloned()
                .unwrap_or_else(|| Tensor::zeros(l.shape()))
        })
        .collect();
    (y, g)
}

/// Same shape and max |a − b| ≤ rel · max(1, max |b|).
fn close(what: &str, a: &Tensor, b: &Tensor, rel: f32) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    assert_close(what, a.data(), b.data(), rel);
}

fn check(name: &str, op: Op<'_>, inputs: Vec<Tensor>, rel: f32, rng: &mut Rng) {
    let inputs = &inputs[..];
    let shape = op(inputs).shape().to_vec();
    let weights = Tensor::randn(&shape, 0.0, 1.0, rng);
    let (y_cpu, g_cpu) = run(op, inputs, &weights, Device::Cpu);
    let (y_gpu, g_gpu) = run(op, inputs, &weights, Device::Cuda);
    close(&format!("{name}: output"), &y_gpu, &y_cpu, rel);
    for (i, (g, c)) in g_gpu.iter().zip(&g_cpu).enumerate() {
        close(&format!("{name}: gradient of input {i}"), g, c, rel);
    }
    eprintln!("{name}: ok");
}

/// A box [2, n, ...]: centres anywhere, radii ≥ 0.
fn boxes(half: &[usize], rng: &mut Rng) -> Tensor {
    let c = Tensor::randn(half, 0.0, 1.0, rng);
    let r = Tensor::rand_uniform(half, 0.0, 0.5, rng);
    Tensor::interval_stack(&c, &r)
}

#[test]
fn every_gpu_op_matches_the_cpu() {
    let Some(_gpu) = device_or_skip("every_gpu_op_matches_the_cpu") else {
        return;
    };
    let mut rng = Rng::seed(31);
    let rng = &mut rng;
    let a = Tensor::randn(&[5, 7, 3], 0.0, 1.0, rng);
    let b = Tensor::randn(&[5, 7, 3], 0.0, 1.0, rng);
    let positive = Tensor::rand_uniform(&[5, 7, 3], 0.1, 2.0, rng);
    check(
        "add",
        &|t| t[0].add(&t[1]),
        vec![a.clone(), b.clone()],
        1e-6,
        rng,
    );
    check(
        "sub",
        &|t| t[0].sub(&t[1]),
        vec![a.clone(), b.clone()],
        1e-6,
        rng,
    );
    check(
        "mul",
        &|t| t[0].mul(&t[1]),
        vec![a.clone(), b.clone()],
        1e-6,
        rng,
    );
    check("neg", &|t| t[0].neg(), vec![a.clone()], 1e-6, rng);
    check("abs", &|t| t[0].abs(), vec![a.clone()], 1e-6, rng);
    check("sign", &|t| t[0].sign(), vec![a.clone()], 1e-6, rng);
    check("relu", &|t| t[0].relu(), vec![a.clone()], 1e-6, rng);
    check(
        "mul_scalar",
        &|t| t[0].mul_scalar(-2.5),
        vec![a.clone()],
        1e-6,
        rng,
    );
    check(
        "add_scalar",
        &|t| t[0].add_scalar(0.75),
        vec![a.clone()],
        1e-6,
        rng,
    );
    check("powf", &|t| t[0].powf(-0.5), vec![positive], 1e-5, rng);
    check("sum", &|t| t[0].sum(), vec![a.clone()], 1e-5, rng);

    // Batch-norm pieces on [N, C, H, W] and [N, C].
    for shape in [vec![6, 4, 5, 3], vec![9, 5]] {
        let x = Tensor::randn(&shape, 0.3, 1.5, rng);
        let c = shape[1];
        let scale = Tensor::randn(&[c], 1.0, 0.5, rng);
        let shift = Tensor::randn(&[c], 0.0, 0.5, rng);
        check(
            "channel_mean",
            &|t| t[0].channel_mean(),
            vec![x.clone()],
            1e-5,
            rng,
        );
        check(
            "channel_var",
            &|t| t[0].channel_var(&t[0].channel_mean()),
            vec![x.clone()],
            1e-4,
            rng,
        );
        check(
            "channel_affine",
            &|t| t[0].channel_affine(&t[1], &t[2]),
            vec![x.clone(), scale.clone(), shift.clone()],
            1e-5,
            rng,
        );
        let mut half = shape.clone();
        half[0] = 3;
        check(
            "interval_channel_affine",
            &|t| t[0].interval_channel_affine(&t[1], &t[2]),
            vec![boxes(&half, rng), scale, shift],
            1e-5,
            rng,
        );
    }

    // Convolutions: odd sizes, stride 2, padding, batch 1, with and without bias.
    for (n, c, h, w, o, k, stride, pad) in [(2, 3, 9, 7, 5, 3, 2, 1), (1, 4, 6, 6, 3, 1, 1, 0)] {
        let x = Tensor::randn(&[n, c, h, w], 0.0, 1.0, rng);
        let wt = Tensor::randn(&[o, c, k, k], 0.0, 0.3, rng);
        let bias = Tensor::randn(&[o], 0.0, 0.3, rng);
        let p = Conv2dParams::new(stride, pad);
        check(
            "conv2d",
            &|t| t[0].conv2d(&t[1], Some(&t[2]), p),
            vec![x.clone(), wt.clone(), bias.clone()],
            1e-4,
            rng,
        );
        check(
            "conv2d without bias",
            &|t| t[0].conv2d(&t[1], None, p),
            vec![x, wt.clone()],
            1e-4,
            rng,
        );
        check(
            "interval_conv2d",
            &|t| t[0].interval_conv2d(&t[1], Some(&t[2]), p),
            vec![boxes(&[n, c, h, w], rng), wt.clone(), bias],
            1e-4,
            rng,
        );
        // The adjoint that linear bounds go back through (odd sizes: input rows no output of
        // the strided convolution reads).
        let (oh, ow) = p.output_hw(h, w, k, k);
        check(
            "conv2d_transpose",
            &|t| t[0].conv2d_transpose(&t[1], p, (h, w)),
            vec![Tensor::randn(&[n, o, oh, ow], 0.0, 1.0, rng), wt],
            1e-4,
            rng,
        );
    }

    // Linear layers: a short and a long K (the long one is split along K on the GPU).
    for (n, i, o) in [(3, 7, 5), (4, 3000, 6)] {
        let x = Tensor::randn(&[n, i], 0.0, 1.0, rng);
        let w = Tensor::randn(&[o, i], 0.0, 0.1, rng);
        let bias = Tensor::randn(&[o], 0.0, 0.1, rng);
        check(
            "linear",
            &|t| t[0].linear(&t[1], Some(&t[2])),
            vec![x, w.clone(), bias.clone()],
            1e-4,
            rng,
        );
        check(
            "interval_linear",
            &|t| t[0].interval_linear(&t[1], Some(&t[2])),
            vec![boxes(&[n, i], rng), w, bias],
            1e-4,
            rng,
        );
    }
    check(
        "interval_relu",
        &|t| t[0].interval_relu(),
        vec![boxes(&[4, 6, 3], rng)],
        1e-6,
        rng,
    );

    // Losses.
    let logits = Tensor::randn(&[8, 10], 0.0, 3.0, rng);
    let labels: Vec<usize> = (0..8).map(|_| rng.below(10)).collect();
    check(
        "cross_entropy",
        &|t| cross_entropy(&t[0], &labels),
        vec![logits.clone()],
        1e-5,
        rng,
    );
    check(
        "per_sample_cross_entropy",
        &|t| per_sample_cross_entropy(&t[0], &labels),
        vec![logits],
        1e-5,
        rng,
    );

    // Row gathers and concatenation along the first axis.
    let rows = Tensor::randn(&[6, 4, 2], 0.0, 1.0, rng);
    check(
        "index_rows",
        &|t| t[0].index_rows(&[4, 0, 5]),
        vec![rows.clone()],
        1e-6,
        rng,
    );
    check(
        "concat",
        &|t| Tensor::concat(&[&t[0], &t[1]], 0),
        vec![rows.clone(), rows.index_rows(&[1, 2])],
        1e-6,
        rng,
    );

    // Fake quantization (straight-through gradients).
    let weights = Tensor::randn(&[6, 5, 3, 3], 0.0, 0.2, rng);
    for (format, granularity) in [
        (Format::Int(8), Granularity::PerTensor),
        (Format::Int(4), Granularity::PerChannel),
        (Format::Fp16, Granularity::PerTensor),
    ] {
        check(
            &format!("fake_quantize {format} {granularity}"),
            &|t| fake_quantize(&t[0], format, granularity),
            vec![weights.clone()],
            1e-6,
            rng,
        );
    }
}

/// Values rounded to halves: ties for the maximum, minimum and clamp.
fn halves(shape: &[usize], rng: &mut Rng) -> Tensor {
    let t = Tensor::randn(shape, 0.0, 1.0, rng);
    Tensor::from_vec(
        t.data().iter().map(|v| (v * 2.0).round() / 2.0).collect(),
        shape,
    )
}

#[test]
fn shape_general_ops_match_the_cpu() {
    let Some(_gpu) = device_or_skip("shape_general_ops_match_the_cpu") else {
        return;
    };
    let mut rng = Rng::seed(37);
    let rng = &mut rng;

    // Broadcasting binary ops: one side, both sides, a scalar, leading axes, and same shapes.
    let pairs: [(&[usize], &[usize]); 6] = [
        (&[5, 7, 3], &[7, 1]),
        (&[4, 1, 6], &[1, 5, 1]),
        (&[3, 4], &[]),
        (&[1], &[6, 2]),
        (&[2, 3, 1, 4, 1, 2], &[3, 4, 5, 2]),
        (&[4, 6], &[4, 6]),
    ];
    for (sa, sb) in pairs {
        let a = halves(sa, rng);
        let b = halves(sb, rng);
        let away = Tensor::rand_uniform(sb, 0.5, 2.0, rng);
        type Binary = fn(&Tensor, &Tensor) -> Tensor;
        let ops: [(&str, Binary); 5] = [
            ("add", Tensor::add),
            ("sub", Tensor::sub),
            ("mul", Tensor::mul),
            ("minimum", Tensor::minimum),
            ("maximum", Tensor::maximum),
        ];
        for (name, f) in ops {
            let name = format!("{name} {sa:?} {sb:?}");
            check(
                &name,
                &|t| f(&t[0], &t[1]),
                vec![a.clone(), b.clone()],
                1e-5,
                rng,
            );
        }
        let name = format!("div {sa:?} {sb:?}");
        check(
            &name,
            &|t| t[0].div(&t[1]),
            vec![a.clone(), away],
            1e-5,
            rng,
        );
    }

    // Matrix products, square-ish and thin.
    for (m, k, n) in [(5, 7, 3), (1, 33, 17), (40, 2, 9)] {
        let a = Tensor::randn(&[m, k], 0.0, 1.0, rng);
        let b = Tensor::randn(&[k, n], 0.0, 1.0, rng);
        check(
            &format!("matmul {m}x{k}x{n}"),
            &|t| t[0].matmul(&t[1]),
            vec![a, b],
            1e-5,
            rng,
        );
    }

    // Unary maps.
    let x = halves(&[6, 5, 4], rng);
    let positive = Tensor::rand_uniform(&[6, 5, 4], 0.1, 3.0, rng);
    check("exp", &|t| t[0].exp(), vec![x.clone()], 1e-5, rng);
    check("log", &|t| t[0].log(), vec![positive.clone()], 1e-5, rng);
    check("sqrt", &|t| t[0].sqrt(), vec![positive], 1e-5, rng);
    check(
        "clamp",
        &|t| t[0].clamp(-0.5, 1.0),
        vec![x.clone()],
        1e-6,
        rng,
    );

    // Reductions over axes (ties for the maximum), with and without the reduced axes kept.
    let axes: [&[isize]; 6] = [&[0], &[1], &[-1], &[0, 2], &[0, 1, 2], &[1, 2]];
    for ax in axes {
        for keep in [false, true] {
            let what = format!("{ax:?} keepdim {keep}");
            check(
                &format!("sum_axes {what}"),
                &|t| t[0].sum_axes(ax, keep),
                vec![x.clone()],
                1e-5,
                rng,
            );
            check(
                &format!("mean_axes {what}"),
                &|t| t[0].mean_axes(ax, keep),
                vec![x.clone()],
                1e-5,
                rng,
            );
            check(
                &format!("max_axes {what}"),
                &|t| t[0].max_axes(ax, keep),
                vec![x.clone()],
                1e-6,
                rng,
            );
        }
    }
    let wide = Tensor::randn(&[3, 1, 700], 0.0, 1.0, rng);
    check(
        "sum_axes long",
        &|t| t[0].sum_axes(&[0, 2], false),
        vec![wide.clone()],
        1e-5,
        rng,
    );
    check(
        "max_axes long",
        &|t| t[0].max_axes(&[2], true),
        vec![wide],
        1e-6,
        rng,
    );

    // argmax (first maximum on ties), along each axis: equal indices, on the GPU.
    for axis in 0..3 {
        for keep in [false, true] {
            let cpu = x.argmax(axis, keep);
            let gpu = x.to_device(Device::Cuda).unwrap().argmax(axis, keep);
            assert!(gpu.is_cuda(), "argmax: the result is not on the GPU");
            assert_eq!(gpu.shape(), cpu.shape(), "argmax {axis}: shapes");
            assert_eq!(gpu.to_vec(), cpu.to_vec(), "argmax along {axis}");
        }
    }

    // log-softmax, with fewer and more classes than a warp's lanes.
    for shape in [[7, 10], [3, 45]] {
        let z = Tensor::randn(&shape, 0.0, 3.0, rng);
        check(
            &format!("log_softmax {shape:?}"),
            &|t| cactus::ops::log_softmax(&t[0]),
            vec![z],
            1e-5,
            rng,
        );
    }

    // Concatenation along inner axes; gathers with repeats and more rows than are copied one
    // by one.
    let p = Tensor::randn(&[3, 2, 5], 0.0, 1.0, rng);
    let q = Tensor::randn(&[3, 4, 5], 0.0, 1.0, rng);
    let r = Tensor::randn(&[3, 2, 1], 0.0, 1.0, rng);
    check(
        "concat axis 1",
        &|t| Tensor::concat(&[&t[0], &t[1], &t[0]], 1),
        vec![p.clone(), q],
        1e-6,
        rng,
    );
    check(
        "concat axis 2",
        &|t| Tensor::concat(&[&t[0], &t[1]], -1),
        vec![p, r],
        1e-6,
        rng,
    );
    let rows = Tensor::randn(&[30, 3], 0.0, 1.0, rng);
    let repeats = [4, 0, 4, 29, 1, 4];
    check(
        "index_rows with repeats",
        &|t| t[0].index_rows(&repeats),
        vec![rows.clone()],
        1e-6,
        rng,
    );
    let many: Vec<usize> = (0..25).map(|i| (i * 7) % 30).collect();
    check(
        "index_rows of 25 rows",
        &|t| t[0].index_rows(&many),
        vec![rows],
        1e-6,
        rng,
    );
}
