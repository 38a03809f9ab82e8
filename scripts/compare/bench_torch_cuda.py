#!/usr/bin/env python3
"""PyTorch eager twins of cactus's GPU kernel benches, and the cactus-vs-PyTorch GPU report.

What: the same five workloads as the criterion bench `benches/kernels_cuda.rs` (group
"kernels_cuda") and the same four training steps as `benches/steps_cuda.rs` (group
"steps_cuda"), run in PyTorch eager mode on one GPU in float32, timed as criterion times
cactus (every rep waits for the GPU), written as JSON; and a `report` mode (standard library
only) that reads that JSON plus criterion's results and writes a Markdown/JSON comparison.
Normally run through `scripts/compare/compare_cuda.sh`, on a machine with an NVIDIA GPU (H100/H200)
and a CUDA build of PyTorch; no Rust toolchain is needed there.

Usage:
    python3 scripts/compare/bench_torch_cuda.py [--device cuda] [--tf32] [--quick] [--only NAMES]
        [--group kernels_cuda|steps_cuda|all] [--warmup N] [--reps N] [--min-time S]
        [--host-qparams] [--peak-tflops T] [--out target/compare-cuda/torch.json]
    python3 scripts/compare/bench_torch_cuda.py report [--criterion-dir target/criterion]
        [--torch-json target/compare-cuda/torch.json] [--out-dir target/compare-cuda]
        [--since EPOCH] [--bench-bin PATH] [--steps-bin PATH] [--steps] [--peak-tflops T]
  (`--device cpu` exists only for smoke tests where there is no GPU: slow, and no % of peak.
  A cnn7 CIFAR step on 2 CPU cores takes ~1 s (std) to ~12 s (CACTUS): there, give e.g.
  `--group steps_cuda --warmup 1 --reps 2 --min-time 0` (about a minute for all four).)
  `--group` (default all) picks the workloads; `--only` picks among those.

Workloads (random data, seed 0, NCHW, float32, under torch.no_grad):
  matmul_4096              torch.mm of two 4096x4096 matrices; 2*4096^3 flops
  conv_fwd_128x128x16x16   F.conv2d(x[128,128,16,16], w[128,128,3,3], b[128], stride 1, pad 1)
                           (cuDNN, torch.backends.cudnn.benchmark = True; the warm-up reps
                           absorb its autotuning); 2*128*128*16*16*128*9 flops
  iconv_fwd_128x128x16x16  the interval convolution: centre F.conv2d(x, w, b) and radius
                           F.conv2d(r, w.abs()) (|w| taken every rep; cactus does both in one
                           kernel); two convolutions' flops
  prune_mask_gul1_13M      global unstructured l1 mask at ratio 0.5 over full-width cnn7's
                           conv+linear weights for [1,28,28] inputs (13,256,256 weights; same
                           model and seed as scripts/compare/bench_torch.py): k = floor(0.5 n),
                           threshold = torch.kthvalue(cat |w|, k), one float mask (|w| > thr)
                           per tensor; throughput in weights/s
  fake_quant_int8_13M      per-tensor asymmetric int8 fake quantization of those weights:
                           aminmax, s = (max-min)/255, z = -128 - round(min/s),
                           torch.fake_quantize_per_tensor_affine(w, s, z, -128, 127).
                           By default s and z stay on the device (the tensor-qparams overload,
                           z clamped to [-128, 127]), as cactus's quant_params keeps them there;
                           --host-qparams reads them back per tensor with .item() exactly as
                           scripts/compare/bench_torch.py does (7 host round trips per rep).

Training steps (group steps_cuda; grad enabled; one step of the CPU twins of
scripts/compare/bench_torch.py, the same code, scripts/twin/bench_steps.py, with the model, the
batch, the optimiser state and every tensor of the step on --device; the certified losses are
scripts/twin/torch_certified.py's): full-width cnn7 for CIFAR-shaped inputs [128,3,32,32], 10
classes; throughput in samples/s (batch 128 per step).
  cnn7_cifar_std_b128      bench_torch.py's w_step: inputs N(0,1), PyTorch's default init, no
                           input normalisation; zero_grad, cross-entropy, backward,
                           Adam(lr=1e-3) step
  cnn7_cifar_ibp_b128      bench_torch.py's w_cert_step ibp / sabr: Normalize(CIFAR mean, std)
  cnn7_cifar_sabr_b128     first, IBP init, inputs U(0,1), eps 8/255; clean pass (train-mode
                           BN), IBP over [x-eps, x+eps] n [0,1] or SABR (8-step sign PGD with
                           BN in eval mode, then IBP on the 0.4*eps box); loss 0.25*CE +
                           0.75*CE(-lb, y); backward; clip_grad_norm_(10); Adam(lr=5e-4,
                           weight_decay=1e-5); loss.item() (as the trainer logs it)
  cnn7_cifar_cactus_b128   bench_torch.py's w_cactus_step: f and one copy of f pruned by GUL1
                           at r ~ U(0.25, 0.75) (torch.kthvalue mask from the detached
                           weights), each member 0.25*CE + 0.75*SABR loss with its own attack
                           and BN statistics; loss = their mean; clip 10; Adam as above.
  Random streams: batch and model drawn on the CPU with bench_torch.py's seeds, then moved;
  attack starts from a generator on the device (seed 1); CACTUS's ratio from a CPU generator
  (seed 2; a host scalar, as cactus draws it, so no extra device round trip). Adam is
  torch.optim.Adam's default implementation for the device (foreach on CUDA). The step's
  inherent host syncs stay as in the twins (PGD's boolean-mask updates, loss.item()).

Precision: TF32 is OFF by default (torch.backends.cuda.matmul.allow_tf32 = False,
torch.backends.cudnn.allow_tf32 = False, float32 matmul precision "highest"), so both sides
compute in full fp32; --tf32 allows TensorFloat-32 (tensor cores: % of the FP32 non-tensor
peak can then pass 100).

Timing: `--warmup` reps (default 10), then reps until at least `--reps` (default 50) and at
least `--min-time` s (default 1.0) of timed work; per rep the wall time from a
torch.cuda.synchronize() before to one after (criterion's cactus iterations also end in a
stream synchronize, so both include launch overhead); CUDA-event time of the same reps is
recorded as `gpu_median_ms`. The median rep is reported. `--quick`: 2 warm-up reps, at least
10 reps and 0.2 s. A training step's rep is one whole step (forward, backward, optimiser).

% of peak: GFLOP/s / the GPU's peak FP32 non-tensor-core rate, looked up by
torch.cuda.get_device_name() (H100 SXM 67, H100 PCIe 51, H100 NVL 60, H200 67, H200 NVL 60,
A100 19.5 TFLOP/s; unknown GPUs: omitted unless --peak-tflops is given).
"""

import argparse
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TWIN = os.path.join(os.path.dirname(HERE), "twin")  # the shared modules (torch; bench mode only)
sys.path.insert(0, HERE)
# compare_report.py's workload size and number formats, so both reports read alike (standard
# library only, as this module's report mode)
from compare_report import CNN7_MNIST_WEIGHTS, NOISE, fmt, fmt_ratio  # noqa: E402

GROUP = "kernels_cuda"
N_MATMUL = 4096
CONV = dict(n=128, ci=128, co=128, h=16, w=16, k=3)
CONV_FLOPS = 2.0 * CONV["n"] * CONV["co"] * CONV["h"] * CONV["w"] * CONV["ci"] * CONV["k"] ** 2

STEPS_GROUP = "steps_cuda"
STEP_BATCH = 128
# steps_cuda workload -> training method (benches/steps_cuda.rs's names)
STEP_METHODS = {
    "cnn7_cifar_std_b128": "std",
    "cnn7_cifar_ibp_b128": "ibp",
    "cnn7_cifar_sabr_b128": "sabr",
    "cnn7_cifar_cactus_b128": "cactus",
}

# name -> (elements per iteration as criterion's Throughput counts them, flops or None); the
# group is GROUP, or STEPS_GROUP for the names in STEP_METHODS (elements = samples per step)
WORKLOADS = {
    "matmul_4096": (2 * N_MATMUL ** 3, 2.0 * N_MATMUL ** 3),
    "conv_fwd_128x128x16x16": (int(CONV_FLOPS), CONV_FLOPS),
    "iconv_fwd_128x128x16x16": (int(2 * CONV_FLOPS), 2.0 * CONV_FLOPS),
    "prune_mask_gul1_13M": (CNN7_MNIST_WEIGHTS, None),
    "fake_quant_int8_13M": (CNN7_MNIST_WEIGHTS, None),
    **{name: (STEP_BATCH, None) for name in STEP_METHODS},
}


def group_of(name):
    return STEPS_GROUP if name in STEP_METHODS else GROUP


# Peak FP32 rate without tensor cores, TFLOP/s (NVIDIA data sheets, boost clock). First match
# wins: every substring of the key must occur in the upper-cased device name.
PEAK_FP32_TFLOPS = [
    (("H100", "PCIE"), 51.0, "H100 PCIe"),
    (("H100", "NVL"), 60.0, "H100 NVL"),
    (("H100",), 67.0, "H100 SXM"),
    (("H200", "NVL"), 60.0, "H200 NVL"),
    (("H200",), 67.0, "H200"),
    (("A100",), 19.5, "A100"),
]


def peak_fp32(gpu_name, override=None):
    """(TFLOP/s, label) of the FP32 non-tensor peak of `gpu_name`, or (None, None)."""
    if override:
        return float(override), "given (--peak-tflops)"
    name = (gpu_name or "").upper()
    for keys, tflops, label in PEAK_FP32_TFLOPS:
        if all(k in name for k in keys):
            return tflops, label
    return None, None


def pct_of_peak(gflops, peak_tflops):
    if gflops is None or not peak_tflops:
        return None
    return 100.0 * gflops / (peak_tflops * 1e3)


# =========================================================================== bench mode

def bench_args(argv):
    p = argparse.ArgumentParser(
        prog="bench_torch_cuda.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (default); cpu only for smoke tests without a GPU")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in matmul and cuDNN")
    p.add_argument("--quick", action="store_true", help="fewer reps (smoke test, noisier)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up reps (default 10; quick 2)")
    p.add_argument("--reps", type=int, default=None, help="minimum timed reps (default 50; quick 10)")
    p.add_argument("--min-time", type=float, default=None,
                   help="minimum seconds of timed work (default 1.0; quick 0.2)")
    p.add_argument("--only", default="",
                   help="comma-separated workload names (default: all of --group)")
    p.add_argument("--group", default="all", choices=(GROUP, STEPS_GROUP, "all"),
                   help=f"workload group (default all: {GROUP} and {STEPS_GROUP})")
    p.add_argument("--host-qparams", action="store_true",
                   help="fake quant: read s, z back per tensor (.item()) as bench_torch.py does")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="FP32 non-tensor peak in TFLOP/s (default: looked up by GPU name)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (--device cpu only)")
    p.add_argument("--out", default="", help="write the JSON here ('-' = stdout)")
    p.add_argument("--list", action="store_true", help="list workload names and exit")
    return p.parse_args(argv)


class Bench:
    def __init__(self, a):
        import torch
        import torch.nn.functional as F
        sys.path.insert(0, TWIN)
        import bench_steps  # noqa: E402 (the training steps, shared with bench_torch.py)
        import compress  # noqa: E402 (gul1_masks, fake_quant_int8[_device])
        self.torch, self.F, self.a = torch, F, a
        self.steps, self.compress = bench_steps, compress
        self.dev = torch.device(a.device)
        self.cuda = a.device == "cuda"

    # ----------------------------------------------------------------- data
    def randn(self, *shape, seed, scale=0.5):
        g = self.torch.Generator().manual_seed(seed)
        return (self.torch.randn(*shape, generator=g) * scale).to(self.dev)

    def compression_weights(self):
        ws = self.steps.compression_weights(self.dev)
        n = sum(t.numel() for t in ws)
        assert n == CNN7_MNIST_WEIGHTS, n
        return ws

    # ----------------------------------------------------------------- workloads
    # Each returns (fn, check) where fn() runs one rep and check() (untimed, optional) returns a
    # dict of sanity values for the JSON.
    def matmul_4096(self):
        a = self.randn(N_MATMUL, N_MATMUL, seed=0)
        b = self.randn(N_MATMUL, N_MATMUL, seed=1)
        return (lambda: self.torch.mm(a, b)), None

    def _conv_data(self):
        c = CONV
        x = self.randn(c["n"], c["ci"], c["h"], c["w"], seed=2)
        r = self.randn(c["n"], c["ci"], c["h"], c["w"], seed=3).abs()  # radii >= 0
        w = self.randn(c["co"], c["ci"], c["k"], c["k"], seed=4)
        b = self.randn(c["co"], seed=5)
        return x, r, w, b

    def conv_fwd_128x128x16x16(self):
        x, _, w, b = self._conv_data()
        return (lambda: self.F.conv2d(x, w, b, stride=1, padding=1)), None

    def iconv_fwd_128x128x16x16(self):
        x, r, w, b = self._conv_data()
        F = self.F

        def fwd():
            return (F.conv2d(x, w, b, stride=1, padding=1),
                    F.conv2d(r, w.abs(), None, stride=1, padding=1))
        return fwd, None

    def prune_mask_gul1_13M(self):
        ws = self.compression_weights()

        def check():
            masks = self.compress.gul1_masks(ws, 0.5)
            kept = sum(float(m.sum().item()) for m in masks)
            return {"kept_fraction": kept / CNN7_MNIST_WEIGHTS}
        return (lambda: self.compress.gul1_masks(ws, 0.5)), check

    def fake_quant_int8_13M(self):
        ws = self.compression_weights()
        host, device = self.compress.fake_quant_int8, self.compress.fake_quant_int8_device
        fq = host if self.a.host_qparams else device

        def check():
            a, b = device(ws), host(ws)
            diff = max(float((x - y).abs().max().item()) for x, y in zip(a, b))
            return {"qparams": "host" if self.a.host_qparams else "device",
                    "max_abs_diff_device_vs_host_qparams": diff}
        return (lambda: fq(ws)), check

    # ----------------------------------------------------------------- training steps
    # scripts/compare/bench_torch.py's steps (scripts/twin/bench_steps.py) on self.dev, with
    # the model, the batch, the optimiser state and every tensor of the step there; the attack
    # starts from a generator on the device (seed 1), CACTUS's ratio from a CPU generator
    # (seed 2). Run with grad enabled. Each returns (fn, check): fn() = one whole step;
    # check() = the last step's loss.
    @staticmethod
    def _last_loss(last):
        def check():
            return {"last_loss": float(last[0].item()) if last else None}
        return check

    def _attack_gen(self):
        return self.torch.Generator(device=self.dev).manual_seed(1)

    def cnn7_cifar_std_b128(self):
        step, last = self.steps.std_step("cnn7", "cifar", STEP_BATCH, self.dev)
        return step, self._last_loss(last)

    def cnn7_cifar_ibp_b128(self):
        step, last = self.steps.cert_step("cnn7", "cifar", "ibp", STEP_BATCH, self._attack_gen(),
                                          self.dev)
        return step, self._last_loss(last)

    def cnn7_cifar_sabr_b128(self):
        step, last = self.steps.cert_step("cnn7", "cifar", "sabr", STEP_BATCH,
                                          self._attack_gen(), self.dev)
        return step, self._last_loss(last)

    def cnn7_cifar_cactus_b128(self):
        ratio_gen = self.torch.Generator().manual_seed(2)   # the ratio: a host scalar
        step, last = self.steps.cactus_step("cnn7", "cifar", STEP_BATCH, self._attack_gen(),
                                            ratio_gen, self.dev)
        return step, self._last_loss(last)

    # ----------------------------------------------------------------- timing
    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def measure(self, fn, warmup, reps, min_time):
        torch = self.torch
        for _ in range(warmup):
            fn()
        self.sync()
        wall, gpu = [], []
        ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) \
            if self.cuda else None
        while len(wall) < reps or sum(wall) < min_time:
            t0 = time.perf_counter()
            if ev:
                ev[0].record()
            fn()
            if ev:
                ev[1].record()
            self.sync()
            wall.append(time.perf_counter() - t0)
            if ev:
                gpu.append(ev[0].elapsed_time(ev[1]) / 1e3)
        return wall, gpu


def environment(torch, a):
    env = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": a.device,
        "tf32": bool(a.tf32),
        "quick": bool(a.quick),
        "host_qparams": bool(a.host_qparams),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if a.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update({
            "gpu_name": torch.cuda.get_device_name(0),
            "gpu_capability": "%d.%d" % torch.cuda.get_device_capability(0),
            "gpu_sms": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
            "cudnn": torch.backends.cudnn.version(),
        })
    else:
        env["gpu_name"] = None
        env["torch_num_threads"] = torch.get_num_threads()
    peak, label = peak_fp32(env["gpu_name"], a.peak_tflops) if a.device == "cuda" \
        else (a.peak_tflops, "given (--peak-tflops)" if a.peak_tflops else None)
    env["peak_fp32_tflops"] = peak
    env["peak_fp32_source"] = label
    return env


def bench_main(argv):
    a = bench_args(argv)
    if a.list:
        print("\n".join(WORKLOADS))
        return 0
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in WORKLOADS]
    if unknown:
        print(f"bench_torch_cuda.py: error: unknown workload(s) {', '.join(unknown)} "
              f"(known: {', '.join(WORKLOADS)})", file=sys.stderr)
        return 2
    names = [n for n in WORKLOADS if (a.group == "all" or group_of(n) == a.group)
             and (not only or n in only)]
    if not names:
        print(f"bench_torch_cuda.py: error: no workload of group {a.group} among --only "
              f"{a.only}", file=sys.stderr)
        return 2
    warmup = a.warmup if a.warmup is not None else (2 if a.quick else 10)
    reps = a.reps if a.reps is not None else (10 if a.quick else 50)
    min_time = a.min_time if a.min_time is not None else (0.2 if a.quick else 1.0)
    reps = max(reps, 1)

    import torch
    if a.device == "cuda":
        if not torch.cuda.is_available():
            print(f"bench_torch_cuda.py: error: no CUDA GPU visible to PyTorch "
                  f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
                  f"torch.cuda.is_available() is False). Run on a machine with an NVIDIA GPU "
                  f"and a CUDA build of PyTorch, or use --device cpu for a smoke test.",
                  file=sys.stderr)
            return 3
        warmup = max(warmup, 1)  # cuDNN benchmark mode autotunes on the first call
    elif a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = bool(a.tf32)
    torch.backends.cudnn.allow_tf32 = bool(a.tf32)
    torch.set_float32_matmul_precision("high" if a.tf32 else "highest")
    torch.backends.cudnn.benchmark = True

    env = environment(torch, a)
    env.update({"warmup": warmup, "min_reps": reps, "min_time_s": min_time})
    peak = env["peak_fp32_tflops"]
    where = env["gpu_name"] or f"CPU ({env.get('torch_num_threads')} threads; smoke test only)"
    peak_s = f"{peak:g} TFLOP/s ({env['peak_fp32_source']})" if peak else "unknown"
    print(f"# PyTorch {env['torch']} (CUDA {env['torch_cuda']}) on {where} | TF32 "
          f"{'on' if a.tf32 else 'off'} | peak FP32 {peak_s}", file=sys.stderr)
    b = Bench(a)
    rows = []
    header = None
    for name in names:
        group = group_of(name)
        if group != header:
            header = group
            if group == GROUP:
                print(f"{'workload':<24} {'median ms':>10} {'gpu ms':>9} {'GFLOP/s':>9} "
                      f"{'% peak':>7} {'elements/s':>11} {'reps':>5}", file=sys.stderr)
            else:
                print(f"{'training step':<24} {'batch':>5} {'step ms':>10} {'gpu ms':>9} "
                      f"{'samples/s':>10} {'reps':>5}", file=sys.stderr)
        if group == STEPS_GROUP:
            with torch.enable_grad():
                fn, check = getattr(b, name)()
                wall, gpu = b.measure(fn, warmup, reps, min_time)
            med = statistics.median(wall)
            row = {"name": name, "group": group, "elements": STEP_BATCH, "batch": STEP_BATCH,
                   "median_ms": med * 1e3, "min_ms": min(wall) * 1e3, "reps": len(wall),
                   "elements_per_s": STEP_BATCH / med, "samples_per_s": STEP_BATCH / med}
            if gpu:
                row["gpu_median_ms"] = statistics.median(gpu) * 1e3
            row["check"] = check()
            rows.append(row)
            gms = f"{row['gpu_median_ms']:9.3f}" if "gpu_median_ms" in row else f"{'-':>9}"
            print(f"{name:<24} {STEP_BATCH:>5} {row['median_ms']:>10.3f} {gms} "
                  f"{row['samples_per_s']:>10.1f} {len(wall):>5}", file=sys.stderr, flush=True)
            del fn, check
            if b.cuda:
                torch.cuda.empty_cache()
            continue
        with torch.no_grad():
            elements, flops = WORKLOADS[name]
            fn, check = getattr(b, name)()
            wall, gpu = b.measure(fn, warmup, reps, min_time)
            med = statistics.median(wall)
            row = {"name": name, "group": GROUP, "elements": elements,
                   "median_ms": med * 1e3, "min_ms": min(wall) * 1e3, "reps": len(wall),
                   "elements_per_s": elements / med}
            if gpu:
                row["gpu_median_ms"] = statistics.median(gpu) * 1e3
            if flops is not None:
                row["flops"] = flops
                row["gflops"] = flops / med / 1e9
                row["pct_peak_fp32"] = pct_of_peak(row["gflops"], peak)
            if check is not None:
                row["check"] = check()
            rows.append(row)
            gms = f"{row['gpu_median_ms']:9.3f}" if "gpu_median_ms" in row else f"{'-':>9}"
            gf = f"{row['gflops']:9.1f}" if "gflops" in row else f"{'-':>9}"
            pk = row.get("pct_peak_fp32")
            pk = f"{pk:6.1f}%" if pk is not None else f"{'-':>7}"
            print(f"{name:<24} {row['median_ms']:>10.3f} {gms} {gf} {pk} "
                  f"{row['elements_per_s']:>11.4g} {len(wall):>5}", file=sys.stderr, flush=True)
            del fn
            if b.cuda:
                torch.cuda.empty_cache()

    result = {"env": env, "rows": rows}
    if a.out == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
    elif a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"# wrote {a.out}", file=sys.stderr)
    return 0


# =========================================================================== report mode

def report_args(argv):
    p = argparse.ArgumentParser(
        prog="bench_torch_cuda.py report",
        description="Compare cactus's criterion results of group kernels_cuda (and, when "
                    "the PyTorch JSON has training steps or --steps is given, steps_cuda) with "
                    "the PyTorch twins' JSON; writes OUT/compare.md and OUT/compare.json.")
    p.add_argument("--criterion-dir", default="target/criterion")
    p.add_argument("--torch-json", default="target/compare-cuda/torch.json")
    p.add_argument("--out-dir", default="target/compare-cuda")
    p.add_argument("--since", type=float, default=None,
                   help="epoch seconds; cactus results older than this are flagged stale")
    p.add_argument("--bench-bin", default="", help="the cactus bench binary (header only)")
    p.add_argument("--steps-bin", default="",
                   help="the cactus steps_cuda bench binary (header only; implies --steps)")
    p.add_argument("--steps", action="store_true",
                   help="add the steps_cuda table even if the PyTorch JSON has no step rows")
    p.add_argument("--nvrtc-dir", default="", help="NVRTC folder used (header only)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="FP32 non-tensor peak in TFLOP/s (default: by GPU name)")
    return p.parse_args(argv)


def nvidia_smi():
    """(name, driver, CUDA version the driver supports) from nvidia-smi, or Nones."""
    name = driver = cuda = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            first = out.stdout.strip().splitlines()[0]
            name, _, driver = (s.strip() for s in first.rpartition(","))
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        for tok in out.stdout.split("CUDA Version:")[1:2]:
            cuda = tok.split()[0].strip("|")
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    return name, driver, cuda


def load_cactus(crit_dir, name, notes, since, group=GROUP, fallback=True):
    """cactus's criterion median (ms) of group/name and its path, or (None, None). With
    `fallback`, a result under another group of the same name is taken (with a note); not for
    steps_cuda, whose names are also those of the CPU group `steps` (benches/steps.rs)."""
    path = os.path.join(crit_dir, group, name, "new", "estimates.json")
    if not os.path.isfile(path):
        hits = sorted(glob.glob(os.path.join(glob.escape(crit_dir), "*", glob.escape(name),
                                             "new", "estimates.json"))) if fallback else []
        if not hits:
            notes.append(f"`{name}`: no cactus result ({path} not found)")
            return None, None
        path = hits[0]
        notes.append(f"`{name}`: cactus result found under another group: {path}")
    try:
        with open(path) as f:
            ns = float(json.load(f)["median"]["point_estimate"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        notes.append(f"`{name}`: unreadable cactus result {path} ({type(e).__name__}: {e})")
        return None, None
    if since is not None and os.path.getmtime(path) < since:
        notes.append(f"`{name}`: cactus result is stale (from an earlier run, "
                     f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(path)))})")
    return ns / 1e6, path


def load_torch(path, notes):
    if not os.path.isfile(path):
        notes.append(f"no PyTorch results ({path} not found)")
        return {}, {}
    try:
        with open(path) as f:
            data = json.load(f)
        return data.get("env", {}), {r["name"]: r for r in data.get("rows", []) if "name" in r}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        notes.append(f"unreadable PyTorch results {path} ({type(e).__name__}: {e})")
        return {}, {}


def fmt_throughput(flops, elements, ms, fmt):
    if not ms:
        return "-"
    if flops:
        return f"{fmt(flops / (ms / 1e3) / 1e9, 'gf')} GFLOP/s"
    return f"{elements / (ms / 1e3) / 1e9:.2f} G weights/s"


def report_main(argv):
    a = report_args(argv)
    notes = []
    env, trows = load_torch(a.torch_json, notes)
    if not os.path.isdir(a.criterion_dir):
        notes.append(f"no criterion directory {a.criterion_dir} (cactus bench not run?)")
    smi_name, driver, smi_cuda = nvidia_smi()
    gpu = env.get("gpu_name") or smi_name
    if env and env.get("device") not in (None, "cuda"):
        notes.append(f"the PyTorch side ran on `{env.get('device')}`, not the GPU: "
                     "not a GPU comparison (smoke test)")
    peak, peak_src = peak_fp32(gpu, a.peak_tflops)
    tf32 = bool(env.get("tf32"))

    rows = []
    for name, (elements, flops) in WORKLOADS.items():
        if group_of(name) != GROUP:
            continue
        t = trows.get(name)
        if t is None and trows:
            notes.append(f"`{name}`: no PyTorch result in {a.torch_json}")
        torch_ms = float(t["median_ms"]) if t and t.get("median_ms") is not None else None
        cactus_ms, cpath = load_cactus(a.criterion_dir, name, notes, a.since)

        def gf(ms):
            return flops / (ms / 1e3) / 1e9 if ms and flops else None

        ratio = torch_ms / cactus_ms if torch_ms and cactus_ms else None
        rows.append({
            "name": name, "elements": elements, "flops": flops,
            "torch_ms": torch_ms, "cactus_ms": cactus_ms,
            "torch_gpu_ms": t.get("gpu_median_ms") if t else None,
            "torch_elements_per_s": elements / (torch_ms / 1e3) if torch_ms else None,
            "cactus_elements_per_s": elements / (cactus_ms / 1e3) if cactus_ms else None,
            "torch_gflops": gf(torch_ms), "cactus_gflops": gf(cactus_ms),
            "torch_pct_peak_fp32": pct_of_peak(gf(torch_ms), peak),
            "cactus_pct_peak_fp32": pct_of_peak(gf(cactus_ms), peak),
            "ratio": ratio,
            "verdict": None if ratio is None else ("noise" if abs(ratio - 1) <= NOISE
                                                   else "cactus faster" if ratio > 1
                                                   else "PyTorch faster"),
            "cactus_source": cpath,
            "torch_check": t.get("check") if t else None,
        })

    def pct(v):
        return "-" if v is None else f"{v:.1f} %"

    head = ["workload", "PyTorch ms", "cactus ms", "PyTorch throughput", "cactus throughput",
            "PyTorch % peak", "cactus % peak", "ratio cactus/PyTorch"]
    table = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        table.append("| " + " | ".join([
            r["name"], fmt(r["torch_ms"]), fmt(r["cactus_ms"]),
            fmt_throughput(r["flops"], r["elements"], r["torch_ms"], fmt),
            fmt_throughput(r["flops"], r["elements"], r["cactus_ms"], fmt),
            pct(r["torch_pct_peak_fp32"]), pct(r["cactus_pct_peak_fp32"]),
            fmt_ratio(r["ratio"])]) + " |")

    ratios = [r["ratio"] for r in rows if r["ratio"]]
    gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None

    # Training steps (group steps_cuda): only when asked for or the PyTorch side has them, so
    # a kernels-only comparison reads as before.
    with_steps = bool(a.steps or a.steps_bin
                      or any(group_of(n) == STEPS_GROUP for n in trows))
    step_rows, step_table, step_gm = [], [], None
    if with_steps:
        for name in STEP_METHODS:
            t = trows.get(name)
            if t is None and trows:
                notes.append(f"`{name}`: no PyTorch result in {a.torch_json}")
            torch_ms = float(t["median_ms"]) if t and t.get("median_ms") is not None else None
            cactus_ms, cpath = load_cactus(a.criterion_dir, name, notes, a.since,
                                           group=STEPS_GROUP, fallback=False)
            ratio = torch_ms / cactus_ms if torch_ms and cactus_ms else None
            step_rows.append({
                "name": name, "group": STEPS_GROUP, "batch": STEP_BATCH,
                "torch_ms": torch_ms, "cactus_ms": cactus_ms,
                "torch_gpu_ms": t.get("gpu_median_ms") if t else None,
                "torch_samples_per_s": STEP_BATCH / (torch_ms / 1e3) if torch_ms else None,
                "cactus_samples_per_s": STEP_BATCH / (cactus_ms / 1e3) if cactus_ms else None,
                "ratio": ratio,
                "verdict": None if ratio is None else ("noise" if abs(ratio - 1) <= NOISE
                                                       else "cactus faster" if ratio > 1
                                                       else "PyTorch faster"),
                "cactus_source": cpath,
                "torch_check": t.get("check") if t else None,
            })
        shead = ["training step", "batch", "PyTorch ms", "cactus ms", "PyTorch samples/s",
                 "cactus samples/s", "ratio cactus/PyTorch"]
        step_table = ["| " + " | ".join(shead) + " |", "|---|" + "---:|" * (len(shead) - 1)]
        for r in step_rows:
            step_table.append("| " + " | ".join([
                r["name"], str(r["batch"]), fmt(r["torch_ms"]), fmt(r["cactus_ms"]),
                fmt(r["torch_samples_per_s"], "rate"), fmt(r["cactus_samples_per_s"], "rate"),
                fmt_ratio(r["ratio"])]) + " |")
        sratios = [r["ratio"] for r in step_rows if r["ratio"]]
        step_gm = math.exp(sum(math.log(x) for x in sratios) / len(sratios)) if sratios \
            else None

    md = ["# cactus vs PyTorch on the GPU (float32, "
          + ("groups kernels_cuda and steps_cuda)" if with_steps else "group kernels_cuda)"), ""]
    md.append(f"- GPU: {gpu or '?'}" + (f" (driver {driver}, CUDA {smi_cuda or '?'})"
                                       if driver else " (driver: nvidia-smi not available)"))
    md.append(f"- PyTorch: {env.get('torch', '?')} (CUDA {env.get('torch_cuda', '?')}, cuDNN "
              f"{env.get('cudnn', '?')}, eager, cudnn.benchmark on, TF32 "
              f"{'ON: % of the FP32 non-tensor peak can pass 100' if tf32 else 'off'})"
              + (" — quick mode, noisy" if env.get("quick") else ""))
    if env.get("host_qparams"):
        md.append("- PyTorch fake quant with host qparams (.item() per tensor, as bench_torch.py)")
    md.append(f"- cactus: criterion medians from `{a.criterion_dir}` (every iteration "
              "synchronizes)" + (f", binary `{a.bench_bin}`" if a.bench_bin else "")
              + (f", steps binary `{a.steps_bin}`" if a.steps_bin else "")
              + (f", NVRTC from `{a.nvrtc_dir}`" if a.nvrtc_dir else ""))
    md.append("- peak FP32 (non-tensor-core): "
              + (f"{peak:g} TFLOP/s ({peak_src})" if peak else "unknown for this GPU: % omitted"))
    md.append(f"- ratio = PyTorch ms ÷ cactus ms = cactus throughput ÷ PyTorch throughput "
              f"(> 1: cactus faster; within ±{NOISE:.0%} marked ≈ (noise))")
    md.append(f"- generated {time.strftime('%Y-%m-%d %H:%M:%S')}")
    md += ["", *table, "",
           f"(prune_mask_gul1_13M, fake_quant_int8_13M: {CNN7_MNIST_WEIGHTS:,} cnn7 weights "
           "per iteration; throughput in weights/s)"]
    if gm is not None:
        md += ["", f"Geometric mean ratio ({len(ratios)} of {len(rows)} workloads with both "
                   f"sides): {gm:.2f}"]
    if with_steps:
        md += ["", "## Training steps (group steps_cuda)", "",
               f"One whole step per iteration (forward, backward, optimiser; cnn7 on "
               f"CIFAR-shaped [{STEP_BATCH},3,32,32] inputs), every iteration synchronized on "
               f"both sides; throughput in samples/s ({STEP_BATCH} per step); ratio = PyTorch ms "
               f"÷ cactus ms. PyTorch: scripts/compare/bench_torch.py's twins on the device.",
               "", *step_table]
        if step_gm is not None:
            n_both = sum(1 for r in step_rows if r["ratio"])
            md += ["", f"Geometric mean ratio ({n_both} of {len(step_rows)} training steps "
                       f"with both sides): {step_gm:.2f}"]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    text = "\n".join(md) + "\n"
    print(text)
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "compare.md"), "w") as f:
        f.write(text)
    result = {"gpu": gpu, "driver": driver, "driver_cuda": smi_cuda,
              "peak_fp32_tflops": peak, "peak_fp32_source": peak_src,
              "bench_bin": a.bench_bin or None, "nvrtc_dir": a.nvrtc_dir or None,
              "torch_env": env, "rows": rows, "geomean_ratio": gm, "notes": notes}
    if with_steps:
        result.update({"steps_bin": a.steps_bin or None, "step_rows": step_rows,
                       "steps_geomean_ratio": step_gm})
    with open(os.path.join(a.out_dir, "compare.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"(wrote {os.path.join(a.out_dir, 'compare.md')} and compare.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        sys.exit(report_main(sys.argv[2:]))
    sys.exit(bench_main(sys.argv[1:]))
