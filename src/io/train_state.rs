//! `train_state.safetensors`: everything `cactus train --resume` needs to continue a run exactly
//! where it stopped — the model (an embedded checkpoint, so weights and optimiser state can
//! never come from different epochs), Adam's moments and step, the RNG state, the epoch reached,
//! the run's settings and its history (the last two as JSON in the metadata).

use crate::io::atomic::write_atomic;
use crate::io::canonical::serialize_sorted;
use crate::io::checkpoint::{checkpoint_bytes, parse_checkpoint};
use crate::nn::Model;
use crate::runtime::memory;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

const FORMAT: &str = "cactus-train-state";

/// A run's resumable state after a completed epoch.
pub struct TrainState {
    pub model: Model,
    /// The run's settings (JSON, as the trainer serialises them).
    pub config: String,
    /// Per-epoch records so far (JSON array).
    pub history: String,
    /// Completed epochs.
    pub epoch: u64,
    /// Optimiser steps (batches) taken.
    pub step: u64,
    pub rng: [u64; 4],
    pub adam_step: u64,
    pub adam_m: Vec<Vec<f32>>,
    pub adam_v: Vec<Vec<f32>>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write the state atomically.
pub fn save_train_state(path: &Path, s: &TrainState) -> Result<()> {
    write_atomic(path, &train_state_bytes(s)?)
}

/// The bytes `save_train_state` writes: the same state gives the same bytes.
pub fn train_state_bytes(s: &TrainState) -> Result<Vec<u8>> {
    let model = checkpoint_bytes(&s.model, &BTreeMap::new())?;
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        vec![("model".into(), Dtype::U8, vec![model.len()], model)];
    for (kind, moments) in [("m", &s.adam_m), ("v", &s.adam_v)] {
        for (i, m) in moments.iter().enumerate() {
            buffers.push((
                format!("adam.{kind}.{i}"),
                Dtype::F32,
                vec![m.len()],
                f32_bytes(m),
            ));
        }
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data).map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("training state: {e}")))?;
    let rng: Vec<String> = s.rng.iter().map(|w| w.to_string()).collect();
    let meta: BTreeMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("config", s.config.clone()),
        ("history", s.history.clone()),
        ("epoch", s.epoch.to_string()),
        ("step", s.step.to_string()),
        ("rng", rng.join(",")),
        ("adam.step", s.adam_step.to_string()),
        ("adam.buffers", s.adam_m.len().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    serialize_sorted(views, &meta).map_err(|e| Error::Invalid(format!("training state: {e}")))
}

/// Step counts beyond this are refused: far more batches than any run takes, and far from where
/// the counters (and the schedule's and Adam's arithmetic on them) would wrap or lose precision.
pub const MAX_STEPS: u64 = 1 << 40;

/// Read a state written by `save_train_state`; every inconsistency is an error naming the file.
///
/// Everything the file says is checked against the model it holds before it is used: one pair
/// of Adam moments per parameter, each as long as its parameter (or both empty: a parameter
/// that has had no gradient yet), finite, second moments ≥ 0; no other tensors; counters in
/// range (`epoch` and `step` = `adam.step` ≤ [`MAX_STEPS`]); and a generator state that is not
/// all zeros (xoshiro's one fixed point: it would only ever return 0).
pub fn load_train_state(path: &Path) -> Result<TrainState> {
    let bytes = memory::read_file(path)?;
    parse_train_state(path, &bytes)
}

/// Read the bytes of a training state; `path` names them in errors.
pub fn parse_train_state(path: &Path, bytes: &[u8]) -> Result<TrainState> {
    let bad = |msg: String| Error::bad_file(path, msg);
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        bad(format!(
            "not a readable training state (truncated or corrupt?): {e}"
        ))
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("unreadable safetensors header: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!(
            "not a cactus training state (metadata 'format' is not {FORMAT})"
        )));
    }
    let get = |key: &str| {
        meta.get(key)
            .cloned()
            .ok_or_else(|| bad(format!("metadata '{key}' is missing")))
    };
    let number = |key: &str| -> Result<u64> {
        get(key)?
            .parse()
            .map_err(|_| bad(format!("metadata '{key}' is not a whole number")))
    };
    let rng_words: Vec<u64> = get("rng")?
        .split(',')
        .map(|w| w.parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("metadata 'rng' is not four whole numbers".into()))?;
    let rng: [u64; 4] = rng_words
        .try_into()
        .map_err(|_| bad("metadata 'rng' is not four whole numbers".into()))?;
    if rng == [0; 4] {
        return Err(bad(
            "metadata 'rng' is all zeros, a state the generator never leaves (it would draw \
             only zeros)"
                .into(),
        ));
    }
    let (epoch, step, adam_step) = (number("epoch")?, number("step")?, number("adam.step")?);
    if step > MAX_STEPS {
        return Err(bad(format!(
            "metadata 'step' is {step}, beyond the {MAX_STEPS} steps a run may take"
        )));
    }
    if adam_step != step {
        return Err(bad(format!(
            "metadata 'adam.step' is {adam_step} but 'step' is {step}: the optimiser takes one \
             step per batch"
        )));
    }
    if epoch > MAX_STEPS {
        return Err(bad(format!(
            "metadata 'epoch' is {epoch}, beyond the {MAX_STEPS} epochs a run may take"
        )));
    }
    let history = get("history")?;

    let read = |name: &str, dtype: Dtype| -> Result<&[u8]> {
        let view = st
            .tensor(name)
            .map_err(|_| bad(format!("missing tensor '{name}'")))?;
        if view.dtype() != dtype || view.shape().len() != 1 {
            return Err(bad(format!(
                "tensor '{name}' should be a 1-D {dtype:?} buffer"
            )));
        }
        Ok(view.data())
    };
    let model = parse_checkpoint(path, read("model", Dtype::U8)?)?.model;
    let params: Vec<(String, usize)> = model
        .net
        .named_parameters()
        .into_iter()
        .map(|(name, t)| (name, t.numel()))
        .collect();
    let buffers = number("adam.buffers")?;
    let expected_buffers = if step == 0 { 0 } else { params.len() as u64 };
    if buffers != expected_buffers && !(step == 0 && buffers == params.len() as u64) {
        return Err(bad(format!(
            "metadata 'adam.buffers' is {buffers}, but after {step} steps the optimiser holds \
             one pair of moments for each of the model's {} parameters",
            params.len()
        )));
    }
    let buffers = buffers as usize;
    for name in st.names() {
        let known = name == "model"
            || ["adam.m.", "adam.v."].iter().any(|kind| {
                name.strip_prefix(kind)
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| i < buffers && name == format!("{kind}{i}"))
            });
        if !known {
            return Err(bad(format!("unexpected tensor '{name}'")));
        }
    }
    let moments = |kind: &str| -> Result<Vec<Vec<f32>>> {
        (0..buffers)
            .map(|i| {
                let name = format!("adam.{kind}.{i}");
                let data = read(&name, Dtype::F32)?;
                let values: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let (param, len) = &params[i];
                if !values.is_empty() && values.len() != *len {
                    return Err(bad(format!(
                        "tensor '{name}' holds {} values but parameter {i} ('{param}') has {len}",
                        values.len()
                    )));
                }
                if let Some(v) = values
                    .iter()
                    .find(|v| !v.is_finite() || (kind == "v" && **v < 0.0))
                {
                    return Err(bad(format!(
                        "tensor '{name}' holds {v}; Adam's moments are finite{}",
                        if kind == "v" {
                            " and its second moments ≥ 0"
                        } else {
                            ""
                        }
                    )));
                }
                Ok(values)
            })
            .collect()
    };
    let (adam_m, adam_v) = (moments("m")?, moments("v")?);
    if let Some(i) = (0..buffers).find(|&i| adam_m[i].len() != adam_v[i].len()) {
        return Err(bad(format!(
            "tensors 'adam.m.{i}' and 'adam.v.{i}' hold {} and {} values: a parameter's two \
             moments have its size",
            adam_m[i].len(),
            adam_v[i].len()
        )));
    }
    Ok(TrainState {
        model,
        config: get("config")?,
        history,
        epoch,
        step,
        rng,
        adam_step,
        adam_m,
        adam_v,
    })
}
