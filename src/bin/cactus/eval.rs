//! `cactus eval`: a checkpoint's accuracies under each compression and certifier asked for,
//! and the evaluation with a progress bar that `train` also ends with.

use crate::args::{
    check_exists, check_ratios, dataset_of, eps_of, formats_help, parse, parse_positive,
    parse_prune_choice, prune_methods_help,
};
use crate::output::{print_table, write_reports};
use anyhow::{bail, Context, Result};
use cactus::compress::quant::{Format, Granularity};
use cactus::compress::PruneMethod;
use cactus::data::{self, DatasetKind, Split};
use cactus::eval::{
    evaluate_grid, grid, parse_shard, EvalConfig, PointRecord, Recalibration, Report, Setting,
};
use cactus::io::{parse_checkpoint, run, write_atomic};
use cactus::nn::Model;
use cactus::train::trainer::MODEL_FILE;
use cactus::verify::Certifier;
use cactus::Device;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A model.safetensors written by cactus, or a run folder (`cactus train --out`): its last
    /// committed epoch's checkpoint.
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
    #[arg(long, value_parser = parse_positive)]
    limit: Option<usize>,
    /// Directory for report.json/.csv/.md [default: the checkpoint's directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the JSON report to stdout (instead of the table).
    #[arg(long)]
    json: bool,
    #[arg(long, value_delimiter = ',', default_value = "none", value_parser = parse_prune_choice,
          help = prune_methods_help("Pruning methods, comma-separated, `none` for the network unpruned"))]
    prune: Vec<Option<PruneMethod>>,
    /// Pruning ratios δ in [0, 1) for every method of --prune (a method that fixes its own
    /// ratio is evaluated once, at it).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9,0.95,0.99")]
    ratios: Vec<f64>,
    #[arg(long, value_delimiter = ',', default_value = "fp32", value_parser = parse::<Format>,
          help = formats_help("Weight formats, comma-separated"))]
    quant: Vec<Format>,
    /// Also evaluate every pruned setting in every format of --quant (pruned, then quantized).
    #[arg(long)]
    joint: bool,
    /// Integer quantization: one scale and zero point per tensor or per output channel.
    #[arg(long, default_value = "per-tensor", value_parser = parse::<Granularity>)]
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
    #[arg(long, default_value = "cpu", value_parser = parse::<Device>)]
    device: Device,
    /// Certifiers, weakest first (ibp, crown-ibp, crown, alpha-crown, bab), as a cascade: each
    /// runs only on the points the ones before left uncertified and PGD did not break; one
    /// report row per certifier, counting the points it or a weaker one certified.
    #[arg(long, value_delimiter = ',', default_value = "ibp", value_parser = parse::<Certifier>)]
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
    /// Certificates that hold under f32 rounding (the default): every margin bound is lowered
    /// by a rigorous bound on its computation's rounding error before a point counts as
    /// certified (ibp, crown-ibp, crown, alpha-crown; bab needs --unsound).
    #[arg(long, conflicts_with = "unsound")]
    sound: bool,
    /// The bounds as computed in f32, not lowered by their rounding error (as most verifiers
    /// report them); needed for bab.
    #[arg(long)]
    unsound: bool,
    /// Evaluate only the K-th of N equal slices of the test points (0 ≤ K < N); `cactus merge`
    /// combines the shards' reports.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    args.device.check()?;
    check_exists(&args.checkpoint)?;
    // A run folder's checkpoint, or one of its files, is read as its manifest commits it.
    let (checkpoint, bytes) = run::read_checkpoint(&args.checkpoint, MODEL_FILE)?;
    let ckpt = parse_checkpoint(&checkpoint, &bytes)?;
    let dataset = dataset_of(args.dataset, &ckpt.extra)?;
    let eps = eps_of(args.eps, &ckpt.extra, &args.checkpoint)?;
    let mut test_set = data::load(dataset, args.data.as_deref(), Split::Test)?;
    if let Some(n) = args.limit {
        test_set = test_set.limit(n);
    }
    cactus::eval::check_cascade(&args.certifier)?;
    // `--sound` is the default, spelled out; clap refuses it together with `--unsound`.
    let sound = args.sound || !args.unsound;
    if sound {
        cactus::verify::check_sound(&args.certifier)?;
    }
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
        sound,
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
    let (mut report, points) = evaluate(
        &model,
        &test_set,
        eps,
        &cfg,
        &settings,
        args.granularity,
        recalibration.as_ref(),
        &checkpoint,
        args.quiet || args.json,
    )?;
    report.shard = args.shard.clone();
    if let Some(path) = &args.per_point {
        write_points(path, &points)?;
    }
    let out = args.out.clone().unwrap_or_else(|| {
        checkpoint
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
            checkpoint.display(),
            report.n,
            report.dataset,
            eps
        );
        print_table(&report, &out);
    }
    Ok(())
}

/// Evaluate every setting with a progress bar; one report row per setting.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
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
        sound: cfg.verify.sound,
        rows,
    };
    Ok((report, points))
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
