#!/usr/bin/env python3
"""Print the verifier comparison of scripts/quality/verify_quality.sh as Markdown tables.

    python3 scripts/quality/verify_table.py out/verify

Per data set: certified accuracy (%) by IBP, CROWN, alpha-CROWN and branch and bound (each row of
the cascade counts the points it or a weaker certifier certified), mean ± sd over seeds, for each
setting (as it is, int8, LUL1 0.7, GSL2 0.5) and variant; PGD accuracy for reference; seconds
per evaluated point of each certifier.
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

SETTINGS = [("none", 0.0, "fp32", "as is"), ("none", 0.0, "int8", "int8"),
            ("lul1", 0.7, "fp32", "LUL1 0.7"), ("gsl2", 0.5, "fp32", "GSL2 0.5")]
CERTIFIERS = ["ibp", "crown", "alpha-crown", "bab"]


def fmt(values):
    if not values:
        return "–"
    m = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{m:.1f}"
    return f"{m:.1f} ± {100 * statistics.stdev(values):.1f}"


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "out/verify")
    # (dataset, variant) -> setting label -> certifier -> [certified per seed]; and pgd, seconds.
    cert = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    pgd = defaultdict(lambda: defaultdict(list))
    secs = defaultdict(lambda: defaultdict(list))
    seeds = defaultdict(set)
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        parts = run.name.split("-s")
        dataset = "fashion-mnist" if run.name.startswith("fashion-mnist") else "mnist-mini"
        variant = "cactus-prune" if "cactus-prune" in run.name else "sabr"
        for report in ("report-lul1.json", "report-gsl2.json"):
            f = run / report
            if not f.is_file():
                continue
            r = json.loads(f.read_text())
            seeds[(dataset, variant)].add(parts[-1])
            for row in r["rows"]:
                for comp, ratio, fmt_, label in SETTINGS:
                    if (row["compression"], row["ratio"], row["format"]) != (comp, ratio, fmt_):
                        continue
                    if label == "as is" and report == "report-gsl2.json":
                        continue  # evaluated twice; keep the first
                    cert[(dataset, variant)][label][row["certifier"]].append(row["certified"])
                    if row["certifier"] == "ibp":
                        pgd[(dataset, variant)][label].append(row["pgd"])
                    secs[dataset][row["certifier"]].append(row["seconds"] / max(1, r["n"]))
    for dataset in ("mnist-mini", "fashion-mnist"):
        variants = [v for v in ("sabr", "cactus-prune") if (dataset, v) in cert]
        if not variants:
            continue
        n = {v: len(seeds[(dataset, v)]) for v in variants}
        print(f"\n**{dataset}, `small`, ε = 0.1** — certified accuracy (%), mean ± sd over seeds "
              + ", ".join(f"{v}: {n[v]}" for v in variants) + "\n")
        head = "| setting | certifier | " + " | ".join(variants) + " |"
        print(head)
        print("|---|---|" + "---:|" * len(variants))
        for _, _, _, label in SETTINGS:
            for c in CERTIFIERS:
                vals = [fmt(cert[(dataset, v)][label][c]) for v in variants]
                print(f"| {label} | {c} | " + " | ".join(vals) + " |")
            vals = [fmt(pgd[(dataset, v)][label]) for v in variants]
            print(f"| {label} | *PGD (upper bound)* | " + " | ".join(vals) + " |")
        per = ", ".join(f"{c} {1000 * statistics.mean(secs[dataset][c]):.1f} ms"
                        for c in CERTIFIERS if secs[dataset][c])
        print(f"\nTime per test point of a setting (the cascade: each certifier's time over all "
              f"points): {per}.")
        # Per-point records: how many points each certifier ran on, its time on them, and the
        # verdicts of branch and bound.
        ran = defaultdict(list)
        verdicts = defaultdict(int)
        for run in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(dataset)):
            for f in sorted(run.glob("points-*.jsonl")):
                for line in f.read_text().splitlines():
                    r = json.loads(line)
                    if f.name == "points-gsl2.jsonl" and r["compression"] == "none":
                        continue  # the network as it is, evaluated twice
                    ran[r["certifier"]].append(r["seconds"])
                    if r["certifier"] == "bab":
                        verdicts[r["verdict"]] += 1
        parts = [f"{c} {len(ran[c])} points, {1000 * statistics.mean(ran[c]):.1f} ms each"
                 for c in CERTIFIERS if ran[c]]
        print(f"Points each certifier ran on (all networks and settings): {'; '.join(parts)}.")
        if verdicts:
            v = ", ".join(f"{k} {n}" for k, n in sorted(verdicts.items()))
            print(f"Branch-and-bound verdicts: {v}.")


if __name__ == "__main__":
    main()
