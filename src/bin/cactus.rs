//! The `cactus` command line.

use anyhow::{bail, Context, Result};
use cactus::io::{load_checkpoint, save_checkpoint};
use cactus::nn::{Arch, Init, Layer, Mode, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::Tensor;
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
        /// `scripts/pytorch_model.py --probe`).
        #[arg(long)]
        probe: Option<f32>,
    },
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
    cactus::backend::cpu::allocator::keep_freed_memory();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
