//! Every op's GPU version (`src/ops/cuda/`) against the CPU engine, through the public `Tensor`
//! API: the same op on the same values, once with CPU tensors and once with GPU tensors, must
//! give the same output and, through autodiff, the same gradient of a random weighted sum of
//! it with respect to every input. On the GPU the op must run there: its result lives on the
//! device and no tensor was copied to the host while it ran. Skips, saying why, where no GPU is
//! present.

use cactus::attack::per_sample_cross_entropy;
use cactus::backend::cuda::device_or_skip;
use cactus::compress::quant::{fake_quantize, Format, Granularity};
use cactus::ops::{cross_entropy, Conv2dParams};
use cactus::rng::Rng;
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
    let downloads = transfers::counts().1;
    let y = op(&leaves);
    if device == Device::Cuda {
        assert_eq!(
            transfers::counts().1,
            downloads,
            "the op copied a tensor to the host"
        );
        assert!(y.is_cuda(), "the op's result is not on the GPU");
    }
    let grads = y.mul(&w).sum().backward();
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
            vec![boxes(&[n, c, h, w], rng), wt, bias],
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
