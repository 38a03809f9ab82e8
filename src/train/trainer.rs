//! The training loop behind `cactus train`: epochs of seeded batches, the schedule, the loss of
//! the chosen method, Adam; after every epoch the model, the resumable state and the history
//! are committed together (`io::run`: one manifest per epoch), so a stopped run continues
//! (`Trainer::resume`) from its last committed epoch and ends exactly where an uninterrupted
//! one would.

use crate::data::{batches, epoch_order, num_batches, Dataset, DatasetKind};
use crate::io::run::{self, Manifest, MANIFEST_FILE};
use crate::io::TrainState;
use crate::io::{checkpoint_bytes, load_train_state, parse_train_state, train_state_bytes};
use crate::nn::{Arch, Init, Model, ModelSpec};
use crate::rng::Rng;
use crate::tensor::Device;
use crate::tensor::Tensor;
use crate::train::cactus::{cactus_loss_cached, CactusConfig, Progress, SetCache};
use crate::train::losses::{batch_loss, BatchLoss, Method};
use crate::train::schedule::{Phase, Schedule};
use crate::train::split::{batch_split_step, cactus_batch_split_step, Parallelism};
use crate::train::{Adam, AdamConfig, WeightDecay};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File names inside a run's output directory.
pub const MODEL_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "train_state.safetensors";
pub const HISTORY_FILE: &str = "history.json";

/// Everything that defines a run (saved with it; `--resume` continues with the same settings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: Arch,
    /// Channel/width multiplier of cnn7 and mlp.
    pub width: f32,
    pub init: Init,
    pub dataset: DatasetKind,
    pub method: Method,
    pub eps: f32,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f32,
    /// Adam's L2 weight decay (PyTorch `Adam(weight_decay)`).
    pub weight_decay: f32,
    /// Gradient clipping by global norm.
    pub max_grad_norm: f32,
    pub seed: u64,
    /// Use only the first N training images.
    pub limit_train: Option<usize>,
    pub warmup_batches: u64,
    pub ramp_batches: u64,
    /// Final weight of the certified loss (1 − λ).
    pub cert_weight: f32,
    /// SABR's box size τ/ε.
    pub sabr_lambda: f32,
    /// CACTUS's compression set (used by `Method::Cactus`).
    #[serde(default)]
    pub cactus: CactusConfig,
    /// Where a step's parallelism lives (`train::split`).
    #[serde(default = "Parallelism::saved_default")]
    pub parallel: Parallelism,
}

impl Default for TrainConfig {
    /// The defaults of docs/design.md's "Specification decisions": CACTUS (pruning, sampled ratios) on `small`,
    /// mnist-mini, ε = 0.1.
    fn default() -> Self {
        TrainConfig {
            model: Arch::Small,
            width: 1.0,
            init: Init::Ibp,
            dataset: DatasetKind::MnistMini,
            method: Method::Cactus,
            eps: 0.1,
            epochs: 8,
            batch_size: 64,
            lr: 5e-4,
            weight_decay: 1e-5,
            max_grad_norm: 10.0,
            seed: 0,
            limit_train: None,
            warmup_batches: 250,
            ramp_batches: 250,
            cert_weight: 0.75,
            sabr_lambda: 0.4,
            cactus: CactusConfig::default(),
            parallel: Parallelism::Auto,
        }
    }
}

impl TrainConfig {
    /// An error naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !(self.eps.is_finite() && (0.0..=1.0).contains(&self.eps)) {
            return bad(format!(
                "--eps must be in [0, 1] (pixel space), got {}",
                self.eps
            ));
        }
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(format!(
                "--batch-size must be at least 2 (batch norm needs two samples), got {}",
                self.batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay must be ≥ 0, got {}",
                self.weight_decay
            ));
        }
        if !(self.cert_weight.is_finite() && (0.0..=1.0).contains(&self.cert_weight)) {
            return bad(format!(
                "--cert-weight must be in [0, 1], got {}",
                self.cert_weight
            ));
        }
        if !(self.sabr_lambda.is_finite() && self.sabr_lambda > 0.0 && self.sabr_lambda <= 1.0) {
            return bad(format!(
                "--sabr-lambda must be in (0, 1], got {}",
                self.sabr_lambda
            ));
        }
        if !(self.width.is_finite() && self.width > 0.0) {
            return bad(format!("--width must be positive, got {}", self.width));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return bad(format!(
                "the clipping norm must be positive, got {}",
                self.max_grad_norm
            ));
        }
        if self.limit_train == Some(0) {
            return bad("--limit-train must be at least 1".into());
        }
        let quantizing_set = self.method == Method::Cactus && self.cactus.compress.quantizes();
        if self.parallel == Parallelism::Batch && (self.model == Arch::Cnn7 || quantizing_set) {
            return bad(format!(
                "--parallel batch splits the batch across threads, which changes batch norm's \
                 statistics (cnn7) and AWP's perturbation (CACTUS with --compress quant or \
                 prune+quant); {} with {} needs --parallel ops or auto",
                self.model.name(),
                self.method.name()
            ));
        }
        self.cactus.validate()
    }

    pub fn schedule(&self) -> Schedule {
        Schedule {
            eps: self.eps,
            cert_weight: if self.method.is_certified() {
                self.cert_weight
            } else {
                0.0
            },
            warmup_batches: self.warmup_batches,
            ramp_batches: self.ramp_batches,
        }
    }

    pub fn adam(&self) -> AdamConfig {
        AdamConfig {
            lr: self.lr,
            weight_decay: self.weight_decay,
            decay: WeightDecay::L2,
            max_grad_norm: Some(self.max_grad_norm),
            ..AdamConfig::default()
        }
    }

    pub fn model_spec(&self) -> ModelSpec {
        let mut spec = ModelSpec::new(self.model, self.dataset.shape(), self.dataset.num_classes());
        spec.width = self.width;
        spec.init = self.init;
        spec.normalization = Some(self.dataset.normalization());
        spec
    }

    /// The loss of one training batch for this run's method: `batch_loss` of one network, or
    /// CACTUS's set loss (whose strategies may depend on `progress`) with a set built for this
    /// batch alone.
    pub fn batch_loss(
        &self,
        model: &mut Model,
        x: &Tensor,
        y: &[usize],
        phase: Phase,
        progress: Progress,
        rng: &mut Rng,
    ) -> Result<BatchLoss> {
        let mut fresh = SetCache::new(1);
        self.batch_loss_cached(model, x, y, phase, progress, rng, &mut fresh, 0)
    }

    /// [`TrainConfig::batch_loss`] at the 0-based `batch` of an epoch, CACTUS reusing the
    /// compression set in `cache` until a rebuild is due (`--refresh-every`).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_loss_cached(
        &self,
        model: &mut Model,
        x: &Tensor,
        y: &[usize],
        phase: Phase,
        progress: Progress,
        rng: &mut Rng,
        cache: &mut SetCache,
        batch: u64,
    ) -> Result<BatchLoss> {
        match self.method {
            Method::Cactus => cactus_loss_cached(
                model,
                x,
                y,
                phase,
                self.sabr_lambda,
                &self.cactus,
                progress,
                rng,
                cache,
                batch,
            ),
            method => Ok(batch_loss(
                model,
                method,
                x,
                y,
                phase,
                self.sabr_lambda,
                rng,
            )),
        }
    }

    /// The settings as checkpoint metadata.
    fn metadata(&self, epochs_done: u64) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("train.method".into(), self.method.name().into());
        m.insert("train.dataset".into(), self.dataset.name().into());
        m.insert("train.eps".into(), self.eps.to_string());
        if self.method == Method::Cactus {
            m.insert("train.compress".into(), self.cactus.compress.name().into());
        }
        m.insert("train.epochs_done".into(), epochs_done.to_string());
        m.insert(
            "train.config".into(),
            serde_json::to_string(self).expect("config serialises"),
        );
        m
    }
}

/// What one epoch did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: u64,
    /// Optimiser steps taken by the end of the epoch.
    pub steps: u64,
    /// Mean training loss.
    pub loss: f64,
    /// Mean clean cross-entropy.
    pub clean_ce: f64,
    /// Mean certified loss over the batches that computed it.
    pub cert_loss: Option<f64>,
    /// Clean accuracy on the training batches (train-mode batch norm), a fraction.
    pub train_accuracy: f64,
    /// Share of the training predictions that went to the most predicted class: near 1 when the
    /// network collapsed to a constant classifier.
    #[serde(default)]
    pub majority_share: f64,
    /// ε and certified weight at the epoch's last batch.
    pub eps: f32,
    pub cert_weight: f32,
    pub seconds: f64,
    pub samples_per_second: f64,
}

/// A run in progress.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: Model,
    pub optimizer: Adam,
    pub rng: Rng,
    /// Completed epochs.
    pub epoch: u64,
    /// Optimiser steps taken.
    pub step: u64,
    pub history: Vec<EpochRecord>,
    pub out: PathBuf,
    /// Where the network and each batch live during training (not a setting of the run: a run
    /// saved on one device resumes on another).
    pub device: Device,
    /// What `resume` found amiss in the folder and repaired, one line each (for the user).
    pub repairs: Vec<String>,
    /// CACTUS's compression set of the current (or last) epoch: made anew at each epoch's start,
    /// so it is never saved (`--refresh-every`).
    pub set_cache: SetCache,
}

impl Trainer {
    /// A fresh run writing into `out`.
    pub fn new(config: TrainConfig, out: &Path) -> Result<Trainer> {
        config.validate()?;
        let mut rng = Rng::seed(config.seed);
        let model = Model::new(config.model_spec(), &mut rng)?;
        Ok(Trainer {
            optimizer: Adam::new(config.adam()),
            set_cache: SetCache::new(config.cactus.refresh_every),
            config,
            model,
            rng,
            epoch: 0,
            step: 0,
            history: Vec::new(),
            out: out.to_path_buf(),
            device: Device::Cpu,
            repairs: Vec::new(),
        })
    }

    /// Train on `device` from now on: the network moves there (an error if this machine cannot
    /// run it, naming what is missing).
    pub fn on_device(mut self, device: Device) -> Result<Trainer> {
        device.check()?;
        self.model = self.model.to_device(device)?;
        self.device = device;
        Ok(self)
    }

    /// Continue the run saved in `out` from its last committed epoch. `adjust` sees the saved
    /// settings and returns those to continue with (it may raise `epochs`; it should reject
    /// other changes). The committed files are verified against the manifest; stable names a
    /// crash left behind are restored, and a folder written before manifests is committed anew
    /// from its training state (the file it always wrote first). What was repaired is listed
    /// in `repairs`.
    pub fn resume(
        out: &Path,
        adjust: impl FnOnce(&TrainConfig) -> Result<TrainConfig>,
    ) -> Result<Trainer> {
        let manifest = run::read_manifest(out)?;
        let (path, state) = match &manifest {
            Some(m) => {
                let (path, bytes) = run::read_committed(out, m, STATE_FILE)?;
                let state = parse_train_state(&path, &bytes)?;
                if state.epoch != m.epoch {
                    return Err(Error::bad_file(
                        &path,
                        format!(
                            "holds epoch {} but {MANIFEST_FILE} commits epoch {}",
                            state.epoch, m.epoch
                        ),
                    ));
                }
                (path, state)
            }
            None => {
                let path = out.join(STATE_FILE);
                if !path.exists() {
                    return Err(Error::Invalid(format!(
                        "--resume: no run was saved in {} ({} does not exist: no epoch was \
                         completed there); drop --resume to start one",
                        out.display(),
                        out.join(MANIFEST_FILE).display()
                    )));
                }
                let state = load_train_state(&path)?;
                (path, state)
            }
        };
        let saved: TrainConfig = serde_json::from_str(&state.config)
            .map_err(|e| Error::bad_file(&path, format!("run settings are unreadable: {e}")))?;
        let history: Vec<EpochRecord> = serde_json::from_str(&state.history)
            .map_err(|e| Error::bad_file(&path, format!("run history is unreadable: {e}")))?;
        // Settings read back from the file are the file's to answer for.
        saved
            .validate()
            .map_err(|e| Error::bad_file(&path, format!("run settings: {e}")))?;
        let config = adjust(&saved)?;
        config.validate()?;
        if state.model.spec != config.model_spec() {
            return Err(Error::bad_file(
                &path,
                "the saved model does not match the run's settings",
            ));
        }
        let mut optimizer = Adam::new(config.adam());
        optimizer.restore(state.adam_step, state.adam_m, state.adam_v)?;
        let mut trainer = Trainer {
            set_cache: SetCache::new(config.cactus.refresh_every),
            config,
            model: state.model,
            optimizer,
            rng: Rng::from_state(state.rng),
            epoch: state.epoch,
            step: state.step,
            history,
            out: out.to_path_buf(),
            device: Device::Cpu,
            repairs: Vec::new(),
        };
        trainer.repairs = match &manifest {
            Some(m) => trainer.repair(m, &saved)?,
            None => {
                trainer.save()?;
                vec![format!(
                    "{}: a run folder without {MANIFEST_FILE} (written by an earlier cactus): \
                     {MODEL_FILE} and {HISTORY_FILE} were rewritten from {STATE_FILE} (epoch {}) \
                     and committed",
                    out.display(),
                    trainer.epoch
                )]
            }
        };
        Ok(trainer)
    }

    /// Bring the folder back to the manifest `m` (what `resume` loaded, with the `saved`
    /// settings): committed files that fail their check are rewritten when this state
    /// reproduces them exactly (same size and hash), stable names are pointed at the committed
    /// files again, and files of an epoch whose commit a crash cut short are removed.
    fn repair(&self, m: &Manifest, saved: &TrainConfig) -> Result<Vec<String>> {
        let mut repairs = Vec::new();
        let mut regenerated = None;
        for entry in &m.files {
            let Err(damage) = run::read_committed(&self.out, m, &entry.name) else {
                continue;
            };
            if regenerated.is_none() {
                regenerated = Some(self.epoch_files(saved)?);
            }
            let same = regenerated.iter().flatten().find(|(name, bytes)| {
                *name == entry.name
                    && bytes.len() as u64 == entry.bytes
                    && run::sha256_hex(bytes) == entry.sha256
            });
            let Some((_, bytes)) = same else {
                return Err(damage);
            };
            crate::io::write_atomic(&self.out.join(&entry.file), bytes)?;
            repairs.push(format!(
                "{}: damaged or missing ({damage}); rewritten from the training state",
                self.out.join(&entry.file).display()
            ));
        }
        for name in run::publish(&self.out, m)? {
            repairs.push(format!(
                "{}: did not hold the committed epoch {} (a save was interrupted); restored",
                self.out.join(name).display(),
                m.epoch
            ));
        }
        run::remove_uncommitted(&self.out, m)?;
        Ok(repairs)
    }

    /// The files one epoch commits, by stable name: the resumable state, the checkpoint (with
    /// `config`'s settings in its metadata) and the history. Same state, same bytes.
    fn epoch_files(&self, config: &TrainConfig) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let (adam_step, m, v) = self.optimizer.state()?;
        let history = serde_json::to_string_pretty(&self.history).expect("history serialises");
        let state = train_state_bytes(&TrainState {
            model: self.model.clone(),
            config: serde_json::to_string(config).expect("config serialises"),
            history: history.clone(),
            epoch: self.epoch,
            step: self.step,
            rng: self.rng.state(),
            adam_step,
            adam_m: m,
            adam_v: v,
        })?;
        let model = checkpoint_bytes(&self.model, &config.metadata(self.epoch))?;
        Ok(vec![
            (STATE_FILE, state),
            (MODEL_FILE, model),
            (HISTORY_FILE, history.into_bytes()),
        ])
    }

    /// Commit this epoch: `model.safetensors`, the resumable state and the history go in one
    /// commit (`io::run::commit`), so a crash at any moment leaves the folder at this epoch or
    /// at the previous one, every file of it whole. The state embeds its own copy of the
    /// model, so it never pairs weights and moments of different epochs.
    pub fn save(&self) -> Result<()> {
        let files = self.epoch_files(&self.config)?;
        let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
        run::commit(&self.out, self.epoch, &files)?;
        Ok(())
    }

    /// Train one epoch on `data` and save. A non-finite loss or gradient stops with an error
    /// before any update of that batch, leaving the last saved epoch in place.
    pub fn run_epoch(&mut self, data: &Dataset, bar: &ProgressBar) -> Result<EpochRecord> {
        let cfg = self.config.clone();
        let schedule = cfg.schedule();
        let order = epoch_order(data.len(), &mut self.rng);
        let total = num_batches(data.len(), cfg.batch_size, true);
        if total == 0 {
            return Err(Error::Invalid(format!(
                "{} training images are fewer than one batch of {}",
                data.len(),
                cfg.batch_size
            )));
        }
        bar.set_length(total as u64);
        bar.set_position(0);
        bar.set_prefix(format!("epoch {}/{}", self.epoch + 1, cfg.epochs));
        // The set's cache lives one epoch: rebuilt at its batch 0, so a resume (always at an
        // epoch boundary) continues exactly.
        self.set_cache = SetCache::new(cfg.cactus.refresh_every);
        let start = Instant::now();
        let (mut loss_sum, mut ce_sum, mut cert_sum, mut cert_n) = (0.0, 0.0, 0.0, 0usize);
        let (mut correct, mut seen) = (0usize, 0usize);
        let mut predicted = vec![0usize; data.num_classes.max(1)];
        let mut phase = Phase {
            eps: 0.0,
            cert_weight: 0.0,
        };
        for (b, idx) in batches(&order, cfg.batch_size, true).enumerate() {
            phase = schedule.at(self.step);
            let (x, y) = data.batch(idx);
            let x = x.to_device(self.device)?;
            let progress = Progress {
                step: self.step,
                total_steps: cfg.epochs * total as u64,
                ramp_end: schedule.length(),
            };
            let split = cfg.parallel.splits(&cfg, &self.model, self.device, y.len());
            // The loss, its gradients (computed by the split step, or pending on the loss
            // tensor), and what the epoch reports.
            let (loss, pending, clean_ce, cert, logits) = if split {
                let s = if cfg.method == Method::Cactus {
                    let set = self.set_cache.pruning_set(
                        &self.model,
                        &cfg.cactus,
                        progress,
                        &mut self.rng,
                        b as u64,
                    )?;
                    cactus_batch_split_step(
                        &self.model,
                        &x,
                        &y,
                        phase,
                        cfg.sabr_lambda,
                        set,
                        &mut self.rng,
                    )
                } else {
                    batch_split_step(
                        &self.model,
                        cfg.method,
                        &x,
                        &y,
                        phase,
                        cfg.sabr_lambda,
                        &mut self.rng,
                    )
                };
                (s.loss, Err(s.grads), s.clean_ce, s.cert, s.logits)
            } else {
                let out = cfg.batch_loss_cached(
                    &mut self.model,
                    &x,
                    &y,
                    phase,
                    progress,
                    &mut self.rng,
                    &mut self.set_cache,
                    b as u64,
                )?;
                (
                    out.total.item(),
                    Ok(out.total),
                    out.clean_ce,
                    out.cert,
                    out.logits,
                )
            };
            if !loss.is_finite() {
                return Err(Error::Invalid(format!(
                    "training loss is {loss} at epoch {} batch {} (step {}, ε {}): stopped; {} \
                     still holds the last completed epoch ({}). Try a lower --lr or a longer ramp.",
                    self.epoch + 1,
                    b + 1,
                    self.step,
                    phase.eps,
                    self.out.join(MODEL_FILE).display(),
                    self.epoch
                )));
            }
            let grads = match pending {
                Ok(total) => total.backward(),
                Err(grads) => grads,
            };
            self.optimizer
                .step(&mut self.model.net.parameters_mut(), &grads)
                .map_err(|e| {
                    Error::Invalid(format!(
                        "epoch {} batch {}: {e}; {} still holds epoch {}",
                        self.epoch + 1,
                        b + 1,
                        self.out.join(MODEL_FILE).display(),
                        self.epoch
                    ))
                })?;
            self.step += 1;
            loss_sum += loss as f64;
            ce_sum += clean_ce as f64;
            if let Some(c) = cert {
                cert_sum += c as f64;
                cert_n += 1;
            }
            seen += y.len();
            let predictions = logits.argmax_rows();
            correct += predictions.iter().zip(&y).filter(|(p, t)| p == t).count();
            for p in predictions {
                if let Some(c) = predicted.get_mut(p) {
                    *c += 1;
                }
            }
            let rate = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4}  acc {:5.1}%  ε {:.4}  cert w {:.2}  {:.0} samples/s",
                loss_sum / (b + 1) as f64,
                100.0 * correct as f64 / seen as f64,
                phase.eps,
                phase.cert_weight,
                rate
            ));
            bar.inc(1);
        }
        let seconds = start.elapsed().as_secs_f64();
        self.epoch += 1;
        let record = EpochRecord {
            epoch: self.epoch,
            steps: self.step,
            loss: loss_sum / total as f64,
            clean_ce: ce_sum / total as f64,
            cert_loss: (cert_n > 0).then(|| cert_sum / cert_n as f64),
            train_accuracy: correct as f64 / seen as f64,
            majority_share: predicted.iter().copied().max().unwrap_or(0) as f64 / seen as f64,
            eps: phase.eps,
            cert_weight: phase.cert_weight,
            seconds,
            samples_per_second: seen as f64 / seconds.max(1e-9),
        };
        self.history.push(record.clone());
        self.save()?;
        Ok(record)
    }

    /// Train the remaining epochs, printing one line per epoch (and a progress bar on a
    /// terminal unless `quiet`).
    pub fn run(&mut self, data: &Dataset, quiet: bool) -> Result<()> {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:25}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        };
        while self.epoch < self.config.epochs {
            let r = self.run_epoch(data, &bar)?;
            if let Some(warning) = collapse_warning(&r, data.num_classes) {
                bar.suspend(|| eprintln!("warning: {warning}"));
            }
            if !quiet {
                bar.suspend(|| {
                    eprintln!(
                        "epoch {:>3}/{}  loss {:.4}  clean CE {:.4}  cert {}  train acc {:5.1}%  ε {:.4}  {:.1}s  {:.0} samples/s",
                        r.epoch,
                        self.config.epochs,
                        r.loss,
                        r.clean_ce,
                        r.cert_loss.map_or("-".to_string(), |c| format!("{c:.4}")),
                        100.0 * r.train_accuracy,
                        r.eps,
                        r.seconds,
                        r.samples_per_second
                    )
                });
            }
        }
        bar.finish_and_clear();
        Ok(())
    }
}

/// A warning when an epoch's predictions went almost all to one class (a constant classifier,
/// the usual failure of certified training with a steep ramp), with what to try.
pub fn collapse_warning(r: &EpochRecord, num_classes: usize) -> Option<String> {
    const SHARE: f64 = 0.9;
    (num_classes > 1 && r.majority_share >= SHARE).then(|| {
        format!(
            "epoch {}: {:.0}% of the training predictions went to one class (train accuracy \
             {:.1}%, ε {}): the network has collapsed to a near-constant classifier. Try \
             --init ibp, a longer --warmup-batches/--ramp-batches, or a lower --lr",
            r.epoch,
            100.0 * r.majority_share,
            100.0 * r.train_accuracy,
            r.eps
        )
    })
}
