//! The batch-split training step (`train::split`) against the op-split one: the same loss and
//! the same gradients within rounding, for the methods and models it applies to; and the
//! cases it must not take (batch norm, too few samples per thread, one thread).

use cactus::data::DatasetKind;
use cactus::nn::{Arch, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::train::losses::batch_loss;
use cactus::train::split::{batch_split_applies, batch_split_step};
use cactus::train::{Method, Phase};
use cactus::{Device, Tensor};

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

fn model(arch: Arch) -> Model {
    let kind = DatasetKind::MnistMini;
    let mut spec = ModelSpec::new(arch, [1, 28, 28], 10);
    spec.normalization = Some(kind.normalization());
    Model::new(spec, &mut Rng::seed(3)).unwrap()
}

fn batch(n: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let mut rng = Rng::seed(seed);
    let x: Vec<f32> = (0..n * 784).map(|_| rng.uniform()).collect();
    let y = (0..n).map(|_| rng.below(10)).collect();
    (Tensor::from_vec(x, &[n, 1, 28, 28]), y)
}

/// Largest |a − b| over the largest |a| (relative to the tensor's scale, so that entries near
/// zero, which carry only rounding, do not dominate).
fn scaled_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn agree(arch: Arch, method: Method, threads: usize, n: usize) {
    let phase = Phase {
        eps: 0.1,
        cert_weight: 0.5,
    };
    let (x, y) = batch(n, 11);
    let mut whole = model(arch);
    assert!(batch_split_applies(&whole, method, Device::Cpu, n) || threads == 1);
    let (op_loss, op_grads) = pool(threads).install(|| {
        let out = batch_loss(&mut whole, method, &x, &y, phase, 0.4, &mut Rng::seed(5));
        (out.total.item(), out.total.backward())
    });
    let split = pool(threads).install(|| {
        assert!(batch_split_applies(&whole, method, Device::Cpu, n));
        batch_split_step(&whole, method, &x, &y, phase, 0.4, &mut Rng::seed(5))
    });
    let what = format!(
        "{} {} ({threads} threads, batch {n})",
        arch.name(),
        method.name()
    );
    assert!(
        (op_loss - split.loss).abs() <= 1e-5 * op_loss.abs().max(1.0),
        "{what}: loss {op_loss} (op split) vs {} (batch split)",
        split.loss
    );
    assert_eq!(split.logits.shape(), &[n, 10], "{what}: logits' shape");
    for (name, p) in whole.net.named_parameters() {
        let a = op_grads.get(p).expect("op split: a gradient").to_vec();
        let b = split
            .grads
            .get(p)
            .expect("batch split: a gradient")
            .to_vec();
        let err = scaled_error(&a, &b);
        // Summation order changes (per-slice sums, then a sum of slices): f32 rounding only.
        assert!(
            err <= 1e-4,
            "{what}: gradient of {name} differs by {err:e} (scaled)"
        );
    }
}

#[test]
fn standard_training_splits_exactly() {
    for arch in [Arch::Mlp, Arch::Small] {
        agree(arch, Method::Std, 2, 12);
        agree(arch, Method::Std, 3, 13);
    }
}

#[test]
fn ibp_training_splits_exactly() {
    for arch in [Arch::Mlp, Arch::Small] {
        agree(arch, Method::Ibp, 2, 10);
        agree(arch, Method::Ibp, 4, 17);
    }
}

#[test]
fn sabr_batch_split_gives_a_finite_loss_and_every_gradient() {
    // SABR's attack draws its random starts per slice, so its loss is the op split's only in
    // distribution; the step must still be complete and finite.
    let (x, y) = batch(12, 2);
    let whole = model(Arch::Small);
    let phase = Phase {
        eps: 0.1,
        cert_weight: 1.0,
    };
    let step = pool(2)
        .install(|| batch_split_step(&whole, Method::Sabr, &x, &y, phase, 0.4, &mut Rng::seed(1)));
    assert!(step.loss.is_finite() && step.loss > 0.0);
    for (name, p) in whole.net.named_parameters() {
        let g = step
            .grads
            .get(p)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(
            g.to_vec().iter().all(|v| v.is_finite()),
            "{name}: gradient not finite"
        );
    }
}

#[test]
fn the_batch_split_is_refused_where_it_would_change_the_step() {
    let small = model(Arch::Small);
    pool(2).install(|| {
        assert!(batch_split_applies(&small, Method::Std, Device::Cpu, 8));
        assert!(
            !batch_split_applies(&small, Method::Std, Device::Cpu, 3),
            "one sample per thread"
        );
        assert!(
            !batch_split_applies(&small, Method::Cactus, Device::Cpu, 64),
            "CACTUS"
        );
    });
    pool(1).install(|| {
        assert!(
            !batch_split_applies(&small, Method::Std, Device::Cpu, 64),
            "one thread"
        );
    });
    let cnn7 = model(Arch::Cnn7);
    pool(2).install(|| {
        assert!(
            !batch_split_applies(&cnn7, Method::Std, Device::Cpu, 64),
            "batch norm"
        );
    });
}

#[test]
fn runs_saved_before_the_setting_resume_with_the_op_split() {
    use cactus::train::split::Parallelism;
    use cactus::train::TrainConfig;
    let mut saved = serde_json::to_value(TrainConfig::default()).unwrap();
    assert_eq!(saved["parallel"], "auto", "new runs choose per step");
    saved.as_object_mut().unwrap().remove("parallel");
    let old: TrainConfig = serde_json::from_value(saved).unwrap();
    assert_eq!(old.parallel, Parallelism::Ops);
}

#[test]
fn an_explicit_batch_split_is_refused_where_it_cannot_apply() {
    use cactus::train::split::Parallelism;
    use cactus::train::TrainConfig;
    for (model, method) in [(Arch::Cnn7, Method::Sabr), (Arch::Small, Method::Cactus)] {
        let cfg = TrainConfig {
            model,
            method,
            parallel: Parallelism::Batch,
            ..TrainConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("--parallel"), "{err}");
        let auto = TrainConfig {
            parallel: Parallelism::Auto,
            ..cfg
        };
        assert!(auto.validate().is_ok(), "auto falls back to the op split");
    }
}
