//! Kernel throughput on the CPU backend: GEMM, convolution forward/backward, interval
//! convolution, and the compression kernels (pruning masks, fake quantization).
//! Names match the PyTorch comparison (`scripts/compare/compare_pytorch.sh`).

use cactus::autodiff::with_no_grad;
use cactus::ops::conv::cpu::{
    abs_weight, conv2d_backward, conv2d_backward_grouped, conv2d_forward, conv2d_forward_grouped,
    interval_conv2d_backward, interval_conv2d_backward_grouped, interval_conv2d_forward,
    interval_conv2d_forward_grouped, ConvGeometry,
};
use cactus::ops::Conv2dParams;
use cactus::rng::Rng;
use cactus::Tensor;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn matmul(c: &mut Criterion) {
    let mut rng = Rng::seed(0);
    let a = Tensor::randn(&[1024, 1024], 0.0, 1.0, &mut rng);
    let b = Tensor::randn(&[1024, 1024], 0.0, 1.0, &mut rng);
    let mut g = c.benchmark_group("kernels");
    g.throughput(Throughput::Elements(2 * 1024 * 1024 * 1024));
    g.bench_function("matmul_1024", |bench| {
        bench.iter(|| black_box(a.matmul(&b)))
    });
    g.finish();
}

fn conv(c: &mut Criterion) {
    let geo = ConvGeometry {
        n: 32,
        c_in: 64,
        h: 28,
        w: 28,
        c_out: 64,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        padding: (1, 1),
    };
    let mut rng = Rng::seed(0);
    let x = Tensor::rand_uniform(&[geo.input_len()], 0.0, 1.0, &mut rng);
    let w = Tensor::randn(&[geo.weight_len()], 0.0, 0.05, &mut rng);
    let b = Tensor::randn(&[geo.c_out], 0.0, 0.05, &mut rng);
    let gout = Tensor::randn(&[geo.output_len()], 0.0, 1.0, &mut rng);
    let flops = 2 * geo.output_len() * geo.c_in * geo.kh * geo.kw;
    let mut g = c.benchmark_group("kernels");
    g.sample_size(20);
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function("conv_fwd_32x64x28x28", |bench| {
        bench.iter(|| black_box(conv2d_forward(x.data(), w.data(), Some(b.data()), &geo)))
    });
    // Both gradients (input and weight): twice the forward's flops.
    g.throughput(Throughput::Elements(2 * flops as u64));
    g.bench_function("conv_bwd_32x64x28x28", |bench| {
        bench.iter(|| {
            black_box(conv2d_backward(
                x.data(),
                w.data(),
                gout.data(),
                &geo,
                true,
                true,
                false,
            ))
        })
    });
    g.finish();
}

/// Interval convolution forward (centre with W plus bias, radius with |W|) on the same
/// geometry as `conv_fwd_32x64x28x28`: a stacked input [2, 32, 64, 28, 28], two convolutions'
/// flops. Runs under no_grad, as bound propagation at evaluation does.
fn interval_conv(c: &mut Criterion) {
    let (n, ci, co, hw, k) = (32, 64, 64, 28, 3);
    let mut rng = Rng::seed(0);
    let x = Tensor::rand_uniform(&[2, n, ci, hw, hw], 0.0, 1.0, &mut rng);
    let w = Tensor::randn(&[co, ci, k, k], 0.0, 0.05, &mut rng);
    let b = Tensor::randn(&[co], 0.0, 0.05, &mut rng);
    let params = Conv2dParams::new(1, 1);
    let flops = 2 * (2 * n * co * hw * hw * ci * k * k);
    let mut g = c.benchmark_group("kernels");
    g.sample_size(20);
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function("iconv_fwd_32x64x28x28", |bench| {
        bench.iter(|| black_box(with_no_grad(|| x.interval_conv2d(&w, Some(&b), params))))
    });
    g.finish();
}

/// A pass of [`conv_small`]: its name and its run, by the group-size rule (`true`) or with
/// one GEMM per sample.
type Pass<'a> = (&'a str, &'a dyn Fn(bool) -> Vec<f32>);

/// The `small` network's convolutions on MNIST at batch 32 and 128: `c1` is 1→16 channels,
/// k4 s2 p1 on 28×28 (per-sample GEMM 16×16×196), `c2` 16→32, k4 s1 p1 on 14×14 (32×256×169).
/// Per-sample GEMMs this small spend much of their time packing, so these check the batching
/// of several samples into one GEMM. Plain and interval (centre and radius) passes, forward
/// with bias; the backward asks for the gradients training needs (the first layer's input
/// needs none). Each pass runs twice, as the public op does it (the group-size rule) and
/// with one GEMM per sample (`_g1`, the `*_grouped` entry points with G = 1), side by side
/// so that the ratio comes from one run.
fn conv_small(c: &mut Criterion) {
    let mut rng = Rng::seed(0);
    let mut g = c.benchmark_group("kernels");
    g.sample_size(20);
    for n in [32, 128] {
        for (name, c_in, hw, c_out, stride, need_input) in
            [("c1", 1, 28, 16, 2, false), ("c2", 16, 14, 32, 1, true)]
        {
            let geo = ConvGeometry {
                n,
                c_in,
                h: hw,
                w: hw,
                c_out,
                kh: 4,
                kw: 4,
                stride: (stride, stride),
                padding: (1, 1),
            };
            let x = Tensor::rand_uniform(&[2 * geo.input_len()], 0.0, 1.0, &mut rng);
            let w = Tensor::randn(&[geo.weight_len()], 0.0, 0.05, &mut rng);
            let b = Tensor::randn(&[geo.c_out], 0.0, 0.05, &mut rng);
            let gout = Tensor::randn(&[2 * geo.output_len()], 0.0, 1.0, &mut rng);
            let (x, w, b, gout) = (x.data(), w.data(), b.data(), gout.data());
            let (x1, gout1) = (&x[..geo.input_len()], &gout[..geo.output_len()]);
            let aw = abs_weight(w);
            let need = [need_input, true, true];
            // Each pass by the rule, then with G = 1 right after it.
            let passes: [Pass<'_>; 4] = [
                ("conv_small_fwd", &|rule| {
                    if rule {
                        conv2d_forward(x1, w, Some(b), &geo)
                    } else {
                        conv2d_forward_grouped(x1, w, Some(b), &geo, 1)
                    }
                }),
                ("conv_small_bwd", &|rule| {
                    let grads = if rule {
                        conv2d_backward(x1, w, gout1, &geo, need_input, true, true)
                    } else {
                        conv2d_backward_grouped(x1, w, gout1, &geo, need, 1)
                    };
                    grads.weight.unwrap_or_default()
                }),
                ("iconv_small_fwd", &|rule| {
                    if rule {
                        interval_conv2d_forward(x, w, &aw, Some(b), &geo)
                    } else {
                        interval_conv2d_forward_grouped(x, w, &aw, Some(b), &geo, 1)
                    }
                }),
                ("iconv_small_bwd", &|rule| {
                    let grads = if rule {
                        interval_conv2d_backward(x, w, &aw, gout, &geo, need_input, true, true)
                    } else {
                        interval_conv2d_backward_grouped(x, w, &aw, gout, &geo, need, 1)
                    };
                    grads.weight.unwrap_or_default()
                }),
            ];
            for (pass, run) in passes {
                for (suffix, rule) in [("", true), ("_g1", false)] {
                    g.bench_function(format!("{pass}_{name}_b{n}{suffix}"), |bench| {
                        bench.iter(|| black_box(run(rule)))
                    });
                }
            }
        }
    }
    g.finish();
}

/// The compression kernels on full-width cnn7's conv and linear weights for MNIST inputs
/// (13.3 M weights): the GUL1 mask at δ = 0.5 (one global selection, no sort), and int8 fake
/// quantization of every weight tensor (min/max per tensor, then rounding).
fn compression(c: &mut Criterion) {
    use cactus::compress::prune::prune_masks;
    use cactus::compress::quant::{quantize_model, Format, Granularity};
    use cactus::nn::{Arch, Model, ModelSpec};
    let model = Model::new(
        ModelSpec::new(Arch::Cnn7, [1, 28, 28], 10),
        &mut Rng::seed(0),
    )
    .unwrap()
    .detached();
    let weights: usize = model
        .net
        .named_parameters()
        .iter()
        .filter(|(n, t)| n.ends_with("weight") && t.rank() > 1)
        .map(|(_, t)| t.numel())
        .sum();
    assert!(weights > 13_000_000, "{weights} weights");
    let gul1 = "gul1".parse().unwrap();
    let mut g = c.benchmark_group("kernels");
    g.sample_size(10);
    g.throughput(Throughput::Elements(weights as u64));
    g.bench_function("prune_mask_gul1_13M", |bench| {
        bench.iter(|| black_box(prune_masks(&model, gul1, 0.5).unwrap()))
    });
    g.bench_function("fake_quant_int8_13M", |bench| {
        bench.iter(|| black_box(quantize_model(&model, Format::INT8, Granularity::PerTensor)))
    });
    g.finish();
}

fn configured() -> Criterion {
    cactus::runtime::cpu::allocator::keep_freed_memory();
    Criterion::default()
}

criterion_group! {
    name = benches;
    config = configured();
    targets = matmul, conv, interval_conv, conv_small, compression
}
criterion_main!(benches);
