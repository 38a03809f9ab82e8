#!/usr/bin/env python3
"""PyTorch reference benchmarks for cactus (the PyTorch side of the comparison).

Runs, on the CPU and in float32, the same workloads as the cactus criterion
benches `benches/kernels.rs` (group "kernels") and `benches/steps.rs`
(group "steps"), and writes their median timings as JSON for
`scripts/compare/compare_report.py`. Normally run through `scripts/compare/compare_pytorch.sh`.

Usage:
    .venv-bench/bin/python scripts/compare/bench_torch.py [--threads 2] [--quick]
        [--only matmul_1024,cnn7_mnist_std_b32] [--out target/compare/torch.json]
        [--sync-dir DIR --sync-procs N]

Concurrent processes (data parallel across cores, compare_pytorch.sh's PyTorch "N x 1 thread"
configuration for the small network): N copies started together with `--threads 1`, the
same `--only` and the same `--sync-dir DIR --sync-procs N` wait for one another before each
workload's warm-up (a barrier of files in DIR, after the model and batch are built), so that
they time the same workload at the same time; their samples/s are then summed by
compare_report.py. Each row records `t_start`/`t_end` (epoch seconds around its warm-up
and reps) so that the report can check how much the processes overlapped.

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
  certified steps (what cactus's trainer does per batch past the ramp; scripts/twin/
  bench_steps.py on the losses of scripts/twin/torch_certified.py's IBP/SABR training, so the
  same algorithm): clean pass in train mode with BN batch statistics, then IBP over
  [x-eps, x+eps] n [0,1] (centre/radius, last-layer elision) or SABR (8-step sign PGD, BN in
  eval mode, input gradients only, then IBP on the box of radius 0.4*eps around the clamped
  adversarial point); loss 0.25*CE + 0.75*CE(-lb, y); backward; clip_grad_norm_(10);
  Adam(lr=5e-4, weight_decay=1e-5). Models: input normalisation layer first, IBP init, full
  width; inputs uniform in [0, 1]; eps 0.1 (mnist), 8/255 (cifar).
    small_mnist_ibp_b32,  small_mnist_ibp_b128    model `small`, input 1x28x28
    small_mnist_sabr_b32, small_mnist_sabr_b128   model `small`, input 1x28x28
    cnn7_mnist_ibp_b128,  cnn7_mnist_sabr_b128    model `cnn7`,  input 1x28x28
    cnn7_cifar_ibp_b128,  cnn7_cifar_sabr_b128    model `cnn7`,  input 3x32x32
  CACTUS steps (cactus's `cactus_loss` with its default compression set, past the ramp; each
  member's loss is the one of scripts/twin/torch_certified.py's cactus_loss,
  losses.member_loss): the full net f and ONE copy of f pruned by GUL1 at a ratio drawn from
  U(0.25, 0.75) (mask recomputed every step from the detached weights, member weights w*mask);
  each member: 0.25*CE(clean pass, its own train-mode batch statistics; only f updates the
  running ones) + 0.75*SABR loss (its own 8-step PGD on its detached weights, BN in eval mode,
  then IBP on the 0.4*eps box with its clean batch statistics); loss = mean of the two;
  backward; clip 10; Adam(5e-4, weight_decay=1e-5). The GUL1 mask uses torch.kthvalue (a
  selection, as cactus; compress.gul1_masks), not compress.prune_masks' stable argsort (exact
  tie order, ~7x slower on 13 M weights), so the comparison times the training step rather
  than a sort. Same models, inputs and eps as the SABR twins.
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
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--only", default="", help="comma-separated workload names to run (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer reps (smoke test, noisier)")
    p.add_argument("--out", default="", help="write the JSON results here ('-' = stdout)")
    p.add_argument("--list", action="store_true", help="list workload names and exit")
    p.add_argument("--sync-dir", default="",
                   help="barrier directory shared by --sync-procs concurrent processes: each "
                        "waits for all of them before every workload (default: no barrier)")
    p.add_argument("--sync-procs", type=int, default=1,
                   help="number of concurrent processes meeting at --sync-dir (default 1)")
    p.add_argument("--sync-timeout", type=float, default=600.0,
                   help="seconds to wait at the barrier before going on alone (default 600)")
    return p.parse_args()


ARGS = parse_args()

# Thread settings must be in place before torch initialises its thread pools.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(ARGS.threads)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass  # already set; harmless

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "twin"), str(HERE)]  # the shared modules
import bench_steps  # noqa: E402 (the training steps, shared with bench_torch_cuda.py)
from compare_report import CNN7_MNIST_WEIGHTS  # noqa: E402
from compress import fake_quant_int8, gul1_masks  # noqa: E402


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


def w_step(arch, data, batch):
    step, _ = bench_steps.std_step(arch, data, batch)
    return batch, None, timed(step)


def w_cert_step(arch, data, method, batch):
    gen = torch.Generator().manual_seed(1)  # attack starts
    step, _ = bench_steps.cert_step(arch, data, method, batch, gen)
    return batch, None, timed(step)


def w_cactus_step(arch, data, batch):
    gen = torch.Generator().manual_seed(1)  # ratios and attack starts
    step, _ = bench_steps.cactus_step(arch, data, batch, gen, gen)
    return batch, None, timed(step)


# Compression kernels: the conv/linear weights of full-width cnn7 for MNIST inputs.
def compression_weights():
    ws = bench_steps.compression_weights()
    n = sum(t.numel() for t in ws)
    assert n == CNN7_MNIST_WEIGHTS, n
    return ws, n


def w_prune_mask():
    ws, n = compression_weights()
    return n, None, timed(lambda: gul1_masks(ws, 0.5))


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
    ("small_mnist_std_b32", "steps", lambda: w_step("small", "mnist", 32)),
    ("small_mnist_std_b128", "steps", lambda: w_step("small", "mnist", 128)),
    ("cnn7_mnist_std_b32", "steps", lambda: w_step("cnn7", "mnist", 32)),
    ("cnn7_mnist_std_b128", "steps", lambda: w_step("cnn7", "mnist", 128)),
    ("cnn7_cifar_std_b128", "steps", lambda: w_step("cnn7", "cifar", 128)),
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


# --------------------------------------------------------------------------- barrier

def barrier(tag):
    """Wait until --sync-procs processes have reached the barrier `tag` in --sync-dir (each
    creates the file <tag>.<pid> there); True if all arrived, False on a timeout."""
    if not ARGS.sync_dir or ARGS.sync_procs <= 1:
        return True
    os.makedirs(ARGS.sync_dir, exist_ok=True)
    Path(ARGS.sync_dir, f"{tag}.{os.getpid()}").touch()
    deadline = time.monotonic() + ARGS.sync_timeout
    while True:
        n = sum(1 for f in os.listdir(ARGS.sync_dir) if f.startswith(tag + "."))
        if n >= ARGS.sync_procs:
            return True
        if time.monotonic() > deadline:
            print(f"# WARNING: barrier {tag}: {n} of {ARGS.sync_procs} processes after "
                  f"{ARGS.sync_timeout:.0f} s; going on alone", file=sys.stderr)
            return False
        time.sleep(0.002)


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
        "sync_procs": ARGS.sync_procs if ARGS.sync_dir else 1,
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
    for i, (name, group, factory) in enumerate(selected):
        batch, flops, rep = factory()
        synced = barrier(f"{i:02d}_{name}")
        t_start = time.time()
        times = measure(rep, ARGS.quick)
        t_end = time.time()
        med = statistics.median(times)
        row = {
            "name": name,
            "group": group,
            "batch": batch,
            "median_ms": med * 1e3,
            "min_ms": min(times) * 1e3,
            "reps": len(times),
            "samples_per_s": batch / med,
            "t_start": round(t_start, 3),
            "t_end": round(t_end, 3),
        }
        if ARGS.sync_dir and ARGS.sync_procs > 1:
            row["synced"] = synced
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
