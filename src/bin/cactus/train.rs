//! `cactus train`: its options, the run they describe (checked against a resumed run's own),
//! and the training followed by the evaluation grid.

use crate::args::{check_ratios, formats_help, parse, parse_prune_choice, prune_methods_help};
use crate::eval::evaluate;
use crate::output::{print_table, write_reports};
use anyhow::{bail, Result};
use cactus::attack::AwpConfig;
use cactus::compress::quant::{Format, Granularity};
use cactus::compress::PruneMethod;
use cactus::data::{self, DatasetKind, Split};
use cactus::eval::{grid, EvalConfig};
use cactus::io::{run, RunLock};
use cactus::nn::{Arch, Init};
use cactus::train::split::Parallelism;
use cactus::train::trainer::{MODEL_FILE, STATE_FILE};
use cactus::train::{CactusConfig, CompressKind, Method, Strategy, TrainConfig, Trainer};
use cactus::Device;
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Architecture.
    #[arg(long, value_enum, default_value = "small")]
    model: Arch,
    /// Channel/width multiplier (cnn7 and mlp; 0.25 gives the quarter-width cnn7).
    #[arg(long, default_value_t = 1.0)]
    width: f32,
    /// Weight initialisation [default: ibp for certified methods, pytorch for std].
    #[arg(long, value_enum)]
    init: Option<Init>,
    #[arg(long, value_enum, default_value = "mnist-mini")]
    dataset: DatasetKind,
    /// Directory with the dataset's files (every dataset but mnist-mini).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cactus")]
    method: Method,
    /// CACTUS: what the compression set holds (pruned networks, the AWP-perturbed network
    /// standing in for quantization, or both).
    #[arg(long, value_enum, default_value = "prune")]
    compress: CompressKind,
    #[arg(long, default_value = "gul1", value_parser = parse::<PruneMethod>,
          help = prune_methods_help("CACTUS: how the set's networks are pruned"))]
    prune_method: PruneMethod,
    /// CACTUS: how the set's pruning ratios are chosen each batch.
    #[arg(long, value_enum, default_value = "sampling")]
    strategy: Strategy,
    /// CACTUS: pruning ratios (`sampling` draws from them, `fixed` uses them all) [default:
    /// sampling from U(0.25, 0.75); fixed 0.25,0.5,0.75]. A --prune-method that fixes its own
    /// ratio prunes one copy at it, and takes no --ratios, --samples or --strategy.
    #[arg(long, value_delimiter = ',')]
    ratios: Option<Vec<f64>>,
    /// CACTUS: pruned networks drawn per batch by `sampling`.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// CACTUS: AWP radius in units of each weight tensor's int8 quantization step.
    #[arg(long, default_value_t = 0.5)]
    awp_eta: f32,
    /// CACTUS: AWP's signed-gradient ascent steps.
    #[arg(long, default_value_t = 1)]
    awp_steps: usize,
    /// CACTUS: rebuild the compression set (the pruning ratios and masks, AWP's perturbation)
    /// every K batches of an epoch and at each epoch's first, and in between apply the cached
    /// masks and perturbation to the current weights; 1 rebuilds every batch. Larger K saves
    /// the mask and AWP computations at the cost of a staler selection.
    #[arg(long, value_name = "K", default_value_t = 1)]
    refresh_every: u64,
    /// L-inf radius in pixel space ([0, 1]).
    #[arg(long, default_value_t = 0.1)]
    eps: f32,
    #[arg(long, default_value_t = 8)]
    epochs: u64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f32,
    /// Adam's (L2) weight decay.
    #[arg(long, default_value_t = 1e-5)]
    weight_decay: f32,
    /// Clip gradients to this global l2 norm.
    #[arg(long, default_value_t = 10.0)]
    clip: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training images.
    #[arg(long)]
    limit_train: Option<usize>,
    /// Batches of pure cross-entropy before ε and the certified weight ramp up.
    #[arg(long, default_value_t = 250)]
    warmup_batches: u64,
    /// Batches over which ε and the certified weight rise linearly to their targets.
    #[arg(long, default_value_t = 250)]
    ramp_batches: u64,
    /// Final weight of the certified loss (1 − λ).
    #[arg(long, default_value_t = 0.75)]
    cert_weight: f32,
    /// SABR's box radius as a fraction of ε.
    #[arg(long, default_value_t = 0.4)]
    sabr_lambda: f32,
    /// Output directory [default: out/MODEL-METHOD-DATASET].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in --out (options given again must match it; --epochs may grow).
    #[arg(long)]
    resume: bool,
    /// Where to train: cpu, or cuda (the first NVIDIA GPU: needs its driver and NVRTC 13,
    /// libnvrtc.so.13 on LD_LIBRARY_PATH).
    #[arg(long, default_value = "cpu", value_parser = parse::<Device>)]
    device: Device,
    /// CPU parallelism of a step: `batch` (each thread takes a slice of the batch through the
    /// whole step; mlp and small with std, IBP, SABR or CACTUS with --compress prune: batch
    /// norm and AWP's perturbation need the whole batch), `ops` (each op splits its work over
    /// the threads), or `auto` (batch where it applies, else ops).
    #[arg(long, value_enum, default_value = "auto")]
    parallel: Parallelism,
    /// Test points for the final evaluation [default: the whole test split].
    #[arg(long, value_parser = crate::args::parse_positive)]
    eval_limit: Option<usize>,
    #[arg(long, value_delimiter = ',', default_value = "none,gul1,lul1,gsl2", value_parser = parse_prune_choice,
          help = prune_methods_help("Pruning methods of the final evaluation (`none` for no pruning)"))]
    eval_prune: Vec<Option<PruneMethod>>,
    /// Pruning ratios of the final evaluation (a method that fixes its own ratio is evaluated
    /// at it).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9")]
    eval_ratios: Vec<f64>,
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp16,int8,int4", value_parser = parse::<Format>,
          help = formats_help("Weight formats of the final evaluation"))]
    eval_quant: Vec<Format>,
    /// Skip the final evaluation.
    #[arg(long)]
    no_eval: bool,
    /// No progress bars or per-epoch lines.
    #[arg(long, short)]
    quiet: bool,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            model: self.model,
            width: self.width,
            init: self.init.unwrap_or(if self.method.is_certified() {
                Init::Ibp
            } else {
                Init::Pytorch
            }),
            dataset: self.dataset,
            method: self.method,
            eps: self.eps,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.clip,
            seed: self.seed,
            limit_train: self.limit_train,
            warmup_batches: self.warmup_batches,
            ramp_batches: self.ramp_batches,
            cert_weight: self.cert_weight,
            sabr_lambda: self.sabr_lambda,
            cactus: CactusConfig {
                compress: self.compress,
                prune_method: self.prune_method,
                strategy: self.strategy,
                ratios: self.ratios.clone(),
                samples: self.samples,
                awp: AwpConfig {
                    eta: self.awp_eta,
                    steps: self.awp_steps,
                },
                refresh_every: self.refresh_every,
            },
            parallel: self.parallel,
        }
    }
}

/// CACTUS options given on the command line, for a method that is not CACTUS.
const CACTUS_OPTIONS: [&str; 8] = [
    "compress",
    "prune_method",
    "strategy",
    "ratios",
    "samples",
    "awp_eta",
    "awp_steps",
    "refresh_every",
];

/// Whether the option with this id was given on the command line (not left to its default).
fn on_command_line(given: &ArgMatches, id: &str) -> bool {
    given.value_source(id) == Some(ValueSource::CommandLine)
}

/// An option's id as the flag it is typed as: `prune_method` is `--prune-method`.
fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// On `--resume`, the saved settings win; an option given on the command line must agree with
/// them, except `--epochs`, which may extend the run.
fn resumed_config(
    saved: &TrainConfig,
    wanted: &TrainConfig,
    given: &ArgMatches,
) -> Result<TrainConfig> {
    let saved_json = serde_json::to_value(saved)?;
    let wanted_json = serde_json::to_value(wanted)?;
    let mut conflicts = Vec::new();
    for (field, option) in [
        ("model", "model"),
        ("width", "width"),
        ("init", "init"),
        ("dataset", "dataset"),
        ("method", "method"),
        ("eps", "eps"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("weight_decay", "weight_decay"),
        ("max_grad_norm", "clip"),
        ("seed", "seed"),
        ("limit_train", "limit_train"),
        ("warmup_batches", "warmup_batches"),
        ("ramp_batches", "ramp_batches"),
        ("cert_weight", "cert_weight"),
        ("sabr_lambda", "sabr_lambda"),
        ("cactus.compress", "compress"),
        ("cactus.prune_method", "prune_method"),
        ("cactus.strategy", "strategy"),
        ("cactus.ratios", "ratios"),
        ("cactus.samples", "samples"),
        ("cactus.awp.eta", "awp_eta"),
        ("cactus.awp.steps", "awp_steps"),
        ("parallel", "parallel"),
        ("cactus.refresh_every", "refresh_every"),
    ] {
        let at = |v: &serde_json::Value| {
            field
                .split('.')
                .fold(v.clone(), |v, key| v.get(key).cloned().unwrap_or_default())
        };
        let (saved_value, wanted_value) = (at(&saved_json), at(&wanted_json));
        if on_command_line(given, option) && saved_value != wanted_value {
            conflicts.push(format!(
                "{} {} (the run was started with {})",
                flag(option),
                wanted_value,
                saved_value
            ));
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "--resume continues a run with its own settings; these options differ: {}. Drop \
             them, or train into a new --out",
            conflicts.join(", ")
        );
    }
    let mut config = saved.clone();
    if on_command_line(given, "epochs") {
        config.epochs = wanted.epochs;
    }
    Ok(config)
}

pub fn run(args: TrainArgs, given: &ArgMatches) -> Result<()> {
    let wanted = args.config();
    wanted.validate()?;
    args.device.check()?;
    if wanted.method != Method::Cactus {
        let stray: Vec<String> = CACTUS_OPTIONS
            .iter()
            .filter(|id| on_command_line(given, id))
            .map(|id| flag(id))
            .collect();
        if !stray.is_empty() {
            bail!(
                "{} only apply to --method cactus (this run trains with {})",
                stray.join(", "),
                wanted.method.name()
            );
        }
    }
    let settings = grid(&args.eval_prune, &args.eval_ratios, &args.eval_quant, false);
    check_ratios(&args.eval_ratios, "--eval-ratios")?;
    let out = args.out.clone().unwrap_or_else(|| {
        let method = match wanted.method {
            Method::Cactus => format!("cactus-{}", wanted.cactus.compress.name().replace('+', "-")),
            m => m.name().to_string(),
        };
        PathBuf::from(format!(
            "out/{}-{}-{}",
            wanted.model.name(),
            method,
            wanted.dataset.name()
        ))
    });
    // One writer per folder, and a folder known to be writable, before any work.
    if args.resume && !out.is_dir() {
        bail!(
            "--resume: {} does not exist (no run was saved there); drop --resume to start one",
            out.display()
        );
    }
    let _lock = RunLock::acquire(&out)?;
    let trainer = if args.resume {
        let t = Trainer::resume(&out, |saved| {
            resumed_config(saved, &wanted, given)
                .map_err(|e| cactus::Error::Invalid(format!("{e:#}")))
        })?;
        for repair in &t.repairs {
            eprintln!("repaired: {repair}");
        }
        if !args.quiet {
            eprintln!(
                "resuming {} after epoch {} of {} (step {})",
                out.display(),
                t.epoch,
                t.config.epochs,
                t.step
            );
        }
        t
    } else {
        if run::holds_run(&out, STATE_FILE) {
            bail!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                out.display()
            );
        }
        Trainer::new(wanted, &out)?
    };
    let mut trainer = trainer.on_device(args.device)?;
    let config = trainer.config.clone();
    // The evaluation's data is loaded before training, so that a broken test split is found now
    // rather than after the last epoch.
    let test_set = if args.no_eval {
        None
    } else {
        let mut test_set = data::load(config.dataset, args.data.as_deref(), Split::Test)?;
        if let Some(n) = args.eval_limit {
            test_set = test_set.limit(n);
        }
        Some(test_set)
    };
    let mut train_set = data::load(config.dataset, args.data.as_deref(), Split::Train)?;
    if let Some(n) = config.limit_train {
        train_set = train_set.limit(n);
    }
    let complete = trainer.epoch >= config.epochs;
    if !args.quiet && !complete {
        eprintln!(
            "training {} ({} parameters) with {} on {} ({} images), ε = {}, {} epochs of batch {}, into {}",
            config.model.name(),
            trainer.model.net.num_parameters(),
            config.method.name(),
            config.dataset.name(),
            train_set.len(),
            config.eps,
            config.epochs,
            config.batch_size,
            out.display()
        );
        let schedule = config.schedule();
        let per_epoch = data::num_batches(train_set.len(), config.batch_size, true) as u64;
        if config.method.is_certified() && per_epoch * config.epochs < schedule.length() {
            eprintln!(
                "note: the run has {} batches, fewer than the warm-up and ramp ({} + {}): it ends before reaching ε = {}",
                per_epoch * config.epochs,
                schedule.warmup_batches,
                schedule.ramp_batches,
                config.eps
            );
        }
    }
    let model_path = out.join(MODEL_FILE);
    if complete {
        // Resume verified the committed files and restored the stable names: the run is
        // complete, and model.safetensors is its last epoch.
        eprintln!(
            "the run in {} already has its {} epochs ({} holds epoch {})",
            out.display(),
            config.epochs,
            model_path.display(),
            trainer.epoch
        );
    } else {
        trainer.run(&train_set, args.quiet)?;
        if !args.quiet {
            eprintln!("saved {} (epoch {})", model_path.display(), trainer.epoch);
        }
    }
    let Some(test_set) = test_set else {
        return Ok(());
    };
    let (report, _) = evaluate(
        &trainer.model,
        &test_set,
        config.eps,
        &EvalConfig::new(config.eps),
        &settings,
        Granularity::PerTensor,
        None,
        &model_path,
        args.quiet,
    )?;
    write_reports(&report, &out)?;
    print_table(&report, &out);
    Ok(())
}
