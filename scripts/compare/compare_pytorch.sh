#!/usr/bin/env bash
# compare_pytorch.sh — benchmark cactus against PyTorch on this machine, back to back.
#
# Workloads: every criterion bench of `kernels` and `steps` (no --only: criterion runs them all,
# the compression kernels prune_mask_gul1_13M / fake_quant_int8_13M and the CACTUS steps
# small_mnist_cactus_b128 / cnn7_cifar_cactus_b128 included) and their twins in bench_torch.py.
#
# Runs, with the same number of threads on both sides:
#   (a) cactus:  RAYON_NUM_THREADS=$T cargo bench --bench kernels --bench steps -- --noplot [FILTER]
#                (criterion 0.5; results in target/criterion/{kernels,steps}/<name>/new/estimates.json)
#   (b) PyTorch: scripts/compare/bench_torch.py --threads $T  (in the venv .venv-bench; results in
#                target/compare/torch.json)
#   (c) report:  scripts/compare/compare_report.py -> Markdown table on stdout, plus
#                target/compare/compare.md and target/compare/compare.json
#
# The venv .venv-bench (repo root) is created on first use with `pip install torch numpy`
# (a large download: several GB with the CUDA wheels, which is what PyPI serves) and reused.
#
# Usage: bash scripts/compare/compare_pytorch.sh [--threads N] [--only NAME1,NAME2] [--quick]
#                                        [--skip-cactus] [--skip-torch] [--help]
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash scripts/compare/compare_pytorch.sh [options]

Benchmarks cactus (criterion benches `kernels` and `steps`) and the same workloads in
PyTorch on this machine, then prints a table of ms, samples/s (GFLOP/s for kernels) and
the ratio cactus/PyTorch of throughputs (> 1 means cactus is faster).

Options:
  --threads N      threads on both sides (RAYON_NUM_THREADS / torch.set_num_threads), default 2
  --only NAMES     comma-separated workload names, e.g. matmul_1024,cnn7_mnist_std_b32
                   (passed to criterion as a filter regex and to bench_torch.py)
  --quick          fewer repetitions (smoke test; criterion gets shorter warm-up/measurement)
  --skip-cactus    do not run cargo bench; reuse the results in target/criterion
  --skip-torch     do not run PyTorch; reuse target/compare/torch.json
  -h, --help       this help

Workloads: matmul_1024 conv_fwd_32x64x28x28 conv_bwd_32x64x28x28 iconv_fwd_32x64x28x28
           compression kernels (cnn7 MNIST weights, 13.3 M; samples/s = weights/s):
           prune_mask_gul1_13M fake_quant_int8_13M
           small_mnist_std_b32 small_mnist_std_b128 cnn7_mnist_std_b32 cnn7_mnist_std_b128
           cnn7_cifar_std_b128
           certified steps (IBP, SABR; PyTorch side as scripts/twin/torch_certified.py):
           small_mnist_ibp_b32 small_mnist_ibp_b128 small_mnist_sabr_b32 small_mnist_sabr_b128
           cnn7_mnist_ibp_b128 cnn7_mnist_sabr_b128 cnn7_cifar_ibp_b128 cnn7_cifar_sabr_b128
           CACTUS steps (full net + one GUL1-pruned net, each with its own SABR loss; the report
           adds the "cactus/sabr step cost ratio" per engine, budget ~2.1x):
           small_mnist_cactus_b128 cnn7_cifar_cactus_b128
Output:    target/compare/{torch.json,compare.md,compare.json}
EOF
}

THREADS=2
ONLY=""
QUICK=0
SKIP_CACTUS=0
SKIP_TORCH=0
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
        -h|--help)     usage; exit 0 ;;
        *)             echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$THREADS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --threads must be a positive integer, got '$THREADS'" >&2
    exit 2
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
    [[ -n "$ONLY" ]] && TORCH_ARGS+=(--only "$ONLY")
    [[ $QUICK -eq 1 ]] && TORCH_ARGS+=(--quick)
    if ! "$VENV/bin/python" "$ROOT/scripts/compare/bench_torch.py" "${TORCH_ARGS[@]}"; then
        echo "error: bench_torch.py failed; the report will show missing PyTorch results" >&2
        STATUS=1
    fi
fi

# ---------------------------------------------------------------- (c) report
step "report"
REPORT_ARGS=(--criterion-dir "$ROOT/target/criterion" --torch-json "$TORCH_JSON"
             --out-dir "$OUT_DIR" --threads "$THREADS")
[[ $SKIP_CACTUS -eq 0 ]] && REPORT_ARGS+=(--since "$START_EPOCH")
[[ -n "$ONLY" ]] && REPORT_ARGS+=(--only "$ONLY")
python3 "$ROOT/scripts/compare/compare_report.py" "${REPORT_ARGS[@]}"

exit $STATUS
