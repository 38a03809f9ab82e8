//! Whole training steps on the GPU against the CPU: the same network, batch and random stream
//! give the same loss, the same gradient of every parameter and the same parameters after
//! Adam, for standard, IBP, SABR and CACTUS training (cnn7 at a reduced width on CIFAR-shaped
//! data, and `small` on MNIST-shaped data). Then a short `Trainer` run on the GPU: it saves a
//! checkpoint that the CPU loads and certifies like the GPU. And a steady training step (the same
//! sizes as the step before) takes all its device memory from the buffer pool: it never calls the
//! driver's allocator. Each test skips, saying why, where no GPU is present.

use cactus::autodiff::with_no_grad;
use cactus::bounds::{certified, input_box, margin_lower_bounds, BnSource};
use cactus::data::DatasetKind;
use cactus::nn::{Arch, Mode, Model};
use cactus::rng::Rng;
use cactus::runtime::cuda::{buffer, device_or_skip};
use cactus::tensor::{transfers, Device};
use cactus::train::{Adam, Method, Phase, Progress, TrainConfig};
use cactus::Tensor;

mod common;
use common::assert_close;

/// Taken by every test here: the buffer pool is shared by the process, so another test's
/// allocations running beside the allocation-count test would take the buffers it reuses.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one still runs.
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one step produced on one device, on the host.
struct StepResult {
    loss: f32,
    cert: Option<f32>,
    before: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    after: Vec<Vec<f32>>,
    /// (uploads, downloads) while the loss and its gradients were computed.
    loss_copies: (u64, u64),
}

fn config(arch: Arch, dataset: DatasetKind, method: Method) -> TrainConfig {
    TrainConfig {
        model: arch,
        width: 0.25,
        dataset,
        method,
        eps: if dataset == DatasetKind::Cifar10 {
            2.0 / 255.0
        } else {
            0.1
        },
        batch_size: 16,
        ..TrainConfig::default()
    }
}

fn batch(cfg: &TrainConfig, rng: &mut Rng) -> (Tensor, Vec<usize>) {
    let [c, h, w] = cfg.dataset.shape();
    let n = cfg.batch_size;
    let x = Tensor::rand_uniform(&[n, c, h, w], 0.0, 1.0, rng);
    let y = (0..n).map(|i| i % cfg.dataset.num_classes()).collect();
    (x, y)
}

fn step(cfg: &TrainConfig, device: Device) -> StepResult {
    let mut rng = Rng::seed(7);
    let model = Model::new(cfg.model_spec(), &mut rng).unwrap();
    let mut model = model.to_device(device).unwrap();
    let (x, y) = batch(cfg, &mut rng);
    let x = x.to_device(device).unwrap();
    let phase = Phase {
        eps: cfg.eps,
        cert_weight: 0.5,
    };
    let progress = Progress {
        step: 3,
        total_steps: 10,
        ramp_end: 5,
    };
    let copies = transfers::thread_counts();
    let out = cfg
        .batch_loss(&mut model, &x, &y, phase, progress, &mut rng)
        .unwrap();
    let grads = out.total.backward();
    let done = transfers::thread_counts();
    let loss = out.total.item();
    let host: Vec<Vec<f32>> = model
        .net
        .named_parameters()
        .iter()
        .map(|(_, p)| {
            grads
                .get(p)
                .expect("every parameter has a gradient")
                .to_vec()
        })
        .collect();
    let before = model
        .net
        .named_parameters()
        .iter()
        .map(|(_, p)| p.to_vec())
        .collect();
    let mut adam = Adam::new(cfg.adam());
    adam.step(&mut model.net.parameters_mut(), &grads).unwrap();
    for (_, p) in model.net.named_parameters() {
        assert_eq!(p.device(), device, "parameters stay on {device}");
    }
    StepResult {
        loss,
        cert: out.cert,
        before,
        grads: host,
        loss_copies: (done.0 - copies.0, done.1 - copies.1),
        after: model
            .net
            .named_parameters()
            .iter()
            .map(|(_, p)| p.to_vec())
            .collect(),
    }
}

fn compare(cfg: &TrainConfig) {
    let what = format!("{:?} {:?} {:?}", cfg.model, cfg.dataset, cfg.method);
    let before = transfers::counts();
    let gpu = step(cfg, Device::Cuda);
    let after = transfers::counts();
    let cpu = step(cfg, Device::Cpu);
    eprintln!(
        "{what}: loss cpu {} gpu {}, cert {:?} / {:?}; the GPU loss and backward made {} uploads \
         and {} downloads (the whole test step, with its setup and reads, {} and {})",
        cpu.loss,
        gpu.loss,
        cpu.cert,
        gpu.cert,
        gpu.loss_copies.0,
        gpu.loss_copies.1,
        after.0 - before.0,
        after.1 - before.1
    );
    // The attacks keep their iterates, best points and losses on the device, and constants are
    // made there: the loss and its backward copy a few scalars to the host, not something per
    // PGD iteration (26 copies for a small SABR step before the best points moved there).
    assert!(
        gpu.loss_copies.1 <= 8,
        "{what}: {} copies to the host in the loss and its backward ({} to the device)",
        gpu.loss_copies.1,
        gpu.loss_copies.0
    );
    assert!(
        (cpu.loss - gpu.loss).abs() <= 1e-3 * cpu.loss.abs().max(1.0),
        "{what}: loss cpu {} gpu {}",
        cpu.loss,
        gpu.loss
    );
    // Gradients: a weight's gradient sums terms as large as the largest gradient of the network
    // (a bias before batch norm has a true gradient of 0 and a computed one of pure rounding),
    // so differences are measured against the network's largest gradient. Methods with an
    // attack get more room: a pixel whose input gradient is rounding noise may take its signed
    // step either way on the two devices, which moves the SABR box slightly.
    let scale = cpu
        .grads
        .iter()
        .flatten()
        .fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
    let rel = match cfg.method {
        Method::Sabr | Method::Cactus => 1e-2,
        _ => 2e-3,
    };
    let (mut worst, mut worst_at) = (0.0f32, 0);
    for (i, (g, c)) in gpu.grads.iter().zip(&cpu.grads).enumerate() {
        assert_eq!(g.len(), c.len(), "{what}: gradient {i} lengths");
        let err = g
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        if err > worst {
            (worst, worst_at) = (err, i);
        }
    }
    eprintln!(
        "{what}: largest gradient difference {worst} (parameter {worst_at}), {:.2e} of the \
         largest gradient {scale}",
        worst / scale
    );
    assert!(
        worst <= rel * scale,
        "{what}: gradient of parameter {worst_at} differs by {worst}, more than {rel} of the \
         largest gradient {scale}"
    );
    // Adam's first step moves each weight by lr·u/(|u| + ε), u = clip·g + λ·w (L2 decay λ,
    // clipping factor from the global norm). The devices' gradients differ by up to `err`
    // per tensor, so the step may differ by as much as it changes over g ± err (near g = 0,
    // where |u| ~ ε, that is a large part of lr); the updated weights must agree within that.
    let adam = cfg.adam();
    let norm = cpu
        .grads
        .iter()
        .flatten()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt() as f32;
    let clip = match adam.max_grad_norm {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    };
    let step = |g: f32, w: f32| {
        let u = g * clip + adam.weight_decay * w;
        adam.lr * u / (u.abs() + adam.eps)
    };
    for (i, (((after_gpu, after_cpu), (g_gpu, g_cpu)), w0)) in gpu
        .after
        .iter()
        .zip(&cpu.after)
        .zip(gpu.grads.iter().zip(&cpu.grads))
        .zip(&cpu.before)
        .enumerate()
    {
        let err = g_gpu
            .iter()
            .zip(g_cpu)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        for (j, ((a, b), (g, w))) in after_gpu
            .iter()
            .zip(after_cpu)
            .zip(g_cpu.iter().zip(w0))
            .enumerate()
        {
            let spread = (step(g + err, *w) - step(g - err, *w)).abs();
            let tol = spread + 1e-6 + 1e-5 * b.abs() + 1e-3 * adam.lr;
            assert!(
                (a - b).abs() <= tol,
                "{what}: parameter {i}[{j}] after Adam: gpu {a}, cpu {b} (gradient {g}, \
                 largest gradient difference {err}, tolerance {tol})"
            );
        }
    }
}

#[test]
fn training_steps_match_the_cpu() {
    let Some(_gpu) = device_or_skip("training_steps_match_the_cpu") else {
        return;
    };
    let _serial = one_at_a_time();
    // Every configuration runs, so that one failure does not hide another; then the verdict.
    let mut failed = Vec::new();
    for method in [Method::Std, Method::Ibp, Method::Sabr, Method::Cactus] {
        for cfg in [
            config(Arch::Cnn7, DatasetKind::Cifar10, method),
            config(Arch::Small, DatasetKind::MnistMini, method),
        ] {
            if std::panic::catch_unwind(|| compare(&cfg)).is_err() {
                failed.push(format!(
                    "{:?} {:?} {:?}",
                    cfg.model, cfg.dataset, cfg.method
                ));
            }
        }
    }
    assert!(failed.is_empty(), "steps that differ: {failed:?}");
}

#[test]
fn a_network_trained_on_the_gpu_certifies_the_same_on_the_cpu() {
    let Some(_gpu) = device_or_skip("a_network_trained_on_the_gpu_certifies_the_same_on_the_cpu")
    else {
        return;
    };
    let _serial = one_at_a_time();
    let cfg = config(Arch::Small, DatasetKind::MnistMini, Method::Sabr);
    let mut rng = Rng::seed(3);
    let mut model = Model::new(cfg.model_spec(), &mut rng)
        .unwrap()
        .to_device(Device::Cuda)
        .unwrap();
    let mut adam = Adam::new(cfg.adam());
    let (x, y) = batch(&cfg, &mut rng);
    let xd = x.to_device(Device::Cuda).unwrap();
    for s in 0..5 {
        let phase = Phase {
            eps: cfg.eps,
            cert_weight: 0.5,
        };
        let progress = Progress {
            step: s,
            total_steps: 5,
            ramp_end: 0,
        };
        let out = cfg
            .batch_loss(&mut model, &xd, &y, phase, progress, &mut rng)
            .unwrap();
        let grads = out.total.backward();
        adam.step(&mut model.net.parameters_mut(), &grads).unwrap();
    }
    // Certify the same boxes with the GPU network and with its copy on the CPU.
    let host = model.to_device(Device::Cpu).unwrap();
    let boxes = input_box(&x, cfg.eps);
    let (on_gpu, on_cpu) = with_no_grad(|| {
        (
            margin_lower_bounds(&model, &boxes, &y, BnSource::Running),
            margin_lower_bounds(&host, &boxes, &y, BnSource::Running),
        )
    });
    assert_close("margins", on_gpu.data(), on_cpu.data(), 1e-4);
    let logits = with_no_grad(|| model.forward(&xd, Mode::Eval));
    let host_logits = with_no_grad(|| host.forward(&x, Mode::Eval));
    assert_close("logits", logits.data(), host_logits.data(), 1e-4);
    eprintln!(
        "certified after 5 GPU steps: {} of {}",
        certified(&on_cpu, &y).iter().filter(|&&c| c).count(),
        y.len()
    );
}

#[test]
fn a_steady_training_step_does_not_call_the_allocator() {
    let Some(_gpu) = device_or_skip("a_steady_training_step_does_not_call_the_allocator") else {
        return;
    };
    let _serial = one_at_a_time();
    // The count works: a size no step uses (2^25 values) comes from the driver.
    let before = buffer::allocations().1;
    let fresh = cactus::runtime::cuda::DeviceBuffer::uninit(1 << 25).unwrap();
    assert_eq!(
        buffer::allocations().1,
        before + 1,
        "an allocation is counted"
    );
    drop(fresh);
    // Batch norm's path on cnn7 (kept cheap: the emulator runs these in CI), the attacks and
    // the compression sets on `small`.
    let configs = [
        config(Arch::Cnn7, DatasetKind::Cifar10, Method::Ibp),
        config(Arch::Small, DatasetKind::MnistMini, Method::Sabr),
        config(Arch::Small, DatasetKind::MnistMini, Method::Cactus),
    ];
    for cfg in configs {
        let what = format!("{:?} {:?} {:?}", cfg.model, cfg.dataset, cfg.method);
        let mut rng = Rng::seed(11);
        let model = Model::new(cfg.model_spec(), &mut rng).unwrap();
        let mut model = model.to_device(Device::Cuda).unwrap();
        let mut adam = Adam::new(cfg.adam());
        let mut allocations = Vec::new();
        // Once warm (two steps: the second can still meet sizes the first had not freed yet),
        // steps reuse earlier buffers; new batches and random draws change no size.
        for t in 0..4 {
            let (x, y) = batch(&cfg, &mut rng);
            let x = x.to_device(Device::Cuda).unwrap();
            let before = buffer::allocations().1;
            let phase = Phase {
                eps: cfg.eps,
                cert_weight: 0.5,
            };
            let progress = Progress {
                step: 3 + t,
                total_steps: 10,
                ramp_end: 5,
            };
            let out = cfg
                .batch_loss(&mut model, &x, &y, phase, progress, &mut rng)
                .unwrap();
            let grads = out.total.backward();
            adam.step(&mut model.net.parameters_mut(), &grads).unwrap();
            assert!(out.total.item().is_finite(), "{what}: loss");
            allocations.push(buffer::allocations().1 - before);
        }
        eprintln!("{what}: driver allocations per step {allocations:?}");
        assert_eq!(
            &allocations[2..],
            &[0, 0],
            "{what}: a steady step called the driver's allocator"
        );
    }
}
