#!/usr/bin/env python3
"""torch_certified.py: the certified training of cactus (std, IBP, SABR, CACTUS) and its
evaluation (plain and under compression), written again in plain PyTorch, to show that both
engines reach the same accuracies (within the spread over seeds) under the same settings.

Everything below follows cactus (docs/design.md, "Specification decisions" and "Training"; src/train,
src/bounds/ibp.rs, src/attack, src/compress); only the random streams differ (torch's
generators, not cactus's Rng), which is why runs are compared over several seeds, not bit for bit.

  data       IDX files, pixels /255 in [0, 1]; mnist-mini = assets/mnist-mini (train-*, t10k-*);
             normalisation (mean, std) is the model's first layer, so ε is in pixel space.
  model      small: Normalize, Conv 16 k4 s2 p1, ReLU, Conv 32 k4 s1 p1, ReLU, Flatten,
             Linear 5408→100, ReLU, Linear 100→10.
             cnn7 (--width F): Normalize, Conv 64,64,128,128,128 ×F (k3 p1, strides 1,1,2,1,1),
             each + BatchNorm2d + ReLU; Flatten, Linear → 512×F, BatchNorm1d, ReLU, Linear → 10
             (channel counts round(c·F), half away from zero, at least 1; F = 0.25 gives
             16,16,32,32,32 and FC 128). BN: PyTorch's defaults (ε 1e-5, momentum 0.1, unbiased
             running variance). ibp/sabr/cactus: IBP init (Shi et al. 2021: every conv/linear
             weight but the last ~ N(0, (√(2π)/fan_in)²); biases, BN and the last layer keep
             PyTorch's default); std: PyTorch's default.
  optimiser  Adam(lr, weight_decay) (L2 inside Adam, as torch.optim.Adam), global gradient
             clipping at norm 10, constant lr, batch 64, reshuffled each epoch, drop_last.
  schedule   global batch t: t < warmup → pure CE (ε = 0, no certified loss); then
             frac = min(1, (t − warmup + 1)/ramp), ε_t = frac·ε, w_t = frac·cert_weight;
             loss = (1 − w_t)·CE(clean logits, train mode) + w_t·L_cert.
  IBP        box [x − ε_t, x + ε_t] ∩ [0, 1] in centre/radius form (c' = Wc + b, r' = |W|r,
             ReLU on [c − r, c + r]) through all layers but the last; last-layer elision:
             lb(z_y − z_j) = (W_y − W_j)·c + (b_y − b_j) − |W_y − W_j|·r;
             L_cert = CE(−lb, y) (entry y is 0). Batch norm: clean batch statistics in training,
             running statistics in evaluation.
  SABR       PGD on [lo, hi] = [max(x − ε_t, 0), min(x + ε_t, 1)], BN in eval mode: uniform
             random start, 8 sign steps of 0.5·ε_t ×0.1 after 4, 7 and 8 completed steps, CE
             (summed), projection after each step, each sample keeps its highest-loss point
             among the clean point and every iterate (the last included); input gradients only.
             τ = λ·ε_t, centre clamp(x_adv, lo + τ, hi − τ), then IBP on [c − τ, c + τ] ∩ [0, 1].
  eval       test split, eval mode, full ε: clean accuracy; IBP-certified (every lb(z_y − z_j),
             j ≠ y, > 0); PGD on the points correct and not certified: 2 restarts × 20 steps
             (margin loss max_{j≠y} z_j − z_y, then CE), random start, step 0.25·ε halved after
             10 and 15 completed steps; broken if any evaluated point is misclassified.

Compression (src/compress/; conv and linear weights only, biases and BN never touched):
  pruning    the registry of compress.py (PRUNE_RULES, as src/compress/mod.rs); a method that
             fixes its own ratio (compress.implied_ratio) is pruned at that ratio only.
             Magnitude: gul1 gul2 lul1 lul2 gsl1 gsl2 lsl1 lsl2 at ratio δ ∈ [0, 1);
             count(δ, n) = floor(δ·n) (a product a few ulps below an integer counts as it).
             Unstructured (?ul?; l1 ≡ l2): weights ranked by (|w|, layer, flat index) ascending,
             the first count(δ, all weights) pruned (global, first and last layer included) or
             count(δ, n_t) per tensor (local). Structured (?sl?): a unit = a conv output channel
             or a hidden linear neuron (never the classifier = the last linear layer), score =
             l1/l2 norm of its weight row (f64); global: scores divided by their layer's mean
             score (0 if the mean is 0), one ranking by (score, layer, unit), count(δ, units)
             removed, skipping a unit whose layer is down to one; local: min(count(δ, u), u − 1)
             per layer. A removed unit's row is zeroed, its bias kept. sparsity = fraction of
             conv/linear weights the masks zero.
  quant      fp32 = identity; fp16 = round to nearest even through half (finite values clamped
             to ±65504 first); intN per tensor: [qmin, qmax] = [−2^(N−1), 2^(N−1) − 1],
             s = f32((max − min)/(qmax − qmin)) rounded up so that s·(qmax − qmin) ≥ max − min
             (and ≥ max(|min|, |max|)·2^−30), z = qmin − round(min/s),
             q = clamp(round(w/s) + z, qmin, qmax), ŵ = f32(s·(q − z)), all in f64, round half to
             even; a constant tensor stays as it is (its step is 0).

CACTUS (--method cactus; docs/design.md, "Specification decisions": AWP, compression-set strategies, BN in a
compression set; same warm-up/ramp schedule, w_t and ε_t as SABR):
  set        the full net f; plus, for --compress prune or prune+quant, f pruned (--prune-method,
             default gul1) at each ratio of the batch's strategy: sampling (default): --samples k
             ratios drawn per batch from U(0.25, 0.75), or uniformly from --ratios if given;
             fixed: every ratio of --ratios (default 0.25,0.5,0.75); dense: 0.15,0.3,0.45,0.6,
             0.75; progressive: one ratio rising linearly from 0.25 (batch warmup + ramp) to 0.75
             (the last batch of the run), per batch; adaptive: the fractions of the conv/linear
             weights that, pruned smallest |w| first, hold at most 1%, 5% and 10% of their total
             l1 mass, each clamped to [0.25, 0.75]. --ratios only with sampling and fixed,
             --samples ≠ 1 only with sampling. A --prune-method that fixes its own ratio: one
             pruned copy at that ratio, and none of --ratios, --samples, --strategy. Masks are
             computed every batch from the detached weights; the member's weights are w·mask
             (gradient only to kept weights). Plus, for quant or prune+quant, the AWP net f + Δ*.
  AWP        per conv/linear weight W: radius r_W = η·s_W (--awp-eta 0.5), s_W = the int8 step of W
             (per tensor, as above); Δ = 0, then --awp-steps times: objective = CE(clean logits of
             f + Δ, BN with its own batch statistics) + (if w_t > 0) the SABR IBP loss of f + Δ on
             the full net's SABR box of this batch (BN: f + Δ's clean batch statistics);
             Δ ← clamp(Δ + α·sign(∂objective/∂Δ), −r_W, r_W), α = r_W·min(1, 2/steps); gradients
             to Δ only (weights detached); 0 steps: Δ* = 0. Δ* is then a constant: the member's
             weights are W + Δ*.
  loss       mean over the members g of (1 − w_t)·CE(g(x), train-mode BN with g's own batch
             statistics) + w_t·L_SABR(g), where g's SABR attack runs on g itself (detached
             weights, BN in eval mode) and its IBP box uses g's clean batch statistics; only the
             full net's clean pass updates the running statistics. Warm-up (w_t = 0): the mean
             of the members' CEs (no attacks; AWP ascends on CE alone). Train accuracy: f's.

Evaluation grid (--eval-prune, --eval-ratios, --eval-quant; default none / none / fp32, i.e. the
single plain evaluation), rows in the order of cactus's src/eval/grid.rs, repeats left out: the
uncompressed net (compression "none", ratio 0, sparsity 0, fp32) always first; the unpruned net
in each other format of --eval-quant; each pruning method ≠ none at each ratio > 0 (pruned,
fp32), or once at the ratio it fixes. Each row is the evaluation above of the compressed weights (quantized: the dequantized
ŵ), BN in eval mode with the full net's running statistics. The JSON keeps the plain net's
clean/pgd/certified at the top level and adds "rows": [{"compression", "ratio", "sparsity",
"format", "certifier": "ibp", "clean", "pgd", "certified"}], the rows of cactus's report.json.

Code: the parts shared with the benchmark twins (scripts/compare/bench_torch*.py) and the
auto_LiRPA cross-check live beside this file: data.py (IDX files), model.py (the networks, the
normalisation, functional forward passes), ibp.py, attack.py (PGD), losses.py (the IBP, SABR and
CACTUS-member losses of a batch), compress.py (pruning, quantization). This file adds CACTUS's
compression set and AWP, the training loop, the evaluation grid and the command line.

Usage (venv .venv-bench; scripts/twin/torch_certified.sh creates it):
  .venv-bench/bin/python scripts/twin/torch_certified.py --method sabr --dataset mnist-mini \\
      --eps 0.1 --epochs 10 --seed 0 --threads 2 --out out/torch_sabr_s0.json
  .venv-bench/bin/python scripts/twin/torch_certified.py --method cactus --compress prune+quant \\
      --eps 0.1 --epochs 8 --seed 0 --eval-prune none,lul1,gul1,gsl2 \\
      --eval-ratios 0.5,0.7,0.9,0.95,0.99 --eval-quant fp32,fp16,int8,int4 --out out/t.json
"""
import argparse, json, math, os, sys, time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared modules beside it
from attack import pgd  # noqa: E402
from compress import (compressed_copy, fake_quantize, implied_ratio,  # noqa: E402
                      parse_prune_method, prune_help, prune_masks, quant_step)
from data import load_split  # noqa: E402
from ibp import cert_loss, input_box, margin_lower_bounds  # noqa: E402
from losses import certified_loss, member_loss  # noqa: E402
from model import (NORMALIZATION, affine_indices, cnn7, forward_with,  # noqa: E402
                   ibp_init, small)


# ---------------------------------------------------------------------------------- CACTUS
DENSE_RATIOS = (0.15, 0.3, 0.45, 0.6, 0.75)


def batch_ratios(model, args, t, total_batches, gen):
    """The pruning ratios of this batch's compression set (see the docstring)."""
    fixed = implied_ratio(args.prune_method)
    if fixed is not None:
        return [fixed]
    if args.strategy == "sampling":
        if args.ratios:
            picks = torch.randint(len(args.ratios), (args.samples,), generator=gen).tolist()
            return [args.ratios[k] for k in picks]
        return [0.25 + 0.5 * u for u in torch.rand(args.samples, generator=gen).tolist()]
    if args.strategy == "fixed":
        return list(args.ratios or (0.25, 0.5, 0.75))
    if args.strategy == "dense":
        return list(DENSE_RATIOS)
    if args.strategy == "progressive":
        start = args.warmup_batches + args.ramp_batches
        span = total_batches - start
        frac = float(t >= start) if span <= 1 else min(1.0, max(0, t - start) / (span - 1))
        return [0.25 + 0.5 * frac]
    # adaptive: the ratios at which the smallest weights hold 1%, 5%, 10% of the l1 mass
    flat = torch.cat([model[i].weight.detach().abs().flatten().double()
                      for i in affine_indices(model)])
    mass = torch.sort(flat).values.cumsum(0)
    total = mass[-1].item() if len(mass) else 0.0
    out = []
    for share in (0.01, 0.05, 0.10):
        k = int(torch.searchsorted(mass, share * total, right=True)) \
            if 0 < total < math.inf else 0
        out.append(min(0.75, max(0.25, k / max(1, flat.numel()))))
    return out


def awp_delta(model, x, y, w_cert, box, args):
    """AWP's weight perturbation Δ* {layer index: Δ} (constant): --awp-steps signed-gradient
    ascent steps on CE + (if w_cert > 0) the SABR IBP loss on `box`, each Δ in [−η·s_W, η·s_W]."""
    idx = affine_indices(model)
    base = {i: model[i].weight.detach() for i in idx}
    radius = {i: args.awp_eta * quant_step(base[i], 8) for i in idx}
    delta = {i: torch.zeros_like(base[i]) for i in idx}
    step = min(1.0, 2.0 / max(1, args.awp_steps))
    for _ in range(args.awp_steps):
        d = {i: delta[i].clone().requires_grad_(True) for i in idx}
        weights = {i: base[i] + d[i] for i in idx}
        logits, stats = forward_with(model, weights, x, "batch")
        objective = F.cross_entropy(logits, y)
        if w_cert > 0:
            lb = margin_lower_bounds(model, box[0], box[1], y, stats, weights)
            objective = objective + cert_loss(lb, y)
        grads = torch.autograd.grad(objective, [d[i] for i in idx])
        delta = {i: (delta[i] + radius[i] * step * torch.sign(torch.nan_to_num(g)))
                 .clamp(-radius[i], radius[i]) for i, g in zip(idx, grads)}
    return delta


def cactus_loss(model, x, y, eps_t, w, t, total_batches, args, gen):
    """The CACTUS loss of one batch (mean over the compression set) and the full net's logits."""
    idx = affine_indices(model)

    def member(weights, bn):
        return member_loss(model, weights, bn, x, y, eps_t, w, args.sabr_lambda, gen)

    full_loss, full_logits, full_box = member({}, "update")   # only f updates running stats
    losses = [full_loss]
    if args.compress in ("prune", "prune+quant"):
        for ratio in batch_ratios(model, args, t, total_batches, gen):
            masks, _ = prune_masks(model, args.prune_method, ratio)
            losses.append(member({i: model[i].weight * masks[i] for i in idx}, "batch")[0])
    if args.compress in ("quant", "prune+quant"):
        delta = awp_delta(model, x, y, w, full_box, args)
        losses.append(member({i: model[i].weight + delta[i] for i in idx}, "batch")[0])
    return torch.stack(losses).mean(), full_logits


# ---------------------------------------------------------------------------------- train/eval
def train(model, x_train, y_train, args):
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)           # shuffling and attack starts
    t, epoch_seconds = 0, []
    n_batches = len(y_train) // args.batch_size
    for epoch in range(1, args.epochs + 1):
        start, total_loss, correct, eps_t = time.perf_counter(), 0.0, 0, 0.0
        order = torch.randperm(len(y_train), generator=gen)
        model.train()
        for b in range(n_batches):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            x, y = x_train[idx], y_train[idx]
            if t < args.warmup_batches:
                frac = 0.0
            else:
                frac = 1.0 if args.ramp_batches == 0 else \
                    min(1.0, (t - args.warmup_batches + 1) / args.ramp_batches)
            eps_t, w = frac * args.eps, frac * args.cert_weight
            if args.method == "cactus":
                loss, logits = cactus_loss(model, x, y, eps_t, w, t, args.epochs * n_batches,
                                           args, gen)
            else:
                loss, logits = certified_loss(model, x, y, args.method, eps_t, w,
                                              args.sabr_lambda, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            total_loss += loss.item()
            correct += (logits.argmax(1) == y).sum().item()
            t += 1
        epoch_seconds.append(time.perf_counter() - start)
        print(f"epoch {epoch:3d}  loss {total_loss / max(n_batches, 1):.4f}  "
              f"train acc {correct / max(n_batches * args.batch_size, 1):.4f}  "
              f"eps {eps_t:.4f}  {epoch_seconds[-1]:.1f}s", flush=True)
    return epoch_seconds


def evaluate(model, x_test, y_test, eps, seed, batch=500):
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    n_clean = n_cert = n_robust = 0
    for s in range(0, len(y_test), batch):
        x, y = x_test[s:s + batch], y_test[s:s + batch]
        with torch.no_grad():
            clean = model(x).argmax(1) == y
            c, r = input_box(x, eps)
            lb = margin_lower_bounds(model, c, r, y, None)
            cert = (lb > 0).scatter(1, y[:, None], True).all(1) & clean
        robust = clean.clone()
        todo = torch.nonzero(clean & ~cert)[:, 0]
        for kind in ("margin", "ce"):                        # restart 1: margin, restart 2: CE
            if len(todo) == 0:
                break
            xs, ys = x[todo], y[todo]
            lo, hi = (xs - eps).clamp(min=0), (xs + eps).clamp(max=1)
            _, fooled = pgd(model, xs, ys, lo, hi, eps, 20, 0.25, (10, 15), 0.5, kind, gen,
                            stop_early=True)
            robust[todo[fooled]] = False
            todo = todo[~fooled]
        n_clean += int(clean.sum()); n_cert += int(cert.sum()); n_robust += int(robust.sum())
    n = len(y_test)
    return n_clean / n, n_robust / n, n_cert / n


def evaluation_grid(model, x_test, y_test, args, plain):
    """The rows of the evaluation grid (src/eval/grid.rs), in the layout and order of cactus's
    report.json; `plain` = (clean, pgd, certified) of the uncompressed fp32 net."""
    idx = affine_indices(model)
    rows = []

    def row(compression, ratio, sparsity, fmt, accs):
        rows.append({"compression": compression, "ratio": ratio, "sparsity": sparsity,
                     "format": fmt, "certifier": "ibp", "clean": accs[0], "pgd": accs[1],
                     "certified": accs[2]})
        print(f"eval {compression:>5} {ratio:<5} {fmt:>5}  sparsity {sparsity:.4f}  clean "
              f"{accs[0]:.4f}  pgd {accs[1]:.4f}  certified {accs[2]:.4f}", flush=True)

    row("none", 0.0, 0.0, "fp32", plain)
    for fmt in dict.fromkeys(args.eval_quant):              # in order, without repeats
        if fmt != "fp32":
            net = compressed_copy(model, {i: fake_quantize(model[i].weight, fmt) for i in idx})
            row("none", 0.0, 0.0, fmt, evaluate(net, x_test, y_test, args.eps, args.seed))
    for method in dict.fromkeys(args.eval_prune):
        if method == "none":
            continue
        fixed = implied_ratio(method)
        ratios = [fixed] if fixed is not None else [r for r in args.eval_ratios if r > 0]
        for ratio in dict.fromkeys(ratios):
            masks, sparsity = prune_masks(model, method, ratio)
            net = compressed_copy(model, {i: model[i].weight.detach() * masks[i] for i in idx})
            row(method, ratio, sparsity, "fp32",
                evaluate(net, x_test, y_test, args.eps, args.seed))
    return rows


def comma_list(kind):
    """argparse type: a comma-separated list, each item checked by `kind` (a function)."""
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return [kind(t) for t in items]
    return parse


def ratio_value(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"pruning ratio must be in [0, 1), got {text}")
    return v


def prune_name(text, allow_none):
    if allow_none and text.strip().lower() == "none":
        return "none"
    try:
        return parse_prune_method(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}{' (or none)' if allow_none else ''}")


def format_name(text):
    t = text.lower()
    if t in ("fp32", "fp16") or (t.startswith("int") and t[3:].isdigit() and 2 <= int(t[3:]) <= 8):
        return t
    raise argparse.ArgumentTypeError(f"unknown format {text!r}: expected fp32, fp16 or intN "
                                     "with N in 2..8")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["std", "ibp", "sabr", "cactus"], default="ibp")
    p.add_argument("--dataset", choices=["mnist-mini", "mnist", "fashion-mnist"],
                   default="mnist-mini")
    p.add_argument("--data", default=None, help="directory of IDX files (not for mnist-mini)")
    p.add_argument("--model", choices=["small", "cnn7"], default="small")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of cnn7")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--warmup-batches", type=int, default=250)
    p.add_argument("--ramp-batches", type=int, default=250)
    p.add_argument("--cert-weight", type=float, default=0.75)
    p.add_argument("--sabr-lambda", type=float, default=0.4)
    g = p.add_argument_group("CACTUS (--method cactus)")
    g.add_argument("--compress", choices=["prune", "quant", "prune+quant"], default="prune")
    g.add_argument("--prune-method", type=lambda t: prune_name(t, False), default="gul1",
                   help="pruning of the compression set: " + prune_help())
    g.add_argument("--strategy", default="sampling",
                   choices=["sampling", "fixed", "progressive", "dense", "adaptive"])
    g.add_argument("--ratios", type=comma_list(ratio_value), default=None,
                   help="pruning ratios (sampling: drawn from them; fixed: all of them)")
    g.add_argument("--samples", type=int, default=1, help="sampling: ratios drawn per batch")
    g.add_argument("--awp-eta", type=float, default=0.5,
                   help="AWP radius in int8 quantization steps")
    g.add_argument("--awp-steps", type=int, default=1)
    g = p.add_argument_group("evaluation grid")
    g.add_argument("--eval-prune", type=comma_list(lambda t: prune_name(t, True)),
                   default=["none"], help="pruning methods (none; " + prune_help() + ")")
    g.add_argument("--eval-ratios", type=comma_list(ratio_value), default=[],
                   help="pruning ratios of every --eval-prune method")
    g.add_argument("--eval-quant", type=comma_list(format_name), default=["fp32"],
                   help="formats of the unpruned net (fp32, fp16, int8, int4, ...)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON result file (written atomically)")
    args = p.parse_args()
    if args.eps < 0 or args.epochs < 0 or args.batch_size < 1 or args.threads < 1:
        p.error("--eps and --epochs must be ≥ 0, --batch-size and --threads ≥ 1")
    if args.samples < 1 or args.awp_steps < 0 or not (0 <= args.awp_eta < math.inf):
        p.error("--samples must be ≥ 1, --awp-steps and --awp-eta ≥ 0")
    if args.ratios and args.strategy not in ("sampling", "fixed"):
        p.error(f"--ratios applies to --strategy sampling and fixed, not {args.strategy}")
    if args.samples != 1 and args.strategy != "sampling":
        p.error(f"--samples applies to --strategy sampling, not {args.strategy}")
    fixed = implied_ratio(args.prune_method)
    if fixed is not None and args.compress != "quant":
        for given, option in ((args.ratios, "--ratios"), (args.samples != 1, "--samples"),
                              (args.strategy != "sampling", "--strategy")):
            if given:
                p.error(f"{option} does not apply to --prune-method {args.prune_method}, which "
                        f"prunes a fixed ratio of {fixed}")
    if not (math.isfinite(args.width) and 0 < args.width <= 64):
        p.error("--width must be in (0, 64]")
    if not args.eval_ratios and any(m != "none" and implied_ratio(m) is None
                                    for m in args.eval_prune):
        p.error("--eval-prune with pruning methods needs --eval-ratios")

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    x_train, y_train = load_split(args.dataset, args.data, "train")
    x_test, y_test = load_split(args.dataset, args.data, "test")
    if args.limit_train is not None:
        x_train, y_train = x_train[:args.limit_train], y_train[:args.limit_train]
    if args.limit_test is not None:
        x_test, y_test = x_test[:args.limit_test], y_test[:args.limit_test]
    norm = NORMALIZATION[args.dataset]
    model = small(norm=norm) if args.model == "small" else cnn7(width=args.width, norm=norm)
    if args.method != "std":                                 # std: PyTorch's default init
        ibp_init(model)
    what = args.method
    if args.method == "cactus":
        what += f" ({args.compress}, {args.prune_method}, {args.strategy})"
    print(f"pytorch {torch.__version__}, {args.threads} threads: {what} on {args.dataset} "
          f"({len(y_train)} train, {len(y_test)} test), {args.model}, eps {args.eps}, "
          f"seed {args.seed}", flush=True)

    epoch_seconds = train(model, x_train, y_train, args)
    start = time.perf_counter()
    clean, pgd_acc, certified = evaluate(model, x_test, y_test, args.eps, args.seed)
    rows = evaluation_grid(model, x_test, y_test, args, (clean, pgd_acc, certified))
    result = {"engine": "pytorch", "method": args.method, "dataset": args.dataset,
              "eps": args.eps, "seed": args.seed, "epochs": args.epochs,
              "limit_train": args.limit_train, "epoch_seconds": epoch_seconds,
              "clean": clean, "pgd": pgd_acc, "certified": certified, "n_test": len(y_test),
              "model": args.model, "width": args.width, "threads": args.threads,
              "eval_seconds": time.perf_counter() - start}
    if args.method == "cactus":
        result.update({"compress": args.compress, "prune_method": args.prune_method,
                       "strategy": args.strategy, "ratios": args.ratios,
                       "samples": args.samples, "awp_eta": args.awp_eta,
                       "awp_steps": args.awp_steps})
    result["rows"] = rows
    text = json.dumps(result, indent=2)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
    print(text)


if __name__ == "__main__":
    main()
