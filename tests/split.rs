//! The batch-split training step (`train::split`) against the op-split one: the same loss and
//! the same gradients within rounding, for the methods and models it applies to; and the
//! cases it must not take (batch norm, too few samples per thread, one thread).

use cactus::data::DatasetKind;
use cactus::nn::{Arch, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::train::cactus::{pruned_set_loss, CompressionSet};
use cactus::train::losses::batch_loss;
use cactus::train::split::{batch_split_applies, batch_split_step, cactus_batch_split_step};
use cactus::train::{CompressKind, TrainConfig};
use cactus::train::{Method, Phase};
use cactus::{Device, Tensor};

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// A run's settings for `method` on `arch` (what `batch_split_applies` reads).
fn run(arch: Arch, method: Method) -> TrainConfig {
    TrainConfig {
        model: arch,
        method,
        ..TrainConfig::default()
    }
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
    assert!(batch_split_applies(&run(arch, method), &whole, Device::Cpu, n) || threads == 1);
    let (op_loss, op_grads) = pool(threads).install(|| {
        let out = batch_loss(&mut whole, method, &x, &y, phase, 0.4, &mut Rng::seed(5));
        (out.total.item(), out.total.backward())
    });
    let split = pool(threads).install(|| {
        assert!(batch_split_applies(
            &run(arch, method),
            &whole,
            Device::Cpu,
            n
        ));
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
    let mut quantizing = run(Arch::Small, Method::Cactus);
    quantizing.cactus.compress = CompressKind::PruneQuant;
    pool(2).install(|| {
        assert!(
            batch_split_applies(&run(Arch::Small, Method::Cactus), &small, Device::Cpu, 8),
            "CACTUS with pruned members only"
        );
        assert!(batch_split_applies(
            &run(Arch::Small, Method::Std),
            &small,
            Device::Cpu,
            8
        ));
        assert!(
            !batch_split_applies(&run(Arch::Small, Method::Std), &small, Device::Cpu, 3),
            "one sample per thread"
        );
        assert!(
            !batch_split_applies(&quantizing, &small, Device::Cpu, 64),
            "CACTUS with AWP's member"
        );
    });
    pool(1).install(|| {
        assert!(
            !batch_split_applies(&run(Arch::Small, Method::Std), &small, Device::Cpu, 64),
            "one thread"
        );
    });
    let cnn7 = model(Arch::Cnn7);
    pool(2).install(|| {
        assert!(
            !batch_split_applies(&run(Arch::Cnn7, Method::Std), &cnn7, Device::Cpu, 64),
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
    let batch = |model, method, compress| {
        let mut cfg = TrainConfig {
            model,
            method,
            parallel: Parallelism::Batch,
            ..TrainConfig::default()
        };
        cfg.cactus.compress = compress;
        cfg
    };
    for cfg in [
        batch(Arch::Cnn7, Method::Sabr, CompressKind::Prune),
        batch(Arch::Small, Method::Cactus, CompressKind::PruneQuant),
        batch(Arch::Small, Method::Cactus, CompressKind::Quant),
    ] {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("--parallel"), "{err}");
        let auto = TrainConfig {
            parallel: Parallelism::Auto,
            ..cfg
        };
        assert!(auto.validate().is_ok(), "auto falls back to the op split");
    }
    assert!(batch(Arch::Small, Method::Cactus, CompressKind::Prune)
        .validate()
        .is_ok());
}

/// A pruning-only CACTUS set selected for the whole batch: with the clean loss only (no attack,
/// so no randomness) the split's loss and gradients are the op split's within rounding; with
/// the certified loss the step is complete and finite.
#[test]
fn cactus_with_a_pruned_set_splits_exactly() {
    let whole = model(Arch::Small);
    let cfg = run(Arch::Small, Method::Cactus);
    let progress = cactus::train::Progress {
        step: 0,
        total_steps: 10,
        ramp_end: 0,
    };
    let mut cache = cactus::train::cactus::SetCache::new(1);
    let set: CompressionSet = cache
        .pruning_set(&whole, &cfg.cactus, progress, &mut Rng::seed(8), 0)
        .unwrap()
        .clone();
    assert_eq!(set.masks.len(), 1, "the default set: one pruned member");
    let (x, y) = batch(10, 4);
    let clean_only = Phase {
        eps: 0.1,
        cert_weight: 0.0,
    };
    let (op_loss, op_grads) = pool(2).install(|| {
        let mut m = whole.clone();
        let out = pruned_set_loss(&mut m, &x, &y, clean_only, 0.4, &set, &mut Rng::seed(1));
        (out.total.item(), out.total.backward())
    });
    let split = pool(2).install(|| {
        cactus_batch_split_step(&whole, &x, &y, clean_only, 0.4, &set, &mut Rng::seed(1))
    });
    assert!((op_loss - split.loss).abs() <= 1e-5 * op_loss.abs().max(1.0));
    for (name, p) in whole.net.named_parameters() {
        let a = op_grads.get(p).unwrap().to_vec();
        let b = split.grads.get(p).unwrap().to_vec();
        let err = scaled_error(&a, &b);
        assert!(
            err <= 1e-4,
            "CACTUS: gradient of {name} differs by {err:e} (scaled)"
        );
    }
    let certified = Phase {
        eps: 0.1,
        cert_weight: 0.75,
    };
    let step = pool(2).install(|| {
        cactus_batch_split_step(&whole, &x, &y, certified, 0.4, &set, &mut Rng::seed(1))
    });
    assert!(step.loss.is_finite() && step.cert.is_some());
}
