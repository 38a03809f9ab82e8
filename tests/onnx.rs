//! ONNX export and import: export → import gives the same network bit for bit (logits and
//! certified margins), compressed weights included; hand-built graphs in the forms other
//! exporters write import to the function they compute; malformed or unsupported graphs are
//! clear errors. (The exported files are also checked by onnx.checker and onnxruntime:
//! `scripts/verify/check_onnx.sh`.)

use cactus::autodiff::with_no_grad;
use cactus::bounds::{input_box, margin_lower_bounds, BnSource};
use cactus::compress::quant::{Format, Granularity};
use cactus::compress::{prune, PruneMethod};
use cactus::io::{load_checkpoint, save_compressed_checkpoint};
use cactus::nn::{Arch, Layer, Mode, Model, ModelSpec, Normalization};
use cactus::onnx::proto::{
    attribute_type, data_type, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use cactus::onnx::tensor::f32_tensor;
use cactus::onnx::{export_model, import_model, ExportOptions};
use cactus::rng::Rng;
use cactus::verify::{crown_margins, BoundNet, Intermediate};
use cactus::Tensor;
use prost::Message;
use std::collections::BTreeMap;

fn model(arch: Arch, input: [usize; 3], seed: u64) -> Model {
    let mut rng = Rng::seed(seed);
    let mut spec = ModelSpec::new(arch, input, 10);
    spec.width = 0.25;
    spec.normalization = Some(Normalization {
        mean: (0..input[0]).map(|c| 0.1 + 0.2 * c as f32).collect(),
        std: (0..input[0]).map(|c| 0.3 + 0.05 * c as f32).collect(),
    });
    let mut m = Model::new(spec, &mut rng).unwrap();
    for layer in &mut m.net.layers {
        if let Layer::BatchNorm(b) = layer {
            let c = b.channels();
            b.weight = Tensor::rand_uniform(&[c], -1.5, 1.5, &mut rng);
            b.bias = Tensor::rand_uniform(&[c], -0.5, 0.5, &mut rng);
            b.running_mean = Tensor::rand_uniform(&[c], -0.3, 0.3, &mut rng);
            b.running_var = Tensor::rand_uniform(&[c], 0.5, 2.0, &mut rng);
        }
    }
    m
}

/// Export, serialise, parse and import.
fn round_trip(m: &Model, stored: &BTreeMap<String, cactus::io::StoredWeight>, qdq: bool) -> Model {
    let proto = export_model(m, stored, &BTreeMap::new(), ExportOptions { qdq }).unwrap();
    let bytes = proto.encode_to_vec();
    let back = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(back, proto, "protobuf round trip");
    import_model(&back).unwrap().model
}

fn inputs(m: &Model, n: usize, seed: u64) -> Tensor {
    let [c, h, w] = m.spec.input_shape;
    Tensor::rand_uniform(&[n, c, h, w], 0.0, 1.0, &mut Rng::seed(seed))
}

fn same_function(a: &Model, b: &Model, what: &str) {
    let x = inputs(a, 6, 7);
    let (la, lb) = with_no_grad(|| (a.forward(&x, Mode::Eval), b.forward(&x, Mode::Eval)));
    assert_eq!(la.to_vec(), lb.to_vec(), "{what}: logits differ");
    let labels = [0, 1, 2, 3, 4, 5];
    let boxes = input_box(&x, 0.02);
    let ma = with_no_grad(|| margin_lower_bounds(a, &boxes, &labels, BnSource::Running));
    let mb = with_no_grad(|| margin_lower_bounds(b, &boxes, &labels, BnSource::Running));
    assert_eq!(ma.to_vec(), mb.to_vec(), "{what}: IBP margins differ");
    let (lo, hi) = cactus::bounds::box_corners(&x, 0.02);
    let corners = |v: Vec<f32>| Tensor::from_vec(v, x.shape());
    let crown = |m: &Model| {
        crown_margins(
            &BoundNet::new(m).unwrap(),
            &corners(lo.clone()),
            &corners(hi.clone()),
            &labels,
            Intermediate::Crown,
            1 << 28,
        )
        .to_vec()
    };
    assert_eq!(crown(a), crown(b), "{what}: CROWN margins differ");
}

#[test]
fn export_then_import_is_the_same_network() {
    for (arch, input) in [
        (Arch::Mlp, [1, 6, 6]),
        (Arch::Small, [1, 12, 12]),
        (Arch::Small, [3, 9, 11]),
        (Arch::Cnn7, [3, 8, 8]),
    ] {
        let m = model(arch, input, 1);
        let back = round_trip(&m, &BTreeMap::new(), false);
        assert_eq!(back.spec.normalization, m.spec.normalization);
        same_function(&m, &back, arch.name());
    }
}

#[test]
fn pruned_and_quantized_networks_round_trip_dequantized_and_as_stored() {
    let dir = std::env::temp_dir().join(format!("cactus-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = model(Arch::Cnn7, [1, 8, 8], 2);
    let method: PruneMethod = "gul1".parse().unwrap();
    let (pruned, _) = prune(&m, method, 0.7).unwrap();
    let back = round_trip(&pruned, &BTreeMap::new(), false);
    same_function(&pruned, &back, "pruned");
    for (format, granularity) in [
        (Format::INT8, Granularity::PerTensor),
        (Format::INT8, Granularity::PerChannel),
        (Format::INT4, Granularity::PerChannel),
        (Format::Fp16, Granularity::PerTensor),
    ] {
        let path = dir.join(format!("{format}-{granularity}.safetensors"));
        save_compressed_checkpoint(&path, &pruned, format, granularity, &BTreeMap::new()).unwrap();
        let ckpt = load_checkpoint(&path).unwrap();
        assert!(
            !ckpt.stored_weights.is_empty(),
            "{format}: compressed weights recorded"
        );
        for qdq in [false, true] {
            let proto = export_model(
                &ckpt.model,
                &ckpt.stored_weights,
                &BTreeMap::new(),
                ExportOptions { qdq },
            )
            .unwrap();
            let ops: Vec<&str> = proto
                .graph
                .as_ref()
                .unwrap()
                .node
                .iter()
                .map(|n| n.op_type.as_str())
                .collect();
            let decoder = if format == Format::Fp16 {
                "Cast"
            } else {
                "DequantizeLinear"
            };
            assert_eq!(ops.contains(&decoder), qdq, "{format} qdq={qdq}: {ops:?}");
            let back = import_model(&proto).unwrap().model;
            same_function(
                &ckpt.model,
                &back,
                &format!("{format} {granularity} qdq={qdq}"),
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---- hand-built graphs, in the forms other exporters write ----

fn dims_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    }
}

fn op(op_type: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op_type.into(),
        name: format!("{op_type}_{output}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: Some(v),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: data_type::INT64,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn graph(input: &[i64], nodes: Vec<NodeProto>, inits: Vec<TensorProto>, out: &str) -> ModelProto {
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 12,
        }],
        graph: Some(GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![dims_info("x", input)],
            output: vec![dims_info(out, &[])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn rand(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
}

/// y = W·x + b for W [out, in] row-major, in f64.
fn affine(w: &[f32], b: &[f32], x: &[f64]) -> Vec<f64> {
    let n = x.len();
    b.iter()
        .enumerate()
        .map(|(r, &bi)| bi as f64 + (0..n).map(|k| w[r * n + k] as f64 * x[k]).sum::<f64>())
        .collect()
}

fn close(got: &[f32], want: &[f64], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

#[test]
fn matmul_add_with_flat_input_and_normalisation_imports() {
    // x [1, 8] → (x − m) / s → MatMul [8, 5] + b → Relu → Gemm (transB = 0) [5, 3] + c.
    let mut rng = Rng::seed(3);
    let (w1, b1, w2, b2) = (
        rand(40, &mut rng),
        rand(5, &mut rng),
        rand(15, &mut rng),
        rand(3, &mut rng),
    );
    let proto = graph(
        &[1, 8],
        vec![
            op("Sub", &["x", "m"], "c", vec![]),
            op("Div", &["c", "s"], "n", vec![]),
            op("MatMul", &["n", "w1"], "h", vec![]),
            op("Add", &["h", "b1"], "hb", vec![]),
            op("Relu", &["hb"], "r", vec![]),
            op("Gemm", &["r", "w2", "b2"], "y", vec![]),
        ],
        vec![
            f32_tensor("m", &[], &[0.5]),
            f32_tensor("s", &[], &[0.25]),
            f32_tensor("w1", &[8, 5], &w1),
            f32_tensor("b1", &[5], &b1),
            f32_tensor("w2", &[5, 3], &w2),
            f32_tensor("b2", &[1, 3], &b2),
        ],
        "y",
    );
    let m = import_model(&proto).unwrap().model;
    assert_eq!(m.spec.input_shape, [8, 1, 1]);
    assert_eq!(m.spec.normalization.as_ref().unwrap().std, vec![0.25; 8]);
    let x: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
    let got = with_no_grad(|| m.forward(&Tensor::from_vec(x.clone(), &[1, 8, 1, 1]), Mode::Eval))
        .to_vec();
    let n: Vec<f64> = x.iter().map(|&v| (v as f64 - 0.5) / 0.25).collect();
    // MatMul weights are [in, out]: transpose to [out, in].
    let t = |w: &[f32], r: usize, c: usize| -> Vec<f32> {
        (0..c)
            .flat_map(|j| (0..r).map(move |i| w[i * c + j]))
            .collect()
    };
    let h: Vec<f64> = affine(&t(&w1, 8, 5), &b1, &n)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    close(&got, &affine(&t(&w2, 5, 3), &b2, &h), "MatMul/Gemm chain");
}

#[test]
fn transpose_before_flatten_and_computed_reshape_import() {
    // Conv [1,2,4,4] → Relu → Transpose NHWC → Shape/Gather/Unsqueeze/Concat → Reshape → Gemm.
    let mut rng = Rng::seed(4);
    let (wc, bc, wl) = (
        rand(2 * 2 * 9, &mut rng),
        rand(2, &mut rng),
        rand(3 * 32, &mut rng),
    );
    let proto = graph(
        &[1, 2, 4, 4],
        vec![
            op(
                "Conv",
                &["x", "wc", "bc"],
                "c",
                vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3])],
            ),
            op("Relu", &["c"], "r", vec![]),
            op("Transpose", &["r"], "t", vec![ints("perm", &[0, 2, 3, 1])]),
            op("Shape", &["t"], "shape", vec![]),
            op("Gather", &["shape", "zero"], "batch", vec![int("axis", 0)]),
            op("Unsqueeze", &["batch"], "batch1", vec![ints("axes", &[0])]),
            op(
                "Concat",
                &["batch1", "minus_one"],
                "target",
                vec![int("axis", 0)],
            ),
            op("Reshape", &["t", "target"], "f", vec![]),
            op("Gemm", &["f", "wl"], "y", vec![int("transB", 1)]),
        ],
        vec![
            f32_tensor("wc", &[2, 2, 3, 3], &wc),
            f32_tensor("bc", &[2], &bc),
            f32_tensor("wl", &[3, 32], &wl),
            TensorProto {
                name: "zero".into(),
                data_type: data_type::INT64,
                int64_data: vec![0],
                ..Default::default()
            },
            i64_tensor("minus_one", &[-1]),
        ],
        "y",
    );
    let imported = import_model(&proto).unwrap().model;
    // The same network without the transpose: NCHW flatten, columns permuted by hand.
    let x = inputs(&imported, 1, 9);
    let got = with_no_grad(|| imported.forward(&x, Mode::Eval)).to_vec();
    let conv = with_no_grad(|| {
        x.conv2d(
            &Tensor::from_vec(wc.clone(), &[2, 2, 3, 3]),
            Some(&Tensor::from_vec(bc.clone(), &[2])),
            cactus::ops::Conv2dParams::new(1, 1),
        )
        .relu()
    })
    .to_vec();
    // NHWC flat index k = (h·4 + w)·2 + c holds NCHW value c·16 + h·4 + w.
    let nhwc: Vec<f64> = (0..32)
        .map(|k| {
            let (c, hw) = (k % 2, k / 2);
            conv[c * 16 + hw] as f64
        })
        .collect();
    close(&got, &affine(&wl, &[0.0; 3], &nhwc), "Transpose + Reshape");
}

#[test]
fn unsupported_and_malformed_graphs_are_clear_errors() {
    let w = f32_tensor("w", &[3, 4], &[0.5; 12]);
    let cases: Vec<(ModelProto, &str)> = vec![
        (
            graph(
                &[1, 4],
                vec![op("Sigmoid", &["x"], "y", vec![])],
                vec![],
                "y",
            ),
            "ONNX node 'Sigmoid_y' (Sigmoid): operator not supported",
        ),
        (
            graph(
                &[1, 4],
                vec![op("Add", &["x", "x"], "y", vec![])],
                vec![],
                "y",
            ),
            "uses the activation twice",
        ),
        (
            graph(
                &[1, 1, 4, 4],
                vec![op(
                    "Conv",
                    &["x", "k"],
                    "y",
                    vec![ints("pads", &[1, 1, 0, 0])],
                )],
                vec![f32_tensor("k", &[1, 1, 3, 3], &[1.0; 9])],
                "y",
            ),
            "padding [1, 1, 0, 0] is not symmetric",
        ),
        (
            graph(
                &[1, 4],
                vec![op(
                    "Gemm",
                    &["x", "w"],
                    "y",
                    vec![
                        int("transB", 1),
                        AttributeProto {
                            name: "alpha".into(),
                            r#type: attribute_type::FLOAT,
                            f: Some(0.3),
                            ..Default::default()
                        },
                    ],
                )],
                vec![w.clone()],
                "y",
            ),
            "alpha ≠ 1",
        ),
        (
            graph(
                &[1, 4],
                vec![op("Gemm", &["x", "w"], "y", vec![int("transB", 1)])],
                vec![TensorProto {
                    name: "w".into(),
                    dims: vec![3, 4],
                    data_type: data_type::DOUBLE,
                    double_data: vec![0.1; 12],
                    ..Default::default()
                }],
                "y",
            ),
            "not exactly a float32",
        ),
        (
            graph(
                &[1, 4],
                vec![op("Gemm", &["x", "w"], "y", vec![int("transB", 1)])],
                vec![w.clone()],
                "z",
            ),
            "output 'z' is not the end of its chain",
        ),
        (
            graph(
                &[1, 4],
                vec![op("Gemm", &["x", "nowhere"], "y", vec![])],
                vec![],
                "y",
            ),
            "input 'nowhere' is neither a constant nor the chain's activation",
        ),
        (ModelProto::default(), "has no graph"),
    ];
    for (proto, want) in cases {
        let msg = match import_model(&proto) {
            Ok(_) => panic!("imported a graph that should fail with '{want}'"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(want), "expected '{want}' in: {msg}");
    }
}

#[test]
fn unreadable_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("cactus-onnx-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xff\xff\xff not protobuf").unwrap();
    let e = cactus::onnx::read_model(&garbage).unwrap_err().to_string();
    assert!(e.contains("not a readable ONNX model"), "{e}");
    let truncated = dir.join("truncated.onnx");
    let full = export_model(
        &model(Arch::Mlp, [1, 4, 4], 5),
        &BTreeMap::new(),
        &BTreeMap::new(),
        ExportOptions::default(),
    )
    .unwrap()
    .encode_to_vec();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let e = cactus::onnx::read_model(&truncated)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated.onnx"), "{e}");
    let e = cactus::onnx::read_model(&dir.join("missing.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.onnx"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Random structural damage to exported graphs (dimensions, attributes, operators, operands)
/// and random bytes damage: the importer returns a model or an error, never panics.
#[test]
fn damaged_graphs_never_panic_the_importer() {
    let mut rng = Rng::seed(21);
    let originals: Vec<ModelProto> = [
        (Arch::Mlp, [1, 5, 5]),
        (Arch::Small, [1, 8, 8]),
        (Arch::Cnn7, [2, 6, 6]),
    ]
    .iter()
    .map(|&(arch, input)| {
        export_model(
            &model(arch, input, 9),
            &BTreeMap::new(),
            &BTreeMap::new(),
            ExportOptions::default(),
        )
        .unwrap()
    })
    .collect();
    let small_int = |rng: &mut Rng| rng.below(7) as i64 - 2;
    let mut outcomes = [0usize; 2];
    for case in 0..600 {
        let mut p = originals[case % originals.len()].clone();
        let g = p.graph.as_mut().unwrap();
        for _ in 0..1 + rng.below(3) {
            match rng.below(6) {
                0 if !g.initializer.is_empty() => {
                    let i = rng.below(g.initializer.len());
                    let t = &mut g.initializer[i];
                    if !t.dims.is_empty() {
                        let d = rng.below(t.dims.len());
                        t.dims[d] = small_int(&mut rng).max(0) * (1 + rng.below(3) as i64);
                    } else {
                        t.dims.push(small_int(&mut rng));
                    }
                }
                1 => {
                    let i = rng.below(g.node.len());
                    let n = &mut g.node[i];
                    if let Some(a) = n.attribute.first_mut() {
                        for v in a.ints.iter_mut() {
                            *v = small_int(&mut rng);
                        }
                        a.i = a.i.map(|_| small_int(&mut rng));
                    }
                }
                2 => {
                    let i = rng.below(g.node.len());
                    let ops = [
                        "Relu",
                        "Flatten",
                        "Add",
                        "Mul",
                        "Div",
                        "Conv",
                        "Gemm",
                        "MatMul",
                        "Reshape",
                        "Transpose",
                        "BatchNormalization",
                        "Identity",
                    ];
                    g.node[i].op_type = ops[rng.below(ops.len())].into();
                }
                3 => {
                    let i = rng.below(g.node.len());
                    let j = rng.below(g.node.len());
                    if let Some(input) = g.node[j].input.first().cloned() {
                        g.node[i].input.push(input);
                    }
                }
                4 if g.node.len() > 1 => {
                    let i = rng.below(g.node.len());
                    g.node.remove(i);
                }
                _ => {
                    let i = rng.below(g.initializer.len().max(1));
                    if let Some(t) = g.initializer.get_mut(i) {
                        let n = t.raw_data.len();
                        t.raw_data.truncate(rng.below(n + 1));
                    }
                }
            }
        }
        let result = std::panic::catch_unwind(|| import_model(&p).map(|_| ()));
        match result {
            Ok(r) => outcomes[r.is_ok() as usize] += 1,
            Err(_) => panic!(
                "case {case}: the importer panicked on {:?}",
                p.graph
                    .as_ref()
                    .unwrap()
                    .node
                    .iter()
                    .map(|n| &n.op_type)
                    .collect::<Vec<_>>()
            ),
        }
        // Bytes damage: decoding fails or gives some graph; either way no panic.
        let mut bytes = originals[case % originals.len()].encode_to_vec();
        let k = rng.below(bytes.len());
        bytes[k] ^= 1 << rng.below(8);
        bytes.truncate(bytes.len() - rng.below(8));
        if let Ok(decoded) = ModelProto::decode(bytes.as_slice()) {
            let result = std::panic::catch_unwind(|| import_model(&decoded).map(|_| ()));
            assert!(
                result.is_ok(),
                "case {case}: the importer panicked on damaged bytes"
            );
        }
    }
    assert!(outcomes[0] > 0, "some damage is refused: {outcomes:?}");
}
