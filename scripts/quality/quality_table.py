#!/usr/bin/env python3
"""quality_table.py OUT_DIR — the Markdown table of scripts/quality/quality.sh: clean / PGD /
IBP-certified accuracy (mean ± sample std over seeds, in %) and seconds per epoch, for each
dataset, method and engine found in OUT_DIR (cactus run directories and torch JSON files)."""
import json, statistics, sys
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/quality")
runs = defaultdict(list)  # (dataset, method, engine) -> [(clean, pgd, cert, sec/epoch)]
for path in sorted(out.iterdir()):
    engine, rest = path.name.split("-", 1)
    if engine == "cactus" and (path / "report.json").is_file():
        row = json.loads((path / "report.json").read_text())["rows"][0]
        hist = json.loads((path / "history.json").read_text())
        secs = statistics.mean(h["seconds"] for h in hist)
        accs = (row["clean"], row["pgd"], row["certified"])
    elif engine == "torch" and path.suffix == ".json":
        r = json.loads(path.read_text())
        secs = statistics.mean(r["epoch_seconds"])
        accs = (r["clean"], r["pgd"], r["certified"])
        rest = path.stem.split("-", 1)[1]
    else:
        continue
    dataset, method, seed = rest.rsplit("-", 2)
    runs[(dataset, method, engine)].append((*accs, secs))


def fmt(values, scale=100.0, digits=1):
    m = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


print("| dataset | method | engine | seeds | clean % | PGD % | certified % | s/epoch |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for (dataset, method, engine), rs in sorted(runs.items()):
    cols = list(zip(*rs))
    print(f"| {dataset} | {method} | {engine} | {len(rs)} | {fmt(cols[0])} | {fmt(cols[1])} "
          f"| {fmt(cols[2])} | {fmt(cols[3], 1.0)} |")
