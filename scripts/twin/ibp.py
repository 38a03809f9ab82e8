"""Interval bound propagation (src/bounds/ibp.rs) in centre/radius form: c' = Wc + b,
r' = |W|r, ReLU on [c − r, c + r]; batch norm with given (clean batch) statistics or the running
ones; the margins lb(z_y − z_j) with last-layer elision, and the certified loss CE(−lb, y)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Normalize


def input_box(x, eps):
    """The box [x − ε, x + ε] ∩ [0, 1] as (centre, radius)."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    return (lo + hi) / 2, (hi - lo) / 2


def propagate(layers, c, r, stats, weights=None):
    """Interval bounds in centre/radius form; `stats` = clean batch statistics (train) or None;
    `weights` (layer index → weight) replaces conv/linear weights as in model.forward_with."""
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
    """CE(−lb, y) (entry y of lb is 0)."""
    return F.cross_entropy(-lb, y)
