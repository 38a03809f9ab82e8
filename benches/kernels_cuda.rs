//! Kernel throughput on the CUDA backend (criterion group `kernels_cuda`). Skips, saying so,
//! where no GPU is present. Every iteration waits for the stream, so times are the kernels'
//! own. Names follow the CPU benches (`benches/kernels.rs`) and the PyTorch comparison.

use cactus::backend::cuda::prune::{prune_masks, DeviceWeight};
use cactus::backend::cuda::quant::{fake_quantize_int, quant_params};
use cactus::backend::cuda::{device_or_skip, CudaBackend, DeviceBuffer};
use cactus::compress::quant::Granularity;
use cactus::nn::{Arch, Layer, Model, ModelSpec};
use cactus::rng::Rng;
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

fn kernels_cuda(c: &mut Criterion) {
    let Some(gpu) = device_or_skip("benches/kernels_cuda") else {
        return;
    };
    eprintln!("kernels_cuda on {} ({})", gpu.name, gpu.arch);
    compression(c, gpu);
}

criterion_group!(benches, kernels_cuda);
criterion_main!(benches);
