//! Whole training steps on random data: standard (forward, cross-entropy, backward, Adam) and
//! certified (IBP, SABR, CACTUS: the trainer's per-batch work past the ramp). Names match the PyTorch
//! comparison (`scripts/compare/compare_pytorch.sh`).

use cactus::data::DatasetKind;
use cactus::nn::{Arch, Init, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::train::cactus::SetCache;
use cactus::train::split::{batch_split_step, cactus_batch_split_step};
use cactus::train::{standard_step, Adam, AdamConfig, Method, Phase, Progress, TrainConfig};
use cactus::Tensor;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::time::Duration;

fn step_bench(c: &mut Criterion, name: &str, arch: Arch, input: [usize; 3], batch: usize) {
    let mut rng = Rng::seed(0);
    let mut model = Model::new(ModelSpec::new(arch, input, 10), &mut rng).unwrap();
    let mut opt = Adam::new(AdamConfig::default());
    let mut shape = vec![batch];
    shape.extend(input);
    let x = Tensor::rand_uniform(&shape, 0.0, 1.0, &mut rng);
    let y: Vec<usize> = (0..batch).map(|_| rng.below(10)).collect();
    let mut g = c.benchmark_group("steps");
    if arch == Arch::Cnn7 {
        g.sample_size(10);
    }
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(name, |b| {
        b.iter(|| standard_step(&mut model, &mut opt, &x, &y).unwrap())
    });
    g.finish();
}

/// One certified training step as `Trainer::run_epoch` takes it past the ramp: `batch_loss`
/// (clean pass with batch statistics, then IBP over the ε-box or SABR's PGD + small-box IBP;
/// 0.25·CE + 0.75·L_cert) or CACTUS's `cactus_loss` with its default set (the full network and
/// one pruned by GUL1 at a ratio drawn from U(0.25, 0.75), masks recomputed each step),
/// backward, Adam (lr 5e-4, L2 decay 1e-5, clipping at norm 10).
/// Full-width models with the IBP initialisation and the dataset's normalisation.
/// With `split`, the step of `cactus train --parallel batch`: one slice of the batch per
/// thread through the whole step (`train::split`), for the models and methods it applies to.
fn certified_bench(
    c: &mut Criterion,
    name: &str,
    arch: Arch,
    dataset: DatasetKind,
    method: Method,
    batch: usize,
    split: bool,
) {
    let cfg = TrainConfig {
        model: arch,
        dataset,
        method,
        init: Init::Ibp,
        eps: if dataset == DatasetKind::Cifar10 {
            8.0 / 255.0
        } else {
            0.1
        },
        ..TrainConfig::default()
    };
    let mut rng = Rng::seed(0);
    let mut model = Model::new(cfg.model_spec(), &mut rng).unwrap();
    let mut opt = Adam::new(cfg.adam());
    let mut shape = vec![batch];
    shape.extend(dataset.shape());
    let x = Tensor::rand_uniform(&shape, 0.0, 1.0, &mut rng);
    let y: Vec<usize> = (0..batch).map(|_| rng.below(10)).collect();
    let phase = Phase {
        eps: cfg.eps,
        cert_weight: cfg.cert_weight,
    };
    // Past the ramp, as in the middle of a run (only `progressive` depends on it).
    let progress = Progress {
        step: 1000,
        total_steps: 2000,
        ramp_end: 500,
    };
    let mut g = c.benchmark_group("steps");
    // Steps of 10 ms (small, IBP) to seconds (cnn7, SABR): few samples, short runs; the
    // seconds-long ones run one step per sample.
    if arch == Arch::Cnn7 {
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
    } else {
        g.sample_size(20).measurement_time(Duration::from_secs(5));
    }
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            let grads = if split && method == Method::Cactus {
                // The set selected for the batch (K = 1), then the slices.
                let mut cache = SetCache::new(1);
                let set = cache
                    .pruning_set(&model, &cfg.cactus, progress, &mut rng, 0)
                    .unwrap();
                cactus_batch_split_step(&model, &x, &y, phase, cfg.sabr_lambda, set, &mut rng).grads
            } else if split {
                batch_split_step(&model, method, &x, &y, phase, cfg.sabr_lambda, &mut rng).grads
            } else {
                let out = cfg
                    .batch_loss(&mut model, &x, &y, phase, progress, &mut rng)
                    .unwrap();
                out.total.backward()
            };
            opt.step(&mut model.net.parameters_mut(), &grads).unwrap()
        })
    });
    g.finish();
}

fn steps(c: &mut Criterion) {
    let mnist = [1, 28, 28];
    let cifar = [3, 32, 32];
    step_bench(c, "small_mnist_std_b32", Arch::Small, mnist, 32);
    step_bench(c, "small_mnist_std_b128", Arch::Small, mnist, 128);
    step_bench(c, "cnn7_mnist_std_b32", Arch::Cnn7, mnist, 32);
    step_bench(c, "cnn7_mnist_std_b128", Arch::Cnn7, mnist, 128);
    step_bench(c, "cnn7_cifar_std_b128", Arch::Cnn7, cifar, 128);

    use {Arch::*, DatasetKind::*, Method::*};
    let certified = [
        ("small_mnist_ibp_b32", Small, Mnist, Ibp, 32),
        ("small_mnist_ibp_b128", Small, Mnist, Ibp, 128),
        ("small_mnist_sabr_b32", Small, Mnist, Sabr, 32),
        ("small_mnist_sabr_b128", Small, Mnist, Sabr, 128),
        ("small_mnist_cactus_b128", Small, Mnist, Cactus, 128),
        ("cnn7_mnist_ibp_b128", Cnn7, Mnist, Ibp, 128),
        ("cnn7_mnist_sabr_b128", Cnn7, Mnist, Sabr, 128),
        ("cnn7_cifar_ibp_b128", Cnn7, Cifar10, Ibp, 128),
        ("cnn7_cifar_sabr_b128", Cnn7, Cifar10, Sabr, 128),
        ("cnn7_cifar_cactus_b128", Cnn7, Cifar10, Cactus, 128),
    ];
    for (name, arch, dataset, method, batch) in certified {
        certified_bench(c, name, arch, dataset, method, batch, false);
    }
    // `--parallel batch` on `small`: the same workloads, the batch split across the threads.
    let split = [
        ("small_mnist_std_b32_split", Std, 32),
        ("small_mnist_std_b128_split", Std, 128),
        ("small_mnist_ibp_b32_split", Ibp, 32),
        ("small_mnist_ibp_b128_split", Ibp, 128),
        ("small_mnist_sabr_b32_split", Sabr, 32),
        ("small_mnist_sabr_b128_split", Sabr, 128),
        ("small_mnist_cactus_b128_split", Cactus, 128),
    ];
    for (name, method, batch) in split {
        certified_bench(c, name, Small, Mnist, method, batch, true);
    }
}

fn configured() -> Criterion {
    cactus::runtime::cpu::allocator::keep_freed_memory();
    Criterion::default()
}

criterion_group! {
    name = benches;
    config = configured();
    targets = steps
}
criterion_main!(benches);
