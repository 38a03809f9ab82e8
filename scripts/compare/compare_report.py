#!/usr/bin/env python3
"""Compare cactus (criterion) and PyTorch benchmark results; standard library only.

Reads
  * cactus:  <criterion-dir>/<group>/<name>/new/estimates.json   (criterion 0.5 layout;
             `median.point_estimate`, nanoseconds per iteration; groups "kernels", "steps")
  * PyTorch: the JSON written by scripts/compare/bench_torch.py
and prints Markdown tables with ms, samples/s (and GFLOP/s for kernels) of both sides and
the ratio cactus/PyTorch of throughputs (> 1: cactus is faster; within +-10 % it is
marked "≈ (noise)"). Missing entries on either side print as "-" with a note.
Writes <out-dir>/compare.json and <out-dir>/compare.md.

Usage (normally called by scripts/compare/compare_pytorch.sh):
    python3 scripts/compare/compare_report.py [--criterion-dir target/criterion]
        [--torch-json target/compare/torch.json] [--out-dir target/compare]
        [--threads 2] [--since EPOCH_SECONDS] [--only name1,name2]
"""

import argparse
import glob
import json
import math
import os
import sys
import time

NOISE = 0.10  # |ratio - 1| <= NOISE is reported as noise

# Known workloads: name -> (group, batch = samples per iteration, FLOPs per iteration or None).
# Must match scripts/compare/bench_torch.py and benches/{kernels,steps}.rs.
_CONV_FLOPS = 2.0 * 32 * 64 * 28 * 28 * 64 * 9
# cnn7 (1x28x28 input, 10 classes): conv 1->64, 64->64, 64->128 (s2), 128->128 x2 (k3), then
# linear 128*14*14 -> 512 and 512 -> 10.
CNN7_MNIST_WEIGHTS = (9 * (1 * 64 + 64 * 64 + 64 * 128 + 2 * 128 * 128)
                       + 128 * 14 * 14 * 512 + 512 * 10)  # 13,256,256
WORKLOADS = {
    "matmul_1024": ("kernels", 1, 2.0 * 1024 ** 3),
    "conv_fwd_32x64x28x28": ("kernels", 32, _CONV_FLOPS),
    "conv_bwd_32x64x28x28": ("kernels", 32, 2.0 * _CONV_FLOPS),
    # Interval conv forward: centre (W, bias) and radius (|W|), two convolutions.
    "iconv_fwd_32x64x28x28": ("kernels", 32, 2.0 * _CONV_FLOPS),
    # Compression kernels on full-width cnn7's conv/linear weights for MNIST inputs: the "batch"
    # is the number of weights (criterion's Throughput::Elements), so samples/s = weights/s.
    "prune_mask_gul1_13M": ("kernels", CNN7_MNIST_WEIGHTS, None),
    "fake_quant_int8_13M": ("kernels", CNN7_MNIST_WEIGHTS, None),
    "small_mnist_std_b32": ("steps", 32, None),
    "small_mnist_std_b128": ("steps", 128, None),
    "cnn7_mnist_std_b32": ("steps", 32, None),
    "cnn7_mnist_std_b128": ("steps", 128, None),
    "cnn7_cifar_std_b128": ("steps", 128, None),
    # Certified steps (IBP, SABR) as cactus's trainer takes them past the ramp.
    "small_mnist_ibp_b32": ("steps", 32, None),
    "small_mnist_ibp_b128": ("steps", 128, None),
    "small_mnist_sabr_b32": ("steps", 32, None),
    "small_mnist_sabr_b128": ("steps", 128, None),
    "small_mnist_cactus_b128": ("steps", 128, None),
    "cnn7_mnist_ibp_b128": ("steps", 128, None),
    "cnn7_mnist_sabr_b128": ("steps", 128, None),
    "cnn7_cifar_ibp_b128": ("steps", 128, None),
    "cnn7_cifar_sabr_b128": ("steps", 128, None),
    # CACTUS steps (default set: the full net + one GUL1-pruned copy, each with its own SABR).
    "cnn7_cifar_cactus_b128": ("steps", 128, None),
}
# Derived: cost of a CACTUS step relative to the SABR step of the same model/data/batch, per
# engine, from the same run (the budget: at most ~2.1x for a two-network set).
CACTUS_SABR_PAIRS = (("small_mnist_cactus_b128", "small_mnist_sabr_b128"),
                     ("cnn7_cifar_cactus_b128", "cnn7_cifar_sabr_b128"))
CACTUS_SABR_BUDGET = 2.1
GROUPS = ("kernels", "steps")


def parse_args():
    p = argparse.ArgumentParser(description="Compare cactus criterion results with PyTorch results.")
    p.add_argument("--criterion-dir", default="target/criterion",
                   help="criterion output directory (default target/criterion)")
    p.add_argument("--torch-json", default="target/compare/torch.json",
                   help="bench_torch.py output (default target/compare/torch.json)")
    p.add_argument("--out-dir", default="target/compare", help="where compare.{json,md} go")
    p.add_argument("--threads", default="", help="thread count used (for the header only)")
    p.add_argument("--since", type=float, default=None,
                   help="epoch seconds; cactus results older than this are flagged as stale")
    p.add_argument("--only", default="", help="comma-separated workload names to report")
    return p.parse_args()


# --------------------------------------------------------------------------- loading

def load_cactus(crit_dir, name, group, notes, since):
    """Median ns/iter of one criterion benchmark, or None (with a note)."""
    path = os.path.join(crit_dir, group, name, "new", "estimates.json")
    if not os.path.isfile(path):
        # Tolerate a different group name: look for the benchmark under any group.
        hits = sorted(glob.glob(os.path.join(glob.escape(crit_dir), "*", glob.escape(name),
                                             "new", "estimates.json")))
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


def criterion_names(crit_dir):
    """(group, name) of every criterion result present under the known groups."""
    found = []
    for group in GROUPS:
        for p in sorted(glob.glob(os.path.join(glob.escape(crit_dir), group, "*", "new",
                                               "estimates.json"))):
            found.append((group, os.path.basename(os.path.dirname(os.path.dirname(p)))))
    return found


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


# --------------------------------------------------------------------------- formatting

def fmt(v, kind="ms"):
    if v is None:
        return "-"
    if kind == "ms":
        for lim, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f")):
            if abs(v) >= lim:
                return format(v, spec)
        return format(v, ".3f")
    if kind == "rate":
        if abs(v) >= 1e7:  # the compression kernels: weights/s
            return f"{v / 1e6:.0f} M"
        return format(v, ".0f") if abs(v) >= 100 else format(v, ".1f")
    return format(v, ".1f")  # gflops


def fmt_ratio(r):
    if r is None:
        return "-"
    if abs(r - 1.0) <= NOISE:
        return f"{r:.2f} ≈ (noise)"
    return f"**{r:.2f}**" if r > 1 else f"{r:.2f}"


def table(rows, with_gflops):
    head = ["workload", "batch", "PyTorch ms", "cactus ms", "PyTorch samples/s", "cactus samples/s"]
    if with_gflops:
        head += ["PyTorch GFLOP/s", "cactus GFLOP/s"]
    head += ["ratio cactus/PyTorch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r["name"], str(r["batch"]), fmt(r["torch_ms"]), fmt(r["cactus_ms"]),
                 fmt(r["torch_samples_per_s"], "rate"), fmt(r["cactus_samples_per_s"], "rate")]
        if with_gflops:
            cells += [fmt(r["torch_gflops"], "gf"), fmt(r["cactus_gflops"], "gf")]
        cells.append(fmt_ratio(r["ratio"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


COMPRESSION_KERNELS = ("prune_mask_gul1_13M", "fake_quant_int8_13M")


def cactus_sabr_lines(rows, cost):
    """Markdown lines "cactus/sabr step cost ratio" (ms of the CACTUS step / ms of the SABR step,
    per engine, same run) for each pair present; appends the values to `cost` for the JSON."""
    by_name = {r["name"]: r for r in rows}
    lines = []
    for cac, sabr in CACTUS_SABR_PAIRS:
        if cac not in by_name and sabr not in by_name:
            continue
        a, b = by_name.get(cac, {}), by_name.get(sabr, {})
        entry = {"cactus_step": cac, "sabr_step": sabr}
        cells = []
        for engine in ("cactus", "torch"):
            ms_c, ms_s = a.get(f"{engine}_ms"), b.get(f"{engine}_ms")
            v = ms_c / ms_s if ms_c and ms_s else None
            entry[engine] = v
            label = "PyTorch" if engine == "torch" else "cactus"
            if v is None:
                cells.append(f"{label} -")
            else:
                over = " (over budget)" if v > CACTUS_SABR_BUDGET else ""
                cells.append(f"{label} {v:.2f}x{over}")
        cost.append(entry)
        lines.append(f"- cactus/sabr step cost ratio `{cac}` / `{sabr}`: " + ", ".join(cells))
    if lines:
        lines = ["", f"CACTUS step cost relative to SABR (ms ratio, same engine and run; "
                     f"budget ≤ ~{CACTUS_SABR_BUDGET}x for the full net + one pruned net):",
                 ""] + lines
    return lines


# --------------------------------------------------------------------------- main

def main():
    a = parse_args()
    notes = []
    env, torch_rows = load_torch(a.torch_json, notes)
    if not os.path.isdir(a.criterion_dir):
        notes.append(f"no criterion directory {a.criterion_dir} (cactus benches not run?)")

    # Workload list: the known table, then anything extra either side produced.
    names = list(WORKLOADS)
    extra = {}
    for n, r in torch_rows.items():
        if n not in WORKLOADS:
            names.append(n)
            extra[n] = (r.get("group", "?"), r.get("batch", 1), r.get("flops"))
    for g, n in criterion_names(a.criterion_dir):
        if n not in WORKLOADS and n not in extra:
            names.append(n)
            extra[n] = (g, None, None)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    if only:
        names = [n for n in names if n in only]
        for n in only:
            if n not in names:
                notes.append(f"`{n}`: unknown workload (neither side has it)")

    rows = []
    for name in names:
        group, batch, flops = WORKLOADS.get(name) or extra[name]
        t = torch_rows.get(name)
        if t is None and torch_rows:
            notes.append(f"`{name}`: no PyTorch result in {a.torch_json}")
        if batch is None:
            batch = t.get("batch") if t else None
            if batch is None:
                notes.append(f"`{name}`: unknown batch size, samples/s not computed")
        torch_ms = float(t["median_ms"]) if t and t.get("median_ms") is not None else None
        cactus_ms, cpath = load_cactus(a.criterion_dir, name, group, notes, a.since)

        def rate(ms, b=batch):
            return b / (ms / 1e3) if ms and b else None

        def gf(ms):
            return flops / (ms / 1e3) / 1e9 if ms and flops else None

        ratio = torch_ms / cactus_ms if torch_ms and cactus_ms else None
        rows.append({
            "name": name, "group": group, "batch": batch if batch is not None else "?",
            "torch_ms": torch_ms, "cactus_ms": cactus_ms,
            "torch_samples_per_s": rate(torch_ms), "cactus_samples_per_s": rate(cactus_ms),
            "torch_gflops": gf(torch_ms), "cactus_gflops": gf(cactus_ms),
            "ratio": ratio,
            "verdict": None if ratio is None else ("noise" if abs(ratio - 1) <= NOISE
                                                   else "cactus faster" if ratio > 1
                                                   else "PyTorch faster"),
            "cactus_source": cpath,
        })

    # ---- Markdown
    md = ["# cactus vs PyTorch (CPU, float32)", ""]
    cpu = env.get("cpu_model") or "?"
    flags = env.get("cpu_flags") or {}
    flag_s = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items()) or "?"
    md.append(f"- CPU: {cpu} ({flag_s})")
    md.append(f"- threads: {a.threads or env.get('threads', '?')} "
              f"(PyTorch `set_num_threads`, cactus `RAYON_NUM_THREADS`)")
    md.append(f"- PyTorch: {env.get('torch', '?')} (cpu capability {env.get('torch_cpu_capability', '?')})"
              + (" — quick mode, noisy" if env.get("quick") else ""))
    if env.get("loadavg_1m_before") is not None:
        md.append(f"- load average (1 min) around the PyTorch run: {env.get('loadavg_1m_before')} before, "
                  f"{env.get('loadavg_1m_after', '?')} after")
    md.append(f"- ratio = cactus samples/s ÷ PyTorch samples/s (> 1: cactus faster; "
              f"within ±{NOISE:.0%} marked ≈ (noise))")
    md.append(f"- generated {time.strftime('%Y-%m-%d %H:%M:%S')}")
    summary = {}
    cost = []
    for group in GROUPS + tuple(sorted({r["group"] for r in rows} - set(GROUPS))):
        g_rows = [r for r in rows if r["group"] == group]
        if not g_rows:
            continue
        md += ["", f"## {group}", "", table(g_rows, with_gflops=(group == "kernels"))]
        if any(r["name"] in COMPRESSION_KERNELS for r in g_rows):
            md += ["", "(prune_mask_gul1_13M, fake_quant_int8_13M: samples = weights, "
                       f"{CNN7_MNIST_WEIGHTS:,} per iteration; samples/s = weights/s)"]
        ratios = [r["ratio"] for r in g_rows if r["ratio"] is not None]
        gm = geomean(ratios)
        summary[group] = gm
        if gm is not None:
            md.append("")
            md.append(f"Geometric mean ratio ({group}, {len(ratios)} of {len(g_rows)} workloads "
                      f"with both sides): {gm:.2f}")
        if group == "steps":
            md += cactus_sabr_lines(g_rows, cost)
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    text = "\n".join(md) + "\n"
    print(text)

    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "compare.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out_dir, "compare.json"), "w") as f:
        json.dump({"env": env, "threads": a.threads or env.get("threads"), "rows": rows,
                   "geomean_ratio": summary, "cactus_sabr_cost": cost, "notes": notes}, f,
                  indent=2)
        f.write("\n")
    print(f"(wrote {os.path.join(a.out_dir, 'compare.md')} and compare.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
