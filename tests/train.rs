//! The trainer and its losses: SABR's box, the schedule in a run, NaN handling, state files.

use cactus::data::{Dataset, DatasetKind};
use cactus::io::{load_checkpoint, load_train_state};
use cactus::rng::Rng;
use cactus::train::trainer::{MODEL_FILE, STATE_FILE};
use cactus::train::{sabr_box, Method, TrainConfig, Trainer};
use cactus::Tensor;
use indicatif::ProgressBar;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cactus-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Random 1x8x8 images whose class is the quadrant of their brightest pixel block.
fn toy_dataset(n: usize, seed: u64) -> Dataset {
    let mut rng = Rng::seed(seed);
    let mut images = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let label = rng.below(4);
        let (qy, qx) = (label / 2, label % 2);
        for y in 0..8 {
            for x in 0..8 {
                let inside = y / 4 == qy && x / 4 == qx;
                images.push(if inside {
                    0.6 + 0.4 * rng.uniform()
                } else {
                    0.3 * rng.uniform()
                });
            }
        }
        labels.push(label);
    }
    Dataset {
        name: "toy".into(),
        images,
        labels,
        shape: [1, 8, 8],
        num_classes: 4,
    }
}

fn toy_config(method: Method) -> TrainConfig {
    TrainConfig {
        method,
        // mnist-mini only names the normalisation here; the model is built for the toy shape.
        dataset: DatasetKind::MnistMini,
        epochs: 2,
        batch_size: 16,
        warmup_batches: 2,
        ramp_batches: 4,
        ..TrainConfig::default()
    }
}

fn toy_trainer(method: Method, out: &std::path::Path) -> Trainer {
    let config = toy_config(method);
    let mut trainer = Trainer::new(config.clone(), out).unwrap();
    let mut spec = config.model_spec();
    spec.input_shape = [1, 8, 8];
    spec.num_classes = 4;
    trainer.model = cactus::nn::Model::new(spec, &mut Rng::seed(1)).unwrap();
    trainer
}

#[test]
fn sabr_box_lies_in_the_eps_box_with_radius_tau() {
    let mut rng = Rng::seed(3);
    let x = Tensor::rand_uniform(&[5, 1, 6, 6], 0.0, 1.0, &mut rng);
    let eps = 0.2;
    // Adversarial points anywhere in the clipped ε-box, corners included.
    let adv: Vec<f32> = x
        .data()
        .iter()
        .map(|&v| {
            let t = [0.0, 0.5, 1.0][rng.below(3)] * rng.uniform().round();
            ((v - eps) + 2.0 * eps * t).clamp(0.0, 1.0)
        })
        .collect();
    let adv = Tensor::from_vec(adv, x.shape());
    for lambda in [0.1, 0.4, 1.0] {
        let boxes = sabr_box(&x, &adv, eps, lambda);
        let (lo, hi) = boxes.interval_bounds();
        let tau = lambda * eps;
        for i in 0..x.numel() {
            let (v, l, h) = (x.data()[i], lo.data()[i], hi.data()[i]);
            let (el, eh) = ((v - eps).max(0.0), (v + eps).min(1.0));
            assert!(
                l >= el - 1e-6 && h <= eh + 1e-6,
                "λ {lambda}: [{l}, {h}] leaves [{el}, {eh}]"
            );
            assert!(
                h - l <= 2.0 * tau + 1e-6,
                "λ {lambda}: width {} > 2τ",
                h - l
            );
            assert!(h - l > 0.0, "λ {lambda}: empty box");
        }
    }
    // λ = 1 gives the whole ε-box (IBP), wherever the attack ended.
    let (wl, wh) = sabr_box(&x, &adv, eps, 1.0).interval_bounds();
    let (il, ih) = cactus::bounds::input_box(&x, eps).interval_bounds();
    let gap = |a: &Tensor, b: &Tensor| {
        a.data()
            .iter()
            .zip(b.data())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(gap(&wl, &il) < 1e-6 && gap(&wh, &ih) < 1e-6);
}

#[test]
fn certified_training_learns_the_toy_problem() {
    for method in [Method::Ibp, Method::Sabr] {
        let out = scratch(&format!("learn-{}", method.name()));
        let mut trainer = toy_trainer(method, &out);
        trainer.config.epochs = 8;
        trainer.config.eps = 0.05;
        let data = toy_dataset(256, 5);
        trainer.run(&data, true).unwrap();
        let last = trainer.history.last().unwrap();
        assert!(
            last.cert_loss.is_some(),
            "{method:?}: no certified loss after the ramp"
        );
        assert!(last.eps == 0.05 && last.cert_weight == 0.75, "{last:?}");
        let test = toy_dataset(200, 6);
        let cfg = cactus::eval::EvalConfig::new(0.05);
        let outcomes = cactus::eval::evaluate(&trainer.model, &test, &cfg, |_| {}).unwrap();
        assert!(
            outcomes.certified_accuracy() > 0.6,
            "{method:?}: certified {} after training",
            outcomes.certified_accuracy()
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn a_nan_loss_stops_training_and_keeps_the_last_epoch() {
    let out = scratch("nan");
    let mut trainer = toy_trainer(Method::Ibp, &out);
    let mut data = toy_dataset(64, 7);
    trainer.run_epoch(&data, &ProgressBar::hidden()).unwrap();
    let saved = std::fs::read(out.join(MODEL_FILE)).unwrap();
    let state = std::fs::read(out.join(STATE_FILE)).unwrap();
    data.images[10] = f32::NAN;
    let err = trainer
        .run_epoch(&data, &ProgressBar::hidden())
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN") && err.contains("epoch 2"), "{err}");
    assert!(
        err.contains(MODEL_FILE),
        "the error should say where the last good model is: {err}"
    );
    assert_eq!(
        std::fs::read(out.join(MODEL_FILE)).unwrap(),
        saved,
        "checkpoint changed"
    );
    assert_eq!(
        std::fs::read(out.join(STATE_FILE)).unwrap(),
        state,
        "state changed"
    );
    assert_eq!(load_train_state(&out.join(STATE_FILE)).unwrap().epoch, 1);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn state_files_reject_truncation_and_garbage() {
    let out = scratch("state");
    let mut trainer = toy_trainer(Method::Sabr, &out);
    trainer
        .run_epoch(&toy_dataset(48, 8), &ProgressBar::hidden())
        .unwrap();
    let path = out.join(STATE_FILE);
    let good = std::fs::read(&path).unwrap();
    let state = load_train_state(&path).unwrap();
    assert_eq!((state.epoch, state.step), (1, 3));
    assert_eq!(state.rng, trainer.rng.state());
    let ckpt = load_checkpoint(&out.join(MODEL_FILE)).unwrap();
    for ((n, a), (_, b)) in ckpt
        .model
        .net
        .named_parameters()
        .iter()
        .zip(state.model.net.named_parameters())
    {
        assert!(
            a.bit_eq(b),
            "{n}: the state's model differs from model.safetensors"
        );
    }
    let bad = out.join("bad.safetensors");
    let step = (good.len() / 61).max(1);
    for cut in (0..good.len()).step_by(step) {
        std::fs::write(&bad, &good[..cut]).unwrap();
        assert!(
            load_train_state(&bad).is_err(),
            "a state cut at {cut} bytes loaded"
        );
    }
    let mut rng = Rng::seed(9);
    for _ in 0..50 {
        let mut noisy = good.clone();
        for _ in 0..8 {
            let i = rng.below(noisy.len().min(4096));
            noisy[i] = rng.below(256) as u8;
        }
        std::fs::write(&bad, &noisy).unwrap();
        let _ = load_train_state(&bad); // must not panic; may load if only padding changed
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// The history reads back to the same f64 bits after a save and a resume: no drift in the last
/// digit from one resumed epoch to the next.
#[test]
fn history_floats_survive_save_and_resume_exactly() {
    let out = scratch("history-floats");
    let config = TrainConfig {
        model: cactus::nn::Arch::Mlp,
        width: 0.125,
        ..toy_config(Method::Ibp)
    };
    let mut trainer = Trainer::new(config, &out).unwrap();
    let mut toy = toy_trainer(Method::Ibp, &out);
    toy.run_epoch(&toy_dataset(48, 8), &ProgressBar::hidden())
        .unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    // Values with all 52 bits of mantissa in use, whose shortest decimal has 16–17 digits.
    let mut rng = Rng::seed(11);
    let mut full = || {
        let bits = (0..4).fold(0u64, |acc, _| (acc << 16) | rng.below(1 << 16) as u64);
        f64::from_bits((bits >> 12) | 0x3ff0_0000_0000_0000) - 0.5
    };
    let record = toy.history[0].clone();
    trainer.history = (0..200)
        .map(|_| {
            let mut r = record.clone();
            r.loss = full();
            r.clean_ce = full();
            r.cert_loss = Some(full());
            r.train_accuracy = full();
            r.seconds = full();
            r.samples_per_second = 1e4 * full();
            r
        })
        .collect();
    trainer.epoch = 1;
    trainer.save().unwrap();
    let resumed = Trainer::resume(&out, |c| Ok(c.clone())).unwrap();
    for (i, (a, b)) in trainer.history.iter().zip(&resumed.history).enumerate() {
        assert_eq!(a, b, "record {i} changed in the round trip");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
