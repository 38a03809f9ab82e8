//! An ONNX graph read back into cactus's layers: the feed-forward ReLU networks verifiers
//! exchange (VNN-COMP's `mnist_fc`, `cifar2020`, ...).
//!
//! The graph must be one chain from its single input to its single output; every other
//! operand is a constant (an initializer, a `Constant` node, or computed from constants and
//! shapes). Supported: `Conv` (2-D, symmetric padding, no dilation or groups), `Gemm`,
//! `MatMul` (activation × constant), `Add`/`Sub`/`Mul`/`Div` by constants, `Relu`, `Flatten`,
//! `Reshape`, `Transpose` before a flatten, `BatchNormalization`, `Identity`, `Dropout`
//! (inference: the identity), and the shape arithmetic (`Shape`, `Gather`, `Unsqueeze`,
//! `Concat`, `Cast`) exporters emit to compute a reshape's target; `DequantizeLinear` of
//! constant weights (a QDQ network's) is computed as a runtime does, in f32.
//!
//! Every mapping is exact: the imported model computes, in real arithmetic, the function the
//! graph computes with its f32 constants. A constant added after a biasless `MatMul`/`Conv`
//! becomes its bias; per-channel `Sub`/`Div` on the input become the input normalisation (mean,
//! std); other per-channel `Mul`/`Add`/`Sub` become a batch norm with unit variance and ε = 0
//! (its scale and shift are then the constants exactly); a `Transpose` before a flatten
//! permutes the next linear layer's columns. What cannot be mapped exactly — a rescaling `Gemm`
//! (alpha ≠ 1), a `Div` mid-network by a constant whose reciprocal is not an f32, f64 weights —
//! is refused with an error naming the node.

use crate::nn::{Arch, BatchNorm, Conv2d, Layer, Linear, Model, ModelSpec, Normalization};
use crate::onnx::proto::{
    attribute_type, data_type, type_proto, GraphProto, ModelProto, NodeProto,
};
use crate::onnx::tensor::{dims, values_f64};
use crate::ops::Conv2dParams;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::HashMap;

/// An imported network and what was read about its interface.
pub struct Imported {
    pub model: Model,
    /// The graph's input name and declared shape (batch dimension included when declared).
    pub input_name: String,
    pub input_dims: Vec<usize>,
    pub output_name: String,
}

/// A constant: its shape and values (exactly, as f64).
#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    values: Vec<f64>,
}

/// The chain's current activation: its name, its ONNX shape (batch first), and a pending
/// permutation of its flattened values (a `Transpose` not yet folded into a linear layer:
/// value k of this activation is value `perm[k]` of the untransposed one).
struct Activation {
    name: String,
    shape: Vec<usize>,
    perm: Option<Vec<usize>>,
}

struct Importer<'a> {
    consts: HashMap<String, Const>,
    act: Activation,
    layers: Vec<Layer>,
    /// Whether no computing node has run yet (reshapes of the input do not count).
    at_input: bool,
    input_shape: [usize; 3],
    normalization: Option<Normalization>,
    /// Whether the last layer produced the current activation (a following `Add` may become
    /// its bias).
    fresh_affine: bool,
    node: &'a NodeProto,
}

fn err(node: &NodeProto, msg: impl std::fmt::Display) -> Error {
    let name = if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    };
    Error::Invalid(format!("ONNX node '{name}' ({}): {msg}", node.op_type))
}

/// f32 values of a constant, refused if any is not exactly an f32 (cactus computes in f32; a
/// rounded weight would certify another network).
fn exact_f32(node: &NodeProto, what: &str, c: &Const) -> Result<Vec<f32>> {
    c.values
        .iter()
        .map(|&v| {
            let f = v as f32;
            if f as f64 == v || v.is_nan() {
                if f.is_finite() {
                    Ok(f)
                } else {
                    Err(err(node, format!("{what} holds a NaN or infinite value")))
                }
            } else {
                Err(err(
                    node,
                    format!("{what} holds {v}, which is not exactly a float32 value"),
                ))
            }
        })
        .collect()
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.i)
        .unwrap_or(default)
}

fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.f)
        .unwrap_or(default)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.clone())
}

fn attr_string(node: &NodeProto, name: &str) -> Option<String> {
    node.attribute
        .iter()
        .find(|a| a.name == name && a.r#type == attribute_type::STRING)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// `values` of shape `from` broadcast (numpy rules) to `to`.
fn broadcast(values: &[f64], from: &[usize], to: &[usize]) -> Option<Vec<f64>> {
    if from.len() > to.len() {
        // A constant of higher rank than the activation changes its shape: not a chain op.
        return None;
    }
    let pad = to.len() - from.len();
    let from: Vec<usize> = std::iter::repeat_n(1, pad)
        .chain(from.iter().copied())
        .collect();
    if from.iter().zip(to).any(|(&f, &t)| f != t && f != 1) {
        return None;
    }
    let n: usize = to.iter().product();
    let mut out = Vec::with_capacity(n);
    for flat in 0..n {
        let (mut rem, mut src, mut stride) = (flat, 0, 1);
        let mut strides = vec![0; to.len()];
        for axis in (0..to.len()).rev() {
            strides[axis] = stride;
            stride *= from[axis];
        }
        for axis in (0..to.len()).rev() {
            let i = rem % to[axis];
            rem /= to[axis];
            if from[axis] != 1 {
                src += i * strides[axis];
            }
        }
        out.push(values[src]);
    }
    Some(out)
}

impl<'a> Importer<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        err(self.node, msg)
    }

    fn constant(&self, name: &str) -> Result<&Const> {
        self.consts.get(name).ok_or_else(|| self.not_constant(name))
    }

    /// Why `name` is not a constant operand.
    fn not_constant(&self, name: &str) -> Error {
        if name == self.act.name {
            self.err(format!(
                "expects a constant where it gets the activation '{name}'"
            ))
        } else {
            self.err(format!(
                "input '{name}' is neither a constant nor the chain's activation: only \
                 feed-forward chains are supported"
            ))
        }
    }

    /// The `i`-th constant operand.
    fn nth(&self, consts: &[&str], i: usize) -> Result<Const> {
        let name = consts
            .get(i)
            .ok_or_else(|| self.err(format!("needs a constant operand {}", i + 1)))?;
        Ok(self.constant(name)?.clone())
    }

    /// The node's inputs split into the activation's position and the constants.
    fn operands(&self) -> Result<(Option<usize>, Vec<&'a str>)> {
        let node: &'a NodeProto = self.node;
        let mut act = None;
        let mut consts = Vec::new();
        for (i, name) in node.input.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            if *name == self.act.name {
                if act.is_some() {
                    return Err(self.err("uses the activation twice"));
                }
                act = Some(i);
            } else if self.consts.contains_key(name) {
                consts.push(name.as_str());
            } else {
                return Err(self.not_constant(name));
            }
        }
        Ok((act, consts))
    }

    fn output(&self) -> Result<String> {
        match self.node.output.first() {
            Some(o) if !o.is_empty() => Ok(o.clone()),
            _ => Err(self.err("has no output")),
        }
    }

    /// The per-channel values of a constant broadcast over the activation (channel = axis 1),
    /// or an error if it varies along another axis.
    fn per_channel(&self, c: &Const) -> Result<Vec<f64>> {
        let shape = &self.act.shape;
        let full = broadcast(&c.values, &c.dims, shape).ok_or_else(|| {
            self.err(format!(
                "constant of shape {:?} does not broadcast to the activation {:?}",
                c.dims, shape
            ))
        })?;
        if shape.len() < 2 || shape[0] != 1 {
            return Err(self.err(format!("activation of shape {shape:?} has no channel axis")));
        }
        let channels = shape[1];
        let inner: usize = shape[2..].iter().product();
        let mut out = Vec::with_capacity(channels);
        for ch in 0..channels {
            let block = &full[ch * inner..(ch + 1) * inner];
            if block.iter().any(|&v| v.to_bits() != block[0].to_bits()) {
                return Err(self.err(
                    "constant varies across positions within a channel: only per-channel \
                     constants are supported",
                ));
            }
            out.push(block[0]);
        }
        Ok(out)
    }

    fn push(&mut self, layer: Layer, shape: Vec<usize>) -> Result<()> {
        if self.act.perm.is_some() && !matches!(layer, Layer::ReLU | Layer::Flatten) {
            return Err(self.err(
                "follows a Transpose that no linear layer consumes: only a Transpose before \
                 a flatten and a Gemm/MatMul is supported",
            ));
        }
        self.fresh_affine = matches!(layer, Layer::Linear(_) | Layer::Conv2d(_));
        self.layers.push(layer);
        self.act.shape = shape;
        self.at_input = false;
        Ok(())
    }

    /// A per-channel affine map `x·scale + shift` as a batch norm whose scale and shift are
    /// exactly these values (unit variance, ε = 0, zero mean).
    fn channel_affine(&mut self, scale: Vec<f32>, shift: Vec<f32>) -> Result<()> {
        let channels = scale.len();
        let spatial_dims = if self.act.shape.len() == 4 { 2 } else { 1 };
        let mut bn = BatchNorm::new(channels, spatial_dims);
        bn.weight = Tensor::from_vec(scale, &[channels]);
        bn.bias = Tensor::from_vec(shift, &[channels]);
        bn.eps = 0.0;
        let shape = self.act.shape.clone();
        self.push(Layer::BatchNorm(bn), shape)
    }

    fn relu(&mut self) -> Result<()> {
        let shape = self.act.shape.clone();
        // Elementwise: a pending permutation stays pending.
        let perm = self.act.perm.take();
        self.push(Layer::ReLU, shape)?;
        self.act.perm = perm;
        Ok(())
    }

    /// Flatten to [1, features] (no layer when already flat).
    fn flatten(&mut self) -> Result<()> {
        let shape = &self.act.shape;
        if shape.first() != Some(&1) {
            return Err(self.err(format!("activation {shape:?} has no batch dimension of 1")));
        }
        let features: usize = shape[1..].iter().product();
        if shape.len() == 2 {
            return Ok(());
        }
        let perm = self.act.perm.take();
        self.push(Layer::Flatten, vec![1, features])?;
        self.act.perm = perm;
        Ok(())
    }

    /// A reshape before any computation: the model reads its input in the new shape (the
    /// values keep their order).
    fn reinterpret_input(&mut self, shape: Vec<usize>) -> Result<()> {
        let input_shape = match shape.as_slice() {
            [1, c, h, w] => [*c, *h, *w],
            [1, f] => [*f, 1, 1],
            _ => return Err(self.err(format!("reshapes the input to {shape:?}"))),
        };
        if let Some(n) = self.normalization.take() {
            // Per channel of the old shape → per value → per channel of the new one.
            let [c, h, w] = self.input_shape;
            let per_value = |v: &[f32]| -> Vec<f64> {
                v.iter()
                    .flat_map(|&x| std::iter::repeat_n(x as f64, h * w))
                    .collect()
            };
            let _ = c;
            let channels = input_shape[0];
            let regroup = |v: Vec<f64>| -> Result<Vec<f32>> {
                let inner = v.len() / channels;
                v.chunks(inner)
                    .map(|block| {
                        if block.iter().all(|&x| x == block[0]) {
                            Ok(block[0] as f32)
                        } else {
                            Err(self.err(
                                "the input normalisation differs within a channel of the \
                                 reshaped input",
                            ))
                        }
                    })
                    .collect()
            };
            self.normalization = Some(Normalization {
                mean: regroup(per_value(&n.mean))?,
                std: regroup(per_value(&n.std))?,
            });
        }
        self.input_shape = input_shape;
        self.layers.clear();
        if shape.len() == 2 {
            self.layers.push(Layer::Flatten);
        }
        self.act.shape = shape;
        Ok(())
    }

    fn node(&mut self) -> Result<()> {
        let node = self.node;
        let (act_pos, consts) = self.operands()?;
        let output = self.output()?;
        if node.op_type == "Shape" && act_pos.is_some() {
            // The activation's shape, as the constant reshape targets are computed from.
            let shape = &self.act.shape;
            self.consts.insert(
                output,
                Const {
                    dims: vec![shape.len()],
                    values: shape.iter().map(|&d| d as f64).collect(),
                },
            );
            return Ok(());
        }
        if act_pos.is_none() {
            // Constant folding: shape arithmetic and constants.
            let value = self.fold_constant(&consts)?;
            self.consts.insert(output, value);
            return Ok(());
        }
        let op = node.op_type.as_str();
        match op {
            "Relu" => self.relu()?,
            "Identity" | "Dropout" => {}
            "Flatten" => {
                let axis = attr_int(node, "axis", 1);
                if axis != 1 && !(axis == 0 && self.act.shape.first() == Some(&1)) {
                    return Err(
                        self.err(format!("flattens at axis {axis}; only axis 1 is supported"))
                    );
                }
                self.flatten()?
            }
            "Reshape" => self.reshape(&consts)?,
            "Transpose" => self.transpose()?,
            "Conv" => self.conv(&consts)?,
            "Gemm" => self.gemm(act_pos, &consts)?,
            "MatMul" => self.matmul(act_pos, &consts)?,
            "Add" | "Sub" => self.add(op == "Sub", act_pos, &consts)?,
            "Mul" | "Div" => self.mul(op == "Div", act_pos, &consts)?,
            "BatchNormalization" => self.batch_norm(&consts)?,
            _ => {
                return Err(self.err(
                    "operator not supported (supported: Conv, Gemm, MatMul, Add, Sub, Mul, \
                     Div, Relu, Flatten, Reshape, Transpose before a flatten, \
                     BatchNormalization, Identity, Dropout, Constant, and shape arithmetic)",
                ))
            }
        }
        self.act.name = output;
        Ok(())
    }

    fn fold_constant(&self, consts: &[&str]) -> Result<Const> {
        let node = self.node;
        let one = |i: usize| -> Result<&Const> {
            consts
                .get(i)
                .and_then(|n| self.consts.get(*n))
                .ok_or_else(|| self.err(format!("needs a constant operand {}", i + 1)))
        };
        match node.op_type.as_str() {
            "Constant" => {
                let t = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| self.err("has no tensor 'value' attribute"))?;
                Ok(Const {
                    dims: dims(t)?,
                    values: values_f64(t)?,
                })
            }
            "Identity" | "Cast" => Ok(one(0)?.clone()),
            "DequantizeLinear" => self.dequantize(
                one(0)?,
                one(1)?,
                consts.get(2).and_then(|n| self.consts.get(*n)),
            ),
            "Unsqueeze" | "Squeeze" => {
                // Only the rank changes; the values stay. 1-D results suffice for reshape targets.
                let c = one(0)?;
                Ok(Const {
                    dims: vec![c.values.len()],
                    values: c.values.clone(),
                })
            }
            "Concat" => {
                let mut values = Vec::new();
                for name in consts {
                    let c = &self.consts[*name];
                    if c.dims.len() > 1 {
                        return Err(self.err("concatenates constants of rank > 1"));
                    }
                    values.extend(&c.values);
                }
                Ok(Const {
                    dims: vec![values.len()],
                    values,
                })
            }
            "Gather" => {
                let data = one(0)?;
                let index = one(1)?;
                if data.dims.len() != 1 || attr_int(node, "axis", 0) != 0 {
                    return Err(self.err("gathers from a constant of rank > 1"));
                }
                let n = data.values.len() as i64;
                let values = index
                    .values
                    .iter()
                    .map(|&i| {
                        let i = i as i64;
                        let i = if i < 0 { i + n } else { i };
                        data.values
                            .get(i as usize)
                            .copied()
                            .ok_or_else(|| self.err(format!("index {i} out of range")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Const {
                    dims: index.dims.clone(),
                    values,
                })
            }
            _ => Err(self.err("operator not supported on constants")),
        }
    }

    /// `(x − zero_point)·scale` in f32, per tensor or along `axis`: the weights a runtime
    /// computes from stored integers (a QDQ export's).
    fn dequantize(&self, x: &Const, scale: &Const, zero: Option<&Const>) -> Result<Const> {
        let scales = exact_f32(self.node, "the scale", scale)?;
        let zeros = zero
            .map(|z| z.values.clone())
            .unwrap_or(vec![0.0; scales.len()]);
        if zeros.len() != scales.len() {
            return Err(self.err("scale and zero point differ in length"));
        }
        let (axis_len, inner) = if scales.len() == 1 {
            (1, x.values.len())
        } else {
            let rank = x.dims.len() as i64;
            let axis = attr_int(self.node, "axis", 1);
            let axis = if axis < 0 { axis + rank } else { axis };
            if !(0..rank).contains(&axis) || x.dims[axis as usize] != scales.len() {
                return Err(self.err(format!(
                    "{} scales for axis {axis} of a tensor {:?}",
                    scales.len(),
                    x.dims
                )));
            }
            let inner: usize = x.dims[axis as usize + 1..].iter().product();
            (scales.len(), inner)
        };
        let values = x
            .values
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let ch = (i / inner) % axis_len;
                (((q - zeros[ch]) as f32) * scales[ch]) as f64
            })
            .collect();
        Ok(Const {
            dims: x.dims.clone(),
            values,
        })
    }

    fn reshape(&mut self, consts: &[&str]) -> Result<()> {
        let target = self.nth(consts, 0)?;
        let numel: usize = self.act.shape.iter().product();
        let mut shape = Vec::new();
        let mut infer = None;
        for (i, &t) in target.values.iter().enumerate() {
            let t = t as i64;
            match t {
                -1 if infer.is_none() => {
                    infer = Some(i);
                    shape.push(1);
                }
                0 => {
                    shape.push(*self.act.shape.get(i).ok_or_else(|| {
                        self.err("copies a dimension the activation does not have")
                    })?)
                }
                t if t > 0 => shape.push(t as usize),
                _ => return Err(self.err(format!("invalid target shape {:?}", target.values))),
            }
        }
        if let Some(i) = infer {
            let known: usize = shape.iter().product();
            if known == 0 || !numel.is_multiple_of(known) {
                return Err(self.err("cannot infer the target shape"));
            }
            shape[i] = numel / known;
        }
        if shape.iter().product::<usize>() != numel {
            return Err(self.err(format!(
                "reshapes {:?} into {shape:?}, which holds another number of values",
                self.act.shape
            )));
        }
        if shape.first() != Some(&1) {
            // A flat vector without a batch axis (`[784]`): the same values.
            shape.insert(0, 1);
        }
        if shape == self.act.shape {
            return Ok(());
        }
        if shape.len() == 2 {
            return self.flatten();
        }
        if self.at_input {
            return self.reinterpret_input(shape);
        }
        Err(self.err(format!(
            "reshapes {:?} into {shape:?}: only flattening (or reshaping the input) is supported",
            self.act.shape
        )))
    }

    fn transpose(&mut self) -> Result<()> {
        let shape = self.act.shape.clone();
        let rank = shape.len();
        let perm: Vec<usize> = attr_ints(self.node, "perm")
            .unwrap_or_else(|| (0..rank as i64).rev().collect())
            .into_iter()
            .map(|p| p as usize)
            .collect();
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..rank).collect::<Vec<_>>() || perm.first() != Some(&0) {
            return Err(self.err(format!(
                "permutation {perm:?} moves the batch axis or is invalid"
            )));
        }
        let new_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        // Strides of the old layout; value k of the new layout is the old value at the index
        // whose coordinates, permuted, are k's.
        let mut strides = vec![1; rank];
        for a in (0..rank.saturating_sub(1)).rev() {
            strides[a] = strides[a + 1] * shape[a + 1];
        }
        let n: usize = shape.iter().product();
        let old_of_new: Vec<usize> = (0..n)
            .map(|k| {
                let (mut rem, mut old) = (k, 0);
                for a in (0..rank).rev() {
                    let coord = rem % new_shape[a];
                    rem /= new_shape[a];
                    old += coord * strides[perm[a]];
                }
                old
            })
            .collect();
        let composed = match self.act.perm.take() {
            Some(prev) => old_of_new.iter().map(|&o| prev[o]).collect(),
            None => old_of_new,
        };
        self.act.perm = Some(composed);
        self.act.shape = new_shape;
        Ok(())
    }

    fn conv(&mut self, consts: &[&str]) -> Result<()> {
        let node = self.node;
        if node.input.first() != Some(&self.act.name) {
            return Err(self.err("convolves a constant"));
        }
        let w = self.nth(consts, 0)?;
        let bias = match consts.get(1) {
            Some(b) => Some(exact_f32(node, "the bias", &self.constant(b)?.clone())?),
            None => None,
        };
        let shape = self.act.shape.clone();
        let [1, c, h, wd] = shape[..] else {
            return Err(self.err(format!("input {shape:?} is not one [1, C, H, W] image")));
        };
        let [o, ci, kh, kw] = w.dims[..] else {
            return Err(self.err(format!("weight {:?} is not a 2-D convolution's", w.dims)));
        };
        if ci != c {
            return Err(self.err(format!("weight has {ci} input channels, the input {c}")));
        }
        if o == 0 || kh == 0 || kw == 0 {
            return Err(self.err(format!("empty weight {:?}", w.dims)));
        }
        if attr_int(node, "group", 1) != 1 {
            return Err(self.err("grouped convolutions are not supported"));
        }
        if attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
            return Err(self.err("dilated convolutions are not supported"));
        }
        let auto_pad = attr_string(node, "auto_pad").unwrap_or_default();
        let pads = match auto_pad.as_str() {
            "" | "NOTSET" => attr_ints(node, "pads").unwrap_or(vec![0; 4]),
            "VALID" => vec![0; 4],
            other => return Err(self.err(format!("auto_pad {other} is not supported"))),
        };
        let strides = attr_ints(node, "strides").unwrap_or(vec![1, 1]);
        if pads.len() != 4
            || pads[0] != pads[2]
            || pads[1] != pads[3]
            || pads.iter().any(|&p| p < 0)
        {
            return Err(self.err(format!("padding {pads:?} is not symmetric")));
        }
        if strides.len() != 2 || strides.iter().any(|&s| s < 1) {
            return Err(self.err(format!("strides {strides:?} are invalid")));
        }
        if let Some(k) = attr_ints(node, "kernel_shape") {
            if k != [kh as i64, kw as i64] {
                return Err(self.err(format!("kernel_shape {k:?} differs from the weight's")));
            }
        }
        let params = Conv2dParams {
            stride: (strides[0] as usize, strides[1] as usize),
            padding: (pads[0] as usize, pads[1] as usize),
        };
        if h + 2 * params.padding.0 < kh || wd + 2 * params.padding.1 < kw {
            return Err(self.err("kernel larger than the padded input"));
        }
        let (oh, ow) = params.output_hw(h, wd, kh, kw);
        if bias.as_ref().is_some_and(|b| b.len() != o) {
            return Err(self.err("bias length differs from the output channels"));
        }
        let weight = exact_f32(node, "the weight", &w)?;
        let layer = Conv2d {
            weight: Tensor::from_vec(weight, &[o, ci, kh, kw]),
            bias: bias.map(|b| Tensor::from_vec(b, &[o])),
            params,
        };
        self.push(Layer::Conv2d(layer), vec![1, o, oh, ow])
    }

    /// A linear layer from a weight laid out [out, in], with the pending permutation folded
    /// into its columns.
    fn linear(&mut self, mut weight: Vec<f32>, out: usize, bias: Option<Vec<f32>>) -> Result<()> {
        let features = match self.act.shape[..] {
            [1, f] => f,
            ref s => {
                return Err(self.err(format!("input {s:?} is not one flat [1, features] vector")))
            }
        };
        if out == 0 || features == 0 {
            return Err(self.err("a linear layer with no inputs or no outputs"));
        }
        if weight.len() != out * features {
            return Err(self.err(format!(
                "weight holds {} values for {out} outputs of {features} features",
                weight.len()
            )));
        }
        if let Some(perm) = self.act.perm.take() {
            // Column k multiplies activation value k, which is the untransposed value perm[k].
            let mut permuted = vec![0.0; weight.len()];
            for r in 0..out {
                for (k, &p) in perm.iter().enumerate() {
                    permuted[r * features + p] = weight[r * features + k];
                }
            }
            weight = permuted;
        }
        if bias.as_ref().is_some_and(|b| b.len() != out) {
            return Err(self.err("bias length differs from the outputs"));
        }
        let layer = Linear {
            weight: Tensor::from_vec(weight, &[out, features]),
            bias: bias.map(|b| Tensor::from_vec(b, &[out])),
        };
        self.push(Layer::Linear(layer), vec![1, out])
    }

    fn gemm(&mut self, act_pos: Option<usize>, consts: &[&str]) -> Result<()> {
        let node = self.node;
        if act_pos != Some(0) || attr_int(node, "transA", 0) != 0 {
            return Err(self.err("only activation × constant (transA = 0) is supported"));
        }
        if attr_float(node, "alpha", 1.0) != 1.0 {
            return Err(self.err("alpha ≠ 1 would rescale the weights inexactly"));
        }
        let b = self.nth(consts, 0)?;
        let [r, c] = b.dims[..] else {
            return Err(self.err(format!("weight {:?} is not a matrix", b.dims)));
        };
        let values = exact_f32(node, "the weight", &b)?;
        let (out, weight) = if attr_int(node, "transB", 0) != 0 {
            (r, values)
        } else {
            (c, transpose(&values, r, c))
        };
        let bias = match consts.get(1) {
            Some(name) => {
                let cst = self.constant(name)?.clone();
                let beta = attr_float(node, "beta", 1.0);
                if beta != 1.0 {
                    return Err(self.err("beta ≠ 1 would rescale the bias inexactly"));
                }
                let full = broadcast(&cst.values, &cst.dims, &[1, out])
                    .ok_or_else(|| self.err(format!("bias {:?} does not broadcast", cst.dims)))?;
                Some(exact_f32(
                    node,
                    "the bias",
                    &Const {
                        dims: vec![out],
                        values: full,
                    },
                )?)
            }
            None => None,
        };
        self.linear(weight, out, bias)
    }

    fn matmul(&mut self, act_pos: Option<usize>, consts: &[&str]) -> Result<()> {
        if act_pos != Some(0) {
            return Err(self.err("only activation × constant is supported"));
        }
        let b = self.nth(consts, 0)?;
        let [r, c] = b.dims[..] else {
            return Err(self.err(format!("weight {:?} is not a matrix", b.dims)));
        };
        let values = exact_f32(self.node, "the weight", &b)?;
        self.linear(transpose(&values, r, c), c, None)
    }

    fn add(&mut self, subtract: bool, act_pos: Option<usize>, consts: &[&str]) -> Result<()> {
        let c = self.nth(consts, 0)?;
        let values = self.per_channel(&c)?;
        let values = exact_f32(
            self.node,
            "the constant",
            &Const {
                dims: vec![values.len()],
                values,
            },
        )?;
        // act − c, c − act, or act + c.
        let act_negated = subtract && act_pos == Some(1);
        let shift: Vec<f32> = values
            .iter()
            .map(|&v| if subtract && !act_negated { -v } else { v })
            .collect();
        if act_negated {
            let scale = vec![-1.0; shift.len()];
            return self.channel_affine(scale, shift);
        }
        if self.fresh_affine && self.act.perm.is_none() {
            if let Some(layer) = self.layers.last_mut() {
                let bias = match layer {
                    Layer::Linear(l) => &mut l.bias,
                    Layer::Conv2d(cv) => &mut cv.bias,
                    _ => unreachable!("fresh_affine follows a linear or conv layer"),
                };
                let sum: Option<Vec<f32>> = match bias {
                    None => Some(shift.clone()),
                    Some(b) => b
                        .to_vec()
                        .iter()
                        .zip(&shift)
                        .map(|(&a, &s)| {
                            let exact = a as f64 + s as f64;
                            ((exact as f32) as f64 == exact).then_some(exact as f32)
                        })
                        .collect(),
                };
                if let Some(sum) = sum {
                    let n = sum.len();
                    *bias = Some(Tensor::from_vec(sum, &[n]));
                    return Ok(());
                }
            }
        }
        if self.at_input && self.normalization.is_none() {
            // x − mean at the input: the normalisation's mean (std 1 until a Div).
            self.normalization = Some(Normalization {
                mean: shift.iter().map(|&s| -s).collect(),
                std: vec![1.0; shift.len()],
            });
            return Ok(());
        }
        let scale = vec![1.0; shift.len()];
        self.channel_affine(scale, shift)
    }

    fn mul(&mut self, divide: bool, act_pos: Option<usize>, consts: &[&str]) -> Result<()> {
        if divide && act_pos != Some(0) {
            return Err(self.err("divides a constant by the activation"));
        }
        let c = self.nth(consts, 0)?;
        let values = self.per_channel(&c)?;
        let values = exact_f32(
            self.node,
            "the constant",
            &Const {
                dims: vec![values.len()],
                values,
            },
        )?;
        if divide && self.at_input {
            if let Some(n) = &mut self.normalization {
                if n.std.iter().all(|&s| s == 1.0) {
                    n.std = values;
                    return Ok(());
                }
            } else {
                self.normalization = Some(Normalization {
                    mean: vec![0.0; values.len()],
                    std: values,
                });
                return Ok(());
            }
        }
        let scale = if divide {
            values
                .iter()
                .map(|&v| {
                    let r = 1.0 / v;
                    // The reciprocal must be exact for the map to be the graph's.
                    if r.is_finite() && (r as f64) * (v as f64) == 1.0 {
                        Ok(r)
                    } else {
                        Err(self.err(format!(
                            "division by {v} inside the network: its reciprocal is not exactly \
                             a float32, so no exact per-channel scale exists"
                        )))
                    }
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            values
        };
        let shift = vec![0.0; scale.len()];
        self.channel_affine(scale, shift)
    }

    fn batch_norm(&mut self, consts: &[&str]) -> Result<()> {
        let node = self.node;
        if node.input.first() != Some(&self.act.name) || consts.len() != 4 {
            return Err(self.err("needs the activation then scale, bias, mean and variance"));
        }
        let channels = *self
            .act
            .shape
            .get(1)
            .ok_or_else(|| self.err("input has no channel axis"))?;
        let mut params = Vec::new();
        for (name, what) in consts.iter().zip(["scale", "bias", "mean", "variance"]) {
            let c = self.constant(name)?.clone();
            if c.values.len() != channels {
                return Err(self.err(format!(
                    "{what} has {} values for {channels} channels",
                    c.values.len()
                )));
            }
            params.push(Tensor::from_vec(exact_f32(node, what, &c)?, &[channels]));
        }
        if params[3].data().iter().any(|&v| v < 0.0) {
            return Err(self.err("negative variance"));
        }
        let spatial_dims = if self.act.shape.len() == 4 { 2 } else { 1 };
        let mut bn = BatchNorm::new(channels, spatial_dims);
        bn.eps = attr_float(node, "epsilon", 1e-5);
        bn.running_var = params.pop().expect("four parameters");
        bn.running_mean = params.pop().expect("four parameters");
        bn.bias = params.pop().expect("four parameters");
        bn.weight = params.pop().expect("four parameters");
        let shape = self.act.shape.clone();
        self.push(Layer::BatchNorm(bn), shape)
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// The declared shape of a graph input (a symbolic or missing first dimension read as batch 1).
fn input_dims(graph: &GraphProto, name: &str) -> Result<Vec<usize>> {
    use crate::onnx::proto::tensor_shape_proto::dimension::Value;
    let info = graph
        .input
        .iter()
        .find(|i| i.name == name)
        .expect("listed input");
    let Some(type_proto::Value::TensorType(t)) =
        info.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(Error::Invalid(format!(
            "ONNX input '{name}' is not a tensor"
        )));
    };
    if t.elem_type.is_some_and(|e| e != data_type::FLOAT) {
        return Err(Error::Invalid(format!(
            "ONNX input '{name}' is {}, expected FLOAT",
            data_type::name(t.elem_type.unwrap_or(0))
        )));
    }
    let shape = t
        .shape
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("ONNX input '{name}' declares no shape")))?;
    shape
        .dim
        .iter()
        .enumerate()
        .map(|(i, d)| match &d.value {
            Some(Value::DimValue(v)) if *v > 0 => Ok(*v as usize),
            _ if i == 0 => Ok(1),
            _ => Err(Error::Invalid(format!(
                "ONNX input '{name}' has an unknown dimension {i}: a static shape is needed"
            ))),
        })
        .collect()
}

/// The network of an ONNX model, as a cactus model of architecture `custom`.
pub fn import_model(proto: &ModelProto) -> Result<Imported> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| Error::Invalid("the ONNX model has no graph".into()))?;
    if let Some(op) = proto
        .opset_import
        .iter()
        .find(|o| !o.domain.is_empty() && o.domain != "ai.onnx")
    {
        return Err(Error::Invalid(format!(
            "the ONNX model imports the operator set '{}', which is not supported",
            op.domain
        )));
    }
    let mut consts = HashMap::new();
    for t in &graph.initializer {
        consts.insert(
            t.name.clone(),
            Const {
                dims: dims(t)?,
                values: values_f64(t)
                    .map_err(|e| Error::Invalid(format!("ONNX initializer: {e}")))?,
            },
        );
    }
    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !consts.contains_key(*n))
        .collect();
    let [input_name] = inputs[..] else {
        return Err(Error::Invalid(format!(
            "the ONNX graph has {} inputs ({inputs:?}); one is supported",
            inputs.len()
        )));
    };
    let [output] = &graph.output[..] else {
        return Err(Error::Invalid(format!(
            "the ONNX graph has {} outputs; one is supported",
            graph.output.len()
        )));
    };
    let declared = input_dims(graph, input_name)?;
    // An image [1, C, H, W]; anything else is read as its flat values ([784], [1, 784],
    // [1, 784, 1]): the chain's next Flatten or Reshape keeps their order.
    let shape = match declared[..] {
        [1, c, h, w] => vec![1, c, h, w],
        [] => {
            return Err(Error::Invalid(format!(
                "ONNX input '{input_name}' is a scalar; a tensor input is supported"
            )))
        }
        _ => {
            let values: usize = declared.iter().product();
            if declared.len() > 1 && declared[0] != 1 {
                return Err(Error::Invalid(format!(
                    "ONNX input '{input_name}' has shape {declared:?}: a batch of {} inputs; \
                     one input (batch 1) is supported",
                    declared[0]
                )));
            }
            vec![1, values]
        }
    };
    let placeholder = NodeProto::default();
    let mut im = Importer {
        consts,
        act: Activation {
            name: input_name.into(),
            shape: shape.clone(),
            perm: None,
        },
        layers: Vec::new(),
        at_input: true,
        input_shape: [1, 1, 1],
        normalization: None,
        fresh_affine: false,
        node: &placeholder,
    };
    // Set the input shape (and the leading flatten of a flat input).
    im.reinterpret_input(shape)?;
    for node in &graph.node {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(err(
                node,
                format!("operator domain '{}' is not supported", node.domain),
            ));
        }
        im.node = node;
        im.node()?;
    }
    if im.act.name != output.name {
        return Err(Error::Invalid(format!(
            "the ONNX graph's output '{}' is not the end of its chain ('{}'): only \
             feed-forward chains are supported",
            output.name, im.act.name
        )));
    }
    if im.act.perm.is_some() {
        return Err(Error::Invalid(
            "the ONNX graph ends with a Transpose no linear layer consumes".into(),
        ));
    }
    let classes: usize = im.act.shape[1..].iter().product();
    if im.act.shape.len() != 2 {
        return Err(Error::Invalid(format!(
            "the ONNX graph's output has shape {:?}; a flat vector of outputs is supported",
            im.act.shape
        )));
    }
    let mut spec = ModelSpec::new(Arch::Custom, im.input_shape, classes);
    spec.normalization = im.normalization.take();
    let model = Model::from_layers(spec, im.layers)?;
    Ok(Imported {
        model,
        input_name: input_name.into(),
        input_dims: declared,
        output_name: output.name.clone(),
    })
}
