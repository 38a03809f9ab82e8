"""The certified losses of one training batch (src/train): IBP, SABR and one member of
CACTUS's compression set, each (1 − w)·CE(clean logits) + w·CE(−lb, y).

  SABR  PGD on [lo, hi] = [max(x − ε, 0), min(x + ε, 1)], BN in eval mode: uniform random
        start, 8 sign steps of 0.5·ε ×0.1 after 4, 7 and 8 completed steps, CE (summed), each
        sample keeps its highest-loss point; τ = λ·ε, centre clamp(x_adv, lo + τ, hi − τ), then
        IBP on [c − τ, c + τ] ∩ [0, 1].
"""
import torch
import torch.nn.functional as F

from attack import pgd
from ibp import cert_loss, input_box, margin_lower_bounds
from model import affine_indices, clean_forward, forward_with


def sabr_attack(model, x, y, eps, gen):
    """SABR's PGD on `model` (a callable, in the mode it should attack in): the adversarial
    point and the box [lo, hi] it lies in."""
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    x_adv, _ = pgd(model, x, y, lo, hi, eps, 8, 0.5, (4, 7, 8), 0.1, "ce", gen)
    return x_adv, lo, hi


def small_box(x_adv, lo, hi, tau):
    """SABR's box of radius τ around the adversarial point, its centre clamped to
    [lo + τ, hi − τ]: (centre, radius)."""
    return input_box(torch.minimum(torch.maximum(x_adv, lo + tau), hi - tau), tau)


def sabr_centre(model, x, y, eps, gen):
    """SABR's attack on the model itself, BN in eval mode during the attack."""
    was_training = model.training
    model.eval()
    x_adv, lo, hi = sabr_attack(model, x, y, eps, gen)
    model.train(was_training)
    return x_adv, lo, hi


def sabr_box(model, weights, x, y, eps, lam, gen):
    """SABR's small box (centre, radius) for the net with these weights: its own PGD attack on
    the detached weights with BN in eval mode, the centre clamped to [lo + τ, hi − τ]."""
    detached = {i: w.detach() for i, w in weights.items()}
    for i in affine_indices(model):
        detached.setdefault(i, model[i].weight.detach())
    x_adv, lo, hi = sabr_attack(lambda p: forward_with(model, detached, p, "eval")[0],
                                x, y, eps, gen)
    return small_box(x_adv, lo, hi, lam * eps)


def certified_loss(model, x, y, method, eps, w, lam, gen):
    """The loss of one std / IBP / SABR batch and the clean logits: the clean pass in the
    model's mode (train: BN with the batch statistics, which IBP's boxes use too), CE; with
    method ibp or sabr and w > 0, (1 − w)·CE + w·CE(−lb, y), lb over [x − ε, x + ε] ∩ [0, 1]
    (ibp) or SABR's box of radius λ·ε (sabr)."""
    logits, stats = clean_forward(model, x)
    loss = F.cross_entropy(logits, y)
    if method in ("ibp", "sabr") and w > 0:
        if method == "ibp":
            c, r = input_box(x, eps)
        else:
            x_adv, lo, hi = sabr_centre(model, x, y, eps, gen)
            c, r = small_box(x_adv, lo, hi, lam * eps)
        lcert = cert_loss(margin_lower_bounds(model, c, r, y, stats), y)
        loss = (1 - w) * loss + w * lcert
    return loss, logits


def member_loss(model, weights, bn, x, y, eps, w, lam, gen):
    """One member g of CACTUS's compression set, the net with these conv/linear weights:
    CE(g(x), BN `bn` as in model.forward_with); with w > 0, (1 − w)·CE + w·L_SABR(g), g's own
    attack (sabr_box) and its clean batch statistics. Returns the loss, g's logits and its
    SABR box (None when w = 0)."""
    logits, stats = forward_with(model, weights, x, bn)
    loss = F.cross_entropy(logits, y)
    box = None
    if w > 0:
        box = sabr_box(model, weights, x, y, eps, lam, gen)
        lb = margin_lower_bounds(model, box[0], box[1], y, stats, weights)
        loss = (1 - w) * loss + w * cert_loss(lb, y)
    return loss, logits, box
