"""The data of the PyTorch twins: IDX files (gzip or not) read as cactus reads them, pixels /255
in [0, 1]. (Each data set's input normalisation is model.NORMALIZATION.)"""
import gzip
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent.parent

def read_idx(path):
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    magic, dims = int.from_bytes(raw[0:4], "big"), raw[3]
    if magic not in (0x801, 0x803):
        sys.exit(f"error: {path}: bad IDX magic number {magic:#x}")
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        sys.exit(f"error: {path}: {data.size} bytes of data, header says {shape}")
    return data.reshape(shape)


def find_idx(d, prefix, what, dims):
    for sub in (d, d / "raw"):
        for name in (f"{prefix}-{what}-{dims}-ubyte", f"{prefix}-{what}-{dims}-ubyte.gz",
                     f"{prefix}-{what}.{dims}-ubyte", f"{prefix}-{what}.{dims}-ubyte.gz"):
            if (sub / name).is_file():
                return sub / name
    sys.exit(f"error: no {prefix}-{what}-{dims}-ubyte[.gz] in {d}")


def load_split(dataset, data_dir, split):
    """(x N×1×28×28 float32 in [0, 1], y int64) of split "train" or "test"; mnist-mini is
    assets/mnist-mini, the others are read from data_dir. Errors exit with "error: …"."""
    if dataset == "mnist-mini":
        if data_dir:
            sys.exit("error: mnist-mini is read from assets/mnist-mini and takes no --data")
        d = ROOT / "assets" / "mnist-mini"
    elif not data_dir:
        sys.exit(f"error: --dataset {dataset} needs --data DIR (IDX files)")
    else:
        d = Path(data_dir)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(find_idx(d, prefix, "images", "idx3"))
    labels = read_idx(find_idx(d, prefix, "labels", "idx1"))
    if len(images) != len(labels) or labels.max() > 9:
        sys.exit(f"error: {d}: {len(images)} images, {len(labels)} labels, "
                 f"max label {labels.max()}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)   # N×1×28×28 in [0, 1]
    return x, torch.from_numpy(labels.astype(np.int64))
