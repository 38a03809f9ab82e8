#!/usr/bin/env python3
"""torch_certified.py: the certified training of cactus (std, IBP, SABR) and its evaluation,
written again in plain PyTorch, to show that both engines reach the same accuracies (within
the spread over seeds) under the same settings.

Everything below follows cactus (DESIGN.md "Specification" and "Training"; src/train,
src/bounds/ibp.rs, src/attack); only the random streams differ (torch's generators, not
cactus's Rng), which is why runs are compared over several seeds, not bit for bit.

  data       IDX files, pixels /255 in [0, 1]; mnist-mini = assets/mnist-mini (train-*, t10k-*);
             normalisation (mean, std) is the model's first layer, so ε is in pixel space.
  model      small: Normalize, Conv 16 k4 s2 p1, ReLU, Conv 32 k4 s1 p1, ReLU, Flatten,
             Linear 5408→100, ReLU, Linear 100→10. ibp/sabr: IBP init (Shi et al. 2021: every
             conv/linear weight but the last ~ N(0, (√(2π)/fan_in)²); biases and the last layer
             keep PyTorch's default); std: PyTorch's default.
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

Usage (venv .venv-bench; scripts/torch_certified.sh creates it):
  .venv-bench/bin/python scripts/torch_certified.py --method sabr --dataset mnist-mini \\
      --eps 0.1 --epochs 10 --seed 0 --threads 2 --out out/torch_sabr_s0.json
"""
import argparse, gzip, json, math, os, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
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
    if init == "ibp":   # Shi et al. 2021; the last linear layer keeps PyTorch's default
        affine = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
        for m in affine[:-1]:
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, math.sqrt(2 * math.pi) / fan_in)
    return model


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


def propagate(layers, c, r, stats):
    """Interval bounds in centre/radius form; `stats` = clean batch statistics (train) or None."""
    bn_stats = iter(stats or [])
    for m in layers:
        if isinstance(m, Normalize):
            c, r = (c - m.mean) / m.std, r / m.std
        elif isinstance(m, nn.Conv2d):
            c = F.conv2d(c, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            r = F.conv2d(r, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.Linear):
            c, r = F.linear(c, m.weight, m.bias), F.linear(r, m.weight.abs())
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


def margin_lower_bounds(model, c, r, y, stats):
    """lb(z_y − z_j) over each box [c − r, c + r], [N, K] (0 at j = y): last-layer elision."""
    c, r = propagate(list(model)[:-1], c, r, stats)
    last = model[-1]
    w_spec = last.weight[y].unsqueeze(1) - last.weight.unsqueeze(0)        # N×K×H
    b_spec = last.bias[y].unsqueeze(1) - last.bias.unsqueeze(0)            # N×K
    return (torch.einsum("nkh,nh->nk", w_spec, c) + b_spec
            - torch.einsum("nkh,nh->nk", w_spec.abs(), r))


def cert_loss(lb, y):
    return F.cross_entropy(-lb, y)


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

    best_x, fooled = x.clone(), torch.zeros(len(y), dtype=torch.bool)
    logits, best_loss, _ = point(x, False)                # the clean point is a candidate
    fooled |= logits.argmax(1) != y
    u = torch.rand(x.shape, generator=gen)
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
            logits, stats = clean_forward(model, x)
            loss = F.cross_entropy(logits, y)
            if args.method != "std" and w > 0:
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


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["std", "ibp", "sabr"], default="ibp")
    p.add_argument("--dataset", choices=["mnist-mini", "mnist", "fashion-mnist"],
                   default="mnist-mini")
    p.add_argument("--data", default=None, help="directory of IDX files (not for mnist-mini)")
    p.add_argument("--model", choices=["small"], default="small")
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON result file (written atomically)")
    args = p.parse_args()
    if args.eps < 0 or args.epochs < 0 or args.batch_size < 1 or args.threads < 1:
        p.error("--eps and --epochs must be ≥ 0, --batch-size and --threads ≥ 1")

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    x_train, y_train = load_split(args.dataset, args.data, "train")
    x_test, y_test = load_split(args.dataset, args.data, "test")
    if args.limit_train is not None:
        x_train, y_train = x_train[:args.limit_train], y_train[:args.limit_train]
    if args.limit_test is not None:
        x_test, y_test = x_test[:args.limit_test], y_test[:args.limit_test]
    model = small_model(NORMALIZATION[args.dataset], "pytorch" if args.method == "std" else "ibp")
    print(f"pytorch {torch.__version__}, {args.threads} threads: {args.method} on {args.dataset} "
          f"({len(y_train)} train, {len(y_test)} test), eps {args.eps}, seed {args.seed}",
          flush=True)

    epoch_seconds = train(model, x_train, y_train, args)
    start = time.perf_counter()
    clean, pgd_acc, certified = evaluate(model, x_test, y_test, args.eps, args.seed)
    result = {"engine": "pytorch", "method": args.method, "dataset": args.dataset,
              "eps": args.eps, "seed": args.seed, "epochs": args.epochs,
              "limit_train": args.limit_train, "epoch_seconds": epoch_seconds,
              "clean": clean, "pgd": pgd_acc, "certified": certified, "n_test": len(y_test),
              "model": args.model, "threads": args.threads,
              "eval_seconds": time.perf_counter() - start}
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
