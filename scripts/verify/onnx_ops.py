#!/usr/bin/env python3
"""onnx_ops.py: print what an ONNX network is made of, for writing and checking an importer.

For each file: ir_version, opsets, producer, graph inputs (name, shape; initializers that are
also listed as graph inputs are marked), outputs, every node in graph order with its op type,
inputs/outputs, the attributes that matter and a summary of each constant operand
(initializer or Constant node: dtype, shape, raw_data or typed *_data storage, and the values
when small or min/max/mean when large), plus a list of oddities (Transpose before Flatten,
Shape/Gather/Concat/Unsqueeze subgraphs, normalisation inside the net, initializers listed as
inputs, non-float32 tensors, ...).

Usage:
    python3 scripts/verify/onnx_ops.py NET.onnx [NET2.onnx.gz ...] [--markdown] [--infer-shapes]

    .onnx.gz files are decompressed in memory. --markdown prints one Markdown section per file
    (what tests/fixtures/vnncomp/OPS.md is made of). --infer-shapes runs onnx's shape inference
    and prints each node's output shape. Needs the `onnx` and `numpy` packages only
    (e.g. python3 -m venv /tmp/v && /tmp/v/bin/pip install onnx numpy).
"""

import argparse
import gzip
import hashlib
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return onnx.load_from_string(data), data


def dims(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return "?"
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(str(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append("?")
    return "[" + ",".join(out) + "]"


def storage(t):
    if t.raw_data:
        return "raw_data"
    for field in ("float_data", "double_data", "int32_data", "int64_data", "uint64_data",
                  "string_data"):
        if len(getattr(t, field)):
            return field
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return "external"
    return "empty"


def summarize(arr, limit=8):
    arr = np.asarray(arr)
    if arr.size <= limit:
        flat = arr.reshape(-1).tolist()
        if arr.dtype.kind == "f":
            flat = [float(f"{v:.8g}") for v in flat]
        return f"values={flat}"
    a = arr.astype(np.float64)
    return f"min={a.min():.6g} max={a.max():.6g} mean={a.mean():.6g}"


def tensor_desc(t):
    arr = numpy_helper.to_array(t)
    dt = helper.tensor_dtype_to_np_dtype(t.data_type).name
    return f"{dt}{list(arr.shape)} ({storage(t)}) {summarize(arr)}", arr


def attr_str(a):
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    if isinstance(v, onnx.TensorProto):
        v = tensor_desc(v)[0]
    if isinstance(v, list):
        v = [x.decode() if isinstance(x, bytes) else x for x in v]
    return f"{a.name}={v}"


def describe(path, markdown=False, infer=False):
    model, data = load(path)
    g = model.graph
    if infer:
        try:
            model = onnx.shape_inference.infer_shapes(model)
            g = model.graph
        except Exception as e:  # noqa: BLE001
            print(f"(shape inference failed: {e})")
    shapes = {vi.name: dims(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
    inits = {t.name: t for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    producer = {o: n for n in g.node for o in n.output}

    lines = []
    h = "## " if markdown else "== "
    lines.append(f"{h}{path}")
    lines.append("")
    lines.append(f"- bytes (uncompressed): {len(data)}; sha256: {hashlib.sha256(data).hexdigest()}")
    lines.append(f"- ir_version: {model.ir_version}; opset: "
                 + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import))
    lines.append(f"- producer: {model.producer_name} {model.producer_version}".rstrip())
    real_inputs = [i for i in g.input if i.name not in inits]
    init_inputs = [i for i in g.input if i.name in inits]
    for i in real_inputs:
        et = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
        lines.append(f"- input: `{i.name}` {et} {dims(i)}")
    if init_inputs:
        lines.append(f"- {len(init_inputs)} initializers are also listed as graph inputs "
                     "(old-exporter style; treat them as constants)")
    for o in g.output:
        et = helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type).name
        lines.append(f"- output: `{o.name}` {et} {dims(o)}")
    kinds = sorted({storage(t) for t in g.initializer})
    lines.append(f"- initializers: {len(g.initializer)}, storage: {', '.join(kinds) or 'none'}; "
                 f"dtypes: {', '.join(sorted({helper.tensor_dtype_to_np_dtype(t.data_type).name for t in g.initializer})) or 'none'}")
    lines.append(f"- op sequence: {' → '.join(n.op_type for n in g.node)}")
    lines.append("")
    lines.append("| # | op | inputs → outputs | attributes | constant operands |")
    lines.append("|---|----|------------------|------------|-------------------|")
    oddities = []
    for k, n in enumerate(g.node):
        attrs = "; ".join(attr_str(a) for a in n.attribute) if n.op_type != "Constant" else ""
        cdesc = []
        for i in n.input:
            if i in inits:
                cdesc.append(f"`{i}`: {tensor_desc(inits[i])[0]}")
            elif i in consts:
                cdesc.append(f"`{i}` (Constant node): {tensor_desc(consts[i])[0]}")
        if n.op_type == "Constant":
            cdesc.append("value: " + tensor_desc(consts[n.output[0]])[0])
        outs = ", ".join(f"{o}{shapes.get(o, '') if infer or o in shapes else ''}" for o in n.output)
        ins = ", ".join(n.input)
        lines.append(f"| {k} | {n.op_type} | {ins} → {outs} | {attrs} | {'<br>'.join(cdesc)} |")

        # oddities
        if n.op_type in ("Shape", "Gather", "Unsqueeze", "Concat", "Squeeze", "Slice"):
            oddities.append(f"node {k} {n.op_type}: part of a shape-computing subgraph?")
        if n.op_type == "Flatten":
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "Transpose":
                oddities.append(f"node {k} Flatten follows a Transpose (node {list(g.node).index(src)}):"
                                " the flatten order is not NCHW")
        if n.op_type in ("Sub", "Div", "Mul", "Add") and k < 3 and any(
                i in inits or i in consts for i in n.input):
            src_is_input = any(i in [r.name for r in real_inputs] for i in n.input)
            if src_is_input:
                oddities.append(f"node {k} {n.op_type} applies a constant directly to the input"
                                " (normalisation inside the net)")
        if n.op_type == "Reshape":
            tgt = n.input[1]
            if tgt not in inits and tgt not in consts:
                oddities.append(f"node {k} Reshape target `{tgt}` is computed, not a constant")
        if n.op_type == "MatMul":
            w = [i for i in n.input if i in inits]
            if w:
                pos = "right (x·W, W is [in,out])" if n.input[1] in inits else "left (W·x)"
                oddities.append(f"node {k} MatMul with the constant on the {pos}")
    for t in g.initializer:
        if t.data_type != onnx.TensorProto.FLOAT and t.name not in [
                n.input[1] for n in g.node if n.op_type == "Reshape"]:
            oddities.append(f"initializer `{t.name}` has dtype "
                            f"{helper.tensor_dtype_to_np_dtype(t.data_type).name}")
    if init_inputs:
        oddities.append("initializers appear in graph.input")
    for i in real_inputs:
        rank = len(i.type.tensor_type.shape.dim)
        if rank not in (2, 4):
            oddities.append(f"input `{i.name}` has rank {rank} {dims(i)} (neither [N,F] nor [N,C,H,W])")
    lines.append("")
    lines.append("Oddities / notes:" if oddities else "Oddities / notes: none found")
    for o in dict.fromkeys(oddities):
        lines.append(f"- {o}")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--infer-shapes", action="store_true")
    args = ap.parse_args()
    for f in args.files:
        print(describe(f, markdown=args.markdown, infer=args.infer_shapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
