#!/usr/bin/env python3
"""compress_table.py OUT_DIR — the Markdown tables of scripts/quality/compress_quality.sh.

Reads the runs in OUT_DIR: cactus run directories (report.json, history.json) and torch JSON
files (scripts/twin/torch_certified.py), named ENGINE-DATASET-eEPS[-MODEL]-VARIANT-sSEED (MODEL
small, mlp or cnn7w<WIDTH>; small when absent). For each (dataset, ε, model) it prints two
tables, certified accuracy then clean accuracy, in % as mean ± sample std over the seeds (the
mean alone for one seed): one row per compression setting (none, LUL1 and GUL1 at 0.5, 0.7,
0.9, 0.95, 0.99, GSL2 at 0.5 and 0.7, fp16, int8, int4; rows no run has are left out), one
column per variant × engine found; then a line with the seconds per epoch of each column.
A run without its report (cactus) or an unreadable file is skipped (with a note on stderr).
"""
import json, re, statistics, sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^(?P<engine>cactus|torch)-(?P<dataset>.+?)-e(?P<eps>[0-9.]+(?:e-?[0-9]+)?)-"
                  r"(?:(?P<model>small|mlp|cnn7(?:w[0-9.]+)?)-)?(?P<variant>.+)-s(?P<seed>[0-9]+)$")
VARIANTS = ["sabr", "cactus-prune", "cactus-quant", "cactus-both"]
ENGINES = ["cactus", "torch"]
RATIOS = [0.5, 0.7, 0.9, 0.95, 0.99]
# (label, compression, ratio, format)
SETTINGS = ([("none", "none", 0.0, "fp32")]
            + [(f"LUL1 {r}", "lul1", r, "fp32") for r in RATIOS]
            + [(f"GUL1 {r}", "gul1", r, "fp32") for r in RATIOS]
            + [(f"GSL2 {r}", "gsl2", r, "fp32") for r in (0.5, 0.7)]
            + [(f, "none", 0.0, f) for f in ("fp16", "int8", "int4")])


def setting_key(compression, ratio, fmt):
    return (compression.lower(), round(float(ratio), 9), fmt.lower())


def load_run(path, engine):
    """(rows, seconds per epoch) of one run, or None if it has no results yet."""
    if engine == "cactus":
        if not path.is_dir() or not (path / "report.json").is_file():
            return None
        rows = json.loads((path / "report.json").read_text())["rows"]
        hist_file = path / "history.json"
        hist = json.loads(hist_file.read_text()) if hist_file.is_file() else []
        secs = statistics.mean(h["seconds"] for h in hist) if hist else None
    else:
        if path.suffix != ".json" or not path.is_file():
            return None
        r = json.loads(path.read_text())
        rows = r.get("rows") or [{"compression": "none", "ratio": 0.0, "format": "fp32",
                                  "clean": r["clean"], "certified": r["certified"]}]
        secs = statistics.mean(r["epoch_seconds"]) if r.get("epoch_seconds") else None
    return rows, secs


def fmt(values, scale=100.0, digits=1):
    if not values:
        return "–"
    m = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/compress")
    if not out.is_dir():
        sys.exit(f"error: {out}: no such directory")
    # (dataset, eps, model) -> (variant, engine) -> {"acc": {key: {"clean": [], "certified": []}},
    #                                                "secs": [], "seeds": set()}
    groups = defaultdict(lambda: defaultdict(lambda: {
        "acc": defaultdict(lambda: {"clean": [], "certified": []}), "secs": [], "seeds": set()}))
    for path in sorted(out.iterdir()):
        if path.name.startswith("."):
            continue
        stem = path.name[:-5] if path.name.endswith(".json") else path.name
        m = NAME.match(stem)
        if not m or (m["engine"] == "torch") != path.name.endswith(".json"):
            continue
        try:
            run = load_run(path, m["engine"])
        except (OSError, ValueError, KeyError, TypeError, statistics.StatisticsError) as e:
            print(f"note: skipping {path}: {e}", file=sys.stderr)
            continue
        if run is None:
            continue
        rows, secs = run
        col = groups[(m["dataset"], m["eps"], m["model"] or "small")][(m["variant"], m["engine"])]
        col["seeds"].add(int(m["seed"]))
        if secs is not None:
            col["secs"].append(secs)
        for row in rows:
            acc = col["acc"][setting_key(row["compression"], row["ratio"], row["format"])]
            acc["clean"].append(row["clean"])
            acc["certified"].append(row["certified"])

    if not groups:
        print(f"no finished runs in {out}")
        return

    def col_order(c):
        variant, engine = c
        return (VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS), variant,
                ENGINES.index(engine) if engine in ENGINES else len(ENGINES), engine)

    for (dataset, eps, model), cols in sorted(groups.items()):
        names = sorted(cols, key=col_order)
        header = [f"{v} ({e})" for v, e in names]
        settings = [s for s in SETTINGS
                    if any(setting_key(*s[1:]) in cols[c]["acc"] for c in names)]
        for metric, title in (("certified", "IBP-certified accuracy"), ("clean", "clean accuracy")):
            print(f"### {dataset}, ε = {eps}, {model}: {title} (%)\n")
            print("| setting | " + " | ".join(header) + " |")
            print("|---|" + "---:|" * len(names))
            for label, *key in settings:
                k = setting_key(*key)
                cells = [fmt(cols[c]["acc"][k][metric]) if k in cols[c]["acc"] else "–"
                         for c in names]
                print(f"| {label} | " + " | ".join(cells) + " |")
            print()
        parts = []
        for h, c in zip(header, names):
            n = len(cols[c]["seeds"])
            parts.append(f"{h} {fmt(cols[c]['secs'], 1.0)} ({n} seed{'' if n == 1 else 's'})")
        print("seconds/epoch: " + "; ".join(parts) + "\n")


if __name__ == "__main__":
    main()
