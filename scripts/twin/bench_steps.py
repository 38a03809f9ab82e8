"""The training steps the benchmark twins time, one whole step each (forward, loss, backward,
optimiser), on any device: scripts/compare/bench_torch.py's on the CPU and
scripts/compare/bench_torch_cuda.py's on the GPU (benches/steps.rs, benches/steps_cuda.rs).
The model and the batch are drawn on the CPU (seed 0) and then moved, so every device starts
from the same values.

  std     PyTorch's default init, no input normalisation, inputs N(0, 1): zero_grad,
          cross-entropy, backward, Adam(lr=1e-3) step.
  ibp,    cactus's trainer past the ramp (ε_t = ε, w_t = 0.75; losses.certified_loss):
  sabr    Normalize first, IBP init, inputs U(0, 1); clean pass (train-mode BN), IBP over
          [x − ε, x + ε] ∩ [0, 1] or SABR (8-step PGD with BN in eval mode, then IBP on the
          0.4·ε box); loss 0.25·CE + 0.75·CE(−lb, y); backward; clip_grad_norm_(10);
          Adam(lr=5e-4, weight_decay=1e-5); loss.item() (as the trainer logs it).
  cactus  the default compression set past the ramp (losses.member_loss): the full net f and
          one copy of f pruned by GUL1 at r ~ U(0.25, 0.75) (compress.gul1_masks from the
          detached weights, member weights w·mask), each 0.25·CE (its own train-mode batch
          statistics; only f updates the running ones) + 0.75·SABR loss (its own attack);
          loss = their mean; clip 10; Adam as above.
Each maker returns (step, last): step() runs one step, last[0] is its loss (detached).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from compress import gul1_masks, prune_count
from losses import certified_loss, member_loss
from model import NORMALIZATION, affine_indices, cnn7, ibp_init, small

ARCHS = {"small": small, "cnn7": cnn7}
SHAPES = {"mnist": (1, 28, 0.1), "cifar": (3, 32, 8 / 255)}   # in_ch, side, ε
CERT_WEIGHT, SABR_LAMBDA = 0.75, 0.4


def batch(in_ch, hw, n, normal, device="cpu"):
    """n inputs, N(0, 1) (normal) or U(0, 1), and labels in 0..9, drawn with a CPU generator
    of seed 0, moved to device."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn if normal else torch.rand)(n, in_ch, hw, hw, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def cert_model(arch, data, device="cpu"):
    """The certified twins' model: Normalize(data's mean, std) first, IBP init (seed 0), train
    mode."""
    in_ch, hw, _ = SHAPES[data]
    torch.manual_seed(0)
    model = ibp_init(ARCHS[arch](in_ch, hw, norm=NORMALIZATION[data]))
    return model.to(device).train()


def std_step(arch, data, n, device="cpu"):
    in_ch, hw, _ = SHAPES[data]
    torch.manual_seed(0)
    model = ARCHS[arch](in_ch, hw).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = batch(in_ch, hw, n, True, device)
    last = []

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        last[:] = [loss.detach()]
    return step, last


def _update(model, opt, loss, last):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    loss.item()
    last[:] = [loss.detach()]


def cert_step(arch, data, method, n, gen, device="cpu"):
    """One IBP or SABR step; gen: the attack starts' generator (on device)."""
    in_ch, hw, eps = SHAPES[data]
    model = cert_model(arch, data, device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    x, y = batch(in_ch, hw, n, False, device)
    last = []

    def step():
        loss, _ = certified_loss(model, x, y, method, eps, CERT_WEIGHT, SABR_LAMBDA, gen)
        _update(model, opt, loss, last)
    return step, last


def cactus_step(arch, data, n, gen, ratio_gen, device="cpu"):
    """One CACTUS step; gen: the attack starts' generator (on device), ratio_gen: the pruning
    ratio's (a CPU generator: a host scalar, as cactus draws it; may be gen itself)."""
    in_ch, hw, eps = SHAPES[data]
    model = cert_model(arch, data, device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    x, y = batch(in_ch, hw, n, False, device)
    idx = affine_indices(model)
    n_weights = sum(model[i].weight.numel() for i in idx)
    last = []

    def member(weights, bn):
        return member_loss(model, weights, bn, x, y, eps, CERT_WEIGHT, SABR_LAMBDA, gen)[0]

    def step():
        full = member({}, "update")             # only f updates the running statistics
        ratio = 0.25 + 0.5 * torch.rand(1, generator=ratio_gen).item()
        ws = [model[i].weight.detach() for i in idx]
        masks = gul1_masks(ws, ratio, prune_count(ratio, n_weights))
        pruned = member({i: model[i].weight * m for i, m in zip(idx, masks)}, "batch")
        _update(model, opt, (full + pruned) / 2, last)
    return step, last


def compression_weights(device="cpu"):
    """The conv/linear weights of full-width cnn7 for MNIST inputs [1, 28, 28] (seed 0; 7
    tensors, 13,256,256 weights), on device: the compression kernels' input."""
    torch.manual_seed(0)
    model = cnn7(1, 28)
    return [m.weight.detach().to(device) for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
