//! `cactus compress`: a pruned and/or quantized copy of a checkpoint, stored compressed.

use crate::args::{check_exists, check_ratios, parse, prune_methods_help};
use anyhow::{bail, Context, Result};
use cactus::compress::quant::{Format, Granularity};
use cactus::compress::PruneMethod;
use cactus::eval::grid::compressed;
use cactus::eval::Setting;
use cactus::io::{load_checkpoint, save_compressed_checkpoint};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CompressArgs {
    /// A model.safetensors written by cactus.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, value_parser = parse::<PruneMethod>, help = prune_methods_help("Pruning method"))]
    prune: Option<PruneMethod>,
    /// Pruning ratio δ in [0, 1) (with --prune; a method that fixes its own ratio needs none, and
    /// a different one is an error).
    #[arg(long)]
    ratio: Option<f64>,
    /// Weight format to store: fp32, fp16 or intN (N in 2..=8; stored as int8 codes with scale
    /// and zero point).
    #[arg(long, default_value = "fp32", value_parser = parse::<Format>)]
    quant: Format,
    /// Integer quantization: one scale and zero point per tensor or per output channel.
    #[arg(long, default_value = "per-tensor", value_parser = parse::<Granularity>)]
    granularity: Granularity,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: CompressArgs) -> Result<()> {
    check_exists(&args.checkpoint)?;
    let setting = match (args.prune, args.ratio) {
        (Some(m), Some(r)) => {
            check_ratios(&[r], "--ratio")?;
            Setting {
                prune: Some(m),
                ratio: m.ratio(Some(r)).context("--ratio")?,
                format: args.quant,
            }
        }
        (Some(m), None) => match m.implied_ratio() {
            Some(ratio) => Setting {
                prune: Some(m),
                ratio,
                format: args.quant,
            },
            None => bail!("--prune needs --ratio"),
        },
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
