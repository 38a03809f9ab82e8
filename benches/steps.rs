//! Whole standard training steps (forward, cross-entropy, backward, Adam) on random data.
//! Names match the PyTorch comparison (`scripts/compare_pytorch.sh`).

use cactus::nn::{Arch, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::train::{standard_step, Adam, AdamConfig};
use cactus::Tensor;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

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

fn steps(c: &mut Criterion) {
    let mnist = [1, 28, 28];
    let cifar = [3, 32, 32];
    step_bench(c, "small_mnist_std_b32", Arch::Small, mnist, 32);
    step_bench(c, "small_mnist_std_b128", Arch::Small, mnist, 128);
    step_bench(c, "cnn7_mnist_std_b32", Arch::Cnn7, mnist, 32);
    step_bench(c, "cnn7_mnist_std_b128", Arch::Cnn7, mnist, 128);
    step_bench(c, "cnn7_cifar_std_b128", Arch::Cnn7, cifar, 128);
}

fn configured() -> Criterion {
    cactus::backend::cpu::allocator::keep_freed_memory();
    Criterion::default()
}

criterion_group! {
    name = benches;
    config = configured();
    targets = steps
}
criterion_main!(benches);
