//! `cactus inspect`: what a checkpoint holds, and optionally its logits on a constant input.
//! Text from the file is printed with its control characters escaped.

use crate::args::{check_exists, printable};
use anyhow::{bail, Context, Result};
use cactus::io::load_checkpoint;
use cactus::nn::{Layer, Mode};
use cactus::runtime::memory;
use cactus::Tensor;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A model.safetensors written by cactus.
    checkpoint: PathBuf,
    /// Also print the eval-mode logits of one input filled with this value (compare with
    /// `scripts/twin/pytorch_model.py --probe`).
    #[arg(long)]
    probe: Option<f32>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let InspectArgs { checkpoint, probe } = args;
    check_exists(&checkpoint)?;
    let ckpt = load_checkpoint(&checkpoint)?;
    let spec = &ckpt.model.spec;
    println!(
        "checkpoint   {}",
        printable(&checkpoint.display().to_string())
    );
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
            Layer::BatchNorm(bn) => format!("  (batches tracked: {})", bn.num_batches_tracked),
            _ => String::new(),
        };
        println!("  {i:>2}  {}{extra}", layer.describe());
    }
    for (k, v) in &ckpt.extra {
        println!("meta         {} = {}", printable(k), printable(v));
    }
    if let Some(value) = probe {
        if !value.is_finite() {
            bail!("--probe must be a finite number, got {value}");
        }
        // The probe's activations are sized by the checkpoint's input shape: known before any
        // is allocated.
        memory::check(
            || format!("the probe through model {}", spec.describe()),
            spec.inference_bytes(1)?,
        )?;
        let mut shape = vec![1];
        shape.extend(spec.input_shape);
        let x = Tensor::full(&shape, value);
        let logits = cactus::autodiff::with_no_grad(|| ckpt.model.forward_checked(&x, Mode::Eval))
            .with_context(|| format!("probing {}", checkpoint.display()))?;
        let text: Vec<String> = logits.data().iter().map(|v| format!("{v:.6}")).collect();
        println!("logits {}", text.join(" "));
    }
    Ok(())
}
