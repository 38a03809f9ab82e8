//! CACTUS set caching (`--refresh-every K`): K = 1 is the set rebuilt every batch, bit for bit;
//! with K > 1 the masks and AWP's Δ* are rebuilt exactly at batches 0, K, 2K, … of every epoch
//! and, in between, applied to the current weights; a resumed K > 1 run ends on the
//! uninterrupted run's bytes; the option is checked on the command line and on `--resume`.

use cactus::attack::perturbed;
use cactus::compress::{apply_masks, prune_masks};
use cactus::data::{batches, epoch_order, mnist_mini, Dataset, Split};
use cactus::io::load_checkpoint;
use cactus::nn::{Arch, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::train::losses::network_loss;
use cactus::train::{
    cactus_loss_cached, Adam, AdamConfig, CactusConfig, CompressKind, Method, Phase, Progress,
    SetCache, TrainConfig, Trainer,
};
use indicatif::ProgressBar;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cactus-refresh-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn digits(n: usize) -> Dataset {
    mnist_mini::load(Split::Train).unwrap().limit(n)
}

/// A small, fast CACTUS run on real digits: the quarter-width MLP, batches of 16, a short ramp;
/// the op split, whose step is `TrainConfig::batch_loss`'s (what these tests compare with).
fn config(compress: CompressKind, refresh_every: u64) -> TrainConfig {
    TrainConfig {
        parallel: cactus::train::split::Parallelism::Ops,
        model: Arch::Mlp,
        width: 0.25,
        epochs: 2,
        batch_size: 16,
        warmup_batches: 1,
        ramp_batches: 3,
        cactus: CactusConfig {
            compress,
            refresh_every,
            ..CactusConfig::default()
        },
        ..TrainConfig::default()
    }
}

fn same_weights(a: &Model, b: &Model) -> bool {
    let (pa, pb) = (a.net.named_parameters(), b.net.named_parameters());
    pa.len() == pb.len() && pa.iter().zip(&pb).all(|((_, x), (_, y))| x.bit_eq(y))
}

/// The trainer's epoch as it was before the cache: the set rebuilt for every batch by
/// `TrainConfig::batch_loss`. Returns each batch's loss.
fn uncached_epoch(t: &mut Trainer, data: &Dataset) -> Vec<f32> {
    let cfg = t.config.clone();
    let schedule = cfg.schedule();
    let order = epoch_order(data.len(), &mut t.rng);
    let total = data.len() / cfg.batch_size;
    let mut losses = Vec::new();
    for idx in batches(&order, cfg.batch_size, true) {
        let (x, y) = data.batch(idx);
        let progress = Progress {
            step: t.step,
            total_steps: cfg.epochs * total as u64,
            ramp_end: schedule.length(),
        };
        let out = cfg
            .batch_loss(
                &mut t.model,
                &x,
                &y,
                schedule.at(t.step),
                progress,
                &mut t.rng,
            )
            .unwrap();
        losses.push(out.total.item());
        let grads = out.total.backward();
        drop(out.total);
        t.optimizer
            .step(&mut t.model.net.parameters_mut(), &grads)
            .unwrap();
        t.step += 1;
    }
    t.epoch += 1;
    losses
}

#[test]
fn refresh_every_1_is_the_set_rebuilt_every_batch_bit_for_bit() {
    assert_eq!(CactusConfig::default().refresh_every, 1);
    // Runs saved before the option read as 1.
    let old = r#"{"compress":"prune","prune_method":"gul1","strategy":"sampling","ratios":null,
                  "samples":1,"awp":{"eta":0.5,"steps":1}}"#;
    assert_eq!(
        serde_json::from_str::<CactusConfig>(old)
            .unwrap()
            .refresh_every,
        1
    );
    let data = digits(96); // 6 batches an epoch
    for compress in [CompressKind::Prune, CompressKind::PruneQuant] {
        let out = scratch(&format!("k1-{compress}"));
        let mut cached = Trainer::new(config(compress, 1), &out).unwrap();
        let mut reference = Trainer::new(config(compress, 1), &out).unwrap();
        for epoch in 0..2 {
            let record = cached.run_epoch(&data, &ProgressBar::hidden()).unwrap();
            let losses = uncached_epoch(&mut reference, &data);
            let mean = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
            assert_eq!(
                record.loss.to_bits(),
                mean.to_bits(),
                "{compress} epoch {epoch}"
            );
            assert!(same_weights(&cached.model, &reference.model), "{compress}");
            assert_eq!(cached.rng.state(), reference.rng.state(), "{compress}");
            assert_eq!(cached.set_cache.refreshed_at(), [0, 1, 2, 3, 4, 5]);
        }
        let _ = fs::remove_dir_all(&out);
    }
}

#[test]
fn k4_rebuilds_at_batches_0_4_8_of_every_epoch() {
    let data = digits(160); // 10 batches an epoch: epoch 2 starts at step 10, not a multiple of 4
    for (k, expected) in [
        (4, vec![0, 4, 8]),
        (16, vec![0]),
        (1, (0..10).collect::<Vec<u64>>()),
    ] {
        // The op split, and the batch split of a pruning-only set (selected once per batch,
        // for every slice, on the same schedule).
        let split = TrainConfig {
            parallel: cactus::train::split::Parallelism::Batch,
            ..config(CompressKind::Prune, k)
        };
        for (what, cfg) in [
            ("op split", config(CompressKind::PruneQuant, k)),
            ("batch split", split),
        ] {
            let out = scratch(&format!("rebuilds-{k}"));
            let mut t = Trainer::new(cfg, &out).unwrap();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            for epoch in 1..=2 {
                pool.install(|| t.run_epoch(&data, &ProgressBar::hidden()))
                    .unwrap();
                assert_eq!(
                    t.set_cache.refreshed_at(),
                    expected,
                    "{what}, K = {k}, epoch {epoch}"
                );
            }
            let _ = fs::remove_dir_all(&out);
        }
    }
    let cache = SetCache::new(4);
    assert!(cache.refresh_due(3), "an empty cache is always rebuilt");
}

/// Between rebuilds the members are the current weights under the cached masks and plus the
/// cached Δ*: the loss is exactly that set's, the masks stay put while the weights move (and
/// masks rebuilt from the moved weights would differ), and a rebuild takes the current weights'.
#[test]
fn cached_members_apply_the_cached_selection_to_the_current_weights() {
    let mut spec = ModelSpec::new(Arch::Mlp, [1, 28, 28], 10);
    spec.width = 0.25;
    let mut model = Model::new(spec, &mut Rng::seed(3)).unwrap();
    let cfg = CactusConfig {
        compress: CompressKind::PruneQuant,
        refresh_every: 4,
        ..CactusConfig::default()
    };
    let phase = Phase {
        eps: 0.05,
        cert_weight: 0.5,
    };
    let progress = Progress {
        step: 0,
        total_steps: 100,
        ramp_end: 0,
    };
    let data = digits(16 * 9);
    let mut opt = Adam::new(AdamConfig {
        lr: 1e-2,
        ..AdamConfig::default()
    });
    let mut cache = SetCache::new(cfg.refresh_every);
    let mut rng = Rng::seed(5);
    let mut stale_masks_seen = false;
    for b in 0..9u64 {
        let idx: Vec<usize> = (16 * b as usize..16 * (b as usize + 1)).collect();
        let (x, y) = data.batch(&idx);
        let before = model.clone();
        let previous = cache.set().cloned();
        let rng_before = rng.clone();
        let out = cactus_loss_cached(
            &mut model, &x, &y, phase, 0.4, &cfg, progress, &mut rng, &mut cache, b,
        )
        .unwrap();
        let set = cache.set().expect("a set after a batch");
        assert_eq!(set.masks.len(), 1);
        let masks = &set.masks[0];
        let fresh = prune_masks(&before, cfg.prune_method, masks.ratio).unwrap();
        let same_masks = |a: &cactus::compress::Masks, b: &cactus::compress::Masks| {
            a.layers.iter().zip(&b.layers).all(|(p, q)| match (p, q) {
                (Some(p), Some(q)) => p.bit_eq(q),
                (None, None) => true,
                _ => false,
            })
        };
        if b % 4 == 0 {
            assert!(
                same_masks(masks, &fresh),
                "batch {b}: rebuilt from the current weights"
            );
        } else {
            let previous = previous.expect("cached");
            assert!(
                same_masks(masks, &previous.masks[0]),
                "batch {b}: masks kept"
            );
            assert_eq!(masks.ratio, previous.masks[0].ratio);
            let (d, p) = (set.deltas.as_ref().unwrap(), previous.deltas.unwrap());
            assert!(d.iter().zip(&p).all(|(d, p)| match (d, p) {
                (Some(d), Some(p)) => d.bit_eq(p),
                (None, None) => true,
                _ => false,
            }));
            stale_masks_seen |= !same_masks(masks, &fresh);
            // The loss of the cached selection on the current weights, by hand.
            let mut r = rng_before;
            let mut full_net = before.clone();
            let full = network_loss(
                &mut full_net,
                Method::Cactus,
                &x,
                &y,
                phase,
                0.4,
                true,
                &mut r,
            );
            let pruned = network_loss(
                &mut apply_masks(&before, masks),
                Method::Cactus,
                &x,
                &y,
                phase,
                0.4,
                false,
                &mut r,
            );
            let shifted = network_loss(
                &mut perturbed(&before, d),
                Method::Cactus,
                &x,
                &y,
                phase,
                0.4,
                false,
                &mut r,
            );
            let by_hand = full
                .total
                .add(&pruned.total)
                .add(&shifted.total)
                .mul_scalar(1.0 / 3.0);
            assert_eq!(
                out.total.item().to_bits(),
                by_hand.item().to_bits(),
                "batch {b}"
            );
            assert_eq!(
                rng.state(),
                r.state(),
                "batch {b}: no ratio drawn on a reuse"
            );
        }
        let grads = out.total.backward();
        drop(out.total);
        opt.step(&mut model.net.parameters_mut(), &grads).unwrap();
        assert!(
            !same_weights(&model, &before),
            "batch {b}: the weights moved"
        );
    }
    assert!(
        stale_masks_seen,
        "the weights moved enough for fresh masks to differ from the cached ones"
    );
}

// The command line.

fn cactus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cactus"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("the cactus binary runs")
}

fn ok(args: &[&str]) {
    let out = cactus(args);
    assert!(
        out.status.success(),
        "cactus {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fails(args: &[&str], needle: &str) {
    let out = cactus(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "should fail:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected '{needle}' in:\n{err}");
}

/// Two epochs of 6 batches (not a multiple of K = 4).
fn train<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--out",
        out,
        "--model",
        "mlp",
        "--width",
        "0.25",
        "--limit-train",
        "96",
        "--batch-size",
        "16",
        "--warmup-batches",
        "2",
        "--ramp-batches",
        "2",
        "--compress",
        "prune+quant",
        "--no-eval",
        "--quiet",
    ];
    a.extend_from_slice(extra);
    a
}

fn file(dir: &Path, name: &str) -> Vec<u8> {
    fs::read(dir.join(name)).unwrap()
}

/// The tensors of a run's `train_state.safetensors`, by name.
fn state_tensors(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = file(dir, "train_state.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    tensors.sort();
    tensors
}

fn history_without_timings(dir: &Path) -> serde_json::Value {
    let mut h: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("history.json")).unwrap()).unwrap();
    for r in h.as_array_mut().unwrap() {
        let r = r.as_object_mut().unwrap();
        r.remove("seconds");
        r.remove("samples_per_second");
    }
    h
}

#[test]
fn a_resumed_k4_run_ends_on_the_uninterrupted_runs_bytes() {
    let whole = scratch("cli-whole");
    let parts = scratch("cli-parts");
    let (w, p) = (whole.to_str().unwrap(), parts.to_str().unwrap());
    ok(&train(w, &["--refresh-every", "4", "--epochs", "2"]));
    ok(&train(p, &["--refresh-every", "4", "--epochs", "1"]));
    // A different K is a different run.
    fails(
        &train(p, &["--resume", "--epochs", "2", "--refresh-every", "8"]),
        "--refresh-every 8 (the run was started with 4)",
    );
    ok(&train(p, &["--resume", "--epochs", "2"]));
    assert!(
        file(&whole, "model.safetensors") == file(&parts, "model.safetensors"),
        "model.safetensors differs"
    );
    // The state's bytes hold the history and its timings; its tensors must be the same.
    assert!(
        state_tensors(&whole) == state_tensors(&parts),
        "train_state.safetensors: the optimizer's or the generator's state differs"
    );
    assert_eq!(
        history_without_timings(&whole),
        history_without_timings(&parts)
    );
    let saved = load_checkpoint(&whole.join("model.safetensors")).unwrap();
    let config: TrainConfig = serde_json::from_str(&saved.extra["train.config"]).unwrap();
    assert_eq!(
        config.cactus.refresh_every, 4,
        "saved with the run's settings"
    );
    // And the uninterrupted K = 4 run is not the K = 1 run.
    let k1 = scratch("cli-k1");
    let k1s = k1.to_str().unwrap();
    ok(&train(k1s, &["--refresh-every", "1", "--epochs", "2"]));
    let mut k1_model = load_checkpoint(&k1.join("model.safetensors"))
        .unwrap()
        .model;
    assert!(!same_weights(&k1_model, &saved.model));
    // Not passing the flag is K = 1, to the byte.
    let default = scratch("cli-default");
    ok(&train(default.to_str().unwrap(), &["--epochs", "2"]));
    assert!(file(&k1, "model.safetensors") == file(&default, "model.safetensors"));
    assert!(state_tensors(&k1) == state_tensors(&default));
    k1_model = load_checkpoint(&default.join("model.safetensors"))
        .unwrap()
        .model;
    assert!(!same_weights(&k1_model, &saved.model));
    for d in [whole, parts, k1, default] {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn refresh_every_is_checked() {
    let out = scratch("cli-bad");
    let o = out.to_str().unwrap();
    fails(
        &train(o, &["--refresh-every", "0"]),
        "--refresh-every must be at least 1",
    );
    fails(
        &train(o, &["--method", "sabr", "--refresh-every", "4"]),
        "--refresh-every only apply to --method cactus",
    );
    let negative = cactus(&train(o, &["--refresh-every", "-1"]));
    assert_eq!(negative.status.code(), Some(2), "a usage error");
    assert!(!out.exists(), "nothing written for a refused run");
    let help = String::from_utf8_lossy(&cactus(&["train", "--help"]).stdout).into_owned();
    assert!(help.contains("--refresh-every <K>"), "{help}");
}
