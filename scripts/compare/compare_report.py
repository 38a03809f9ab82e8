#!/usr/bin/env python3
"""Compare cactus (criterion) and PyTorch benchmark results; standard library only.

Reads
  * cactus:  <criterion-dir>/<group>/<name>/new/estimates.json   (criterion 0.5 layout;
             `median.point_estimate`, nanoseconds per iteration; groups "kernels", "steps")
  * PyTorch: the JSON written by scripts/compare/bench_torch.py (one process, --threads T)
  * PyTorch, optional (--torch-proc-json FILE...): the JSONs of K concurrent 1-thread
             bench_torch.py processes (compare_pytorch.sh's torch_proc_<k>.json), data parallel
             across cores: their samples/s summed are PyTorch's "K×1 thread" throughput
and prints Markdown tables with ms, samples/s (and GFLOP/s for kernels) of both sides and
the ratio cactus/PyTorch of throughputs (> 1: cactus is faster; within +-10 % it is
marked "≈ (noise)"). Missing entries on either side print as "-" with a note.
Writes <out-dir>/compare.json and <out-dir>/compare.md.

The small network (`small_*` steps): the PyTorch figure is PyTorch's best configuration, the
larger samples/s of (a) the T-thread process and (b) the K concurrent 1-thread processes
summed (when given); the steps table then names the winner ("2 threads" or "2×1 thread")
and shows both figures. For (b), "PyTorch ms" is batch ÷ the summed samples/s (the time per
batch at that throughput), not one process's step time. cactus's batch-split steps
(`small_mnist_{std,ibp,sabr}_b{32,128}_split`, `small_mnist_cactus_b128_split`, `cactus train --parallel batch`) have as
PyTorch twin the workload without `_split`; they are listed under their twin (the op-split
row), both against the same PyTorch figure, and get their own geometric mean.

Usage (normally called by scripts/compare/compare_pytorch.sh):
    python3 scripts/compare/compare_report.py [--criterion-dir target/criterion]
        [--torch-json target/compare/torch.json]
        [--torch-proc-json target/compare/torch_proc_1.json target/compare/torch_proc_2.json]
        [--out-dir target/compare] [--threads 2] [--since EPOCH_SECONDS] [--only name1,name2]
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
# cactus's batch split (`--parallel batch`, benches/steps.rs): the same steps as the workload
# without the suffix (its PyTorch twin), one slice of the batch per thread.
SPLIT_SUFFIX = "_split"
for _m in ("std", "ibp", "sabr"):
    for _b in (32, 128):
        WORKLOADS[f"small_mnist_{_m}_b{_b}{SPLIT_SUFFIX}"] = ("steps", _b, None)
WORKLOADS[f"small_mnist_cactus_b128{SPLIT_SUFFIX}"] = ("steps", 128, None)
# Workloads whose PyTorch figure is the best of the T-thread process and the K x 1-thread ones.
PROCS_PREFIX = "small_"
OVERLAP_MIN = 0.9  # concurrent processes overlapping less than this: the sum overstates
# Derived: cost of a CACTUS step relative to the SABR step of the same model/data/batch, per
# engine, from the same run (the budget: at most ~2.1x for a two-network set).
CACTUS_SABR_PAIRS = (("small_mnist_cactus_b128", "small_mnist_sabr_b128"),
                     ("cnn7_cifar_cactus_b128", "cnn7_cifar_sabr_b128"))
CACTUS_SABR_BUDGET = 2.1
GROUPS = ("kernels", "steps")


def twin_of(name):
    """The PyTorch workload timed for cactus workload `name` (itself, less any `_split`)."""
    return name[:-len(SPLIT_SUFFIX)] if name.endswith(SPLIT_SUFFIX) else name


def threads_label(n):
    return f"{n} thread" + ("" if str(n) == "1" else "s")


def parse_args():
    p = argparse.ArgumentParser(description="Compare cactus criterion results with PyTorch results.")
    p.add_argument("--criterion-dir", default="target/criterion",
                   help="criterion output directory (default target/criterion)")
    p.add_argument("--torch-json", default="target/compare/torch.json",
                   help="bench_torch.py output (default target/compare/torch.json)")
    p.add_argument("--torch-proc-json", nargs="+", action="extend", default=[], metavar="FILE",
                   help="outputs of K concurrent `bench_torch.py --threads 1` processes; for "
                        "small_* workloads PyTorch's figure is the best of --torch-json and "
                        "their summed samples/s (default: none)")
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


def load_procs(paths, notes):
    """[(path, env, rows by name)] of the concurrent 1-thread processes' JSONs that load."""
    procs = []
    for path in paths:
        n = len(notes)
        env, rows = load_torch(path, notes)
        if len(notes) > n:
            continue  # missing or unreadable (noted): the sum would be partial
        if str(env.get("threads", 1)) != "1":
            notes.append(f"{path}: PyTorch process ran with {env.get('threads')} threads, "
                         f"not 1 (summed anyway)")
        procs.append((path, env, rows))
    if procs and len(procs) < len(paths):
        notes.append(f"only {len(procs)} of {len(paths)} concurrent PyTorch process results "
                     f"loaded: their sum is not PyTorch's {len(paths)}×1 thread throughput")
    return procs


def procs_rate(procs, twin, notes):
    """Summed samples/s of `twin` over the concurrent processes, per-process median ms, and
    how much their runs overlapped (common time ÷ longest run), or (None, None, None)."""
    rows = [rows.get(twin) for _, _, rows in procs]
    if not procs or all(r is None for r in rows):
        return None, None, None
    if any(r is None or not r.get("median_ms") for r in rows):
        notes.append(f"`{twin}`: missing from some of the {len(procs)} concurrent PyTorch "
                     f"processes' results; their sum is not used")
        return None, None, None
    total = sum(float(r["batch"]) / (float(r["median_ms"]) / 1e3) for r in rows)
    ms = [float(r["median_ms"]) for r in rows]
    overlap = None
    if all(r.get("t_start") is not None and r.get("t_end") is not None for r in rows):
        longest = max(r["t_end"] - r["t_start"] for r in rows)
        common = min(r["t_end"] for r in rows) - max(r["t_start"] for r in rows)
        overlap = max(0.0, common) / longest if longest > 0 else None
        if overlap is not None and overlap < OVERLAP_MIN and len(rows) > 1:
            notes.append(f"`{twin}`: the {len(rows)} concurrent PyTorch processes overlapped "
                         f"only {overlap:.0%} of the time; the summed samples/s overstates "
                         f"their concurrent throughput")
    if any(r.get("synced") is False for r in rows):
        notes.append(f"`{twin}`: a concurrent PyTorch process timed out at the start barrier")
    return total, ms, overlap


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


def table(rows, with_gflops, config_labels=None):
    """config_labels = (T-thread label, K×1-thread label): add the columns naming PyTorch's
    winning configuration and both of its figures."""
    head = ["workload", "batch", "PyTorch ms", "cactus ms", "PyTorch samples/s", "cactus samples/s"]
    if with_gflops:
        head += ["PyTorch GFLOP/s", "cactus GFLOP/s"]
    head += ["ratio cactus/PyTorch"]
    if config_labels:
        head += ["PyTorch config", f"PyTorch {config_labels[0]} samples/s",
                 f"PyTorch {config_labels[1]} samples/s"]
    align = ["---"] + ["---:"] * (len(head) - 1)
    if config_labels:
        align[head.index("PyTorch config")] = "---"
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        cells = [r["name"], str(r["batch"]), fmt(r["torch_ms"]), fmt(r["cactus_ms"]),
                 fmt(r["torch_samples_per_s"], "rate"), fmt(r["cactus_samples_per_s"], "rate")]
        if with_gflops:
            cells += [fmt(r["torch_gflops"], "gf"), fmt(r["cactus_gflops"], "gf")]
        cells.append(fmt_ratio(r["ratio"]))
        if config_labels:
            cells += [r["torch_config"] or "-", fmt(r["torch_threads_samples_per_s"], "rate"),
                      fmt(r["torch_procs_samples_per_s"], "rate")]
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
        for engine in ("cactus", "torch_threads"):
            ms_c, ms_s = a.get(f"{engine}_ms"), b.get(f"{engine}_ms")
            v = ms_c / ms_s if ms_c and ms_s else None
            entry["torch" if engine == "torch_threads" else engine] = v
            label = "PyTorch" if engine == "torch_threads" else "cactus"
            if v is None:
                cells.append(f"{label} -")
            else:
                over = " (over budget)" if v > CACTUS_SABR_BUDGET else ""
                cells.append(f"{label} {v:.2f}x{over}")
        cost.append(entry)
        lines.append(f"- cactus/sabr step cost ratio `{cac}` / `{sabr}`: " + ", ".join(cells))
    if lines:
        lines = ["", f"CACTUS step cost relative to SABR (ms ratio, same engine and run; PyTorch: "
                     f"its one-process run; budget ≤ ~{CACTUS_SABR_BUDGET}x for the full net + "
                     f"one pruned net):",
                 ""] + lines
    return lines


# --------------------------------------------------------------------------- main

def main():
    a = parse_args()
    notes = []
    env, torch_rows = load_torch(a.torch_json, notes)
    procs = load_procs(a.torch_proc_json, notes)
    if not os.path.isdir(a.criterion_dir):
        notes.append(f"no criterion directory {a.criterion_dir} (cactus benches not run?)")
    threads = a.threads or env.get("threads", "?")
    t_label = threads_label(threads)
    p_label = f"{len(procs)}×1 thread" if procs else None

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
    # Each batch-split row right after its twin (the op-split row) when both are listed.
    splits = [n for n in names if n.endswith(SPLIT_SUFFIX) and twin_of(n) in names]
    ordered = []
    for n in names:
        if n in splits:
            continue
        ordered.append(n)
        ordered += [s for s in splits if twin_of(s) == n]
    names = ordered
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    if only:
        names = [n for n in names if n in only]
        for n in only:
            if n not in names:
                notes.append(f"`{n}`: unknown workload (neither side has it)")

    rows = []
    for name in names:
        group, batch, flops = WORKLOADS.get(name) or extra[name]
        twin = twin_of(name)
        t = torch_rows.get(twin)
        if t is None and torch_rows:
            notes.append(f"`{name}`: no PyTorch result in {a.torch_json}"
                         + (f" (for its twin `{twin}`)" if twin != name else ""))
        if batch is None:
            batch = t.get("batch") if t else None
            if batch is None:
                notes.append(f"`{name}`: unknown batch size, samples/s not computed")
        threads_ms = float(t["median_ms"]) if t and t.get("median_ms") is not None else None
        cactus_ms, cpath = load_cactus(a.criterion_dir, name, group, notes, a.since)

        def rate(ms, b=batch):
            return b / (ms / 1e3) if ms and b else None

        def gf(ms):
            return flops / (ms / 1e3) / 1e9 if ms and flops else None

        # PyTorch's figure: the T-thread process, or for the small network the better of it
        # and the concurrent 1-thread processes (samples/s summed).
        threads_rate = rate(threads_ms)
        procs_sps, procs_ms, overlap = (None, None, None)
        if procs and twin.startswith(PROCS_PREFIX) and name == twin:
            procs_sps, procs_ms, overlap = procs_rate(procs, twin, notes)
        elif procs and twin.startswith(PROCS_PREFIX):  # a `_split` row: its twin's figures
            twin_row = next((r for r in rows if r["name"] == twin), None)
            if twin_row is not None:
                procs_sps = twin_row["torch_procs_samples_per_s"]
                procs_ms = twin_row["torch_procs_median_ms"]
                overlap = twin_row["torch_procs_overlap"]
            else:
                procs_sps, procs_ms, overlap = procs_rate(procs, twin, notes)
        torch_ms, config = threads_ms, (t_label if threads_ms else None)
        if procs_sps and batch and (threads_rate is None or procs_sps > threads_rate):
            torch_ms, config = batch / procs_sps * 1e3, p_label
        torch_rate = rate(torch_ms)
        cactus_rate = rate(cactus_ms)
        ratio = torch_ms / cactus_ms if torch_ms and cactus_ms else None  # = samples/s ratio
        rows.append({
            "name": name, "group": group, "batch": batch if batch is not None else "?",
            "twin": twin,
            "torch_ms": torch_ms, "cactus_ms": cactus_ms,
            "torch_samples_per_s": torch_rate, "cactus_samples_per_s": cactus_rate,
            "torch_gflops": gf(torch_ms), "cactus_gflops": gf(cactus_ms),
            "ratio": ratio,
            "verdict": None if ratio is None else ("noise" if abs(ratio - 1) <= NOISE
                                                   else "cactus faster" if ratio > 1
                                                   else "PyTorch faster"),
            "cactus_source": cpath,
            "torch_config": config,
            "torch_threads_ms": threads_ms,
            "torch_threads_samples_per_s": threads_rate,
            "torch_procs": len(procs) if procs_sps else None,
            "torch_procs_samples_per_s": procs_sps,
            "torch_procs_median_ms": procs_ms,
            "torch_procs_overlap": overlap,
        })

    # ---- Markdown
    md = ["# cactus vs PyTorch (CPU, float32)", ""]
    cpu = env.get("cpu_model") or (procs[0][1].get("cpu_model") if procs else None) or "?"
    flags = env.get("cpu_flags") or (procs[0][1].get("cpu_flags") if procs else None) or {}
    flag_s = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items()) or "?"
    md.append(f"- CPU: {cpu} ({flag_s})")
    md.append(f"- threads: {threads} "
              f"(PyTorch `set_num_threads`, cactus `RAYON_NUM_THREADS`)")
    md.append(f"- PyTorch: {env.get('torch', '?')} (cpu capability {env.get('torch_cpu_capability', '?')})"
              + (" — quick mode, noisy" if env.get("quick") else ""))
    if env.get("loadavg_1m_before") is not None:
        md.append(f"- load average (1 min) around the PyTorch run: {env.get('loadavg_1m_before')} before, "
                  f"{env.get('loadavg_1m_after', '?')} after")
    if procs:
        loads = [(e.get("loadavg_1m_before"), e.get("loadavg_1m_after")) for _, e, _ in procs]
        md.append(f"- PyTorch on the small network (`{PROCS_PREFIX}*` steps): the better of "
                  f"{t_label} (one process) and {p_label} ({len(procs)} concurrent 1-thread "
                  f"processes, data parallel, samples/s summed; its \"PyTorch ms\" = batch ÷ "
                  f"that sum); load average around them: "
                  + ", ".join(f"{b}→{e}" for b, e in loads)
                  + (" — quick mode, noisy" if any(e.get("quick") for _, e, _ in procs) else ""))
    md.append(f"- ratio = cactus samples/s ÷ PyTorch samples/s (> 1: cactus faster; "
              f"within ±{NOISE:.0%} marked ≈ (noise))")
    if any(r["name"] != r["twin"] for r in rows):
        md.append(f"- `*{SPLIT_SUFFIX}`: cactus with the batch split across the threads "
                  f"(`--parallel batch`), against the same PyTorch figure as the row without "
                  f"`{SPLIT_SUFFIX}` (the operations split across the threads)")
    md.append(f"- generated {time.strftime('%Y-%m-%d %H:%M:%S')}")
    summary = {}
    summary_split = {}
    cost = []
    for group in GROUPS + tuple(sorted({r["group"] for r in rows} - set(GROUPS))):
        g_rows = [r for r in rows if r["group"] == group]
        if not g_rows:
            continue
        with_config = bool(procs) and any(r["twin"].startswith(PROCS_PREFIX) for r in g_rows)
        md += ["", f"## {group}", "", table(g_rows, with_gflops=(group == "kernels"),
                                            config_labels=(t_label, p_label) if with_config
                                            else None)]
        if any(r["name"] in COMPRESSION_KERNELS for r in g_rows):
            md += ["", "(prune_mask_gul1_13M, fake_quant_int8_13M: samples = weights, "
                       f"{CNN7_MNIST_WEIGHTS:,} per iteration; samples/s = weights/s)"]
        main_rows = [r for r in g_rows if r["name"] == r["twin"]]
        split_rows = [r for r in g_rows if r["name"] != r["twin"]]
        ratios = [r["ratio"] for r in main_rows if r["ratio"] is not None]
        gm = geomean(ratios)
        summary[group] = gm
        if gm is not None:
            md.append("")
            md.append(f"Geometric mean ratio ({group}, {len(ratios)} of {len(main_rows)} workloads "
                      f"with both sides" + (f"; `*{SPLIT_SUFFIX}` rows apart" if split_rows else "")
                      + f"): {gm:.2f}")
        if split_rows:
            s_ratios = [r["ratio"] for r in split_rows if r["ratio"] is not None]
            s_gm = geomean(s_ratios)
            summary_split[group] = s_gm
            if s_gm is not None:
                md.append("")
                md.append(f"Geometric mean ratio ({group}, batch split `*{SPLIT_SUFFIX}`, "
                          f"{len(s_ratios)} of {len(split_rows)} workloads with both sides): "
                          f"{s_gm:.2f}")
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
                   "torch_procs": [{"path": p, "env": e} for p, e, _ in procs],
                   "geomean_ratio": summary, "geomean_ratio_split": summary_split,
                   "cactus_sabr_cost": cost, "notes": notes}, f, indent=2)
        f.write("\n")
    print(f"(wrote {os.path.join(a.out_dir, 'compare.md')} and compare.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
