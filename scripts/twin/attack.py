"""Sign PGD (src/attack) in a box [lo, hi], on CE or on the margin max_{j≠y} z_j − z_y; the
attack of SABR's training boxes and of the PGD evaluation."""
import torch
import torch.nn.functional as F


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
