//! The `cactus` command line.

use anyhow::{bail, Context, Result};
use cactus::attack::AwpConfig;
use cactus::compress::prune::PruneMethod;
use cactus::compress::quant::{Format, Granularity};
use cactus::data::{self, DatasetKind, Split};
use cactus::eval::grid::compressed;
use cactus::eval::plot::accuracy_svg;
use cactus::eval::{
    evaluate_grid, grid, parse_shard, EvalConfig, PointRecord, Recalibration, Report, Setting,
};
use cactus::io::{load_checkpoint, save_checkpoint, save_compressed_checkpoint, write_atomic};
use cactus::nn::{Arch, Init, Layer, Mode, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::train::trainer::{MODEL_FILE, STATE_FILE};
use cactus::train::{CactusConfig, CompressKind, Method, Strategy, TrainConfig, Trainer};
use cactus::verify::Certifier;
use cactus::{Device, Tensor};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "cactus",
    version,
    about = "Certified training of networks that stay certified after compression"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network (standard, IBP, SABR or CACTUS), save it after every epoch, then
    /// evaluate it under compression.
    ///
    /// With no options: CACTUS (pruning) on `small`, the embedded mnist-mini digits, ε = 0.1,
    /// then the evaluation grid.
    Train(TrainArgs),
    /// Clean, PGD and certified accuracy of a checkpoint on a test set, for each pruning and
    /// number format asked for and each certifier of --certifier; writes report.json, .csv,
    /// .md and report.svg.
    Eval(EvalArgs),
    /// Combine the reports of `cactus eval --shard K/N` runs (every K once) into one report.
    Merge {
        /// report.json files (or directories holding one) of the shards.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Directory for the merged report.json/.csv/.md/.svg.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a pruned and/or quantized copy of a checkpoint (int weights with scale and zero
    /// point, fp16 weights as F16) that `cactus eval` loads like any other.
    Compress(CompressArgs),
    /// Build and initialise a model, and write it as a checkpoint PyTorch can load.
    Init {
        /// Architecture.
        #[arg(long, value_enum, default_value = "small")]
        model: Arch,
        /// Input shape CxHxW, e.g. 1x28x28 (MNIST) or 3x32x32 (CIFAR-10).
        #[arg(long, default_value = "1x28x28", value_parser = parse_shape)]
        input: [usize; 3],
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Channel/width multiplier (cnn7 and mlp; 0.25 gives the quarter-width cnn7).
        #[arg(long, default_value_t = 1.0)]
        width: f32,
        /// Weight initialisation.
        #[arg(long, value_enum, default_value = "pytorch")]
        init: Init,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        #[arg(long, default_value = "model.safetensors")]
        out: PathBuf,
    },
    /// Describe a checkpoint: architecture, layers, parameter counts, metadata.
    Inspect {
        /// A model.safetensors written by cactus.
        checkpoint: PathBuf,
        /// Also print the eval-mode logits of one input filled with this value (compare with
        /// `scripts/twin/pytorch_model.py --probe`).
        #[arg(long)]
        probe: Option<f32>,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
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
    /// CACTUS: how the set's networks are pruned.
    #[arg(long, default_value = "gul1", value_parser = parse_prune_method)]
    prune_method: PruneMethod,
    /// CACTUS: how the set's pruning ratios are chosen each batch.
    #[arg(long, value_enum, default_value = "sampling")]
    strategy: Strategy,
    /// CACTUS: pruning ratios (`sampling` draws from them, `fixed` uses them all) [default:
    /// sampling from U(0.25, 0.75); fixed 0.25,0.5,0.75].
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
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// Test points for the final evaluation [default: the whole test split].
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Pruning methods of the final evaluation (`none` for no pruning).
    #[arg(long, value_delimiter = ',', default_value = "none,gul1,lul1,gsl2", value_parser = parse_prune_choice)]
    eval_prune: Vec<Option<PruneMethod>>,
    /// Pruning ratios of the final evaluation.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9")]
    eval_ratios: Vec<f64>,
    /// Weight formats of the final evaluation.
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp16,int8,int4", value_parser = parse_format)]
    eval_quant: Vec<Format>,
    /// Skip the final evaluation.
    #[arg(long)]
    no_eval: bool,
    /// No progress bars or per-epoch lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// A model.safetensors written by cactus.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Test set [default: the dataset the checkpoint was trained on].
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// Directory with the dataset's files (every dataset but mnist-mini).
    #[arg(long)]
    data: Option<PathBuf>,
    /// L-inf radius [default: the ε the checkpoint was trained for].
    #[arg(long)]
    eps: Option<f32>,
    /// Evaluate only the first N test points.
    #[arg(long)]
    limit: Option<usize>,
    /// Directory for report.json/.csv/.md [default: the checkpoint's directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the JSON report to stdout (instead of the table).
    #[arg(long)]
    json: bool,
    /// Pruning methods (`none`, gul1, gul2, lul1, lul2, gsl1, gsl2, lsl1, lsl2), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "none", value_parser = parse_prune_choice)]
    prune: Vec<Option<PruneMethod>>,
    /// Pruning ratios δ in [0, 1) for every method of --prune.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9,0.95,0.99")]
    ratios: Vec<f64>,
    /// Weight formats (fp32, fp16, intN with N in 2..=8), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "fp32", value_parser = parse_format)]
    quant: Vec<Format>,
    /// Also evaluate every pruned setting in every format of --quant (pruned, then quantized).
    #[arg(long)]
    joint: bool,
    /// Integer quantization: one scale and zero point per tensor or per output channel.
    #[arg(long, default_value = "per-tensor", value_parser = parse_granularity)]
    granularity: Granularity,
    /// Re-estimate each compressed network's batch-norm statistics on the first N batches (of
    /// --batch-size) of the training split before evaluating it [default: keep the full
    /// network's].
    #[arg(long, value_name = "N")]
    recalibrate_bn: Option<usize>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Seed of the attack's random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to evaluate: cpu, or cuda (the first NVIDIA GPU; see train --help).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// Certifiers, weakest first (ibp, crown-ibp, crown, alpha-crown, bab), as a cascade: each
    /// runs only on the points the ones before left uncertified and PGD did not break; one
    /// report row per certifier, counting the points it or a weaker one certified.
    #[arg(long, value_delimiter = ',', default_value = "ibp", value_parser = parse_certifier)]
    certifier: Vec<Certifier>,
    /// Branch and bound's time limit per point, in seconds.
    #[arg(long, default_value_t = 60.0)]
    bab_timeout: f64,
    /// α-CROWN's iterations (Adam on the slopes).
    #[arg(long, default_value_t = 20)]
    alpha_iters: usize,
    /// α-CROWN's learning rate (decayed by 0.98 per iteration).
    #[arg(long, default_value_t = 0.5)]
    alpha_lr: f32,
    /// Memory for one chunk of linear-bound coefficients, in MiB (rows are bounded in chunks
    /// that fit).
    #[arg(long, default_value_t = 1024)]
    verify_memory: usize,
    /// Write one JSON line per (row, point, certifier) here: lower bounds, verdict, seconds.
    #[arg(long, value_name = "FILE.jsonl")]
    per_point: Option<PathBuf>,
    /// Evaluate only the K-th of N equal slices of the test points (0 ≤ K < N); `cactus merge`
    /// combines the shards' reports.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
struct CompressArgs {
    /// A model.safetensors written by cactus.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Pruning method (gul1, gul2, lul1, lul2, gsl1, gsl2, lsl1, lsl2).
    #[arg(long, value_parser = parse_prune_method)]
    prune: Option<PruneMethod>,
    /// Pruning ratio δ in [0, 1) (with --prune).
    #[arg(long)]
    ratio: Option<f64>,
    /// Weight format to store: fp32, fp16 or intN (N in 2..=8; stored as int8 codes with scale
    /// and zero point).
    #[arg(long, default_value = "fp32", value_parser = parse_format)]
    quant: Format,
    /// Integer quantization: one scale and zero point per tensor or per output channel.
    #[arg(long, default_value = "per-tensor", value_parser = parse_granularity)]
    granularity: Granularity,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

fn parse_prune_method(s: &str) -> Result<PruneMethod, String> {
    s.parse().map_err(|e: cactus::Error| e.to_string())
}

fn parse_prune_choice(s: &str) -> Result<Option<PruneMethod>, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        parse_prune_method(s).map(Some)
    }
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: cactus::Error| e.to_string())
}

fn parse_granularity(s: &str) -> Result<Granularity, String> {
    s.parse().map_err(|e: cactus::Error| e.to_string())
}

fn parse_certifier(s: &str) -> Result<Certifier, String> {
    s.parse().map_err(|e: cactus::Error| e.to_string())
}

fn parse_device(s: &str) -> Result<Device, String> {
    s.parse().map_err(|e: cactus::Error| e.to_string())
}

fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split(['x', 'X', ',']).collect();
    let dims: Vec<usize> = parts
        .iter()
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{s}' is not a shape like 1x28x28"))?;
    match dims[..] {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
        _ => Err(format!(
            "'{s}' is not a shape like 1x28x28 (three positive sizes)"
        )),
    }
}

fn main() {
    cactus::runtime::cpu::allocator::keep_freed_memory();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = run(cli, &matches) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    match cli.command {
        Command::Train(args) => {
            let given = matches
                .subcommand_matches("train")
                .expect("train subcommand");
            train(args, given)?;
        }
        Command::Eval(args) => eval(args)?,
        Command::Merge { reports, out } => merge(&reports, &out)?,
        Command::Compress(args) => compress(args)?,
        Command::Init {
            model,
            input,
            classes,
            width,
            init,
            seed,
            out,
        } => {
            let mut spec = ModelSpec::new(model, input, classes);
            spec.width = width;
            spec.init = init;
            let m = Model::new(spec, &mut Rng::seed(seed))?;
            let mut extra = BTreeMap::new();
            extra.insert("seed".to_string(), seed.to_string());
            save_checkpoint(&out, &m, &extra)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} ({} with {} parameters)",
                out.display(),
                model.name(),
                m.net.num_parameters()
            );
        }
        Command::Inspect { checkpoint, probe } => {
            if !checkpoint.exists() {
                bail!("{}: no such file", checkpoint.display());
            }
            let ckpt = load_checkpoint(&checkpoint)?;
            let spec = &ckpt.model.spec;
            println!("checkpoint   {}", checkpoint.display());
            println!(
                "model        {} (width {}, init {:?})",
                spec.arch.name(),
                spec.width,
                spec.init
            );
            println!(
                "input        {}x{}x{}, {} classes",
                spec.input_shape[0], spec.input_shape[1], spec.input_shape[2], spec.num_classes
            );
            if let Some(n) = &spec.normalization {
                println!("normalise    mean {:?} std {:?}", n.mean, n.std);
            }
            println!("parameters   {}", ckpt.model.net.num_parameters());
            for (i, layer) in ckpt.model.net.layers.iter().enumerate() {
                let extra = match layer {
                    Layer::BatchNorm(bn) => {
                        format!("  (batches tracked: {})", bn.num_batches_tracked)
                    }
                    _ => String::new(),
                };
                println!("  {i:>2}  {}{extra}", layer.describe());
            }
            for (k, v) in &ckpt.extra {
                println!("meta         {k} = {v}");
            }
            if let Some(value) = probe {
                let mut shape = vec![1];
                shape.extend(spec.input_shape);
                let x = Tensor::full(&shape, value);
                let logits = cactus::autodiff::with_no_grad(|| ckpt.model.forward(&x, Mode::Eval));
                let text: Vec<String> = logits.data().iter().map(|v| format!("{v:.6}")).collect();
                println!("logits {}", text.join(" "));
            }
        }
    }
    Ok(())
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
            },
        }
    }
}

/// CACTUS options given on the command line, for a method that is not CACTUS.
const CACTUS_OPTIONS: [&str; 7] = [
    "compress",
    "prune_method",
    "strategy",
    "ratios",
    "samples",
    "awp_eta",
    "awp_steps",
];

/// On `--resume`, the saved settings win; an option given on the command line must agree with
/// them, except `--epochs`, which may extend the run.
fn resumed_config(
    saved: &TrainConfig,
    wanted: &TrainConfig,
    given: &ArgMatches,
) -> Result<TrainConfig> {
    let on_command_line = |id: &str| given.value_source(id) == Some(ValueSource::CommandLine);
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
    ] {
        let at = |v: &serde_json::Value| {
            field
                .split('.')
                .fold(v.clone(), |v, key| v.get(key).cloned().unwrap_or_default())
        };
        let (saved_value, wanted_value) = (at(&saved_json), at(&wanted_json));
        if on_command_line(option) && saved_value != wanted_value {
            conflicts.push(format!(
                "--{} {} (the run was started with {})",
                option.replace('_', "-"),
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
    if on_command_line("epochs") {
        config.epochs = wanted.epochs;
    }
    Ok(config)
}

fn train(args: TrainArgs, given: &ArgMatches) -> Result<()> {
    let wanted = args.config();
    wanted.validate()?;
    args.device.check()?;
    if wanted.method != Method::Cactus {
        let stray: Vec<String> = CACTUS_OPTIONS
            .iter()
            .filter(|id| given.value_source(id) == Some(ValueSource::CommandLine))
            .map(|id| format!("--{}", id.replace('_', "-")))
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
    let trainer = if args.resume {
        let t = Trainer::resume(&out, |saved| {
            resumed_config(saved, &wanted, given)
                .map_err(|e| cactus::Error::Invalid(format!("{e:#}")))
        })?;
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
        if out.join(STATE_FILE).exists() {
            bail!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                out.display()
            );
        }
        Trainer::new(wanted, &out)?
    };
    let mut trainer = trainer.on_device(args.device)?;
    let config = trainer.config.clone();
    let mut train_set = data::load(config.dataset, args.data.as_deref(), Split::Train)?;
    if let Some(n) = config.limit_train {
        train_set = train_set.limit(n);
    }
    if !args.quiet {
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
    if trainer.epoch >= config.epochs {
        eprintln!(
            "the run in {} already has its {} epochs",
            out.display(),
            config.epochs
        );
    }
    trainer.run(&train_set, args.quiet)?;
    if !args.quiet {
        eprintln!("saved {}", out.join(MODEL_FILE).display());
    }
    if args.no_eval {
        return Ok(());
    }
    let mut test_set = data::load(config.dataset, args.data.as_deref(), Split::Test)?;
    if let Some(n) = args.eval_limit {
        test_set = test_set.limit(n);
    }
    let (report, _) = run_eval(
        &trainer.model,
        &test_set,
        config.eps,
        &EvalConfig::new(config.eps),
        &settings,
        Granularity::PerTensor,
        None,
        &out.join(MODEL_FILE),
        args.quiet,
    )?;
    write_reports(&report, &out)?;
    println!("{}", report.to_table().trim_end());
    println!("reports in {}", out.display());
    Ok(())
}

/// `report.json`, `.csv`, `.md` and the plot `report.svg`, each written atomically.
fn write_reports(report: &Report, dir: &Path) -> Result<()> {
    report.write(dir)?;
    write_atomic(&dir.join("report.svg"), accuracy_svg(report).as_bytes())?;
    Ok(())
}

fn check_ratios(ratios: &[f64], option: &str) -> Result<()> {
    if let Some(r) = ratios
        .iter()
        .find(|r| !(r.is_finite() && (0.0..1.0).contains(*r)))
    {
        bail!("{option}: ratio {r} is not in [0, 1)");
    }
    Ok(())
}

/// Evaluate every setting with a progress bar; one report row per setting.
#[allow(clippy::too_many_arguments)]
fn run_eval(
    model: &Model,
    test_set: &data::Dataset,
    eps: f32,
    cfg: &EvalConfig,
    settings: &[Setting],
    granularity: Granularity,
    recalibration: Option<&Recalibration<'_>>,
    checkpoint: &Path,
    quiet: bool,
) -> Result<(Report, Vec<PointRecord>)> {
    let n = test_set.len() as u64;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(n * settings.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "evaluating {msg} [{bar:25}] {pos}/{len} points [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    };
    let label = |s: &Setting| match s.prune {
        None => s.format.to_string(),
        Some(m) => format!("{m} {} {}", s.ratio, s.format),
    };
    let (rows, points) = evaluate_grid(
        model,
        test_set,
        cfg,
        settings,
        granularity,
        recalibration,
        |i, done| {
            if done as u64 <= cfg.batch_size as u64 {
                bar.set_message(label(&settings[i]));
            }
            bar.set_position(i as u64 * n + done as u64)
        },
    )?;
    bar.finish_and_clear();
    let report = Report {
        checkpoint: checkpoint.display().to_string(),
        dataset: test_set.name.clone(),
        eps,
        n: test_set.len(),
        bn_recalibration_batches: recalibration.map(|r| r.batches),
        shard: None,
        rows,
    };
    Ok((report, points))
}

/// `cactus merge`: the shards' reports, read and combined.
fn merge(paths: &[PathBuf], out: &Path) -> Result<()> {
    let reports = paths
        .iter()
        .map(|p| {
            let file = if p.is_dir() {
                p.join("report.json")
            } else {
                p.clone()
            };
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            serde_json::from_str::<Report>(&text)
                .with_context(|| format!("{}: not a cactus report", file.display()))
        })
        .collect::<Result<Vec<Report>>>()?;
    let merged = Report::merge(&reports)?;
    write_reports(&merged, out)?;
    println!(
        "merged {} shards: {} test points of {}, ε = {}",
        reports.len(),
        merged.n,
        merged.dataset,
        merged.eps
    );
    println!("{}", merged.to_table().trim_end());
    println!("reports in {}", out.display());
    Ok(())
}

/// One JSON object per line, written atomically.
fn write_points(path: &Path, points: &[PointRecord]) -> Result<()> {
    let mut text = String::new();
    for p in points {
        text.push_str(&serde_json::to_string(p).context("serialising a per-point record")?);
        text.push('\n');
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn compress(args: CompressArgs) -> Result<()> {
    if !args.checkpoint.exists() {
        bail!("{}: no such file", args.checkpoint.display());
    }
    let setting = match (args.prune, args.ratio) {
        (Some(m), Some(r)) => {
            check_ratios(&[r], "--ratio")?;
            Setting {
                prune: Some(m),
                ratio: r,
                format: args.quant,
            }
        }
        (Some(_), None) => bail!("--prune needs --ratio"),
        (None, Some(_)) => bail!("--ratio needs --prune"),
        (None, None) => Setting {
            format: args.quant,
            ..Setting::NONE
        },
    };
    if setting.prune.is_none() && setting.format.is_identity() {
        bail!("nothing to do: give --prune METHOD --ratio R and/or --quant fp16|intN");
    }
    let ckpt = load_checkpoint(&args.checkpoint)?;
    // Prune in f32; the writer quantizes (the stored codes dequantize to exactly the fake
    // quantizer's weights, so `eval` certifies the deployed network).
    let pruned_only = Setting {
        format: Format::Fp32,
        ..setting
    };
    let (model, sparsity) = compressed(&ckpt.model, &pruned_only, args.granularity)?;
    let mut extra = ckpt.extra.clone();
    extra.insert(
        "compress.source".into(),
        args.checkpoint.display().to_string(),
    );
    extra.insert("compress.prune".into(), setting.compression());
    extra.insert("compress.ratio".into(), setting.ratio.to_string());
    extra.insert("compress.sparsity".into(), format!("{sparsity:.6}"));
    extra.insert("compress.format".into(), setting.format.to_string());
    extra.insert("compress.granularity".into(), args.granularity.to_string());
    save_compressed_checkpoint(&args.out, &model, setting.format, args.granularity, &extra)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({}, {} at ratio {}, weight sparsity {:.2}%, {} bytes)",
        args.out.display(),
        setting.format,
        setting.compression(),
        setting.ratio,
        100.0 * sparsity,
        bytes
    );
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    args.device.check()?;
    if !args.checkpoint.exists() {
        bail!("{}: no such file", args.checkpoint.display());
    }
    let ckpt = load_checkpoint(&args.checkpoint)?;
    let dataset = match (args.dataset, ckpt.extra.get("train.dataset")) {
        (Some(d), _) => d,
        (None, Some(name)) => {
            <DatasetKind as clap::ValueEnum>::from_str(name, false).map_err(|_| {
                anyhow::anyhow!("the checkpoint names an unknown dataset '{name}'; pass --dataset")
            })?
        }
        (None, None) => {
            bail!("the checkpoint does not say which dataset it was trained on: pass --dataset")
        }
    };
    let eps = match (args.eps, ckpt.extra.get("train.eps")) {
        (Some(e), _) => e,
        (None, Some(e)) => e.parse().map_err(|_| {
            anyhow::anyhow!("the checkpoint's training ε '{e}' is unreadable; pass --eps")
        })?,
        (None, None) => bail!("the checkpoint does not say which ε it was trained for: pass --eps"),
    };
    let mut test_set = data::load(dataset, args.data.as_deref(), Split::Test)?;
    if let Some(n) = args.limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        test_set = test_set.limit(n);
    }
    cactus::eval::check_cascade(&args.certifier)?;
    if !(args.bab_timeout.is_finite() && args.bab_timeout > 0.0) {
        bail!("--bab-timeout must be a positive number of seconds");
    }
    if !(args.alpha_lr.is_finite() && args.alpha_lr > 0.0) {
        bail!("--alpha-lr must be positive");
    }
    if args.verify_memory == 0 {
        bail!("--verify-memory must be at least 1 MiB");
    }
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let mut index_offset = 0;
    if let Some((k, n)) = shard {
        let total = test_set.len();
        let (start, end) = (k * total / n, (k + 1) * total / n);
        if start == end {
            bail!("--shard {k}/{n}: the slice of {total} test points is empty");
        }
        test_set = test_set.slice(start, end);
        index_offset = start;
    }
    let mut verify = cactus::verify::VerifyConfig {
        memory_budget: args.verify_memory.saturating_mul(1 << 20),
        ..Default::default()
    };
    verify.alpha.iterations = args.alpha_iters;
    verify.alpha.lr = args.alpha_lr;
    verify.bab.timeout = args.bab_timeout;
    let cfg = EvalConfig {
        batch_size: args.batch_size,
        seed: args.seed,
        certifiers: args.certifier.clone(),
        verify,
        per_point: args.per_point.is_some(),
        index_offset,
        ..EvalConfig::new(eps)
    };
    check_ratios(&args.ratios, "--ratios")?;
    let settings = grid(&args.prune, &args.ratios, &args.quant, args.joint);
    let train_set = match args.recalibrate_bn {
        Some(0) => bail!("--recalibrate-bn needs at least 1 batch"),
        Some(_) => Some(data::load(dataset, args.data.as_deref(), Split::Train)?),
        None => None,
    };
    let recalibration = train_set
        .as_ref()
        .zip(args.recalibrate_bn)
        .map(|(data, batches)| Recalibration {
            data,
            batches,
            batch_size: args.batch_size,
        });
    // With the weights on the GPU every op runs there; batches follow the weights.
    let model = ckpt.model.to_device(args.device)?;
    let (mut report, points) = run_eval(
        &model,
        &test_set,
        eps,
        &cfg,
        &settings,
        args.granularity,
        recalibration.as_ref(),
        &args.checkpoint,
        args.quiet || args.json,
    )?;
    report.shard = args.shard.clone();
    if let Some(path) = &args.per_point {
        write_points(path, &points)?;
    }
    let out = args.out.clone().unwrap_or_else(|| {
        args.checkpoint
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    });
    write_reports(&report, &out)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!(
            "{} on {} test points of {}, ε = {}",
            args.checkpoint.display(),
            report.n,
            report.dataset,
            eps
        );
        println!("{}", report.to_table().trim_end());
        println!("reports in {}", out.display());
    }
    Ok(())
}
