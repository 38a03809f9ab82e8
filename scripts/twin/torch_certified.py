#!/usr/bin/env python3
"""torch_certified.py: the certified training of cactus (std, IBP, SABR, CACTUS) and its
evaluation (plain and under compression), written again in plain PyTorch, to show that both
engines reach the same accuracies (within the spread over seeds) under the same settings.

Everything below follows cactus (DESIGN.md "Specification" and "Training"; src/train,
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

Compression (src/compress/prune.rs and quant.rs; conv and linear weights only, biases and BN
never touched):
  pruning    --prune-method gul1 gul2 lul1 lul2 gsl1 gsl2 lsl1 lsl2 at ratio δ ∈ [0, 1);
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

CACTUS (--method cactus; DESIGN.md "Specification": AWP, compression-set strategies, BN in a
compression set; same warm-up/ramp schedule, w_t and ε_t as SABR):
  set        the full net f; plus, for --compress prune or prune+quant, f pruned (--prune-method,
             default gul1) at each ratio of the batch's strategy: sampling (default): --samples k
             ratios drawn per batch from U(0.25, 0.75), or uniformly from --ratios if given;
             fixed: every ratio of --ratios (default 0.25,0.5,0.75); dense: 0.15,0.3,0.45,0.6,
             0.75; progressive: one ratio rising linearly from 0.25 (batch warmup + ramp) to 0.75
             (the last batch of the run), per batch; adaptive: the fractions of the conv/linear
             weights that, pruned smallest |w| first, hold at most 1%, 5% and 10% of their total
             l1 mass, each clamped to [0.25, 0.75]. --ratios only with sampling and fixed,
             --samples ≠ 1 only with sampling. Masks are computed every batch from the detached
             weights; the member's weights are w·mask (gradient only to kept weights). Plus, for
             quant or prune+quant, the AWP net f + Δ*.
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
fp32). Each row is the evaluation above of the compressed weights (quantized: the dequantized
ŵ), BN in eval mode with the full net's running statistics. The JSON keeps the plain net's
clean/pgd/certified at the top level and adds "rows": [{"compression", "ratio", "sparsity",
"format", "certifier": "ibp", "clean", "pgd", "certified"}], the rows of cactus's report.json.

Usage (venv .venv-bench; scripts/twin/torch_certified.sh creates it):
  .venv-bench/bin/python scripts/twin/torch_certified.py --method sabr --dataset mnist-mini \\
      --eps 0.1 --epochs 10 --seed 0 --threads 2 --out out/torch_sabr_s0.json
  .venv-bench/bin/python scripts/twin/torch_certified.py --method cactus --compress prune+quant \\
      --eps 0.1 --epochs 8 --seed 0 --eval-prune none,lul1,gul1,gsl2 \\
      --eval-ratios 0.5,0.7,0.9,0.95,0.99 --eval-quant fp32,fp16,int8,int4 --out out/t.json
"""
import argparse, copy, gzip, json, math, os, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent.parent
NORMALIZATION = {"mnist-mini": (0.1307, 0.3081), "mnist": (0.1307, 0.3081),
                 "fashion-mnist": (0.2860, 0.3530)}


# ---------------------------------------------------------------------------------- data
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
        sys.exit(f"error: {d}: {len(images)} images, {len(labels)} labels, max label {labels.max()}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)   # N×1×28×28 in [0, 1]
    return x, torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------------------------- model
class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor([mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([std]).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def small_model(norm, init):
    model = nn.Sequential(
        Normalize(*norm),
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),     # 28 → 14
        nn.Conv2d(16, 32, 4, stride=1, padding=1), nn.ReLU(),    # 14 → 13
        nn.Flatten(), nn.Linear(32 * 13 * 13, 100), nn.ReLU(), nn.Linear(100, 10))
    return ibp_init(model) if init == "ibp" else model


def scaled(channels, width):
    """cactus's round(channels·width) in f32, half away from zero, at least 1."""
    x = float(np.float32(channels) * np.float32(width))
    return max(1, int(math.floor(x + 0.5)))


def cnn7_model(norm, init, width):
    layers, ch, hw = [Normalize(*norm)], 1, 28
    for out, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (128, 1)):
        out = scaled(out, width)
        layers += [nn.Conv2d(ch, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        ch, hw = out, (hw + 2 - 3) // stride + 1
    fc = scaled(512, width)
    layers += [nn.Flatten(), nn.Linear(ch * hw * hw, fc), nn.BatchNorm1d(fc), nn.ReLU(),
               nn.Linear(fc, 10)]
    model = nn.Sequential(*layers)
    return ibp_init(model) if init == "ibp" else model


def ibp_init(model):
    """Shi et al. 2021: every conv/linear weight but the last redrawn; the rest keeps PyTorch's
    default."""
    affine = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in affine[:-1]:
        fan_in = m.weight[0].numel()
        nn.init.normal_(m.weight, 0.0, math.sqrt(2 * math.pi) / fan_in)
    return model


def affine_indices(model):
    """Indices (in the Sequential) of the conv and linear layers: the compressible weights."""
    return [i for i, m in enumerate(model) if isinstance(m, (nn.Conv2d, nn.Linear))]


def forward_with(model, weights, x, bn):
    """Functional forward pass with some conv/linear weights replaced: `weights` maps a layer
    index to the weight to use there (others use the module's own). bn: "eval" (running
    statistics), "batch" (the input's own batch statistics, running statistics untouched) or
    "update" (batch statistics, and the running ones updated as PyTorch's train mode does).
    Returns the logits and the (mean, biased var) of each BN's input in batch mode."""
    stats = []
    for i, m in enumerate(model):
        if isinstance(m, nn.Conv2d):
            x = F.conv2d(x, weights.get(i, m.weight), m.bias, m.stride, m.padding, m.dilation,
                         m.groups)
        elif isinstance(m, nn.Linear):
            x = F.linear(x, weights.get(i, m.weight), m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if bn == "eval":
                x = F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0,
                                 m.eps)
                continue
            dims = [0] + list(range(2, x.dim()))
            stats.append((x.mean(dims), x.var(dims, unbiased=False)))
            if bn == "update":                   # momentum 0.1, unbiased running variance
                with torch.no_grad():
                    F.batch_norm(x.detach(), m.running_mean, m.running_var, None, None, True,
                                 m.momentum, m.eps)
            x = F.batch_norm(x, None, None, m.weight, m.bias, True, 0.0, m.eps)
        else:
            x = m(x)
    return x, stats


def clean_forward(model, x):
    """Forward pass in the model's current mode; returns the logits and, for each BatchNorm
    in train mode, the (mean, biased var) of its input, with gradients, for IBP's boxes."""
    stats = []
    for m in model:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            dims = [0] + list(range(2, x.dim()))
            stats.append((x.mean(dims), x.var(dims, unbiased=False)))
        x = m(x)
    return x, stats


# ---------------------------------------------------------------------------------- bounds
def input_box(x, eps):
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    return (lo + hi) / 2, (hi - lo) / 2


def propagate(layers, c, r, stats, weights=None):
    """Interval bounds in centre/radius form; `stats` = clean batch statistics (train) or None;
    `weights` (layer index → weight) replaces conv/linear weights as in forward_with."""
    bn_stats = iter(stats or [])
    weights = weights or {}
    for i, m in enumerate(layers):
        if isinstance(m, Normalize):
            c, r = (c - m.mean) / m.std, r / m.std
        elif isinstance(m, nn.Conv2d):
            w = weights.get(i, m.weight)
            c = F.conv2d(c, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
            r = F.conv2d(r, w.abs(), None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.Linear):
            w = weights.get(i, m.weight)
            c, r = F.linear(c, w, m.bias), F.linear(r, w.abs())
        elif isinstance(m, nn.ReLU):
            lo, hi = F.relu(c - r), F.relu(c + r)
            c, r = (hi + lo) / 2, (hi - lo) / 2
        elif isinstance(m, nn.Flatten):
            c, r = c.flatten(1), r.flatten(1)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            mean, var = next(bn_stats) if stats is not None else (m.running_mean, m.running_var)
            scale = m.weight / torch.sqrt(var + m.eps)
            shift = m.bias - mean * scale
            shape = [1, -1] + [1] * (c.dim() - 2)
            c, r = c * scale.view(shape) + shift.view(shape), r * scale.abs().view(shape)
        else:
            raise TypeError(f"no interval rule for {type(m).__name__}")
    return c, r


def margin_lower_bounds(model, c, r, y, stats, weights=None):
    """lb(z_y − z_j) over each box [c − r, c + r], [N, K] (0 at j = y): last-layer elision."""
    weights = weights or {}
    c, r = propagate(list(model)[:-1], c, r, stats, weights)
    last = model[-1]
    w_last = weights.get(len(model) - 1, last.weight)
    w_spec = w_last[y].unsqueeze(1) - w_last.unsqueeze(0)                  # N×K×H
    b_spec = last.bias[y].unsqueeze(1) - last.bias.unsqueeze(0)            # N×K
    return (torch.einsum("nkh,nh->nk", w_spec, c) + b_spec
            - torch.einsum("nkh,nh->nk", w_spec.abs(), r))


def cert_loss(lb, y):
    return F.cross_entropy(-lb, y)


# ---------------------------------------------------------------------------------- compression
PRUNE_METHODS = ("gul1", "gul2", "lul1", "lul2", "gsl1", "gsl2", "lsl1", "lsl2")


def prune_count(ratio, n):
    """floor(ratio·n), where a product within a few ulps below an integer counts as that one."""
    x = ratio * n
    k = math.floor(x)
    if (k + 1.0) - x <= 4.0 * sys.float_info.epsilon * max(x, 1.0):
        k += 1
    return min(int(k), n)


def prune_masks(model, method, ratio):
    """0/1 masks {layer index: mask} of the conv/linear weights for pruning `method` at δ =
    `ratio` (src/compress/prune.rs), computed from the detached weights; and the fraction of
    those weights the masks zero."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method}")
    idx = affine_indices(model)
    ws = [model[i].weight.detach() for i in idx]
    masks = [torch.ones_like(w) for w in ws]
    if method[1] == "u":                        # single weights, ranked by (|w|, layer, index)
        def prune_smallest(flat, k, out):
            if k > 0:
                out.view(-1)[torch.argsort(flat, stable=True)[:k]] = 0.0
        if method[0] == "g":
            flat = torch.cat([w.abs().flatten() for w in ws])
            m = torch.ones_like(flat)
            prune_smallest(flat, prune_count(ratio, flat.numel()), m)
            masks = [t.view_as(w).clone() for t, w in zip(m.split([w.numel() for w in ws]), ws)]
        else:
            for w, m in zip(ws, masks):
                prune_smallest(w.abs().flatten(), prune_count(ratio, w.numel()), m)
    else:                                       # units: conv channels, hidden linear neurons
        classifier = max(i for i in idx if isinstance(model[i], nn.Linear))
        scores = []                             # (position in ws, f64 scores of its rows)
        for t, (i, w) in enumerate(zip(idx, ws)):
            if i == classifier:
                continue
            rows = w.double().flatten(1)
            scores.append((t, rows.abs().sum(1) if method[3] == "1"
                           else rows.pow(2).sum(1).sqrt()))
        removed = []                            # (position in ws, unit)
        if method[0] == "g":
            ranking = []
            for t, sc in scores:
                mean = sc.mean().item()
                norm = sc / mean if mean > 0 else sc * 0.0
                ranking += [(v + 0.0, t, u) for u, v in enumerate(norm.tolist())]
            ranking.sort()
            k, lost = prune_count(ratio, len(ranking)), {}
            for _, t, u in ranking:
                if len(removed) == k:
                    break
                if lost.get(t, 0) + 1 >= ws[t].shape[0]:
                    continue                    # keep at least one unit per layer
                lost[t] = lost.get(t, 0) + 1
                removed.append((t, u))
        else:
            for t, sc in scores:
                k = min(prune_count(ratio, len(sc)), len(sc) - 1)
                if k > 0:
                    removed += [(t, int(u)) for u in torch.argsort(sc, stable=True)[:k]]
        for t, u in removed:
            masks[t][u] = 0.0
    total = sum(w.numel() for w in ws)
    zeros = sum(int((m == 0).sum()) for m in masks)
    return dict(zip(idx, masks)), zeros / total


def int_quant_params(w, bits):
    """(scale, zero point) of the per-tensor asymmetric intN quantizer of w, or None for a
    constant tensor (quantized exactly, step 0) (src/compress/quant.rs)."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not bool(torch.isfinite(w).all()):
        sys.exit("error: cannot quantize weights to integers: NaN or infinite values "
                 "(the network has diverged)")
    lo, hi = float(w.min()), float(w.max())
    if lo == hi:
        return None
    levels, span = float(qmax - qmin), hi - lo
    s = np.float32(span / levels)
    if float(s) * levels < span:                # round up: s·(qmax − qmin) ≥ max − min
        s = np.nextafter(s, np.float32(np.inf))
    magnitude = max(abs(lo), abs(hi))
    floor = np.float32(magnitude / 2.0 ** 30)
    if float(floor) * 2.0 ** 30 < magnitude:
        floor = np.nextafter(floor, np.float32(np.inf))
    s = float(max(s, floor, np.float32(np.finfo(np.float32).smallest_subnormal)))
    return s, qmin - round(lo / s)              # Python's round: half to even


def quant_step(w, bits=8):
    """The per-tensor intN quantization step of w (0 for a constant tensor)."""
    p = int_quant_params(w.detach(), bits)
    return 0.0 if p is None else p[0]


def fake_quantize(w, fmt):
    """Dequantized weights of w in format fp32, fp16 or intN (N in 2..8), per tensor."""
    w = w.detach()
    if fmt == "fp32":
        return w.clone()
    if fmt == "fp16":
        return torch.where(torch.isfinite(w), w.clamp(-65504.0, 65504.0), w).half().float()
    bits = int(fmt[3:])
    p = int_quant_params(w, bits)
    if p is None:
        return w.clone()
    s, z = p
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = (torch.round(w.double() / s) + z).clamp(qmin, qmax)
    return (s * (q - z)).float()


def compressed_copy(model, weights):
    """A copy of model (BN running statistics included) with these conv/linear weights."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for i, w in weights.items():
            out[i].weight.copy_(w)
    return out


# ---------------------------------------------------------------------------------- attacks
def attack_loss(logits, y, kind):
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.max(1).values - logits.gather(1, y[:, None])[:, 0]


def pgd(model, x, y, lo, hi, eps, steps, step_frac, decay_after, factor, kind, gen,
        stop_early=False):
    """Sign PGD in the box [lo, hi] from a uniform random start; model in its current mode.
    Returns each sample's highest-loss point among the clean point and every iterate, and
    whether any evaluated point was misclassified. Gradients go to the input only."""
    def point(p, need_grad):
        p = p.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            logits = model(p)
            loss = attack_loss(logits, y, kind)
        g = torch.autograd.grad(loss.sum(), p)[0] if need_grad else None
        return logits.detach(), loss.detach(), g

    best_x, fooled = x.clone(), torch.zeros(len(y), dtype=torch.bool, device=x.device)
    logits, best_loss, _ = point(x, False)                # the clean point is a candidate
    fooled |= logits.argmax(1) != y
    u = torch.rand(x.shape, generator=gen, device=x.device)  # gen must be on x's device
    cur = torch.minimum(lo + (hi - lo) * u, hi)
    for k in range(steps + 1):
        logits, loss, g = point(cur, k < steps)
        fooled |= logits.argmax(1) != y
        better = loss > best_loss
        best_loss = torch.where(better, loss, best_loss)
        best_x[better] = cur[better]
        if k == steps or (stop_early and bool(fooled.all())):
            break
        size = step_frac * eps * factor ** sum(k >= m for m in decay_after)
        cur = torch.minimum(torch.maximum(cur + size * torch.sign(torch.nan_to_num(g)), lo), hi)
    return best_x, fooled


def sabr_centre(model, x, y, eps, gen):
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    was_training = model.training
    model.eval()                                             # BN in eval mode during the attack
    x_adv, _ = pgd(model, x, y, lo, hi, eps, 8, 0.5, (4, 7, 8), 0.1, "ce", gen)
    model.train(was_training)
    return x_adv, lo, hi


# ---------------------------------------------------------------------------------- CACTUS
DENSE_RATIOS = (0.15, 0.3, 0.45, 0.6, 0.75)


def sabr_box(model, weights, x, y, eps, lam, gen):
    """SABR's small box (centre, radius) for the net with these weights: its own PGD attack on
    the detached weights with BN in eval mode, the centre clamped to [lo + τ, hi − τ]."""
    detached = {i: w.detach() for i, w in weights.items()}
    for i in affine_indices(model):
        detached.setdefault(i, model[i].weight.detach())
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    x_adv, _ = pgd(lambda p: forward_with(model, detached, p, "eval")[0], x, y, lo, hi, eps,
                   8, 0.5, (4, 7, 8), 0.1, "ce", gen)
    tau = lam * eps
    return input_box(torch.minimum(torch.maximum(x_adv, lo + tau), hi - tau), tau)


def batch_ratios(model, args, t, total_batches, gen):
    """The pruning ratios of this batch's compression set (see the docstring)."""
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
    lam = args.sabr_lambda

    def member_loss(weights, bn):
        logits, stats = forward_with(model, weights, x, bn)
        loss = F.cross_entropy(logits, y)
        box = None
        if w > 0:
            box = sabr_box(model, weights, x, y, eps_t, lam, gen)
            lb = margin_lower_bounds(model, box[0], box[1], y, stats, weights)
            loss = (1 - w) * loss + w * cert_loss(lb, y)
        return loss, logits, box

    full_loss, full_logits, full_box = member_loss({}, "update")   # only f updates running stats
    losses = [full_loss]
    if args.compress in ("prune", "prune+quant"):
        for ratio in batch_ratios(model, args, t, total_batches, gen):
            masks, _ = prune_masks(model, args.prune_method, ratio)
            losses.append(member_loss({i: model[i].weight * masks[i] for i in idx}, "batch")[0])
    if args.compress in ("quant", "prune+quant"):
        delta = awp_delta(model, x, y, w, full_box, args)
        losses.append(member_loss({i: model[i].weight + delta[i] for i in idx}, "batch")[0])
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
                logits, stats = clean_forward(model, x)
                loss = F.cross_entropy(logits, y)
            if args.method in ("ibp", "sabr") and w > 0:
                if args.method == "ibp":
                    c, r = input_box(x, eps_t)
                else:
                    x_adv, lo, hi = sabr_centre(model, x, y, eps_t, gen)
                    tau = args.sabr_lambda * eps_t
                    c, r = input_box(torch.minimum(torch.maximum(x_adv, lo + tau), hi - tau), tau)
                lcert = cert_loss(margin_lower_bounds(model, c, r, y, stats), y)
                loss = (1 - w) * loss + w * lcert
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
        for ratio in dict.fromkeys(r for r in args.eval_ratios if r > 0):
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
    t = text.lower()
    if t in PRUNE_METHODS or (allow_none and t == "none"):
        return t
    raise argparse.ArgumentTypeError(
        f"unknown pruning method {text!r}: expected {'none, ' if allow_none else ''}"
        + ", ".join(PRUNE_METHODS))


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
                   help="pruning of the compression set: " + " ".join(PRUNE_METHODS))
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
                   default=["none"], help="pruning methods (none, gul1, lul1, gsl2, ...)")
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
    if not (math.isfinite(args.width) and 0 < args.width <= 64):
        p.error("--width must be in (0, 64]")
    if any(m != "none" for m in args.eval_prune) and not args.eval_ratios:
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
    init = "pytorch" if args.method == "std" else "ibp"
    norm = NORMALIZATION[args.dataset]
    model = small_model(norm, init) if args.model == "small" else cnn7_model(norm, init, args.width)
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
