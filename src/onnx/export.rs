//! A model as an ONNX graph (opset 13, IR version 8): what other verifiers and runtimes read.
//!
//! The graph is the whole function cactus certifies, on pixel inputs `[1, C, H, W]` in [0, 1]:
//! - the input normalisation as `Sub` (mean) then `Div` (std), per channel — it does not fold
//!   exactly into a zero-padded first convolution, whose padding is zero in normalised space;
//! - `Conv`, `Gemm` (`transB = 1`, PyTorch's layout), `Relu`, `Flatten`;
//! - batch norm in inference form, `BatchNormalization` with the running statistics and ε
//!   (not folded: folding rounds the weights, and the graph would then compute another
//!   function than the one certified). Opset 13 is kept because later opsets add a
//!   `training_mode` attribute that verifiers' converters stumble on.
//!
//! Weights are float32 `raw_data` named as in the PyTorch state dict (`3.weight`), pruned
//! weights as the zeros they are. A compressed checkpoint's fp16 and intN weights export as
//! their f32 values by default; with `qdq`, as they are stored: int8 codes through
//! `DequantizeLinear` (per tensor, or per output channel on axis 0), or float16 through `Cast`,
//! so a runtime sees the integers and computes the same weights.

use crate::io::StoredWeight;
use crate::nn::{Layer, Model};
use crate::onnx::proto::{
    attribute_type, data_type, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::onnx::tensor::{f16_tensor, f32_tensor, i8_tensor};
use crate::onnx::{INPUT_NAME, IR_VERSION, OPSET, OUTPUT_NAME};
use crate::{Error, Result};
use std::collections::BTreeMap;

/// How weights stored in a compressed form are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Keep compressed weights as stored: int8 codes with `DequantizeLinear`, float16 with
    /// `Cast`. Without it, every weight is its f32 value.
    pub qdq: bool,
}

/// An attribute of one int64 list.
pub(crate) fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: Some(value),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f: Some(value),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: String,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name,
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

/// A float tensor value of fixed shape, for the graph's input and output.
fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

/// Nodes and initializers, built layer by layer.
struct Builder<'a> {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    stored: &'a BTreeMap<String, StoredWeight>,
    options: ExportOptions,
}

impl Builder<'_> {
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializers.push(f32_tensor(name, dims, values));
        name.into()
    }

    /// The weight `name` (a state-dict name) as a graph value: an initializer, or with `qdq`
    /// the output of the node that decodes its stored form.
    fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) -> Result<String> {
        let stored = if self.options.qdq {
            self.stored.get(name)
        } else {
            None
        };
        match stored {
            None => Ok(self.constant(name, dims, values)),
            Some(StoredWeight::F16(bits)) => {
                let half = format!("{name}_fp16");
                self.initializers.push(f16_tensor(&half, dims, bits));
                let mut cast = node("Cast", format!("{name}_Cast"), &[&half], name, vec![]);
                cast.attribute.push(int("to", data_type::FLOAT as i64));
                self.nodes.push(cast);
                Ok(name.into())
            }
            Some(StoredWeight::Int {
                codes,
                scales,
                zero_points,
            }) => {
                let zero_points: Vec<i8> = zero_points
                    .iter()
                    .map(|&z| {
                        i8::try_from(z).map_err(|_| {
                            Error::Invalid(format!(
                                "weight '{name}' has the zero point {z}, outside int8: it cannot \
                                 be written as an int8 DequantizeLinear"
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                // One scale: a scalar (per tensor); one per row: a vector on axis 0.
                let param_dims: &[usize] = if scales.len() == 1 {
                    &[]
                } else {
                    &[scales.len()]
                };
                let codes_name = format!("{name}_quantized");
                let scale_name = format!("{name}_scale");
                let zero_name = format!("{name}_zero_point");
                self.initializers.push(i8_tensor(&codes_name, dims, codes));
                self.initializers
                    .push(f32_tensor(&scale_name, param_dims, scales));
                self.initializers
                    .push(i8_tensor(&zero_name, param_dims, &zero_points));
                let mut dq = node(
                    "DequantizeLinear",
                    format!("{name}_DequantizeLinear"),
                    &[&codes_name, &scale_name, &zero_name],
                    name,
                    vec![],
                );
                if scales.len() > 1 {
                    dq.attribute.push(int("axis", 0));
                }
                self.nodes.push(dq);
                Ok(name.into())
            }
        }
    }
}

/// The ONNX model of `model`, with `stored` the checkpoint's compressed weights (used with
/// `options.qdq`) and `metadata` written as the model's metadata properties.
pub fn export_model(
    model: &Model,
    stored: &BTreeMap<String, StoredWeight>,
    metadata: &BTreeMap<String, String>,
    options: ExportOptions,
) -> Result<ModelProto> {
    let [c, h, w] = model.spec.input_shape;
    let mut b = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        stored,
        options,
    };
    let mut current = INPUT_NAME.to_string();
    if let Some(n) = &model.spec.normalization {
        let mean = b.constant("normalization.mean", &[1, c, 1, 1], &n.mean);
        let std = b.constant("normalization.std", &[1, c, 1, 1], &n.std);
        b.nodes.push(node(
            "Sub",
            "normalization_Sub".into(),
            &[&current, &mean],
            "normalization_centred",
            vec![],
        ));
        b.nodes.push(node(
            "Div",
            "normalization_Div".into(),
            &["normalization_centred", &std],
            "normalization",
            vec![],
        ));
        current = "normalization".into();
    }
    let last = model.net.layers.len().saturating_sub(1);
    for (i, layer) in model.net.layers.iter().enumerate() {
        let output = if i == last {
            OUTPUT_NAME.to_string()
        } else {
            format!("{i}")
        };
        let param = |t: &crate::Tensor| (t.shape().to_vec(), t.to_vec());
        let n = match layer {
            Layer::Conv2d(conv) => {
                let (dims, values) = param(&conv.weight);
                let weight = b.weight(&format!("{i}.weight"), &dims, &values)?;
                let mut inputs = vec![current.clone(), weight];
                if let Some(bias) = &conv.bias {
                    let (dims, values) = param(bias);
                    inputs.push(b.constant(&format!("{i}.bias"), &dims, &values));
                }
                let (kh, kw) = conv.kernel();
                let p = conv.params;
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                node(
                    "Conv",
                    format!("{i}_Conv"),
                    &inputs,
                    &output,
                    vec![
                        ints("kernel_shape", &[kh, kw]),
                        ints("strides", &[p.stride.0, p.stride.1]),
                        ints(
                            "pads",
                            &[p.padding.0, p.padding.1, p.padding.0, p.padding.1],
                        ),
                        ints("dilations", &[1, 1]),
                        int("group", 1),
                    ],
                )
            }
            Layer::Linear(linear) => {
                let (dims, values) = param(&linear.weight);
                let weight = b.weight(&format!("{i}.weight"), &dims, &values)?;
                let mut inputs = vec![current.clone(), weight];
                if let Some(bias) = &linear.bias {
                    let (dims, values) = param(bias);
                    inputs.push(b.constant(&format!("{i}.bias"), &dims, &values));
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                node(
                    "Gemm",
                    format!("{i}_Gemm"),
                    &inputs,
                    &output,
                    vec![float("alpha", 1.0), float("beta", 1.0), int("transB", 1)],
                )
            }
            Layer::BatchNorm(bn) => {
                let ch = bn.channels();
                let mut named = |what: &str, t: &crate::Tensor| {
                    b.constant(&format!("{i}.{what}"), &[ch], &t.to_vec())
                };
                let inputs = [
                    current.clone(),
                    named("weight", &bn.weight),
                    named("bias", &bn.bias),
                    named("running_mean", &bn.running_mean),
                    named("running_var", &bn.running_var),
                ];
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                node(
                    "BatchNormalization",
                    format!("{i}_BatchNormalization"),
                    &inputs,
                    &output,
                    vec![
                        float("epsilon", bn.eps),
                        float("momentum", 1.0 - bn.momentum),
                    ],
                )
            }
            Layer::ReLU => node("Relu", format!("{i}_Relu"), &[&current], &output, vec![]),
            Layer::Flatten => node(
                "Flatten",
                format!("{i}_Flatten"),
                &[&current],
                &output,
                vec![int("axis", 1)],
            ),
        };
        b.nodes.push(n);
        current = output;
    }
    if current != OUTPUT_NAME {
        return Err(Error::Invalid(
            "a network with no layers cannot be exported".into(),
        ));
    }
    let graph = GraphProto {
        name: format!("cactus_{}", model.spec.arch.name()),
        node: b.nodes,
        initializer: b.initializers,
        input: vec![value_info(INPUT_NAME, &[1, c, h, w])],
        output: vec![value_info(OUTPUT_NAME, &[1, model.spec.num_classes])],
        doc_string: format!("{}: pixels in [0, 1] to logits", model.spec.describe()),
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "cactus".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    })
}
