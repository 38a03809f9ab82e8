//! `model.safetensors`: the weights under the names and layouts of PyTorch's `state_dict` for
//! the same `nn.Sequential` (`0.weight` [out, in, kh, kw], `1.running_mean`, ...,
//! `num_batches_tracked` as int64), and in the metadata the model's description (architecture,
//! input shape, classes, width, normalisation), its layer list, and free-form training notes.
//!
//! A compressed checkpoint (`cactus compress`) stores its conv and linear weights in their
//! deployed format: `F16` for fp16; for intN the integer codes `q` as `I8` under the weight's
//! own name, with `<layer>.weight_scale` (`F32`, one per tensor or per output channel) and
//! `<layer>.weight_zero_point` (`I32`, same length) beside it, so that `ŵ = scale·(q − zero_point)`
//! along the first axis. The loader turns every form back into the f32 weights (exactly the fake
//! quantizer's values).
//!
//! Loading trusts nothing in the file: it reads regular files only, within the memory limit;
//! sizes the architecture from its description before building it; and refuses tensors of the
//! wrong name, dtype or shape, NaN or infinite values, negative batch-norm variances and a
//! normalisation that is not finite in f32 (docs/design.md, "File formats").

use crate::compress::quant::{dequantize_int, quantize_int, round_fp16, Format, Granularity};
use crate::io::atomic::write_atomic;
use crate::io::canonical::serialize_sorted;
use crate::nn::{Layer, Model, ModelSpec};
use crate::rng::Rng;
use crate::runtime::memory;
use crate::tensor::Tensor;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

const FORMAT: &str = "cactus-model";
const VERSION: &str = "1";

/// A loaded checkpoint: the model and the free-form metadata stored beside it.
pub struct Checkpoint {
    pub model: Model,
    /// Extra metadata the writer recorded (training settings, for instance).
    pub extra: BTreeMap<String, String>,
    /// The conv and linear weights stored in a compressed form, by state-dict name, as the
    /// file holds them (the model has their f32 values): what an export that keeps the
    /// integers (ONNX with QuantizeLinear/DequantizeLinear) needs.
    pub stored_weights: BTreeMap<String, StoredWeight>,
}

/// A weight as a compressed checkpoint stores it.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredWeight {
    /// Half-precision bit patterns.
    F16(Vec<u16>),
    /// Integer codes with one scale and zero point per tensor or per output channel:
    /// `ŵ = scale·(q − zero_point)`.
    Int {
        codes: Vec<i8>,
        scales: Vec<f32>,
        zero_points: Vec<i32>,
    },
}

/// One entry of the state dict.
enum Entry<'a> {
    F32(&'a Tensor),
    I64(i64),
}

/// The state dict in PyTorch's order and naming.
fn state_dict(model: &Model) -> Vec<(String, Entry<'_>)> {
    let mut out = Vec::new();
    for (i, layer) in model.net.layers.iter().enumerate() {
        for (name, t) in layer.parameters() {
            out.push((format!("{i}.{name}"), Entry::F32(t)));
        }
        if let Layer::BatchNorm(bn) = layer {
            out.push((format!("{i}.running_mean"), Entry::F32(&bn.running_mean)));
            out.push((format!("{i}.running_var"), Entry::F32(&bn.running_var)));
            out.push((
                format!("{i}.num_batches_tracked"),
                Entry::I64(bn.num_batches_tracked as i64),
            ));
        }
    }
    out
}

/// Whether the state-dict entry `name` of `model` is a conv or linear weight.
fn is_compressible(model: &Model, name: &str) -> bool {
    let Some((index, "weight")) = name.split_once('.') else {
        return false;
    };
    index
        .parse::<usize>()
        .ok()
        .and_then(|i| model.net.layers.get(i))
        .is_some_and(|layer| layer.weight().is_some())
}

/// One serialised tensor: name, little-endian bytes, dtype, shape.
type Serialised = (String, Vec<u8>, Dtype, Vec<usize>);

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

/// The file's tensors for one state-dict entry, with conv/linear weights in `format`.
fn serialise(
    model: &Model,
    name: &str,
    entry: &Entry<'_>,
    format: Format,
    granularity: Granularity,
) -> Vec<Serialised> {
    let t = match entry {
        Entry::I64(v) => return vec![(name.into(), v.to_le_bytes().to_vec(), Dtype::I64, vec![])],
        Entry::F32(t) => *t,
    };
    let shape = t.shape().to_vec();
    if !is_compressible(model, name) {
        return vec![(
            name.into(),
            le_bytes(t.data(), f32::to_le_bytes),
            Dtype::F32,
            shape,
        )];
    }
    match format {
        Format::Fp32 => vec![(
            name.into(),
            le_bytes(t.data(), f32::to_le_bytes),
            Dtype::F32,
            shape,
        )],
        Format::Fp16 => {
            let halves: Vec<u16> = t
                .data()
                .iter()
                .map(|&v| half::f16::from_f32(round_fp16(v)).to_bits())
                .collect();
            vec![(
                name.into(),
                le_bytes(&halves, u16::to_le_bytes),
                Dtype::F16,
                shape,
            )]
        }
        Format::Int(bits) => {
            let (q, scales, zero_points) = quantize_int(t, bits, granularity);
            let codes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
            let n = scales.len();
            vec![
                (name.into(), codes, Dtype::I8, shape),
                (
                    format!("{name}_scale"),
                    le_bytes(&scales, f32::to_le_bytes),
                    Dtype::F32,
                    vec![n],
                ),
                (
                    format!("{name}_zero_point"),
                    le_bytes(&zero_points, i32::to_le_bytes),
                    Dtype::I32,
                    vec![n],
                ),
            ]
        }
    }
}

/// Write `model` to `path` atomically, with `extra` metadata (keys must not start with `cactus.`).
pub fn save_checkpoint(path: &Path, model: &Model, extra: &BTreeMap<String, String>) -> Result<()> {
    write_atomic(path, &checkpoint_bytes(model, extra)?)
}

/// Write `model` with its conv and linear weights stored in `format` (see the module
/// documentation); fp32 is a plain checkpoint.
pub fn save_compressed_checkpoint(
    path: &Path,
    model: &Model,
    format: Format,
    granularity: Granularity,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    write_atomic(path, &encode(model, format, granularity, extra)?)
}

/// The bytes of the checkpoint file `save_checkpoint` writes (a training state embeds them).
pub fn checkpoint_bytes(model: &Model, extra: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    encode(model, Format::Fp32, Granularity::PerTensor, extra)
}

fn encode(
    model: &Model,
    format: Format,
    granularity: Granularity,
    extra: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<Serialised> = state_dict(model)
        .iter()
        .flat_map(|(name, e)| serialise(model, name, e, format, granularity))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, dtype, shape)| {
            TensorView::new(*dtype, shape.clone(), data).map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("checkpoint: {e}")))?;
    let mut meta = extra.clone();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("cactus.version".into(), VERSION.into());
    meta.insert(
        "cactus.model".into(),
        serde_json::to_string(&model.spec).expect("model spec serialises"),
    );
    meta.insert(
        "cactus.layers".into(),
        serde_json::to_string(&model.net.describe()).expect("layer list serialises"),
    );
    if !format.is_identity() {
        meta.insert("cactus.weight_format".into(), format.to_string());
    }
    serialize_sorted(views, &meta).map_err(|e| Error::Invalid(format!("checkpoint: {e}")))
}

/// Read a checkpoint written by `save_checkpoint` (or by anyone following its layout).
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let bytes = memory::read_file(path)?;
    parse_checkpoint(path, &bytes)
}

/// Read checkpoint bytes; `path` names them in errors.
pub fn parse_checkpoint(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |msg: String| Error::bad_file(path, msg);
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("unreadable safetensors header: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let spec_json = meta.get("cactus.model").ok_or_else(|| {
        bad(
            "no model description in the metadata (key 'cactus.model'): not a cactus checkpoint"
                .into(),
        )
    })?;
    let spec: ModelSpec = serde_json::from_str(spec_json)
        .map_err(|e| bad(format!("model description in the metadata is invalid: {e}")))?;
    // Size the architecture before allocating it: a corrupt description must not ask for
    // more memory than the file could possibly fill.
    let needed = spec.state_len().map_err(|e| bad(format!("{e}")))?;
    // At least one byte per value (int8 weights); f32 state takes four.
    if needed > bytes.len() {
        return Err(bad(format!(
            "the file holds {} bytes but its architecture ({}) needs {needed} values",
            bytes.len(),
            spec.arch.name()
        )));
    }
    let mut model = Model::new(spec, &mut Rng::seed(0)).map_err(|e| bad(format!("{e}")))?;
    if let Some(layers_json) = meta.get("cactus.layers") {
        let stored: Vec<String> = serde_json::from_str(layers_json)
            .map_err(|e| bad(format!("layer list in the metadata is invalid: {e}")))?;
        let built = model.net.describe();
        if stored != built {
            let at = stored
                .iter()
                .zip(&built)
                .position(|(a, b)| a != b)
                .unwrap_or(stored.len().min(built.len()));
            return Err(bad(format!(
                "architecture differs from what this version builds for {} at layer {at}: file has {:?}, expected {:?}",
                model.spec.arch.name(),
                stored.get(at),
                built.get(at)
            )));
        }
    }
    let stored_weights = fill_state(&mut model, &st).map_err(bad)?;
    let extra = meta
        .into_iter()
        .filter(|(k, _)| !k.starts_with("cactus.") && k != "format")
        .collect();
    Ok(Checkpoint {
        model,
        extra,
        stored_weights,
    })
}

/// Copy every state-dict tensor from the file into `model`, checking names, dtypes and shapes;
/// returns the weights stored in a compressed form as the file holds them.
fn fill_state(
    model: &mut Model,
    st: &SafeTensors<'_>,
) -> std::result::Result<BTreeMap<String, StoredWeight>, String> {
    let stored = std::cell::RefCell::new(BTreeMap::new());
    let mut expected: Vec<String> = state_dict(model).into_iter().map(|(n, _)| n).collect();
    let weights: Vec<String> = expected
        .iter()
        .filter(|n| is_compressible(model, n))
        .cloned()
        .collect();
    let is_weight = |name: &str| weights.iter().any(|w| w == name);
    expected.extend(
        weights
            .iter()
            .flat_map(|n| [format!("{n}_scale"), format!("{n}_zero_point")]),
    );
    for name in st.names() {
        if !expected.iter().any(|e| e == name) {
            return Err(format!("unexpected tensor '{name}' for this architecture"));
        }
    }
    let read_f32 = |name: &str, shape: &[usize]| -> std::result::Result<Tensor, String> {
        let view = st
            .tensor(name)
            .map_err(|_| format!("missing tensor '{name}'"))?;
        if view.shape() != shape {
            return Err(format!(
                "tensor '{name}' has shape {:?}, expected {shape:?}",
                view.shape()
            ));
        }
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 if is_weight(name) => {
                let bits: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                let values = bits
                    .iter()
                    .map(|&b| half::f16::from_bits(b).to_f32())
                    .collect();
                stored
                    .borrow_mut()
                    .insert(name.to_string(), StoredWeight::F16(bits));
                values
            }
            Dtype::I8 if is_weight(name) => {
                let q: Vec<i8> = data.iter().map(|&b| b as i8).collect();
                let scale = st
                    .tensor(&format!("{name}_scale"))
                    .map_err(|_| format!("int weight '{name}' has no '{name}_scale'"))?;
                let zero = st
                    .tensor(&format!("{name}_zero_point"))
                    .map_err(|_| format!("int weight '{name}' has no '{name}_zero_point'"))?;
                if scale.dtype() != Dtype::F32 || zero.dtype() != Dtype::I32 {
                    return Err(format!(
                        "'{name}_scale' must be F32 and '{name}_zero_point' I32, got {:?} and {:?}",
                        scale.dtype(),
                        zero.dtype()
                    ));
                }
                let scales: Vec<f32> = scale
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let zeros: Vec<i32> = zero
                    .data()
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let w = dequantize_int(&q, &scales, &zeros, shape)
                    .map_err(|e| format!("int weight '{name}': {e}"))?;
                stored.borrow_mut().insert(
                    name.to_string(),
                    StoredWeight::Int {
                        codes: q,
                        scales,
                        zero_points: zeros,
                    },
                );
                w.into_vec()
            }
            other => {
                return Err(format!(
                    "tensor '{name}' is {other:?}, expected F32{}",
                    if is_weight(name) {
                        " (or F16, or I8 with scale and zero point)"
                    } else {
                        ""
                    }
                ))
            }
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err(format!("tensor '{name}' contains NaN or infinite values"));
        }
        Ok(Tensor::from_vec(values, shape))
    };
    for (i, layer) in model.net.layers.iter_mut().enumerate() {
        for (name, t) in layer.parameters_mut() {
            *t = read_f32(&format!("{i}.{name}"), t.shape())?.requires_grad();
        }
        if let Layer::BatchNorm(bn) = layer {
            bn.running_mean = read_f32(&format!("{i}.running_mean"), bn.running_mean.shape())?;
            let name = format!("{i}.running_var");
            bn.running_var = read_f32(&name, bn.running_var.shape())?;
            // A negative variance makes 1/sqrt(var + eps) NaN for every input.
            if let Some(v) = bn.running_var.data().iter().find(|&&v| v < 0.0) {
                return Err(format!(
                    "tensor '{name}' holds the negative variance {v}; running variances are ≥ 0"
                ));
            }
            let name = format!("{i}.num_batches_tracked");
            bn.num_batches_tracked = match st.tensor(&name) {
                Ok(v) if v.dtype() == Dtype::I64 && v.data().len() == 8 => {
                    let n = i64::from_le_bytes(v.data().try_into().expect("8 bytes"));
                    u64::try_from(n).map_err(|_| format!("tensor '{name}' is negative"))?
                }
                Ok(v) => {
                    return Err(format!(
                        "tensor '{name}' should be one int64, got {:?} {:?}",
                        v.dtype(),
                        v.shape()
                    ))
                }
                Err(_) => return Err(format!("missing tensor '{name}'")),
            };
        }
    }
    Ok(stored.into_inner())
}

/// Load a checkpoint that must hold the architecture `expected` describes (resuming a run,
/// evaluating with a given model): any difference is an error that names it.
pub fn load_checkpoint_for(path: &Path, expected: &ModelSpec) -> Result<Checkpoint> {
    let ckpt = load_checkpoint(path)?;
    let got = &ckpt.model.spec;
    let mut diffs = Vec::new();
    if got.arch != expected.arch {
        diffs.push(format!(
            "architecture {} (expected {})",
            got.arch.name(),
            expected.arch.name()
        ));
    }
    if got.input_shape != expected.input_shape {
        diffs.push(format!(
            "input shape {:?} (expected {:?})",
            got.input_shape, expected.input_shape
        ));
    }
    if got.num_classes != expected.num_classes {
        diffs.push(format!(
            "{} classes (expected {})",
            got.num_classes, expected.num_classes
        ));
    }
    if got.width != expected.width {
        diffs.push(format!("width {} (expected {})", got.width, expected.width));
    }
    if !diffs.is_empty() {
        return Err(Error::bad_file(
            path,
            format!(
                "checkpoint does not match the requested model: {}",
                diffs.join(", ")
            ),
        ));
    }
    Ok(ckpt)
}
