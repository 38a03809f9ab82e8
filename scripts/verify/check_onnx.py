"""Check ONNX networks cactus exported, with tools that are not cactus.

For each folder given: `onnx.checker.check_model(full_check=True)` on its ONNX file (the one
`.onnx` in the folder), then onnxruntime on every `test_data_set_K/input_0.pb`, compared with
the logits cactus wrote in `output_0.pb` (`cactus export --test-data N`): the largest
difference must stay within `--rtol` of the logits' scale.

    python3 scripts/verify/check_onnx.py [--rtol 1e-5] DIR [DIR ...]

Exits 1 naming the first folder that fails.
"""

import argparse
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def check(folder: str, rtol: float) -> str:
    models = glob.glob(os.path.join(folder, "*.onnx"))
    if len(models) != 1:
        raise SystemExit(f"{folder}: expected one .onnx file, found {len(models)}")
    path = models[0]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opset = {o.domain: o.version for o in model.opset_import}
    ops = sorted({n.op_type for n in model.graph.node})
    options = ort.SessionOptions()
    # No graph rewrites: the runtime computes the graph as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    sets = sorted(glob.glob(os.path.join(folder, "test_data_set_*")))
    if not sets:
        raise SystemExit(f"{folder}: no test_data_set_* folders (export with --test-data N)")
    worst = 0.0
    for s in sets:
        x = numpy_helper.to_array(onnx.load_tensor(os.path.join(s, "input_0.pb")))
        want = numpy_helper.to_array(onnx.load_tensor(os.path.join(s, "output_0.pb")))
        (got,) = session.run(None, {session.get_inputs()[0].name: x})
        scale = max(float(np.abs(want).max()), 1e-30)
        err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale
        worst = max(worst, err)
        if not err <= rtol:
            raise SystemExit(
                f"{folder}: {s}: onnxruntime's logits differ from cactus's by {err:.3g} of "
                f"their scale (> {rtol:g})\n  cactus: {want.ravel()}\n  onnxruntime: {got.ravel()}"
            )
    return (f"{folder}: checker full_check ok (opset {opset.get('', '?')}, ir {model.ir_version}, "
            f"ops {', '.join(ops)}); onnxruntime {ort.__version__} on {len(sets)} inputs: "
            f"largest difference {worst:.2e} of the logits' scale")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("folders", nargs="+")
    args = ap.parse_args()
    for folder in args.folders:
        print(check(folder, args.rtol))


if __name__ == "__main__":
    main()
