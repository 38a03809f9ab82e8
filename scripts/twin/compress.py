"""Compression of the conv/linear weights (src/compress/; biases and BN never touched): the
pruning masks and fake quantization of the certified twin, exact to cactus's rules, and the fast
variants the benchmark twins time (a selection instead of a stable sort, PyTorch's fused fake
quantization).

  pruning  a registry of rules as in src/compress/mod.rs (PRUNE_RULES: each rule's names, help
           line, masks and, for a rule whose parameters fix it, its ratio); a method is its
           canonical name (parse_prune_method). Magnitude (src/compress/prune/):
           gul1 gul2 lul1 lul2 gsl1 gsl2 lsl1 lsl2 at ratio δ ∈ [0, 1); count(δ, n) =
           floor(δ·n) (a product a few ulps below an integer counts as it). Unstructured
           (?ul?; l1 ≡ l2): weights ranked by (|w|, layer, flat index) ascending, the first
           count(δ, all weights) pruned (global) or count(δ, n_t) per tensor (local).
           Structured (?sl?): a unit = a conv output channel or a hidden linear neuron (never
           the classifier), score = l1/l2 norm of its weight row (f64); global: scores divided
           by their layer's mean score, one ranking by (score, layer, unit), count(δ, units)
           removed, skipping a unit whose layer is down to one; local: min(count(δ, u), u − 1)
           per layer. A removed unit's row is zeroed, its bias kept. N:M (src/compress/nm/):
           1 ≤ N < M ≤ 64, 2:4 canonical; in every group of M consecutive weights of a row (an
           output unit's flattened weights), min(N, len) kept by (|w| bits, position), the lower
           position pruned first among equal magnitudes, NaN above all; every conv/linear layer;
           the ratio is fixed at 1 − N/M.
  quant    fp32 = identity; fp16 = round to nearest even through half (finite values clamped to
           ±65504 first); intN per tensor: asymmetric, [qmin, qmax] = [−2^(N−1), 2^(N−1) − 1],
           s rounded up in f32, z = qmin − round(min/s), ŵ = f32(s·(q − z)); a constant tensor
           stays as it is.
numpy is needed by the intN quantizer only (imported there).
"""
import copy
import math
import sys

import torch
import torch.nn as nn

from model import affine_indices

def prune_count(ratio, n):
    """floor(ratio·n), where a product within a few ulps below an integer counts as that one."""
    x = ratio * n
    k = math.floor(x)
    if (k + 1.0) - x <= 4.0 * sys.float_info.epsilon * max(x, 1.0):
        k += 1
    return min(int(k), n)


class Magnitude:
    """The paper's eight magnitude methods (src/compress/prune/)."""
    names = ("gul1", "gul2", "lul1", "lul2", "gsl1", "gsl2", "lsl1", "lsl2")
    syntax = None
    help = ("magnitude pruning at the ratio asked for; g/l: one ranking over all layers or one "
            "per layer, u/s: single weights or whole units, l1/l2: the units' norm; any case")

    def parse(self, name):
        return name if name in self.names else None

    def implied_ratio(self, method):
        return None

    def masks(self, model, idx, ws, method, ratio):
        masks = [torch.ones_like(w) for w in ws]
        if method[1] == "u":                    # single weights, ranked by (|w|, layer, index)
            def prune_smallest(flat, k, out):
                if k > 0:
                    out.view(-1)[torch.argsort(flat, stable=True)[:k]] = 0.0
            if method[0] == "g":
                flat = torch.cat([w.abs().flatten() for w in ws])
                m = torch.ones_like(flat)
                prune_smallest(flat, prune_count(ratio, flat.numel()), m)
                return [t.view_as(w).clone() for t, w in zip(m.split([w.numel() for w in ws]), ws)]
            for w, m in zip(ws, masks):
                prune_smallest(w.abs().flatten(), prune_count(ratio, w.numel()), m)
            return masks
        # units: conv channels, hidden linear neurons
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
        return masks


class NM:
    """N:M semi-structured sparsity (src/compress/nm/)."""
    names = ("2:4",)
    syntax = "N:M with 1 ≤ N < M ≤ 64"
    help = ("semi-structured sparsity: in every M consecutive weights of a row, the N largest |w| "
            "kept, in every conv and linear layer; prunes the fixed ratio 1 − N/M")

    def parse(self, name):
        if ":" not in name:
            return None
        n, _, m = name.partition(":")
        if not (all(t.isascii() and t.isdigit() and len(t) <= 3 for t in (n, m))
                and 1 <= int(n) < int(m) <= 64):
            raise ValueError(f"pruning method {name!r}: N:M sparsity needs whole numbers "
                             "1 ≤ N < M ≤ 64, such as 2:4")
        return f"{int(n)}:{int(m)}"

    def implied_ratio(self, method):
        n, m = (int(t) for t in method.split(":"))
        return 1.0 - n / m

    def masks(self, model, idx, ws, method, ratio):
        n, m = (int(t) for t in method.split(":"))
        return [nm_mask(w, n, m) for w in ws]


def nm_mask(w, n, m):
    """The 0/1 N:M mask of w (rows along the first axis): per group of m consecutive values of a
    row, the min(n, len) with the largest keys (bits of |w|)·64 + position kept."""
    rows = w.detach().float().contiguous().view(w.shape[0], -1)
    row_len = rows.shape[1]
    pad = (-row_len) % m
    bits = (rows.view(torch.int32) & 0x7FFFFFFF).long()
    position = torch.arange(row_len, dtype=torch.long) % m
    keys = torch.nn.functional.pad(bits * 64 + position, (0, pad), value=-1)  # padding ranks last
    keys = keys.view(rows.shape[0], -1, m)
    mask = torch.zeros(keys.shape, dtype=torch.float32)
    mask.scatter_(2, keys.topk(n, dim=2).indices, 1.0)
    return mask.view(rows.shape[0], -1)[:, :row_len].reshape(w.shape)


# Every pruning rule, in the order help texts list them (src/compress/mod.rs, PRUNE_RULES).
PRUNE_RULES = (Magnitude(), NM())


def prune_names():
    """The registry's names for help texts and errors: gul1, gul2, …"""
    return ", ".join(f"{r.syntax} (e.g. {', '.join(r.names)})" if r.syntax
                     else ", ".join(r.names) for r in PRUNE_RULES)


def prune_help():
    """Every rule's names with its help line."""
    return "; ".join(f"{r.syntax + ', e.g. ' if r.syntax else ''}{', '.join(r.names)} "
                     f"({r.help})" for r in PRUNE_RULES)


def _rule(method):
    """(rule, canonical name) of a method name in any case, or None."""
    t = method.strip().lower()
    for rule in PRUNE_RULES:
        name = rule.parse(t)
        if name is not None:
            return rule, name
    return None


def parse_prune_method(text):
    """The canonical name of a pruning method; ValueError listing the registry's names."""
    found = _rule(text)
    if found is None:
        raise ValueError(f"unknown pruning method {text!r}: expected one of {prune_names()}")
    return found[1]


def implied_ratio(method):
    """The ratio the method fixes (None: the caller chooses)."""
    rule, name = _rule(method) or (None, None)
    if rule is None:
        raise ValueError(f"unknown pruning method {method!r}")
    return rule.implied_ratio(name)


def prune_masks(model, method, ratio):
    """0/1 masks {layer index: mask} of the conv/linear weights for pruning `method` at δ =
    `ratio` (src/compress/), computed from the detached weights; and the fraction of those
    weights the masks zero."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    found = _rule(method)
    if found is None:
        raise ValueError(f"unknown pruning method {method}")
    rule, name = found
    fixed = rule.implied_ratio(name)
    if fixed is not None and abs(fixed - ratio) > 1e-9:
        raise ValueError(f"{name} prunes a fixed ratio of {fixed}, not {ratio}")
    idx = affine_indices(model)
    ws = [model[i].weight.detach() for i in idx]
    masks = rule.masks(model, idx, ws, name, ratio)
    total = sum(w.numel() for w in ws)
    zeros = sum(int((m == 0).sum()) for m in masks)
    return dict(zip(idx, masks)), zeros / total


def int_quant_params(w, bits):
    """(scale, zero point) of the per-tensor asymmetric intN quantizer of w, or None for a
    constant tensor (quantized exactly, step 0) (src/compress/quant.rs)."""
    import numpy as np
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


# ------------------------------------------------------------- the benchmarks' fast variants
def gul1_masks(ws, ratio, k=None):
    """Global unstructured l1 masks of the tensors ws: the k = floor(ratio·n) smallest |w| of
    all of them pruned, via the k-th smallest |w| (torch.kthvalue, a selection, as cactus);
    weights equal to it are all pruned (ties not resolved, unlike prune_masks' stable sort,
    ~7× slower on 13 M weights). Float 0/1 masks, one per tensor, without gradient."""
    n = sum(t.numel() for t in ws)
    k = math.floor(ratio * n) if k is None else k
    if k <= 0:
        return [torch.ones_like(t) for t in ws]
    with torch.no_grad():
        thr = torch.kthvalue(torch.cat([t.abs().flatten() for t in ws]), k).values
        return [(t.abs() > thr).float() for t in ws]


def fake_quant_int8(ws):
    """int8 per-tensor asymmetric fake quantization with PyTorch's fused
    torch.fake_quantize_per_tensor_affine, s = (max − min)/255 and z = −128 − round(min/s)
    read back to the host (.item()) per tensor (the explicit formula only if z falls outside
    [−128, 127], i.e. a tensor of one sign)."""
    out = []
    with torch.no_grad():
        for t in ws:
            lo, hi = (v.item() for v in torch.aminmax(t))
            if lo == hi:
                out.append(t.clone())
                continue
            s = (hi - lo) / 255.0
            z = -128 - round(lo / s)
            if -128 <= z <= 127:
                out.append(torch.fake_quantize_per_tensor_affine(t, s, z, -128, 127))
            else:
                out.append(s * ((torch.round(t / s) + z).clamp(-128, 127) - z))
    return out


def fake_quant_int8_device(ws):
    """fake_quant_int8's arithmetic with s and z kept on the tensors' device (no host round
    trip): the tensor-qparams overload of fake_quantize_per_tensor_affine, z clamped to
    [−128, 127] (equal to fake_quant_int8 whenever a tensor has both signs)."""
    out = []
    for t in ws:
        lo, hi = torch.aminmax(t)
        s = ((hi - lo) / 255.0).clamp_min(torch.finfo(torch.float32).tiny).reshape(1)
        z = (-128 - torch.round(lo / s)).clamp(-128, 127).to(torch.int32).reshape(1)
        out.append(torch.fake_quantize_per_tensor_affine(t, s, z, -128, 127))
    return out
