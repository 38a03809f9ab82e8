//! `cactus init`: a freshly initialised model, written as a checkpoint.

use anyhow::{Context, Result};
use cactus::io::save_checkpoint;
use cactus::nn::{Arch, Init, Model, ModelSpec};
use cactus::rng::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InitArgs {
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

pub fn run(args: InitArgs) -> Result<()> {
    let InitArgs {
        model,
        input,
        classes,
        width,
        init,
        seed,
        out,
    } = args;
    let mut spec = ModelSpec::new(model, input, classes);
    spec.width = width;
    spec.init = init;
    let m = Model::new(spec, &mut Rng::seed(seed))?;
    let mut extra = BTreeMap::new();
    extra.insert("seed".to_string(), seed.to_string());
    save_checkpoint(&out, &m, &extra).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} with {} parameters)",
        out.display(),
        model.name(),
        m.net.num_parameters()
    );
    Ok(())
}
