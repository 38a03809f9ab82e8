#!/usr/bin/env python3
"""crosscheck_auto_lirpa.py: compare cactus's CROWN / CROWN-IBP / alpha-CROWN / IBP margin
bounds with auto_LiRPA's on the same checkpoint, test points and epsilon.

cactus side: the per-point file of `cactus eval --per-point FILE.jsonl`, one JSON object a line:
    {"row": 0, "compression": "none", "index": 17, "label": 3, "certifier": "crown",
     "lower": [10 numbers, null at j = label], "verdict": "verified", "seconds": 0.01}
`index` is the position in the test split, lower[j] cactus's lower bound of logit_y − logit_j
over the box [x − ε, x + ε] ∩ [0, 1] (pixels in [0, 1]). Lines are selected by --row and
--certifier.

auto_LiRPA side: the checkpoint loaded by scripts/twin/pytorch_model.py `load()`, wrapped as
nn.Sequential(normalisation, *model) so the normalisation is bounded too: by default
(--normalize conv) a 1×1 convolution x·f32(1/std) + f32(−mean/std), which is how cactus computes
it and which auto_LiRPA handles in every method in patches mode; --normalize subdiv writes it as
(x − mean)/std (a few ulps apart; alpha-CROWN in patches mode crashes on it). conv_mode patches
(default, auto_LiRPA's own; about 10× faster than matrix on `small`, same bounds to float
rounding) or matrix (--conv-mode). BoundedModule in eval mode,
PerturbationLpNorm(norm=inf, x_L=clamp(x − ε, 0, 1), x_U=clamp(x + ε, 0, 1)), specification
matrix C with rows e_y − e_j for j ≠ y (N × (K−1) × K), lower bounds only (bound_upper=False):
    --method crown        compute_bounds(method="CROWN"): CROWN intermediates and final
    --method crown-ibp    compute_bounds(method="CROWN-IBP"): IBP intermediates (from the input
                          box), CROWN for the final margins
    --method alpha-crown  compute_bounds(method="CROWN-Optimized"), --alpha-iters iterations of
                          Adam at --alpha-lr (auto_LiRPA's other defaults: lr decay 0.98 per
                          iteration, keep best, intermediate alphas optimised too;
                          --alpha-fixed-intermediate: intermediate bounds fixed at CROWN's)
    --method ibp          compute_bounds(method="IBP"): interval bounds, the last linear layer
                          merged with C (last-layer elision, as cactus's IBP certifier does)
auto_LiRPA's defaults are kept unless flags say otherwise: sparse intermediate bounds (neurons
that IBP, propagated from the already-tightened previous layer, proves stable keep that IBP
bound; the rest get CROWN bounds, not max'ed with IBP; the unstable set is the union over the
batch, so a point's bounds depend on its batch peers: on an IBP-trained `small`, batches of 20
gave bounds up to 1.3e-2 (relative) looser than one point at a time, hence --batch 1 by
default, which was also the fastest). --dense-intermediate turns that off (pure CROWN for every
intermediate neuron; batch-independent); --compare-ibp makes auto_LiRPA take
max(CROWN, IBP) / min(CROWN, IBP) for every intermediate neuron and for the final margins (IBP
one step from the already-tightened bounds of the layer before). Checked against cactus at
commit 57acc7b on 20 points of an IBP-trained `small` (ε 0.1): its crown matches auto_LiRPA's
CROWN with --compare-ibp (max rel 1.2e-6; 4.5e-2 without), its crown-ibp and ibp match with the
defaults (1.7e-6, 7.8e-7).

Comparison, per point and per j ≠ y where both sides have a number:
    abs = |cactus − lirpa|,  rel = abs / max(1, |lirpa|)
    crown, crown-ibp, ibp: pass iff max rel ≤ --tolerance (default 1e-4)
    alpha-crown:      pass iff every entry has cactus ≥ lirpa − --alpha-tolerance·max(1, |lirpa|)
                      (default 1e-3: cactus within 1e-3 of auto_LiRPA, or tighter), not
                      counting points cactus certified (its optimisation may stop once a
                      point is verified) unless --strict-alpha
A point is certified when all its lower bounds are > 0. The certified sets must agree (for
alpha-crown: cactus may certify more), except at points whose smallest bound is within the
tolerance of 0 on either side (reported as borderline). A cactus line whose verdict is
"verified" although some lower bound is ≤ 0, or not "verified" (but "falsified"/"attacked")
although every bound is > 0, is reported; "falsified" with all bounds > 0 is a failure.
Exit status: 0 pass, 1 comparison failed, 2 bad input or usage.

Timings: auto_LiRPA's wall time of compute_bounds over all batches (building the BoundedModule
is timed apart), its points/second, cactus's from the sum of the lines' "seconds", and the
ratio cactus points/s ÷ auto_LiRPA points/s (> 1: cactus faster). Threads: --threads (default
all cores); compare with cactus run on as many threads, on an otherwise idle machine: torch's
OpenMP threads slow down 10–30× when another job takes a core (--threads 1 is robust to that).

--write-reference OUT.jsonl writes auto_LiRPA's bounds in cactus's per-point format
(certifier "auto_lirpa-METHOD" unless --reference-certifier) for the points compared, or,
without --per-point, for the first --limit test points from --start: a golden file for tests,
or a file to run this script against itself.

Usage (bash scripts/verify/crosscheck_auto_lirpa.sh runs it in the auto_LiRPA venv):
    crosscheck_auto_lirpa.py --checkpoint out/x/model.safetensors --per-point pp.jsonl \\
        --eps 0.1 [--dataset mnist-mini | --dataset fashion-mnist --data DIR] \\
        [--row 0] [--certifier crown] [--method crown|crown-ibp|alpha-crown|ibp] [--batch 1] \\
        [--limit N] [--conv-mode patches|matrix] [--normalize conv|subdiv] [--alpha-iters 20] \\
        [--alpha-lr 0.5] [--tolerance 1e-4] [--alpha-tolerance 1e-3] [--threads T] \\
        [--device cpu|cuda] [--show 5] [--verbose] [--write-reference OUT.jsonl] \\
        [--dense-intermediate] [--compare-ibp] [--alpha-fixed-intermediate] [--strict-alpha]
"""
import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

TWIN = Path(__file__).resolve().parent.parent / "twin"   # the PyTorch twin's shared modules
METHODS = {"crown": "CROWN", "crown-ibp": "CROWN-IBP", "alpha-crown": "CROWN-Optimized",
           "ibp": "IBP"}


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


try:
    import numpy  # noqa: F401 (the twin's data module needs it)
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover
    die(f"{e}; run through scripts/verify/crosscheck_auto_lirpa.sh (it sets up the venv)")
try:
    import auto_LiRPA
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm
except ImportError as e:
    die(f"cannot import auto_LiRPA ({e}); run through scripts/verify/crosscheck_auto_lirpa.sh")

warnings.filterwarnings("ignore", message=r".*Constant operand of node.*has batch dimension")
sys.path.insert(0, str(TWIN))
try:
    from data import load_split
    from model import Normalize
    from pytorch_model import load as load_checkpoint
except ImportError as e:
    die(f"cannot import the twin's modules in {TWIN}: {e}")


# ---------------------------------------------------------------------------------- data
def load_test_split(dataset, data_dir):
    """(x N×1×28×28 float32 in [0, 1], y int64) of the test split (the twin's data.load_split,
    its errors as this script's)."""
    try:
        return load_split(dataset, data_dir, "test")
    except SystemExit as e:   # its errors are sys.exit("error: …")
        die(str(e.code).removeprefix("error: "))


def read_per_point(path, row, certifier):
    """The selected lines of cactus's per-point file, in file order."""
    p = Path(path)
    if not p.is_file():
        die(f"per-point file {path} not found")
    chosen, seen = [], {}
    with p.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                die(f"{path}:{n}: not JSON ({e})")
            for key in ("row", "index", "label", "certifier", "lower"):
                if key not in rec:
                    die(f"{path}:{n}: no {key!r} field")
            seen[(rec["row"], rec["certifier"])] = seen.get((rec["row"], rec["certifier"]), 0) + 1
            if rec["row"] == row and rec["certifier"] == certifier:
                rec["_line"] = n
                chosen.append(rec)
    if not chosen:
        have = ", ".join(f"row {r} certifier {c!r} ({k} lines)" for (r, c), k in sorted(
            seen.items(), key=lambda t: (t[0][0], str(t[0][1]))))
        die(f"{path}: no line with row {row} and certifier {certifier!r}; the file has: "
            f"{have or 'nothing'}")
    return chosen


# ---------------------------------------------------------------------------------- model
def normalize_conv(mean, std):
    """The normalisation as cactus computes it, x·scale + shift with scale = f32(1/std) and
    shift = f32(−mean/std) (src/nn/models.rs Normalization::affine), as a 1×1 C→C convolution
    with a diagonal weight (the off-diagonal zeros add exactly). auto_LiRPA bounds this with
    CROWN, CROWN-IBP and alpha-CROWN in patches mode and CROWN, CROWN-IBP in matrix mode
    (--normalize conv, the default)."""
    std_t = torch.tensor(std, dtype=torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32)
    c = len(std)
    conv = nn.Conv2d(c, c, 1, bias=True)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight.view(c, c)[range(c), range(c)] = 1.0 / std_t
        conv.bias.copy_(-mean_t / std_t)
    return conv


def build_model(checkpoint, how):
    """The checkpoint's network with its normalisation first: --normalize conv
    (normalize_conv) or subdiv, model.Normalize, (x − mean)/std as written. Its constants are
    1×C×1×1: auto_LiRPA's patches mode (BoundDiv/BoundMul by a constant) asserts a 4-d constant
    and fails on C×1×1; with 1×C×1×1 it only warns that the constant "has batch dimension"
    (harmless: it broadcasts; silenced above). alpha-CROWN in patches mode still fails on the
    subdiv form (a shape error in concretize_bounds.add_b; matrix mode untested, too slow)."""
    if not Path(checkpoint).is_file():
        die(f"checkpoint {checkpoint} not found")
    try:
        model, _normalize, spec = load_checkpoint(checkpoint)
    except Exception as e:  # noqa: BLE001 (any failure: say which file)
        die(f"cannot load checkpoint {checkpoint}: {type(e).__name__}: {e}")
    norm = spec.get("normalization")
    layers = []
    if norm:
        layers = [normalize_conv(norm["mean"], norm["std"]) if how == "conv"
                  else Normalize(norm["mean"], norm["std"])]
    net = nn.Sequential(*layers, *model)
    net.eval()
    return net, spec


def spec_matrix(y, k):
    """C[n] rows e_y − e_j for j ≠ y (j ascending): N × (k−1) × k, and the j of each row."""
    n = len(y)
    others = torch.stack([torch.tensor([j for j in range(k) if j != int(t)]) for t in y])
    c = torch.zeros(n, k - 1, k)
    c.scatter_(2, y.view(n, 1, 1).expand(n, k - 1, 1), 1.0)
    c.scatter_(2, others.unsqueeze(2), -1.0)
    return c, others


def run_lirpa(net, x, y, eps, args, k):
    """auto_LiRPA lower bounds (N × k, NaN at j = y), setup seconds, bound seconds."""
    opts = {"conv_mode": args.conv_mode}
    if args.dense_intermediate:
        opts["sparse_intermediate_bounds"] = False
    if args.compare_ibp:
        opts["compare_crown_with_ibp"] = True
    if args.method == "alpha-crown":
        opts["optimize_bound_args"] = {"iteration": args.alpha_iters, "lr_alpha": args.alpha_lr}
    device = torch.device(args.device)
    net = net.to(device)
    t0 = time.perf_counter()
    try:
        bounded = BoundedModule(net, torch.zeros(1, *x.shape[1:], device=device),
                                bound_opts=opts, device=device)
    except Exception as e:  # noqa: BLE001
        die(f"auto_LiRPA could not build the BoundedModule (conv_mode {args.conv_mode}): "
            f"{type(e).__name__}: {e}")
    setup = time.perf_counter() - t0
    lower = torch.full((len(y), k), float("nan"), dtype=torch.float64)
    per_batch = []
    elapsed = 0.0
    for s in range(0, len(y), args.batch):
        xb, yb = x[s:s + args.batch].to(device), y[s:s + args.batch]
        c, others = spec_matrix(yb, k)
        ptb = PerturbationLpNorm(norm=float("inf"), eps=eps,
                                 x_L=(xb - eps).clamp(0, 1), x_U=(xb + eps).clamp(0, 1))
        bx = BoundedTensor(xb, ptb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            if args.method == "alpha-crown":
                interm = None
                if args.alpha_fixed_intermediate:
                    with torch.no_grad():
                        bounded.compute_bounds(x=(bx,), C=c.to(device), method="CROWN",
                                               bound_upper=False)
                    interm = {r.inputs[0].name: (r.inputs[0].lower.detach().clone(),
                                                 r.inputs[0].upper.detach().clone())
                              for r in bounded.relus}
                lb, _ = bounded.compute_bounds(x=(bx,), C=c.to(device),
                                               method=METHODS[args.method], bound_upper=False,
                                               interm_bounds=interm)
            else:
                with torch.no_grad():
                    lb, _ = bounded.compute_bounds(x=(bx,), C=c.to(device),
                                                   method=METHODS[args.method], bound_upper=False)
        except Exception as e:  # noqa: BLE001
            die(f"auto_LiRPA compute_bounds({METHODS[args.method]}, conv_mode "
                f"{args.conv_mode}) failed on points {s}..{s + len(yb) - 1}: "
                f"{type(e).__name__}: {e}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        elapsed += dt
        per_batch.append((len(yb), dt))
        if args.verbose:
            print(f"  batch {s}..{s + len(yb) - 1}: {dt:.3f} s", flush=True)
        lower[s:s + len(yb)].scatter_(1, others, lb.detach().double().cpu())
    return lower, setup, elapsed, per_batch


# ---------------------------------------------------------------------------------- compare
def fmt(v):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def compare(recs, cactus, lirpa, y, args):
    """Print the comparison; return True when it passes."""
    k = lirpa.shape[1]
    alpha = args.method == "alpha-crown"
    tol = args.alpha_tolerance if alpha else args.tolerance
    both = ~torch.isnan(cactus) & ~torch.isnan(lirpa)
    diff = (cactus - lirpa).where(both, torch.zeros_like(cactus))
    absd = diff.abs()
    scale = torch.nan_to_num(lirpa, nan=0.0).abs().clamp(min=1.0)
    rel = absd / scale
    n_entries = int(both.sum())
    missing = int((torch.isnan(cactus) & ~torch.isnan(lirpa)).sum())
    ok = True

    print(f"\n{len(recs)} points, {n_entries} margin bounds compared"
          + (f", {missing} bounds null on the cactus side (not compared)" if missing else ""))
    if n_entries == 0:
        print("FAIL: nothing to compare")
        return False
    i_abs = int(torch.argmax(absd.flatten()))
    i_rel = int(torch.argmax(rel.flatten()))
    pa, ja = divmod(i_abs, k)
    pr, jr = divmod(i_rel, k)
    print("relative difference = |cactus − auto_LiRPA| / max(1, |auto_LiRPA|)")
    print(f"  max abs diff {absd.max().item():.3e} (test index {recs[pa]['index']}, j {ja}: "
          f"cactus {fmt(cactus[pa, ja].item())}, auto_LiRPA {fmt(lirpa[pa, ja].item())})")
    print(f"  max rel diff {rel.max().item():.3e} (test index {recs[pr]['index']}, j {jr}: "
          f"cactus {fmt(cactus[pr, jr].item())}, auto_LiRPA {fmt(lirpa[pr, jr].item())})")
    print(f"  mean abs diff {absd[both].mean().item():.3e}, "
          f"mean cactus − auto_LiRPA {diff[both].mean().item():+.3e}")

    if alpha:
        looser = both & (cactus < lirpa - tol * scale)
        tighter = both & (cactus > lirpa + tol * scale)
        print(f"  alpha-CROWN: cactus tighter by more than {tol:g} (relative) on "
              f"{int(tighter.sum())} bounds, looser by more than that on {int(looser.sum())}")
        bad = looser
        if not args.strict_alpha:
            # a point cactus certified may have stopped its optimisation there
            done = (torch.where(torch.isnan(cactus), torch.full_like(cactus, math.inf),
                                cactus).amin(1) > 0).unsqueeze(1)
            exempt = looser & done
            if exempt.any():
                print(f"  of these, {int(exempt.sum())} bounds on "
                      f"{int(exempt.any(1).sum())} points cactus certified are not counted "
                      "(alpha-CROWN may stop a point once verified; --strict-alpha counts them)")
            bad = looser & ~done
    else:
        bad = both & (rel > tol)
    if bad.any():
        ok = False
        print(f"FAIL: {int(bad.sum())} bounds outside the tolerance {tol:g}"
              + (" (cactus looser)" if alpha else ""))

    # worst points
    per_point = torch.where(bad, rel, torch.zeros_like(rel)).amax(1) if bad.any() \
        else rel.amax(1)
    order = torch.argsort(per_point, descending=True)[:args.show]
    if args.show > 0:
        print(f"\nworst {len(order)} points (largest relative difference):")
        print(f"  {'index':>6} {'label':>5} {'j':>2} {'cactus':>12} {'auto_LiRPA':>12} {'rel':>9}")
        for p in order.tolist():
            j = int(torch.argmax(rel[p]))
            print(f"  {recs[p]['index']:>6} {int(y[p]):>5} {j:>2} {fmt(cactus[p, j].item()):>12} "
                  f"{fmt(lirpa[p, j].item()):>12} {rel[p, j].item():>9.2e}")

    # certified sets
    def certified(lb):
        vals = torch.where(torch.isnan(lb), torch.full_like(lb, math.inf), lb)
        return vals.amin(1)
    cmin, lmin = certified(cactus), certified(lirpa)
    full = ~(torch.isnan(cactus) & ~torch.isnan(lirpa)).any(1)   # cactus gave every bound
    c_cert = (cmin > 0) & full
    l_cert = lmin > 0
    idx = [r["index"] for r in recs]
    only_c = [p for p in range(len(recs)) if c_cert[p] and not l_cert[p]]
    only_l = [p for p in range(len(recs)) if l_cert[p] and not c_cert[p]]
    border = lambda p: abs(lmin[p].item()) <= tol * max(1.0, abs(lmin[p].item())) or \
        abs(cmin[p].item()) <= tol * max(1.0, abs(cmin[p].item()))  # noqa: E731
    print(f"\ncertified (all lower bounds > 0): cactus {int(c_cert.sum())}/{len(recs)}, "
          f"auto_LiRPA {int(l_cert.sum())}/{len(recs)}; sets "
          + ("equal" if not only_c and not only_l else "differ"))
    for name, ps in (("cactus only", only_c), ("auto_LiRPA only", only_l)):
        if ps:
            b = [p for p in ps if border(p)]
            print(f"  {name}: {len(ps)} points, test indices "
                  f"{[idx[p] for p in ps[:20]]}{' …' if len(ps) > 20 else ''}"
                  f" ({len(b)} borderline: smallest bound within the tolerance of 0)")
            hard = [p for p in ps if not border(p)]
            if hard and not (alpha and name == "cactus only"):
                ok = False
                print(f"FAIL: {len(hard)} points certified by {name.split()[0]} only, "
                      "not borderline")

    # verdicts against cactus's own bounds
    wrong_v, unsound = [], []
    for p, r in enumerate(recs):
        v = r.get("verdict")
        if v is None:
            continue
        if v == "verified" and not c_cert[p]:
            wrong_v.append(r["index"])
        elif v != "verified" and c_cert[p]:
            (unsound if v == "falsified" else wrong_v).append(r["index"])
    if wrong_v:
        print(f"note: {len(wrong_v)} cactus verdicts disagree with cactus's own bounds (verdict "
              f"'verified' iff all lower > 0): test indices {wrong_v[:20]}")
    if unsound:
        ok = False
        print(f"FAIL: {len(unsound)} points 'falsified' by cactus although all its lower bounds "
              f"are > 0 (a bound or the attack is wrong): test indices {unsound[:20]}")
    return ok


def write_reference(path, recs, y, lirpa, per_point_seconds, args):
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = args.reference_certifier or f"auto_lirpa-{args.method}"
    with out.open("w") as f:
        for p, r in enumerate(recs):
            lb = [None if j == int(y[p]) else float(lirpa[p, j]) for j in range(lirpa.shape[1])]
            cert = all(v > 0 for v in lb if v is not None)
            f.write(json.dumps({"row": args.row, "compression": r.get("compression", "none"),
                                "index": r["index"], "label": int(y[p]), "certifier": name,
                                "lower": lb, "verdict": "verified" if cert else "unknown",
                                "seconds": per_point_seconds[p]}) + "\n")
    print(f"wrote auto_LiRPA's bounds for {len(recs)} points to {out} (certifier {name!r})")


# ---------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the top of this file for the details.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="cactus checkpoint (.safetensors)")
    ap.add_argument("--per-point", help="cactus eval --per-point file (JSON lines)")
    ap.add_argument("--eps", type=float, required=True, help="L∞ radius in pixel space [0, 1]")
    ap.add_argument("--dataset", choices=["mnist-mini", "mnist", "fashion-mnist"],
                    default="mnist-mini")
    ap.add_argument("--data", default=None, help="directory of IDX files (not for mnist-mini)")
    ap.add_argument("--row", type=int, default=0, help="row of the per-point file (default 0)")
    ap.add_argument("--certifier", default="crown",
                    help="certifier field of the lines to compare (default crown)")
    ap.add_argument("--method", choices=list(METHODS), default=None,
                    help="auto_LiRPA method (default: the --certifier name if it is one of these)")
    ap.add_argument("--alpha-iters", type=int, default=20)
    ap.add_argument("--alpha-lr", type=float, default=0.5)
    ap.add_argument("--alpha-fixed-intermediate", action="store_true",
                    help="alpha-crown: intermediate bounds fixed at CROWN's (only the final "
                         "layer's alphas matter), instead of optimised with their own alphas")
    ap.add_argument("--strict-alpha", action="store_true",
                    help="alpha-crown: count looser bounds on points cactus certified too")
    ap.add_argument("--conv-mode", choices=["matrix", "patches"], default="patches",
                    help="auto_LiRPA conv_mode (default patches, its own default: about 10× "
                         "faster than matrix on small; the two agree to float rounding)")
    ap.add_argument("--normalize", choices=["conv", "subdiv"], default="conv",
                    help="how the normalisation layer is written: conv (default) = 1×1 conv "
                         "x·(1/std) + (−mean/std) as cactus computes it; subdiv = (x − mean)/std")
    ap.add_argument("--dense-intermediate", action="store_true",
                    help="sparse_intermediate_bounds=False: CROWN for every intermediate neuron")
    ap.add_argument("--compare-ibp", action="store_true",
                    help="compare_crown_with_ibp=True: max/min of CROWN and IBP everywhere")
    ap.add_argument("--batch", type=int, default=1,
                    help="points per compute_bounds call (default 1: with auto_LiRPA's sparse "
                         "intermediate bounds a point's bounds depend on its batch peers)")
    ap.add_argument("--start", type=int, default=0,
                    help="without --per-point: first test index (default 0)")
    ap.add_argument("--limit", type=int, default=None,
                    help="compare only the first N selected lines (without --per-point: N points"
                         ", default 20)")
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="crown/crown-ibp/ibp: max relative difference (default 1e-4)")
    ap.add_argument("--alpha-tolerance", type=float, default=1e-3,
                    help="alpha-crown: how much looser than auto_LiRPA cactus may be (relative)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch threads (default all cores)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--verbose", action="store_true", help="print each batch's time")
    ap.add_argument("--show", type=int, default=5, help="print the N worst points (default 5)")
    ap.add_argument("--write-reference", metavar="OUT.jsonl", default=None,
                    help="write auto_LiRPA's bounds in cactus's per-point format")
    ap.add_argument("--reference-certifier", default=None,
                    help="certifier name in --write-reference (default auto_lirpa-METHOD)")
    args = ap.parse_args()

    if args.method is None:
        if args.certifier not in METHODS:
            ap.error(f"--certifier {args.certifier!r} is not one of {', '.join(METHODS)}: "
                     f"say which auto_LiRPA method to compare with (--method)")
        args.method = args.certifier
    if not (args.eps >= 0 and math.isfinite(args.eps)):
        ap.error("--eps must be a finite number ≥ 0")
    if args.batch < 1 or args.alpha_iters < 1 or args.threads < 1:
        ap.error("--batch, --alpha-iters and --threads must be ≥ 1")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be ≥ 1")
    if not args.per_point and not args.write_reference:
        ap.error("give --per-point (to compare) or --write-reference (to write bounds)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        die("--device cuda but torch sees no GPU")
    torch.set_num_threads(args.threads)

    net, spec = build_model(args.checkpoint, args.normalize)
    k = int(spec.get("num_classes", 10))
    x_all, y_all = load_test_split(args.dataset, args.data)
    if list(x_all.shape[1:]) != list(spec.get("input_shape", x_all.shape[1:])):
        die(f"the checkpoint takes inputs {spec.get('input_shape')}, {args.dataset} has "
            f"{list(x_all.shape[1:])}")

    if args.per_point:
        recs = read_per_point(args.per_point, args.row, args.certifier)
        if args.limit:
            recs = recs[:args.limit]
        for r in recs:
            i = r["index"]
            if not (isinstance(i, int) and 0 <= i < len(y_all)):
                die(f"{args.per_point}:{r['_line']}: index {i} outside the test split "
                    f"({len(y_all)} points of {args.dataset})")
            if r["label"] != int(y_all[i]):
                die(f"{args.per_point}:{r['_line']}: label {r['label']} but test point {i} of "
                    f"{args.dataset} is a {int(y_all[i])} (wrong --dataset?)")
            lb = r["lower"]
            if lb is not None and (not isinstance(lb, list) or len(lb) != k):
                die(f"{args.per_point}:{r['_line']}: 'lower' must be a list of {k} entries")
            if lb is not None and lb[r["label"]] is not None:
                die(f"{args.per_point}:{r['_line']}: lower[label] must be null")
        compressions = sorted({str(r.get("compression")) for r in recs})
        if compressions != ["none"]:
            print(f"warning: row {args.row} has compression {compressions}; this script bounds "
                  f"the checkpoint as it is: pass the compressed checkpoint "
                  f"(cactus compress) for such a row", file=sys.stderr)
    else:
        n = args.limit or 20
        if args.start < 0 or args.start + n > len(y_all):
            die(f"--start {args.start} --limit {n}: the test split has {len(y_all)} points")
        recs = [{"index": i, "label": int(y_all[i]), "lower": None}
                for i in range(args.start, args.start + n)]

    index = torch.tensor([r["index"] for r in recs])
    x, y = x_all[index], y_all[index]
    print(f"auto_LiRPA {auto_LiRPA.__version__}, torch {torch.__version__}, {args.device}, "
          f"{torch.get_num_threads()} threads; {METHODS[args.method]}"
          + (f" ({args.alpha_iters} iterations, lr {args.alpha_lr}"
             + (", intermediate bounds fixed at CROWN's" if args.alpha_fixed_intermediate else "")
             + ")"
             if args.method == "alpha-crown" else "")
          + f", conv_mode {args.conv_mode}, normalize {args.normalize}"
          + (", dense intermediate bounds" if args.dense_intermediate else "")
          + (", max with IBP" if args.compare_ibp else "")
          + f"; {args.checkpoint} ({spec.get('arch')}), {args.dataset}, eps {args.eps}, "
          f"{len(recs)} points in batches of {args.batch}")
    with torch.no_grad():
        clean = net(x).argmax(1)
    lirpa, setup, elapsed, per_batch = run_lirpa(net, x, y, args.eps, args, k)
    per_point_seconds = []
    for nb, dt in per_batch:
        per_point_seconds += [dt / nb] * nb
    print(f"auto_LiRPA: BoundedModule built in {setup:.2f} s; bounds in {elapsed:.3f} s = "
          f"{len(recs) / elapsed:.2f} points/s ({1000 * elapsed / len(recs):.1f} ms/point); "
          f"{int((clean == y).sum())}/{len(recs)} points classified correctly")

    if args.write_reference:
        write_reference(args.write_reference, recs, y, lirpa, per_point_seconds, args)
    if not args.per_point:
        return 0

    cactus = torch.full((len(recs), k), float("nan"), dtype=torch.float64)
    for p, r in enumerate(recs):
        if r["lower"] is not None:
            for j, v in enumerate(r["lower"]):
                if v is not None:
                    cactus[p, j] = float(v)
    secs = [r.get("seconds") for r in recs]
    if all(isinstance(s, (int, float)) for s in secs) and sum(secs) > 0:
        total = float(sum(secs))
        ratio = (len(recs) / total) / (len(recs) / elapsed)
        print(f"cactus: {total:.3f} s (sum of 'seconds') = {len(recs) / total:.2f} points/s; "
              f"throughput cactus ÷ auto_LiRPA = {ratio:.2f}×")
    else:
        print("cactus: no usable 'seconds' in the lines; no throughput ratio")

    ok = compare(recs, cactus, lirpa, y, args)
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
