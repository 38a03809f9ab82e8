//! Whole training steps on the GPU (criterion group `steps_cuda`): cnn7 on CIFAR-shaped data at
//! batch 128, standard (clean pass, cross-entropy, backward, Adam) and certified (IBP, SABR,
//! CACTUS: the trainer's per-batch work past the ramp, as `benches/steps.rs` on the CPU). The
//! network and the batch live on the GPU; every iteration ends by waiting for the stream, so a
//! time is the whole step's. Each bench also prints the host-device copies one step makes.
//! Skips, saying so, where no GPU is present.

use cactus::data::DatasetKind;
use cactus::nn::{Arch, Init, Model};
use cactus::rng::Rng;
use cactus::runtime::cuda::{device_or_skip, profile, CudaBackend};
use cactus::tensor::{transfers, Device};
use cactus::train::{Adam, Method, Phase, Progress, TrainConfig};
use cactus::Tensor;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::time::Duration;

fn step_bench(c: &mut Criterion, gpu: &CudaBackend, name: &str, method: Method, batch: usize) {
    let dataset = DatasetKind::Cifar10;
    let cfg = TrainConfig {
        model: Arch::Cnn7,
        dataset,
        method,
        init: Init::Ibp,
        eps: 8.0 / 255.0,
        ..TrainConfig::default()
    };
    let mut rng = Rng::seed(0);
    let mut model = Model::new(cfg.model_spec(), &mut rng)
        .and_then(|m| m.to_device(Device::Cuda))
        .expect("cnn7 on the GPU");
    let mut opt = Adam::new(cfg.adam());
    let mut shape = vec![batch];
    shape.extend(dataset.shape());
    let x = Tensor::rand_uniform(&shape, 0.0, 1.0, &mut rng)
        .to_device(Device::Cuda)
        .expect("batch on the GPU");
    let y: Vec<usize> = (0..batch).map(|_| rng.below(10)).collect();
    let phase = Phase {
        eps: cfg.eps,
        cert_weight: if method == Method::Std {
            0.0
        } else {
            cfg.cert_weight
        },
    };
    let progress = Progress {
        step: 1000,
        total_steps: 2000,
        ramp_end: 500,
    };
    let mut step = || {
        let out = cfg
            .batch_loss(&mut model, &x, &y, phase, progress, &mut rng)
            .expect("loss");
        let grads = out.total.backward();
        drop(out);
        opt.step(&mut model.net.parameters_mut(), &grads)
            .expect("Adam step");
        gpu.synchronize().expect("GPU step");
    };
    // One step outside the measurement: kernels compile, the buffer pool fills.
    step();
    if profile::enabled() {
        profile::reset();
        for _ in 0..3 {
            let _p = profile::scope("step");
            step();
        }
        eprintln!(
            "steps_cuda/{name}: profile of 3 steps\n{}",
            profile::report()
        );
        profile::reset();
    }
    let (up, down) = transfers::counts();
    step();
    let (up2, down2) = transfers::counts();
    eprintln!(
        "steps_cuda/{name}: {} uploads and {} downloads of tensors per step",
        up2 - up,
        down2 - down
    );
    let mut g = c.benchmark_group("steps_cuda");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(name, |b| b.iter(&mut step));
    g.finish();
}

fn steps(c: &mut Criterion) {
    let Some(gpu) = device_or_skip("steps_cuda") else {
        return;
    };
    eprintln!("steps_cuda on {} ({})", gpu.name, gpu.arch);
    for (name, method) in [
        ("cnn7_cifar_std_b128", Method::Std),
        ("cnn7_cifar_ibp_b128", Method::Ibp),
        ("cnn7_cifar_sabr_b128", Method::Sabr),
        ("cnn7_cifar_cactus_b128", Method::Cactus),
    ] {
        step_bench(c, gpu, name, method, 128);
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
