#!/usr/bin/env bash
# compare_pytorch.sh — benchmark cactus against PyTorch on this machine, back to back.
#
# Workloads: every criterion bench of `kernels` and `steps` (no --only: criterion runs them all,
# the compression kernels prune_mask_gul1_13M / fake_quant_int8_13M, the CACTUS steps
# small_mnist_cactus_b128 / cnn7_cifar_cactus_b128 and the batch-split steps
# small_mnist_{std,ibp,sabr}_b{32,128}_split included) and their twins in bench_torch.py
# (a `_split` workload's twin is the one without `_split`: cactus's `--parallel batch` against
# the same PyTorch step).
#
# Runs, with the same number of threads on both sides:
#   (a) cactus:  RAYON_NUM_THREADS=$T cargo bench --bench kernels --bench steps -- --noplot [FILTER]
#                (criterion 0.5; results in target/criterion/{kernels,steps}/<name>/new/estimates.json)
#   (b) PyTorch: scripts/compare/bench_torch.py --threads $T  (in the venv .venv-bench; results in
#                target/compare/torch.json)
#   (b') PyTorch, data parallel (default when T > 1; --no-torch-procs skips it): T concurrent
#                `bench_torch.py --threads 1 --only <the selected small_mnist_* workloads>`
#                processes, started together and meeting at a barrier before each workload,
#                results in target/compare/torch_proc_<k>.json (logs torch_proc_<k>.log); for
#                the small network this is PyTorch's best CPU configuration, and the report
#                takes the better of (b) and the sum of (b')'s samples/s
#   (c) report:  scripts/compare/compare_report.py -> Markdown table on stdout, plus
#                target/compare/compare.md and target/compare/compare.json
#
# The venv .venv-bench (repo root) is created on first use with `pip install torch numpy`
# (a large download: several GB with the CUDA wheels, which is what PyPI serves) and reused.
#
# Usage: bash scripts/compare/compare_pytorch.sh [--threads N] [--only NAME1,NAME2] [--quick]
#                                        [--skip-cactus] [--skip-torch] [--no-torch-procs]
#                                        [--torch-procs] [--help]
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash scripts/compare/compare_pytorch.sh [options]

Benchmarks cactus (criterion benches `kernels` and `steps`) and the same workloads in
PyTorch on this machine, then prints a table of ms, samples/s (GFLOP/s for kernels) and
the ratio cactus/PyTorch of throughputs (> 1 means cactus is faster).

For the small network (small_mnist_* steps) PyTorch's figure is its best CPU configuration:
the better of one N-thread process and N concurrent 1-thread processes (data parallel,
samples/s summed); the table names the winner ("2 threads" / "2×1 thread") and shows both.

Options:
  --threads N      threads on both sides (RAYON_NUM_THREADS / torch.set_num_threads), default 2
  --only NAMES     comma-separated workload names, e.g. matmul_1024,cnn7_mnist_std_b32
                   (passed to criterion as a filter regex and to bench_torch.py)
  --quick          fewer repetitions (smoke test; criterion gets shorter warm-up/measurement)
  --skip-cactus    do not run cargo bench; reuse the results in target/criterion
  --skip-torch     do not run PyTorch; reuse target/compare/torch.json (and the
                   torch_proc_<k>.json files, unless --no-torch-procs)
  --no-torch-procs do not run the N concurrent 1-thread PyTorch processes (by default they
                   run after the N-thread PyTorch run when N > 1, on the small_mnist_*
                   workloads selected; results target/compare/torch_proc_<k>.json)
  --torch-procs    run them even with --threads 1 (one 1-thread process)
  -h, --help       this help

Workloads: matmul_1024 conv_fwd_32x64x28x28 conv_bwd_32x64x28x28 iconv_fwd_32x64x28x28
           compression kernels (cnn7 MNIST weights, 13.3 M; samples/s = weights/s):
           prune_mask_gul1_13M fake_quant_int8_13M
           small_mnist_std_b32 small_mnist_std_b128 cnn7_mnist_std_b32 cnn7_mnist_std_b128
           cnn7_cifar_std_b128
           batch split (cactus `--parallel batch`; PyTorch twin: the name without _split):
           small_mnist_std_b32_split small_mnist_std_b128_split small_mnist_ibp_b32_split
           small_mnist_ibp_b128_split small_mnist_sabr_b32_split small_mnist_sabr_b128_split
           small_mnist_cactus_b128_split
           certified steps (IBP, SABR; PyTorch side as scripts/twin/torch_certified.py):
           small_mnist_ibp_b32 small_mnist_ibp_b128 small_mnist_sabr_b32 small_mnist_sabr_b128
           cnn7_mnist_ibp_b128 cnn7_mnist_sabr_b128 cnn7_cifar_ibp_b128 cnn7_cifar_sabr_b128
           CACTUS steps (full net + one GUL1-pruned net, each with its own SABR loss; the report
           adds the "cactus/sabr step cost ratio" per engine, budget ~2.1x):
           small_mnist_cactus_b128 cnn7_cifar_cactus_b128
Output:    target/compare/{torch.json,torch_proc_<k>.json,compare.md,compare.json}
EOF
}

THREADS=2
ONLY=""
QUICK=0
SKIP_CACTUS=0
SKIP_TORCH=0
TORCH_PROCS=""   # "" = default (on when --threads > 1), 0 = off, 1 = on
while [[ $# -gt 0 ]]; do
    case "$1" in
        --threads)     [[ $# -ge 2 ]] || { echo "error: --threads needs a value" >&2; exit 2; }
                       THREADS="$2"; shift 2 ;;
        --threads=*)   THREADS="${1#*=}"; shift ;;
        --only)        [[ $# -ge 2 ]] || { echo "error: --only needs a value" >&2; exit 2; }
                       ONLY="$2"; shift 2 ;;
        --only=*)      ONLY="${1#*=}"; shift ;;
        --quick)       QUICK=1; shift ;;
        --skip-cactus) SKIP_CACTUS=1; shift ;;
        --skip-torch)  SKIP_TORCH=1; shift ;;
        --no-torch-procs) TORCH_PROCS=0; shift ;;
        --torch-procs) TORCH_PROCS=1; shift ;;
        -h|--help)     usage; exit 0 ;;
        *)             echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$THREADS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --threads must be a positive integer, got '$THREADS'" >&2
    exit 2
fi
if [[ -z "$TORCH_PROCS" ]]; then
    if [[ $THREADS -gt 1 ]]; then TORCH_PROCS=1; else TORCH_PROCS=0; fi
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv-bench"
OUT_DIR="$ROOT/target/compare"
TORCH_JSON="$OUT_DIR/torch.json"
mkdir -p "$OUT_DIR"

step() { printf '\n==> %s\n' "$*"; }

# ---------------------------------------------------------------- machine
MODEL="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
[[ -n "$MODEL" ]] || MODEL="$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n1)"
FLAGS="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
simd=""
for f in avx2 fma avx512f; do
    if grep -qw "$f" <<<"$FLAGS"; then simd+="$f=yes "; else simd+="$f=no "; fi
done
echo "CPU:     ${MODEL:-unknown} ($(nproc) logical CPUs)"
echo "SIMD:    $simd"
echo "Threads: $THREADS (RAYON_NUM_THREADS / torch.set_num_threads)"
LOAD="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)"
echo "Load:    $LOAD (1-min load average)"
if awk -v l="$LOAD" -v n="$(nproc)" 'BEGIN { exit !(l > 0.5 * n) }'; then
    echo "WARNING: the machine is busy (load $LOAD on $(nproc) CPUs; a build running?)." >&2
    echo "         Timings will be noisy and unfair; rerun when it is idle." >&2
fi
[[ -n "$ONLY" ]] && echo "Only:    $ONLY"
[[ $QUICK -eq 1 ]] && echo "Mode:    quick (fewer repetitions, noisier)"
[[ $TORCH_PROCS -eq 1 ]] && echo "PyTorch: also $THREADS concurrent 1-thread processes (small_mnist_*)"

# PyTorch's names for the selected workloads: a `_split` workload is timed as its twin.
TORCH_ONLY=""
if [[ -n "$ONLY" ]]; then
    TORCH_ONLY="$(tr ',' '\n' <<<"$ONLY" | sed -e 's/[[:space:]]//g' -e 's/_split$//' \
                  | awk 'NF && !seen[$0]++' | paste -sd, -)"
fi

STATUS=0
START_EPOCH="$(date +%s)"

# ---------------------------------------------------------------- (a) cactus
if [[ $SKIP_CACTUS -eq 1 ]]; then
    step "cactus: skipped (reusing target/criterion)"
else
    step "cactus: RAYON_NUM_THREADS=$THREADS cargo bench --bench kernels --bench steps"
    CRIT_ARGS=(--noplot)
    if [[ $QUICK -eq 1 ]]; then
        CRIT_ARGS+=(--warm-up-time 1 --measurement-time 2 --sample-size 10)
    fi
    if [[ -n "$ONLY" ]]; then
        # criterion filters are regexes over "group/name": match any of the names exactly.
        CRIT_ARGS+=("/(${ONLY//,/|})\$")
    fi
    if ! RAYON_NUM_THREADS="$THREADS" cargo bench --bench kernels --bench steps -- "${CRIT_ARGS[@]}"; then
        echo "error: cargo bench failed; the report will show missing or stale cactus results" >&2
        STATUS=1
    fi
fi

# ---------------------------------------------------------------- (b) PyTorch
if [[ $SKIP_TORCH -eq 1 ]]; then
    step "PyTorch: skipped (reusing $TORCH_JSON)"
else
    if [[ ! -x "$VENV/bin/python" ]]; then
        step "creating virtual environment $VENV"
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c 'import torch, numpy' 2>/dev/null; then
        step "installing torch and numpy into $VENV (large download, done once)"
        "$VENV/bin/python" -m pip install --upgrade pip >/dev/null || true
        "$VENV/bin/python" -m pip install torch numpy
    fi
    step "PyTorch: scripts/compare/bench_torch.py --threads $THREADS"
    TORCH_ARGS=(--threads "$THREADS" --out "$TORCH_JSON")
    [[ -n "$TORCH_ONLY" ]] && TORCH_ARGS+=(--only "$TORCH_ONLY")
    [[ $QUICK -eq 1 ]] && TORCH_ARGS+=(--quick)
    if ! "$VENV/bin/python" "$ROOT/scripts/compare/bench_torch.py" "${TORCH_ARGS[@]}"; then
        echo "error: bench_torch.py failed; the report will show missing PyTorch results" >&2
        STATUS=1
    fi
fi

# ---------------------------------------------------------------- (b') PyTorch, N x 1 thread
PROC_JSONS=()
if [[ $TORCH_PROCS -eq 1 ]]; then
    if [[ $SKIP_TORCH -eq 1 ]]; then
        for ((k = 1; k <= THREADS; k++)); do
            f="$OUT_DIR/torch_proc_$k.json"
            [[ -f "$f" ]] && PROC_JSONS+=("$f")
        done
        step "PyTorch ${THREADS}×1 thread: skipped (reusing ${#PROC_JSONS[@]} torch_proc_<k>.json)"
    else
        # The small_mnist_* workloads selected (PyTorch names).
        if [[ -n "$TORCH_ONLY" ]]; then
            SMALL="$(tr ',' '\n' <<<"$TORCH_ONLY" | grep '^small_mnist_' | paste -sd, - || true)"
        else
            SMALL="$("$VENV/bin/python" "$ROOT/scripts/compare/bench_torch.py" --list \
                     | grep '^small_mnist_' | paste -sd, - || true)"
        fi
        rm -f "$OUT_DIR"/torch_proc_*.json "$OUT_DIR"/torch_proc_*.log
        if [[ -z "$SMALL" ]]; then
            step "PyTorch ${THREADS}×1 thread: no small_mnist_* workload selected, skipped"
        else
            step "PyTorch ${THREADS}×1 thread: $THREADS concurrent bench_torch.py --threads 1 --only $SMALL"
            SYNC_DIR="$(mktemp -d "$OUT_DIR/torch_sync.XXXXXX")"
            PIDS=()
            for ((k = 1; k <= THREADS; k++)); do
                P_ARGS=(--threads 1 --only "$SMALL" --out "$OUT_DIR/torch_proc_$k.json"
                        --sync-dir "$SYNC_DIR" --sync-procs "$THREADS")
                [[ $QUICK -eq 1 ]] && P_ARGS+=(--quick)
                "$VENV/bin/python" "$ROOT/scripts/compare/bench_torch.py" "${P_ARGS[@]}" \
                    >"$OUT_DIR/torch_proc_$k.log" 2>&1 &
                PIDS+=($!)
            done
            for ((k = 1; k <= THREADS; k++)); do
                if wait "${PIDS[k-1]}"; then
                    PROC_JSONS+=("$OUT_DIR/torch_proc_$k.json")
                else
                    echo "error: PyTorch process $k of $THREADS failed (see $OUT_DIR/torch_proc_$k.log)" >&2
                    STATUS=1
                fi
            done
            rm -rf "$SYNC_DIR"
            for ((k = 1; k <= THREADS; k++)); do
                echo "-- process $k ($OUT_DIR/torch_proc_$k.log):"
                cat "$OUT_DIR/torch_proc_$k.log" || true
            done
            if [[ ${#PROC_JSONS[@]} -lt $THREADS ]]; then
                echo "error: only ${#PROC_JSONS[@]} of $THREADS PyTorch processes finished;" \
                     "their results are not summed" >&2
                PROC_JSONS=()
            fi
        fi
    fi
fi

# ---------------------------------------------------------------- (c) report
step "report"
REPORT_ARGS=(--criterion-dir "$ROOT/target/criterion" --torch-json "$TORCH_JSON"
             --out-dir "$OUT_DIR" --threads "$THREADS")
[[ $SKIP_CACTUS -eq 0 ]] && REPORT_ARGS+=(--since "$START_EPOCH")
[[ -n "$ONLY" ]] && REPORT_ARGS+=(--only "$ONLY")
[[ ${#PROC_JSONS[@]} -gt 0 ]] && REPORT_ARGS+=(--torch-proc-json "${PROC_JSONS[@]}")
python3 "$ROOT/scripts/compare/compare_report.py" "${REPORT_ARGS[@]}"

exit $STATUS
