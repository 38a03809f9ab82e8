#!/usr/bin/env python3
"""Load a cactus checkpoint (model.safetensors) into the matching PyTorch nn.Sequential.

    python scripts/twin/pytorch_model.py out/model.safetensors [--probe 0.5]

As a library: `model, normalize, spec = load("out/model.safetensors")`; `model(normalize(x))`
gives the logits for pixels x in [0, 1] (normalize: model.Normalize of the checkpoint's
normalisation, beside this file, or the identity). Needs only torch (the safetensors format is
read here directly; `safetensors.torch.load_file` gives the same state dict).
The layer list is read from the checkpoint's metadata ("cactus.layers"), so any architecture
cactus writes is rebuilt exactly; the state dict loads with strict=True.

Verifying a cactus network with α,β-CROWN (the reference verifier): export the network this
twin rebuilds as ONNX, with the test points' robustness properties, then run α,β-CROWN on the
folder (the export writes the config, keys `general.root_path`, `general.csv_name`,
`model.input_shape`, `bab.timeout`):

    cactus export --checkpoint out/model.safetensors --onnx abc/net.onnx --vnnlib abc --limit 100
    python alpha-beta-CROWN/complete_verifier/abcrown.py --config abc/abcrown.yaml

The ONNX graph computes this twin's function, normalisation included, on pixels in [0, 1]
(`scripts/verify/check_onnx.sh` checks it against onnxruntime).
"""
import argparse
import json
import re
import struct
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared modules beside it
from model import Normalize  # noqa: E402

DTYPES = {"F32": torch.float32, "I64": torch.int64}


def read_safetensors(path: str):
    """(state_dict, metadata) of a safetensors file: 8-byte header length, JSON header, data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    state = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        buf = bytearray(data[start:end])
        state[name] = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]).reshape(info["shape"]).clone()
    return state, meta


def build_layer(desc: str) -> nn.Module:
    m = re.fullmatch(r"Conv2d\((\d+), (\d+), kernel=(\d+)x(\d+), stride=(\d+)x(\d+), padding=(\d+)x(\d+), bias=(true|false)\)", desc)
    if m:
        ci, co, kh, kw, sh, sw, ph, pw = map(int, m.groups()[:8])
        return nn.Conv2d(ci, co, (kh, kw), stride=(sh, sw), padding=(ph, pw), bias=m.group(9) == "true")
    m = re.fullmatch(r"Linear\((\d+), (\d+), bias=(true|false)\)", desc)
    if m:
        return nn.Linear(int(m.group(1)), int(m.group(2)), bias=m.group(3) == "true")
    m = re.fullmatch(r"BatchNorm([12])d\((\d+)\)", desc)
    if m:
        return (nn.BatchNorm1d if m.group(1) == "1" else nn.BatchNorm2d)(int(m.group(2)))
    if desc == "ReLU":
        return nn.ReLU()
    if desc == "Flatten":
        return nn.Flatten()
    raise ValueError(f"unknown layer description {desc!r}")


def load(path: str):
    state, meta = read_safetensors(path)
    spec = json.loads(meta["cactus.model"])
    model = nn.Sequential(*[build_layer(d) for d in json.loads(meta["cactus.layers"])])
    model.load_state_dict(state, strict=True)
    model.eval()
    norm = spec.get("normalization")
    normalize = Normalize(norm["mean"], norm["std"]) if norm else nn.Identity()
    return model, normalize, spec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--probe", type=float, default=None,
                    help="print the eval-mode logits of one input filled with this value")
    args = ap.parse_args()
    model, normalize, spec = load(args.checkpoint)
    print(model)
    if args.probe is not None:
        x = torch.full((1, *spec["input_shape"]), args.probe)
        with torch.no_grad():
            print("logits", " ".join(f"{v:.6f}" for v in model(normalize(x))[0].tolist()))


if __name__ == "__main__":
    main()
