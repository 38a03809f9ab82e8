//! `cactus export`: a checkpoint as an ONNX network, and optionally the local-robustness
//! properties of test points as VNN-LIB files with a VNN-COMP `instances.csv`, for other
//! verifiers.

use crate::args::{check_exists, dataset_of, eps_of, parse_positive};
use anyhow::{bail, Context, Result};
use cactus::autodiff::with_no_grad;
use cactus::data::{self, DatasetKind, Split};
use cactus::io::{parse_checkpoint, run, write_atomic};
use cactus::nn::Mode;
use cactus::onnx::{self, ExportOptions};
use cactus::rng::Rng;
use cactus::train::trainer::MODEL_FILE;
use cactus::vnnlib::write_robustness;
use cactus::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A model.safetensors written by cactus (plain or compressed), or a run folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Where to write the ONNX network (opset 13; input [1, C, H, W] pixels in [0, 1]).
    #[arg(long, value_name = "FILE.onnx")]
    onnx: PathBuf,
    /// Keep a compressed checkpoint's weights as stored: int8 codes through DequantizeLinear,
    /// fp16 through Cast [default: their f32 values].
    #[arg(long)]
    qdq: bool,
    /// Also write N random inputs in [0, 1] and the logits cactus computes for them, in ONNX's
    /// test-data layout (test_data_set_K/input_0.pb, output_0.pb) beside the ONNX file.
    #[arg(long, value_name = "N", default_value_t = 0)]
    test_data: usize,
    /// Seed of the test-data inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write one VNN-LIB local-robustness property per test point into this folder
    /// (vnnlib/*.vnnlib), with an instances.csv in VNN-COMP's layout.
    #[arg(long, value_name = "DIR")]
    vnnlib: Option<PathBuf>,
    /// L-inf radius of the properties [default: the ε the checkpoint was trained for].
    #[arg(long)]
    eps: Option<f32>,
    /// Properties for the first N test points.
    #[arg(long, default_value_t = 10, value_parser = parse_positive)]
    limit: usize,
    /// Test set of the properties [default: the dataset the checkpoint was trained on].
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// Directory with the dataset's files (every dataset but mnist-mini).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Time limit per instance written in instances.csv, in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

pub fn run(args: ExportArgs) -> Result<()> {
    check_exists(&args.checkpoint)?;
    let (checkpoint, bytes) = run::read_checkpoint(&args.checkpoint, MODEL_FILE)?;
    let ckpt = parse_checkpoint(&checkpoint, &bytes)?;
    let model = &ckpt.model;
    if args.qdq && ckpt.stored_weights.is_empty() {
        bail!(
            "--qdq: {} stores no compressed weights (write one with `cactus compress --quant \
             int8` or fp16)",
            checkpoint.display()
        );
    }
    let mut metadata = ckpt.extra.clone();
    metadata.insert(
        "cactus.model".into(),
        serde_json::to_string(&model.spec).expect("model spec serialises"),
    );
    let proto = onnx::export_model(
        model,
        &ckpt.stored_weights,
        &metadata,
        ExportOptions { qdq: args.qdq },
    )?;
    onnx::write_model(&args.onnx, &proto)?;
    println!(
        "wrote {} ({}, {} nodes{})",
        args.onnx.display(),
        model.spec.describe(),
        proto.graph.as_ref().map_or(0, |g| g.node.len()),
        if args.qdq { ", weights as stored" } else { "" }
    );
    if args.test_data > 0 {
        let dir = args.onnx.parent().unwrap_or(Path::new("."));
        write_test_data(model, dir, args.test_data, args.seed)?;
        println!(
            "wrote {} test-data sets in {}",
            args.test_data,
            dir.display()
        );
    }
    if let Some(dir) = &args.vnnlib {
        write_properties(&args, &ckpt.extra, model, dir)?;
    }
    Ok(())
}

fn write_test_data(model: &cactus::nn::Model, dir: &Path, n: usize, seed: u64) -> Result<()> {
    let [c, h, w] = model.spec.input_shape;
    let mut rng = Rng::seed(seed);
    for k in 0..n {
        let x: Vec<f32> = (0..c * h * w).map(|_| rng.uniform()).collect();
        let logits =
            with_no_grad(|| model.forward(&Tensor::from_vec(x.clone(), &[1, c, h, w]), Mode::Eval))
                .to_vec();
        onnx::write_test_data(
            dir,
            k,
            (&[1, c, h, w], &x),
            (&[1, model.spec.num_classes], &logits),
        )?;
    }
    Ok(())
}

/// `a − b` or `a + b` of f32 values in f64, rounded to f32 outward (down for a lower bound,
/// up for an upper one): the f32 box then contains the real one.
fn outward(a: f32, b: f32, upper: bool) -> f32 {
    let (a, b) = (a as f64, if upper { b as f64 } else { -(b as f64) });
    let s = a + b;
    // Knuth's two-sum: the exact rounding error of s.
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    let f = s as f32;
    let (fv, below, above) = (f as f64, err < 0.0, err > 0.0);
    if upper {
        if fv < s || (fv == s && above) {
            f.next_up()
        } else {
            f
        }
    } else if fv > s || (fv == s && below) {
        f.next_down()
    } else {
        f
    }
}

/// `path` relative to `dir` when it lies inside it, else absolute.
fn relative_to(path: &Path, dir: &Path) -> Result<String> {
    let abs = std::fs::canonicalize(path).with_context(|| path.display().to_string())?;
    let base = std::fs::canonicalize(dir).with_context(|| dir.display().to_string())?;
    let shown = abs
        .strip_prefix(&base)
        .map(Path::to_path_buf)
        .unwrap_or(abs);
    let text = shown.to_string_lossy().into_owned();
    if text.contains(',') || text.contains('\n') {
        bail!("{text}: a path with a comma or line break cannot go in instances.csv");
    }
    Ok(text)
}

/// An α,β-CROWN configuration that verifies every instance of `dir`'s instances.csv.
fn abcrown_config(model: &cactus::nn::Model, dir: &Path, timeout: f64) -> Result<String> {
    let root = std::fs::canonicalize(dir).with_context(|| dir.display().to_string())?;
    let [c, h, w] = model.spec.input_shape;
    Ok(format!(
        "# α,β-CROWN on the instances of this folder (written by cactus export):\n\
         #   python alpha-beta-CROWN/complete_verifier/abcrown.py --config {config}\n\
         general:\n  root_path: {root}\n  csv_name: instances.csv\n  device: cpu  # or cuda\n\
         model:\n  input_shape: [-1, {c}, {h}, {w}]\n\
         bab:\n  timeout: {timeout}\n",
        config = root.join("abcrown.yaml").display(),
        root = root.display(),
    ))
}

fn write_properties(
    args: &ExportArgs,
    extra: &BTreeMap<String, String>,
    model: &cactus::nn::Model,
    dir: &Path,
) -> Result<()> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let dataset = dataset_of(args.dataset, extra)?;
    let eps = eps_of(args.eps, extra, &args.checkpoint)?;
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("--eps must be a number ≥ 0");
    }
    let test = data::load(dataset, args.data.as_deref(), Split::Test)?.limit(args.limit);
    if test.shape != model.spec.input_shape || test.num_classes != model.spec.num_classes {
        bail!(
            "the {} test set has {:?} inputs and {} classes; the network takes {:?} and gives {}",
            test.name,
            test.shape,
            test.num_classes,
            model.spec.input_shape,
            model.spec.num_classes
        );
    }
    let props = dir.join("vnnlib");
    std::fs::create_dir_all(&props).with_context(|| props.display().to_string())?;
    let onnx_ref = relative_to(&args.onnx, dir)?;
    let mut csv = String::new();
    for i in 0..test.len() {
        let x = test.image(i);
        let lower: Vec<f32> = x.iter().map(|&v| outward(v, eps, false).max(0.0)).collect();
        let upper: Vec<f32> = x.iter().map(|&v| outward(v, eps, true).min(1.0)).collect();
        let text = write_robustness(&lower, &upper, test.labels[i], test.num_classes)?;
        let name = format!("{}_{i}_eps_{eps}.vnnlib", test.name);
        write_atomic(&props.join(&name), text.as_bytes())?;
        csv.push_str(&format!("{onnx_ref},vnnlib/{name},{}\n", args.timeout));
    }
    write_atomic(&dir.join("instances.csv"), csv.as_bytes())?;
    write_atomic(
        &dir.join("abcrown.yaml"),
        abcrown_config(model, dir, args.timeout)?.as_bytes(),
    )?;
    println!(
        "wrote {} VNN-LIB properties (ε = {eps}, {}), instances.csv and abcrown.yaml in {}",
        test.len(),
        test.name,
        dir.display()
    );
    Ok(())
}
