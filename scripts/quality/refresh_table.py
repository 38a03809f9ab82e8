#!/usr/bin/env python3
"""refresh_table.py OUT_DIR — the Markdown table of scripts/quality/refresh_study.sh.

Reads the run folders OUT_DIR/DATASET-kK-sSEED (report.json, history.json) and prints, per
dataset, one column per K: certified accuracy in % (mean ± sample std over the seeds) for each
compression row of the evaluation grid, the mean over the pruned rows, and the training seconds
per epoch (the history's own timing, evaluation excluded) with its ratio to K = 1.
A folder without its report is skipped, with a note on stderr.
"""
import json, re, statistics, sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^(?P<dataset>.+)-k(?P<k>[0-9]+)-s(?P<seed>[0-9]+)$")


def fmt(values, scale=100.0, digits=1):
    if not values:
        return "–"
    mean = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def main(out):
    runs = defaultdict(lambda: defaultdict(list))  # dataset -> k -> [(rows, s/epoch)]
    for path in sorted(Path(out).iterdir()):
        m = NAME.match(path.name)
        if not m or not path.is_dir():
            continue
        try:
            rows = json.loads((path / "report.json").read_text())["rows"]
            history = json.loads((path / "history.json").read_text())
        except (OSError, ValueError, KeyError) as e:
            print(f"note: skipping {path}: {e}", file=sys.stderr)
            continue
        per_epoch = sum(r["seconds"] for r in history) / len(history)
        runs[m["dataset"]][int(m["k"])].append((rows, per_epoch))
    for dataset, by_k in runs.items():
        ks = sorted(by_k)
        labels = []
        for rows, _ in by_k[ks[0]]:
            for r in rows:
                label = (r["compression"], r["ratio"], r["format"])
                if label not in labels:
                    labels.append(label)
        seeds = {k: len(by_k[k]) for k in ks}
        print(f"\n### {dataset}: certified accuracy (%), mean ± std over seeds {seeds}\n")
        print("| compression | " + " | ".join(f"K = {k}" for k in ks) + " |")
        print("|---|" + "---|" * len(ks))

        def cert(k, pick):
            return [statistics.mean([r["certified"] for r in rows if pick(r)] or [float("nan")])
                    for rows, _ in by_k[k]]

        for label in labels:
            name = "none" if label[0] == "none" else f"{label[0].upper()} {label[1]:g}"
            if label[2] != "fp32":
                name = label[2]
            cells = [fmt(cert(k, lambda r, l=label: (r["compression"], r["ratio"], r["format"]) == l))
                     for k in ks]
            print(f"| {name} | " + " | ".join(cells) + " |")
        pruned = [fmt(cert(k, lambda r: r["compression"] != "none")) for k in ks]
        print("| **mean of pruned rows** | " + " | ".join(f"**{c}**" for c in pruned) + " |")
        base = statistics.mean(s for _, s in by_k[ks[0]])
        secs = []
        for k in ks:
            mean = statistics.mean(s for _, s in by_k[k])
            secs.append(f"{fmt([s for _, s in by_k[k]], 1.0)} ({base / mean:.2f}×)")
        print(f"| training s/epoch (speed-up vs K = {ks[0]}) | " + " | ".join(secs) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: refresh_table.py OUT_DIR")
    main(sys.argv[1])
