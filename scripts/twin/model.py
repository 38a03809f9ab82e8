"""The networks of the PyTorch twins, layer for layer as cactus builds them (src/nn/models.rs),
and the forward passes the certified training needs.

  small  [Normalize,] Conv 16 k4 s2 p1, ReLU, Conv 32 k4 s1 p1, ReLU, Flatten, Linear → 100,
         ReLU, Linear 100 → 10.
  cnn7   [Normalize,] Conv 64,64,128,128,128 ×width (k3 p1, strides 1,1,2,1,1), each
         + BatchNorm2d + ReLU; Flatten, Linear → 512×width, BatchNorm1d, ReLU, Linear → 10
         (channel counts round(c·width), half away from zero, at least 1). BN: PyTorch's
         defaults (ε 1e-5, momentum 0.1, unbiased running variance).
The input normalisation, when given, is the first layer, so ε is in pixel space. Torch only
(no numpy), so that the benchmark twins' kernels need nothing else.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# data set → (mean, std) of its input normalisation, one number per channel (cactus's
# DatasetKind); Normalize(*NORMALIZATION[name]) is the model's first layer
NORMALIZATION = {
    "mnist-mini": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class Normalize(nn.Module):
    """(x − mean)/std per channel; mean and std: one number, or one per channel. The constants
    are 1×C×1×1 float32 buffers "mean" and "std"."""
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def scaled(channels, width):
    """cactus's round(channels·width) in f32, half away from zero, at least 1."""
    x = (torch.tensor(channels, dtype=torch.float32)
         * torch.tensor(width, dtype=torch.float32)).item()
    return max(1, int(math.floor(x + 0.5)))


def small(in_ch=1, hw=28, norm=None):
    """cactus's `small` for in_ch×hw×hw inputs; norm = (mean, std) puts Normalize first."""
    s1 = (hw + 2 - 4) // 2 + 1                                   # 28 → 14
    s2 = (s1 + 2 - 4) // 1 + 1                                   # 14 → 13
    layers = [Normalize(*norm)] if norm else []
    return nn.Sequential(
        *layers,
        nn.Conv2d(in_ch, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=1, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * s2 * s2, 100), nn.ReLU(), nn.Linear(100, 10))


def cnn7(in_ch=1, hw=28, width=1.0, norm=None):
    """cactus's `cnn7` (--width F) for in_ch×hw×hw inputs; norm = (mean, std) puts Normalize
    first."""
    layers, ch = [Normalize(*norm)] if norm else [], in_ch
    for out, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (128, 1)):
        out = scaled(out, width)
        layers += [nn.Conv2d(ch, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        ch, hw = out, (hw + 2 - 3) // stride + 1
    fc = scaled(512, width)
    layers += [nn.Flatten(), nn.Linear(ch * hw * hw, fc), nn.BatchNorm1d(fc), nn.ReLU(),
               nn.Linear(fc, 10)]
    return nn.Sequential(*layers)


def ibp_init(model):
    """Shi et al. 2021: every conv/linear weight but the last redrawn from
    N(0, (√(2π)/fan_in)²); biases, BN and the last layer keep PyTorch's default."""
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
