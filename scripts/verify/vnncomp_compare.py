#!/usr/bin/env python3
"""vnncomp_compare.py: run `cactus verify` on a VNN-COMP benchmark (or read a results.csv it
wrote) and compare its answers with the competition's published per-instance results.

Standard library only (python3 >= 3.8); no third-party packages.

Usage:
    # run cactus on a vendored benchmark and compare
    python3 scripts/verify/vnncomp_compare.py --benchmark tests/fixtures/vnncomp/mnistfc \\
        [--cactus target/release/cactus] [--out out/vnncomp/mnistfc] [--timeout-scale 0.5]

    # compare a results.csv that cactus already wrote (nothing is run)
    python3 scripts/verify/vnncomp_compare.py --benchmark tests/fixtures/vnncomp/oval21 \\
        --results out/vnncomp/oval21/results.csv

    # a full upstream benchmark checkout (e.g. vnncomp2021/benchmarks/mnistfc, whose
    # instances file is mnistfc_instances.csv) with a published file in the same columns
    python3 scripts/verify/vnncomp_compare.py --benchmark ~/vnncomp2021/benchmarks/mnistfc \\
        --instances ~/vnncomp2021/benchmarks/mnistfc/mnistfc_instances.csv \\
        --published my_published.csv

What it runs (unless --results is given):
    cactus verify --instances INSTANCES --out OUTDIR [--timeout-scale F]
which writes OUTDIR/results.csv (header `onnx,vnnlib,result,time_s`, one row per instance in
instances.csv order, result in sat/unsat/unknown/timeout/error) and, for each `sat`, the
counterexample OUTDIR/counterexamples/<row index>.txt in the VNN-COMP format
`((X_0 v) ... (Y_0 v) ...)`. The row index is 0-based (the first instance is 0); a file named
with the 1-based index is accepted too, with a warning.

Inputs:
    --benchmark DIR    folder the instances' paths are relative to (default instances:
                       DIR/instances.csv, or the only DIR/*instances.csv; default published:
                       DIR/published.csv)
    --instances FILE   VNN-COMP instances file: `onnx,vnnlib,timeout` rows, no header
    --published FILE   `onnx,vnnlib,tool,result,time_s` rows (a header row is optional);
                       result in sat/unsat/unknown/timeout/error (holds/violated are read as
                       unsat/sat). Instances are matched on their normalised paths (leading
                       ./ and trailing .gz removed), else on the pair of file names.
    A path in instances.csv that does not exist is looked up as PATH.gz (the VNN-COMP 2022+
    repositories store x.onnx.gz / x.vnnlib.gz and name x.onnx / x.vnnlib).

Comparison:
    published consensus per instance: sat if any published tool answered sat; unsat if some
    tool answered unsat and none sat; otherwise unknown.
    CONTRADICTION: cactus unsat where any published tool answered sat, or cactus sat where the
    published consensus is unsat. Every cactus `sat` also has its counterexample checked
    against the VNN-LIB property (inputs inside the box within --cex-tol, the outputs it
    reports satisfying the output constraint within --cex-tol); a missing or failing
    counterexample is reported as INVALID COUNTEREXAMPLE (--no-cex-check skips this).

Output: a Markdown report on stdout (and in OUTDIR/compare.md when OUTDIR is known).
Exit status: 0 when no contradiction (and no invalid counterexample), 1 otherwise, 2 when
the inputs cannot be read or cactus fails to produce results.csv.
"""

import argparse
import csv
import glob
import gzip
import os
import re
import shlex
import statistics
import subprocess
import sys

RESULTS = ("sat", "unsat", "unknown", "timeout", "error")


def die(msg):
    print(f"vnncomp_compare: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- files and paths

def resolve(base, rel):
    """path of an instance file: base/rel, or base/rel.gz when only that exists"""
    p = rel if os.path.isabs(rel) else os.path.join(base, rel)
    if os.path.exists(p):
        return p
    if os.path.exists(p + ".gz"):
        return p + ".gz"
    return p


def read_text(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def norm_path(p):
    p = p.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    if p.endswith(".gz"):
        p = p[:-3]
    return p


def key_of(onnx, vnnlib):
    return (norm_path(onnx), norm_path(vnnlib))


def name_key(onnx, vnnlib):
    return (os.path.basename(norm_path(onnx)), os.path.basename(norm_path(vnnlib)))


def normalise_result(r):
    r = r.strip().lower()
    if r in ("unsat", "holds"):
        return "unsat"
    if r in ("sat", "violated"):
        return "sat"
    if r.startswith("timeout") or r.startswith("run_instance_timeout"):
        return "timeout"
    if r.startswith("error"):
        return "error"
    return "unknown"


def read_instances(path):
    rows = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                die(f"{path}: bad instances row {row}")
            timeout = row[2].strip() if len(row) > 2 else ""
            rows.append((row[0].strip(), row[1].strip(), timeout))
    if not rows:
        die(f"{path}: no instances")
    return rows


def read_published(path):
    """{key: [(tool, result, time)]}, tool order"""
    out, tools = {}, []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or not "".join(row).strip():
                continue
            if [c.strip().lower() for c in row[:3]] == ["onnx", "vnnlib", "tool"]:
                continue
            if len(row) < 5:
                die(f"{path}: expected onnx,vnnlib,tool,result,time_s, got {row}")
            onnx, vnnlib, tool, result, t = (c.strip() for c in row[:5])
            try:
                secs = float(t)
            except ValueError:
                secs = None
            out.setdefault(key_of(onnx, vnnlib), []).append((tool, normalise_result(result), secs))
            if tool not in tools:
                tools.append(tool)
    return out, tools


def read_results(path, n_expected):
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            die(f"{path}: empty")
        cols = [c.strip().lower() for c in header]
        if cols[:2] != ["onnx", "vnnlib"] or "result" not in cols:
            die(f"{path}: expected header onnx,vnnlib,result,time_s, got {header}")
        ri, ti = cols.index("result"), (cols.index("time_s") if "time_s" in cols else None)
        for row in reader:
            if not row or not "".join(row).strip():
                continue
            r = row[ri].strip().lower()
            if r not in RESULTS:
                print(f"warning: {path}: result {row[ri]!r} read as unknown", file=sys.stderr)
                r = "unknown"
            try:
                t = float(row[ti]) if ti is not None and row[ti].strip() else None
            except ValueError:
                t = None
            rows.append((row[0].strip(), row[1].strip(), r, t))
    if len(rows) != n_expected:
        die(f"{path}: {len(rows)} rows, instances file has {n_expected}")
    return rows


# ---------------------------------------------------------------- VNN-LIB and counterexamples

TOKEN = re.compile(r"\(|\)|[^\s()]+")


def sexprs(text):
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    stack, top = [], []
    cur = top
    for tok in TOKEN.findall(text):
        if tok == "(":
            new = []
            cur.append(new)
            stack.append(cur)
            cur = new
        elif tok == ")":
            if not stack:
                raise ValueError("unbalanced ')'")
            cur = stack.pop()
        else:
            cur.append(tok)
    if stack:
        raise ValueError("unbalanced '('")
    return top


def parse_vnnlib(text):
    """(declared names, list of assertion terms)"""
    names, asserts = [], []
    for e in sexprs(text):
        if not isinstance(e, list) or not e:
            continue
        if e[0] == "declare-const":
            names.append(e[1])
        elif e[0] == "assert":
            asserts.append(e[1])
    return names, asserts


def holds(term, env, tol):
    """evaluate a VNN-LIB boolean term with a tolerance on every comparison"""
    op = term[0]
    if op == "and":
        return all(holds(t, env, tol) for t in term[1:])
    if op == "or":
        return any(holds(t, env, tol) for t in term[1:])
    if op in ("<=", ">=", "<", ">", "="):
        a, b = value(term[1], env), value(term[2], env)
        if op in ("<=", "<"):
            return a <= b + tol
        if op in (">=", ">"):
            return a >= b - tol
        return abs(a - b) <= tol
    raise ValueError(f"unsupported VNN-LIB operator {op!r}")


def value(t, env):
    if isinstance(t, list):
        op, args = t[0], [value(a, env) for a in t[1:]]
        if op == "+":
            return sum(args)
        if op == "-":
            return -args[0] if len(args) == 1 else args[0] - sum(args[1:])
        if op == "*":
            p = 1.0
            for a in args:
                p *= a
            return p
        raise ValueError(f"unsupported VNN-LIB arithmetic {op!r}")
    if t in env:
        return env[t]
    return float(t)


def read_counterexample(path):
    text = read_text(path)
    env = {}
    for name, v in re.findall(r"\(\s*([XY]_\d+)\s+([-+0-9.eEinfaINF]+)\s*\)", text):
        env[name] = float(v)
    return env


def check_counterexample(vnnlib_path, cex_path, tol):
    """'ok' or a reason"""
    if not os.path.exists(cex_path):
        return "missing"
    try:
        env = read_counterexample(cex_path)
        names, asserts = parse_vnnlib(read_text(vnnlib_path))
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    missing = [n for n in names if n not in env]
    if missing:
        return f"lacks {len(missing)} declared variables (first {missing[0]})"
    failed = sum(1 for a in asserts if not holds(a, env, tol))
    return "ok" if failed == 0 else f"{failed} assertions fail"


# ---------------------------------------------------------------- report

def fmt_t(t):
    return "" if t is None else f"{t:.1f}"


def summary_row(name, results, times, n):
    solved = [t for r, t in zip(results, times) if r in ("sat", "unsat")]
    solved_t = [t for r, t in zip(results, times) if r in ("sat", "unsat") and t is not None]
    tot = sum(t for t in times if t is not None)
    med = statistics.median(solved_t) if solved_t else None
    c = {r: results.count(r) for r in RESULTS}
    return (f"| {name} | {len(solved)}/{n} | {c['sat']} | {c['unsat']} | {c['timeout']} | "
            f"{c['unknown'] + c['error']} | {tot:.1f} | {fmt_t(med)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", required=True, help="benchmark folder (instance paths are relative to it)")
    ap.add_argument("--instances", help="instances file (default DIR/instances.csv)")
    ap.add_argument("--published", help="published results (default DIR/published.csv)")
    ap.add_argument("--results", help="an existing cactus results.csv: compare it, run nothing")
    ap.add_argument("--out", help="cactus output folder (default out/vnncomp/<benchmark name>)")
    ap.add_argument("--cactus", default=None, help="cactus binary (default target/release/cactus)")
    ap.add_argument("--timeout-scale", type=float, default=None, help="passed to cactus verify")
    ap.add_argument("--verify-args", default="",
                    help="more options for cactus verify, e.g. '--unsound --certifier ibp,crown,alpha-crown,bab'")
    ap.add_argument("--cex-tol", type=float, default=1e-4, help="tolerance of the counterexample check")
    ap.add_argument("--no-cex-check", action="store_true", help="do not check counterexamples")
    args = ap.parse_args()

    bench = os.path.abspath(args.benchmark)
    if not os.path.isdir(bench):
        die(f"no folder {bench}")
    name = os.path.basename(bench.rstrip("/"))
    inst_path = args.instances
    if inst_path is None:
        inst_path = os.path.join(bench, "instances.csv")
        if not os.path.exists(inst_path):
            cands = sorted(glob.glob(os.path.join(bench, "*instances.csv")))
            if len(cands) != 1:
                die(f"no {inst_path}; pass --instances")
            inst_path = cands[0]
    pub_path = args.published or os.path.join(bench, "published.csv")
    if not os.path.exists(pub_path):
        die(f"no published results {pub_path}; pass --published")
    instances = read_instances(inst_path)
    published, tools = read_published(pub_path)
    pub_by_name = {}
    for k, v in published.items():
        pub_by_name.setdefault((os.path.basename(k[0]), os.path.basename(k[1])), []).append(v)

    repo = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    out_dir = args.out
    if args.results:
        res_path = args.results
        out_dir = out_dir or os.path.dirname(os.path.abspath(res_path))
    else:
        out_dir = out_dir or os.path.join(repo, "out", "vnncomp", name)
        cactus = args.cactus or os.path.join(repo, "target", "release", "cactus")
        if not os.path.exists(cactus):
            die(f"no cactus binary {cactus} (cargo build --release, or pass --cactus)")
        os.makedirs(out_dir, exist_ok=True)
        cmd = [cactus, "verify", "--instances", os.path.abspath(inst_path), "--out", out_dir]
        if args.timeout_scale is not None:
            cmd += ["--timeout-scale", str(args.timeout_scale)]
        cmd += shlex.split(args.verify_args)
        print(f"running: {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr)
        rc = subprocess.call(cmd)
        res_path = os.path.join(out_dir, "results.csv")
        if not os.path.exists(res_path):
            die(f"cactus exited with {rc} and wrote no {res_path}")
        if rc != 0:
            print(f"warning: cactus exited with {rc}", file=sys.stderr)
    results = read_results(res_path, len(instances))

    n = len(instances)
    lines = [f"# VNN-COMP comparison: {name}", ""]
    lines.append(f"- instances: `{inst_path}` ({n})")
    lines.append(f"- published: `{pub_path}` ({len(tools)} tools)")
    lines.append(f"- cactus results: `{res_path}`")
    if args.timeout_scale is not None:
        lines.append(f"- timeout scale: {args.timeout_scale}")
    if args.verify_args:
        lines.append(f"- cactus verify options: `{args.verify_args}`")
    lines.append("")

    contradictions, invalid, unmatched, name_mismatch = [], [], [], []
    per_tool = {t: ([], []) for t in tools}
    cactus_res, cactus_t = [], []
    inst_rows = []
    counts = {"sat": 0, "unsat": 0, "unknown": 0}
    agree = {"both": 0, "cactus_only": 0, "published_only": 0}
    for i, ((onnx, vnnlib, timeout), (r_onnx, r_vnnlib, res, t)) in enumerate(zip(instances, results)):
        if name_key(onnx, vnnlib) != name_key(r_onnx, r_vnnlib):
            name_mismatch.append(i)
        pub = published.get(key_of(onnx, vnnlib))
        if pub is None:
            cands = pub_by_name.get(name_key(onnx, vnnlib), [])
            pub = cands[0] if len(cands) == 1 else None
        if pub is None:
            unmatched.append(i)
            pub = []
        pres = {tool: (r, s) for tool, r, s in pub}
        for tool in tools:
            r, s = pres.get(tool, ("unknown", None))
            per_tool[tool][0].append(r)
            per_tool[tool][1].append(s)
        n_sat = sum(1 for r, _ in pres.values() if r == "sat")
        n_unsat = sum(1 for r, _ in pres.values() if r == "unsat")
        consensus = "sat" if n_sat else ("unsat" if n_unsat else "unknown")
        counts[consensus] += 1
        cactus_res.append(res)
        cactus_t.append(t)
        flag = ""
        if res == "unsat" and n_sat:
            flag = "CONTRADICTION"
            contradictions.append((i, onnx, vnnlib, res, f"{n_sat} published sat"))
        elif res == "sat" and consensus == "unsat":
            flag = "CONTRADICTION"
            contradictions.append((i, onnx, vnnlib, res, f"{n_unsat} published unsat, none sat"))
        cex = ""
        if res == "sat" and not args.no_cex_check:
            cex_path = os.path.join(out_dir, "counterexamples", f"{i}.txt")
            if not os.path.exists(cex_path) and os.path.exists(os.path.join(out_dir, "counterexamples", f"{i + 1}.txt")):
                cex_path = os.path.join(out_dir, "counterexamples", f"{i + 1}.txt")
                print(f"warning: counterexample of row {i} found under the 1-based name {i + 1}.txt", file=sys.stderr)
            cex = check_counterexample(resolve(bench, vnnlib), cex_path, args.cex_tol)
            if cex != "ok":
                invalid.append((i, onnx, vnnlib, cex))
                flag = (flag + " " if flag else "") + "INVALID COUNTEREXAMPLE"
        c_solved = res in ("sat", "unsat")
        p_solved = consensus != "unknown"
        if c_solved and p_solved:
            agree["both"] += 1
        elif c_solved:
            agree["cactus_only"] += 1
        elif p_solved:
            agree["published_only"] += 1
        solved_pub = [(s, tool) for tool, (r, s) in pres.items() if r in ("sat", "unsat") and s is not None]
        fastest = f"{min(solved_pub)[1]} {min(solved_pub)[0]:.1f}" if solved_pub else ""
        inst_rows.append(f"| {i} | {os.path.basename(norm_path(onnx))} | {os.path.basename(norm_path(vnnlib))} | "
                         f"{timeout} | {consensus} ({n_sat}s/{n_unsat}u) | {fastest} | {res} | {fmt_t(t)} | "
                         f"{cex} | {flag} |")

    lines.append(f"Published consensus: {counts['sat']} sat, {counts['unsat']} unsat, "
                 f"{counts['unknown']} unsolved by every tool. "
                 f"Solved by cactus and published: {agree['both']}; by cactus only: {agree['cactus_only']}; "
                 f"by published tools only: {agree['published_only']}.")
    lines.append("")
    lines.append("## Summary (published times are the competition's hardware, not this machine)")
    lines.append("")
    lines.append("cactus's times are this machine's. The published times are the competition's own "
                 "measurements on its hardware (see the benchmark's SOURCE.md; VNN-COMP 2021 times "
                 "include each tool's start-up overhead), so compare them only as orders of magnitude.")
    lines.append("")
    lines.append("| tool | solved | sat | unsat | timeout | unknown/error | total time (s) | median time solved (s) |")
    lines.append("|------|--------|-----|-------|---------|---------------|----------------|------------------------|")
    lines.append(summary_row("**cactus** (this machine)", cactus_res, cactus_t, n))
    for tool in tools:
        lines.append(summary_row(f"{tool} (published)", per_tool[tool][0], per_tool[tool][1], n))
    lines.append("")
    lines.append("## Contradictions")
    lines.append("")
    if contradictions:
        for i, onnx, vnnlib, res, why in contradictions:
            lines.append(f"- **CONTRADICTION** row {i}: {onnx} {vnnlib}: cactus {res}, {why}")
    else:
        lines.append("None: no cactus unsat where a published tool found sat, no cactus sat where the published tools agree unsat.")
    if invalid:
        lines.append("")
        for i, onnx, vnnlib, why in invalid:
            lines.append(f"- **INVALID COUNTEREXAMPLE** row {i}: {onnx} {vnnlib}: {why}")
    if unmatched:
        lines.append("")
        lines.append(f"Warning: {len(unmatched)} instances have no published row (rows {unmatched[:10]}...).")
    if name_mismatch:
        lines.append("")
        lines.append(f"Warning: results.csv rows {name_mismatch[:10]} name other files than instances.csv.")
    lines.append("")
    lines.append("## Per instance")
    lines.append("")
    lines.append("| # | onnx | vnnlib | timeout (s) | published consensus | fastest published (s) | cactus | cactus time (s) | counterexample | flag |")
    lines.append("|---|------|--------|-------------|---------------------|-----------------------|--------|-----------------|----------------|------|")
    lines.extend(inst_rows)
    report = "\n".join(lines) + "\n"
    print(report)
    if out_dir and os.path.isdir(out_dir):
        try:
            with open(os.path.join(out_dir, "compare.md"), "w") as f:
                f.write(report)
        except OSError:
            pass
    return 1 if contradictions or invalid else 0


if __name__ == "__main__":
    sys.exit(main())
