#!/usr/bin/env python3
"""PyTorch reference benchmarks for cactus (the PyTorch side of the comparison).

Runs, on the CPU and in float32, the same workloads as the cactus criterion
benches `benches/kernels.rs` (group "kernels") and `benches/steps.rs`
(group "steps"), and writes their median timings as JSON for
`scripts/compare/compare_report.py`. Normally run through `scripts/compare/compare_pytorch.sh`.

Usage:
    .venv-bench/bin/python scripts/compare/bench_torch.py [--threads 2] [--quick]
        [--only matmul_1024,cnn7_mnist_std_b32] [--out target/compare/torch.json]

Workloads (random data, seed 0, NCHW, float32):
  kernels
    matmul_1024           1024x1024 @ 1024x1024                 batch 1 (one matmul = one sample)
    conv_fwd_32x64x28x28  F.conv2d x[32,64,28,28] w[64,64,3,3] + bias, stride 1, pad 1, no_grad
    conv_bwd_32x64x28x28  torch.autograd.grad(out, (x, w), grad_out) of that convolution
    iconv_fwd_32x64x28x28 interval conv forward on the same geometry, no_grad: centre
                          F.conv2d(c, w, b) and radius F.conv2d(r, w.abs()) (|W| taken per rep);
                          c, r: [32,64,28,28]; FLOPs = two convolutions
  steps (one training step: zero_grad, forward, cross-entropy, backward, Adam(lr=1e-3) step)
    small_mnist_std_b32, small_mnist_std_b128     model `small`, input 1x28x28
    cnn7_mnist_std_b32,  cnn7_mnist_std_b128      model `cnn7`,  input 1x28x28
    cnn7_cifar_std_b128                           model `cnn7`,  input 3x32x32
  certified steps (what cactus's trainer does per batch past the ramp; the functions of
  scripts/twin/torch_certified.py, so the same algorithm as its IBP/SABR training): clean pass in
  train mode with BN batch statistics, then IBP over [x-eps, x+eps] n [0,1] (centre/radius,
  last-layer elision) or SABR (8-step sign PGD, BN in eval mode, input gradients only, then
  IBP on the box of radius 0.4*eps around the clamped adversarial point); loss
  0.25*CE + 0.75*CE(-lb, y); backward; clip_grad_norm_(10); Adam(lr=5e-4, weight_decay=1e-5).
  Models: input normalisation layer first, IBP init, full width; inputs uniform in [0, 1];
  eps 0.1 (mnist), 8/255 (cifar).
    small_mnist_ibp_b32,  small_mnist_ibp_b128    model `small`, input 1x28x28
    small_mnist_sabr_b32, small_mnist_sabr_b128   model `small`, input 1x28x28
    cnn7_mnist_ibp_b128,  cnn7_mnist_sabr_b128    model `cnn7`,  input 1x28x28
    cnn7_cifar_ibp_b128,  cnn7_cifar_sabr_b128    model `cnn7`,  input 3x32x32
  CACTUS steps (cactus's `cactus_loss` with its default compression set, past the ramp; the
  member computation of scripts/twin/torch_certified.py's cactus_loss, built from its functions
  forward_with / sabr_box / margin_lower_bounds / cert_loss): the full net f and ONE copy of f
  pruned by GUL1 at a ratio drawn from U(0.25, 0.75) (mask recomputed every step from the
  detached weights, member weights w*mask); each member: 0.25*CE(clean pass, its own train-mode
  batch statistics; only f updates the running ones) + 0.75*SABR loss (its own 8-step PGD on
  its detached weights, BN in eval mode, then IBP on the 0.4*eps box with its clean batch
  statistics); loss = mean of the two; backward; clip 10; Adam(5e-4, weight_decay=1e-5).
  The GUL1 mask uses torch.kthvalue (a selection, as cactus), not torch_certified.prune_masks'
  stable argsort (exact tie order, ~7x slower on 13 M weights), so the comparison times the
  training step rather than a sort. Same models, inputs and eps as the SABR twins.
    small_mnist_cactus_b128                       model `small`, input 1x28x28, eps 0.1
    cnn7_cifar_cactus_b128                        model `cnn7`,  input 3x32x32, eps 8/255
  compression kernels (kernels group; full-width cnn7 for MNIST inputs [1,28,28], 10 classes:
  its 7 conv/linear weight tensors, 13,256,256 weights; "batch" = weights, so samples/s is
  weights/s, as criterion's Throughput::Elements in benches/kernels.rs), no_grad:
    prune_mask_gul1_13M   global unstructured l1 mask at ratio 0.5: k = floor(0.5 n) on the
                          concatenated |w|, threshold = torch.kthvalue(|w|, k), one float mask
                          (|w| > threshold) per tensor (ties at the threshold not resolved)
    fake_quant_int8_13M   per tensor: aminmax, s = (max - min)/255, z = -128 - round(min/s),
                          torch.fake_quantize_per_tensor_affine(w, s, z, -128, 127)
                          (= s*(clamp(round(w/s) + z, -128, 127) - z), float32)

Timing: `warm-up` reps (3, or only 1 if a rep takes more than 1 s), then reps until
at least 5 reps AND at least 1 s of timed work; the median rep is reported
(`--quick`: 1 warm-up rep, at least 3 reps and 0.2 s).

conv_bwd choice: each rep first runs the forward pass with autograd enabled
(untimed), then times ONLY `torch.autograd.grad(out, (x, w), grad_out)`, i.e. the
two backward convolutions (grad w.r.t. input and w.r.t. weight; the bias
gradient is not requested). Its GFLOP/s count is twice the forward's.
"""

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--only", default="", help="comma-separated workload names to run (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer reps (smoke test, noisier)")
    p.add_argument("--out", default="", help="write the JSON results here ('-' = stdout)")
    p.add_argument("--list", action="store_true", help="list workload names and exit")
    return p.parse_args()


ARGS = parse_args()

# Thread settings must be in place before torch initialises its thread pools.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(ARGS.threads)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass  # already set; harmless


# --------------------------------------------------------------------------- models

def cnn7(in_ch, hw, width=1.0):
    layers, c, size = [], in_ch, hw
    for out, s in zip((64, 64, 128, 128, 128), (1, 1, 2, 1, 1)):
        out = int(out * width)  # cactus uses round(); keep widths integral
        layers += [nn.Conv2d(c, out, 3, stride=s, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        c = out
        size = (size + 2 - 3) // s + 1
    fc = int(512 * width)
    layers += [nn.Flatten(), nn.Linear(c * size * size, fc), nn.BatchNorm1d(fc), nn.ReLU(),
               nn.Linear(fc, 10)]
    return nn.Sequential(*layers)


def small(in_ch, hw):
    s1 = (hw + 2 - 4) // 2 + 1
    s2 = (s1 + 2 - 4) // 1 + 1
    return nn.Sequential(nn.Conv2d(in_ch, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=1, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * s2 * s2, 100), nn.ReLU(), nn.Linear(100, 10))


# --------------------------------------------------------------------------- workloads
# Each workload factory returns (batch, flops_or_None, rep) where rep() runs one
# repetition and returns the seconds of timed work in it.

def timed(fn):
    def rep():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return rep


def w_matmul(n=1024):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    return 1, 2.0 * n ** 3, timed(lambda: torch.mm(a, b))


CONV = dict(n=32, ci=64, co=64, h=28, w=28, k=3)


def conv_flops():
    c = CONV
    return 2.0 * c["n"] * c["co"] * c["h"] * c["w"] * c["ci"] * c["k"] * c["k"]


def conv_tensors(requires_grad):
    c = CONV
    g = torch.Generator().manual_seed(0)
    x = torch.randn(c["n"], c["ci"], c["h"], c["w"], generator=g)
    w = torch.randn(c["co"], c["ci"], c["k"], c["k"], generator=g) * 0.05
    b = torch.randn(c["co"], generator=g)
    gy = torch.randn(c["n"], c["co"], c["h"], c["w"], generator=g)
    if requires_grad:
        x.requires_grad_(True)
        w.requires_grad_(True)
    return x, w, b, gy


def w_conv_fwd():
    x, w, b, _ = conv_tensors(False)

    def fwd():
        with torch.no_grad():
            F.conv2d(x, w, b, stride=1, padding=1)
    return CONV["n"], conv_flops(), timed(fwd)


def w_conv_bwd():
    x, w, b, gy = conv_tensors(True)

    def rep():
        out = F.conv2d(x, w, b, stride=1, padding=1)  # untimed forward, builds the graph
        t0 = time.perf_counter()
        torch.autograd.grad(out, (x, w), gy)
        return time.perf_counter() - t0
    return CONV["n"], 2.0 * conv_flops(), rep


def w_iconv_fwd():
    c, w, b, _ = conv_tensors(False)
    g = torch.Generator().manual_seed(1)
    r = torch.rand(c.shape, generator=g)  # radii are non-negative

    def fwd():
        with torch.no_grad():
            F.conv2d(c, w, b, stride=1, padding=1)
            F.conv2d(r, w.abs(), None, stride=1, padding=1)
    return CONV["n"], 2.0 * conv_flops(), timed(fwd)


def w_step(model_fn, in_ch, hw, batch):
    torch.manual_seed(0)
    model = model_fn(in_ch, hw)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_ch, hw, hw, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return batch, None, timed(step)


# Certified steps: the algorithm of scripts/twin/torch_certified.py (imported, not copied).
CERT_DATA = {  # in_ch, side, eps, normalisation (mean, std) as cactus's DatasetKind
    "mnist": (1, 28, 0.1, ((0.1307,), (0.3081,))),
    "cifar": (3, 32, 8 / 255, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
}


def torch_certified():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "twin"))
    import torch_certified as tc  # noqa: E402 (needs numpy; imported only when used)
    return tc


def ibp_init(model):
    """Shi et al. 2021, as torch_certified.small_model: every conv/linear weight but the last
    ~ N(0, (sqrt(2 pi)/fan_in)^2)."""
    affine = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in affine[:-1]:
        nn.init.normal_(m.weight, 0.0, math.sqrt(2 * math.pi) / m.weight[0].numel())
    return model


def w_cert_step(arch, data, method, batch, cert_weight=0.75, sabr_lambda=0.4):
    tc = torch_certified()
    in_ch, hw, eps, (mean, std) = CERT_DATA[data]
    torch.manual_seed(0)
    if arch == "small":
        model = tc.small_model((mean[0], std[0]), "ibp")
    else:
        model = ibp_init(nn.Sequential(tc.Normalize(mean, std), *cnn7(in_ch, hw)))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, in_ch, hw, hw, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    gen = torch.Generator().manual_seed(1)  # attack starts
    w = cert_weight

    def step():  # torch_certified.train's batch body, past the ramp (eps_t = eps, w_t = w)
        logits, stats = tc.clean_forward(model, x)
        loss = F.cross_entropy(logits, y)
        if method == "ibp":
            c, r = tc.input_box(x, eps)
        else:
            x_adv, lo, hi = tc.sabr_centre(model, x, y, eps, gen)
            tau = sabr_lambda * eps
            c, r = tc.input_box(torch.minimum(torch.maximum(x_adv, lo + tau), hi - tau), tau)
        lcert = tc.cert_loss(tc.margin_lower_bounds(model, c, r, y, stats), y)
        loss = (1 - w) * loss + w * lcert
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        loss.item()
    return batch, None, timed(step)


def w_cactus_step(arch, data, batch, cert_weight=0.75, sabr_lambda=0.4):
    """One CACTUS step (default set: f and f pruned by GUL1 at r ~ U(0.25, 0.75)); see the
    module docstring. Mirrors torch_certified.cactus_loss with --compress prune --strategy
    sampling --samples 1 --prune-method gul1, past the ramp (eps_t = eps, w_t = 0.75)."""
    tc = torch_certified()
    in_ch, hw, eps, (mean, std) = CERT_DATA[data]
    torch.manual_seed(0)
    if arch == "small":
        model = tc.small_model((mean[0], std[0]), "ibp")
    else:
        model = ibp_init(nn.Sequential(tc.Normalize(mean, std), *cnn7(in_ch, hw)))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, in_ch, hw, hw, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    gen = torch.Generator().manual_seed(1)  # ratios and attack starts
    w = cert_weight
    idx = tc.affine_indices(model)

    def member(weights, bn):  # (1 - w)*CE(own clean pass) + w*SABR(own attack, own BN stats)
        logits, stats = tc.forward_with(model, weights, x, bn)
        c, r = tc.sabr_box(model, weights, x, y, eps, sabr_lambda, gen)
        lb = tc.margin_lower_bounds(model, c, r, y, stats, weights)
        return (1 - w) * F.cross_entropy(logits, y) + w * tc.cert_loss(lb, y)

    def step():
        full = member({}, "update")  # only f updates the running statistics
        ratio = 0.25 + 0.5 * torch.rand(1, generator=gen).item()
        ws = [model[i].weight.detach() for i in idx]
        masks = gul1_masks(ws, ratio, tc.prune_count(ratio, sum(t.numel() for t in ws)))
        pruned = member({i: model[i].weight * m for i, m in zip(idx, masks)}, "batch")
        loss = (full + pruned) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        loss.item()
    return batch, None, timed(step)


# Compression kernels: the conv/linear weights of full-width cnn7 for MNIST inputs.
CNN7_MNIST_WEIGHTS = 13_256_256


def compression_weights():
    torch.manual_seed(0)
    model = cnn7(1, 28)
    ws = [m.weight.detach() for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    n = sum(t.numel() for t in ws)
    assert n == CNN7_MNIST_WEIGHTS, n
    return ws, n


def gul1_masks(ws, ratio, k=None):
    """Global unstructured l1 masks: the k = floor(ratio*n) smallest |w| of all tensors pruned,
    via the k-th smallest |w| (torch.kthvalue, a selection); weights equal to it are all
    pruned (ties not resolved). Float 0/1 masks, one per tensor."""
    n = sum(t.numel() for t in ws)
    k = math.floor(ratio * n) if k is None else k
    if k <= 0:
        return [torch.ones_like(t) for t in ws]
    with torch.no_grad():
        thr = torch.kthvalue(torch.cat([t.abs().flatten() for t in ws]), k).values
        return [(t.abs() > thr).float() for t in ws]


def w_prune_mask():
    ws, n = compression_weights()
    return n, None, timed(lambda: gul1_masks(ws, 0.5))


def fake_quant_int8(ws):
    """int8 per-tensor asymmetric fake quantization with PyTorch's fused
    torch.fake_quantize_per_tensor_affine (the explicit formula only if z falls outside
    [-128, 127], i.e. a tensor of one sign; not the case here)."""
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


def w_fake_quant():
    ws, n = compression_weights()
    return n, None, timed(lambda: fake_quant_int8(ws))


WORKLOADS = [
    # name, group, factory
    ("matmul_1024", "kernels", w_matmul),
    ("conv_fwd_32x64x28x28", "kernels", w_conv_fwd),
    ("conv_bwd_32x64x28x28", "kernels", w_conv_bwd),
    ("iconv_fwd_32x64x28x28", "kernels", w_iconv_fwd),
    ("prune_mask_gul1_13M", "kernels", w_prune_mask),
    ("fake_quant_int8_13M", "kernels", w_fake_quant),
    ("small_mnist_std_b32", "steps", lambda: w_step(small, 1, 28, 32)),
    ("small_mnist_std_b128", "steps", lambda: w_step(small, 1, 28, 128)),
    ("cnn7_mnist_std_b32", "steps", lambda: w_step(cnn7, 1, 28, 32)),
    ("cnn7_mnist_std_b128", "steps", lambda: w_step(cnn7, 1, 28, 128)),
    ("cnn7_cifar_std_b128", "steps", lambda: w_step(cnn7, 3, 32, 128)),
    ("small_mnist_ibp_b32", "steps", lambda: w_cert_step("small", "mnist", "ibp", 32)),
    ("small_mnist_ibp_b128", "steps", lambda: w_cert_step("small", "mnist", "ibp", 128)),
    ("small_mnist_sabr_b32", "steps", lambda: w_cert_step("small", "mnist", "sabr", 32)),
    ("small_mnist_sabr_b128", "steps", lambda: w_cert_step("small", "mnist", "sabr", 128)),
    ("small_mnist_cactus_b128", "steps", lambda: w_cactus_step("small", "mnist", 128)),
    ("cnn7_mnist_ibp_b128", "steps", lambda: w_cert_step("cnn7", "mnist", "ibp", 128)),
    ("cnn7_mnist_sabr_b128", "steps", lambda: w_cert_step("cnn7", "mnist", "sabr", 128)),
    ("cnn7_cifar_ibp_b128", "steps", lambda: w_cert_step("cnn7", "cifar", "ibp", 128)),
    ("cnn7_cifar_sabr_b128", "steps", lambda: w_cert_step("cnn7", "cifar", "sabr", 128)),
    ("cnn7_cifar_cactus_b128", "steps", lambda: w_cactus_step("cnn7", "cifar", 128)),
]


# --------------------------------------------------------------------------- timing

def measure(rep, quick):
    warmup, min_reps, min_time = (1, 3, 0.2) if quick else (3, 5, 1.0)
    first = rep()
    if first <= 1.0:
        for _ in range(warmup - 1):
            rep()
    times = []
    while len(times) < min_reps or sum(times) < min_time:
        times.append(rep())
    return times


# --------------------------------------------------------------------------- environment

def cpu_info():
    model, flags = "unknown", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "Model name":
                model = val.strip()
            elif key.strip() == "Flags":
                flags = set(val.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        if model == "unknown":
            m = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
            model = m.group(1).strip() if m else model
        if not flags:
            m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
            flags = set(m.group(1).split()) if m else flags
    except OSError:
        pass
    return model, {f: f in flags for f in ("avx2", "fma", "avx512f")}


def environment():
    model, flags = cpu_info()
    cpu_cap = None
    try:
        cpu_cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        pass
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_model": model,
        "cpu_flags": flags,
        "avx2": flags["avx2"],
        "avx512f": flags["avx512f"],
        "torch_cpu_capability": cpu_cap,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "threads": ARGS.threads,
        "torch_num_threads": torch.get_num_threads(),
        "quick": ARGS.quick,
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------- main

def main():
    names = [w[0] for w in WORKLOADS]
    if ARGS.list:
        print("\n".join(names))
        return 0
    only = [s.strip() for s in ARGS.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in names]
    if unknown:
        print(f"bench_torch.py: note: no PyTorch workload named {', '.join(unknown)} "
              f"(known: {', '.join(names)})", file=sys.stderr)
    selected = [w for w in WORKLOADS if not only or w[0] in only]

    env = environment()
    print(f"# PyTorch {env['torch']} | CPU {env['cpu_model']} | threads {env['torch_num_threads']}"
          f" | avx2={env['avx2']} avx512f={env['avx512f']} | capability {env['torch_cpu_capability']}",
          file=sys.stderr)
    print(f"{'workload':<24} {'batch':>5} {'median ms':>11} {'samples/s':>12} {'GFLOP/s':>9} {'reps':>5}",
          file=sys.stderr)

    rows = []
    for name, group, factory in selected:
        batch, flops, rep = factory()
        times = measure(rep, ARGS.quick)
        med = statistics.median(times)
        row = {
            "name": name,
            "group": group,
            "batch": batch,
            "median_ms": med * 1e3,
            "min_ms": min(times) * 1e3,
            "reps": len(times),
            "samples_per_s": batch / med,
        }
        if flops is not None:
            row["flops"] = flops
            row["gflops"] = flops / med / 1e9
        rows.append(row)
        gf = f"{row['gflops']:9.1f}" if "gflops" in row else f"{'-':>9}"
        sps = row["samples_per_s"]
        sps = f"{sps:>12.4g}" if sps >= 1e7 else f"{sps:>12.1f}"  # weights/s of the 13M kernels
        print(f"{name:<24} {batch:>5} {row['median_ms']:>11.3f} {sps} {gf} "
              f"{len(times):>5}", file=sys.stderr, flush=True)

    env["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    if env["loadavg_1m_before"] > 0.5 * (os.cpu_count() or 1):
        print(f"# WARNING: the machine was busy before the run (1-min load average "
              f"{env['loadavg_1m_before']} on {os.cpu_count()} CPUs): timings are unreliable",
              file=sys.stderr)
    result = {"env": env, "rows": rows}
    if ARGS.out == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
    elif ARGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
        with open(ARGS.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"# wrote {ARGS.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
