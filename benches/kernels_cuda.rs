//! Kernel throughput on the CUDA backend (criterion group `kernels_cuda`). Skips, saying so,
//! where no GPU is present. Every iteration waits for the stream, so times are the kernels'
//! own. Names follow the CPU benches (`benches/kernels.rs`) and the PyTorch comparison.

use cactus::compress::prune::launch::{prune_masks, DeviceWeight};
use cactus::compress::quant::launch::{fake_quantize_int, quant_params};
use cactus::compress::quant::Granularity;
use cactus::nn::{Arch, Layer, Model, ModelSpec};
use cactus::ops::conv::launch::{conv2d_forward, interval_conv2d_forward, ConvShape};
use cactus::ops::matmul::launch::matmul;
use cactus::ops::Conv2dParams;
use cactus::rng::Rng;
use cactus::runtime::cuda::{device_or_skip, CudaBackend, DeviceBuffer};
use cactus::Tensor;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

/// Full-width cnn7's conv and linear weights for MNIST inputs (13.3 M), on the device.
fn cnn7_weights() -> (Vec<DeviceBuffer>, Vec<Vec<usize>>, Option<usize>) {
    let model = Model::new(
        ModelSpec::new(Arch::Cnn7, [1, 28, 28], 10),
        &mut Rng::seed(0),
    )
    .expect("cnn7 builds");
    let layers = &model.net.layers;
    let last_linear = layers.iter().rposition(|l| matches!(l, Layer::Linear(_)));
    let mut classifier = None;
    let (mut bufs, mut shapes) = (Vec::new(), Vec::new());
    for (i, l) in layers.iter().enumerate() {
        if let Some(w) = l.weight() {
            if Some(i) == last_linear {
                classifier = Some(bufs.len());
            }
            bufs.push(DeviceBuffer::from_host(w.data()).expect("upload"));
            shapes.push(w.shape().to_vec());
        }
    }
    (bufs, shapes, classifier)
}

fn compression(c: &mut Criterion, gpu: &CudaBackend) {
    let (bufs, shapes, classifier) = cnn7_weights();
    let weights: Vec<DeviceWeight<'_>> = bufs
        .iter()
        .zip(&shapes)
        .enumerate()
        .map(|(i, (values, shape))| DeviceWeight {
            values,
            shape,
            classifier: Some(i) == classifier,
        })
        .collect();
    let n: usize = bufs.iter().map(DeviceBuffer::len).sum();
    let gul1 = "gul1".parse().expect("a method");
    let mut g = c.benchmark_group("kernels_cuda");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("prune_mask_gul1_13M", |b| {
        b.iter(|| {
            let masks = prune_masks(&weights, gul1, 0.5).expect("masks");
            gpu.synchronize().expect("sync");
            black_box(masks)
        })
    });
    g.bench_function("fake_quant_int8_13M", |b| {
        b.iter(|| {
            let out: Vec<DeviceBuffer> = bufs
                .iter()
                .zip(&shapes)
                .map(|(w, s)| {
                    let p = quant_params(w, s, 8, Granularity::PerTensor).expect("params");
                    fake_quantize_int(w, &p).expect("quantize")
                })
                .collect();
            gpu.synchronize().expect("sync");
            black_box(out)
        })
    });
    g.finish();
}

fn upload(shape: &[usize], rng: &mut Rng) -> DeviceBuffer {
    DeviceBuffer::from_host(Tensor::randn(shape, 0.0, 0.5, rng).data()).expect("upload")
}

/// `matmul_4096` (2·4096³ flops) and the convolutions at 128×128 channels on 16×16 maps, batch
/// 128, 3×3, padding 1: `conv_fwd_128x128x16x16` (one convolution) and
/// `iconv_fwd_128x128x16x16` (the interval convolution: centre with W and radius with |W| in
/// one kernel, two convolutions' flops). Throughput in flops.
fn dense(c: &mut Criterion, gpu: &CudaBackend) {
    let mut rng = Rng::seed(0);
    let mut g = c.benchmark_group("kernels_cuda");
    let n = 4096;
    let (a, b) = (upload(&[n, n], &mut rng), upload(&[n, n], &mut rng));
    g.throughput(Throughput::Elements((2 * n * n * n) as u64));
    g.bench_function("matmul_4096", |bench| {
        bench.iter(|| {
            let y = matmul(&a, &b, n, n, n, false, false).expect("matmul");
            gpu.synchronize().expect("sync");
            black_box(y)
        })
    });
    let (batch, ch, hw) = (128, 128, 16);
    let shape = ConvShape::new([batch, ch, hw, hw], [ch, ch, 3, 3], Conv2dParams::new(1, 1))
        .expect("geometry");
    let x = upload(&[batch, ch, hw, hw], &mut rng);
    let r = upload(&[batch, ch, hw, hw], &mut rng);
    let w = upload(&[ch, ch, 3, 3], &mut rng);
    let bias = upload(&[ch], &mut rng);
    let flops = 2 * batch * ch * hw * hw * ch * 9;
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function("conv_fwd_128x128x16x16", |bench| {
        bench.iter(|| {
            let y = conv2d_forward(&x, &w, Some(&bias), &shape).expect("conv");
            gpu.synchronize().expect("sync");
            black_box(y)
        })
    });
    g.throughput(Throughput::Elements(2 * flops as u64));
    g.bench_function("iconv_fwd_128x128x16x16", |bench| {
        bench.iter(|| {
            let y = interval_conv2d_forward(&x, &r, &w, Some(&bias), &shape).expect("iconv");
            gpu.synchronize().expect("sync");
            black_box(y)
        })
    });
    g.finish();
}

fn kernels_cuda(c: &mut Criterion) {
    let Some(gpu) = device_or_skip("benches/kernels_cuda") else {
        return;
    };
    eprintln!("kernels_cuda on {} ({})", gpu.name, gpu.arch);
    dense(c, gpu);
    compression(c, gpu);
}

criterion_group!(benches, kernels_cuda);
criterion_main!(benches);
