#!/usr/bin/env bash
# compare_cuda.sh — cactus's CUDA kernels (and, with --steps-bin, its GPU training steps) against
# PyTorch eager on the same GPU, one command.
#
# Where: a machine with an NVIDIA GPU (H100/H200, say a lent device machine), a Python 3 whose
# torch is a CUDA build, and NO Rust toolchain: the cactus side arrives prebuilt as the criterion
# bench binary of benches/kernels_cuda.rs (and, optionally, that of benches/steps_cuda.rs). Make
# them where cargo is, in the repo root:
#     cargo bench --bench kernels_cuda --no-run
#     # prints: Executable benches/kernels_cuda.rs (target/release/deps/kernels_cuda-<hash>)
#     cargo bench --bench steps_cuda --no-run     # only for --steps-bin
# and bring those files along (they embed kernels/*.cu; `objcopy --strip-debug` shrinks them).
#
# What it runs, back to back on the same GPU:
#   (a) cactus:  BIN --bench --noplot   (from the repo root, CRITERION_HOME=<criterion-dir>, so
#                results land in target/criterion/kernels_cuda/<name>/new/estimates.json),
#                with LD_LIBRARY_PATH reaching libnvrtc.so.13 (the kernels compile at run time);
#                then, with --steps-bin, STEPS_BIN --bench --noplot the same way (results in
#                target/criterion/steps_cuda/<name>/new/estimates.json, log OUT/cactus_steps.log).
#                NVRTC is looked for in: --nvrtc-dir, target/nvrtc (scripts/gpu/get_nvrtc.sh, pinned
#                13.0), the Python's nvidia wheels (nvidia/cu13/lib or nvidia/cuda_nvrtc/lib, as
#                PyTorch's CUDA wheels ship them), /usr/local/cuda/lib64, then the system's.
#   (b) PyTorch: scripts/compare/bench_torch_cuda.py --device cuda --group kernels_cuda
#                -> OUT/torch.json
#                (--group all with --steps-bin: the step twins too)
#                (fp32, TF32 off unless --tf32; cuDNN benchmark mode; median of synchronized reps)
#   (c) report:  scripts/compare/bench_torch_cuda.py report -> Markdown table on stdout,
#                OUT/compare.md, OUT/compare.json (ms, GFLOP/s or weights/s, % of the FP32
#                non-tensor peak, ratio cactus/PyTorch of throughputs; GPU, driver and torch
#                version in the header; with --steps-bin a second table: ms and samples/s per
#                training step, ratio)
# Workloads (group kernels_cuda): matmul_4096 conv_fwd_128x128x16x16 iconv_fwd_128x128x16x16
#                                 prune_mask_gul1_13M fake_quant_int8_13M
# With --steps-bin (group steps_cuda, cnn7 on CIFAR-shaped data, batch 128, one whole step):
#                                 cnn7_cifar_std_b128 cnn7_cifar_ibp_b128 cnn7_cifar_sabr_b128
#                                 cnn7_cifar_cactus_b128
#
# Usage: bash scripts/compare/compare_cuda.sh [--bench-bin PATH] [--steps-bin PATH] [--skip-cactus]
#            [--skip-torch] [--out target/compare-cuda] [options, see --help] [-- CRITERION_ARGS...]
#
# On a lent device machine (its python3 holds a CUDA PyTorch with the nvidia-cuda-nvrtc wheel;
# the ignored path must be named in `carry`), from the checkout that travels:
#     cargo bench --bench kernels_cuda --no-run
#     mkdir -p target/gpu && objcopy --strip-debug target/release/deps/kernels_cuda-<hash> \
#         target/gpu/kernels_cuda                      # ~4 MB instead of ~44 MB
#     run (carry target/gpu): bash scripts/compare/compare_cuda.sh \
#         --bench-bin target/gpu/kernels_cuda --out "$OUT/cmp"  # ~2-3 min; --quick: under 1
# and for the training steps too (cargo bench --bench steps_cuda --no-run, strip it likewise into
# target/gpu/steps_cuda): add --steps-bin target/gpu/steps_cuda (a few minutes more).
# Exit status: 0, or 1 when a side failed or left results missing (the report still prints).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash scripts/compare/compare_cuda.sh [options] [-- extra criterion arguments]

Benchmarks cactus's CUDA kernels (prebuilt criterion binary of benches/kernels_cuda.rs) and
their PyTorch eager twins on this machine's GPU, then prints a Markdown table. With --steps-bin,
also cactus's GPU training steps (benches/steps_cuda.rs: cnn7, CIFAR-shaped, batch 128; std,
IBP, SABR, CACTUS) and their PyTorch twins, in a second table.

Options:
  --bench-bin PATH     the cactus bench binary (default: newest executable
                       target/release/deps/kernels_cuda-*; build it elsewhere with
                       `cargo bench --bench kernels_cuda --no-run`)
  --steps-bin PATH     also the training steps: the prebuilt criterion binary of
                       benches/steps_cuda.rs (`cargo bench --bench steps_cuda --no-run`),
                       run after the kernels binary in the same way (log OUT/cactus_steps.log);
                       the PyTorch side then runs the step twins too (also with --skip-cactus,
                       which leaves the binary unrun)
  --skip-cactus        do not run the bench binary; reuse the results in --criterion-dir
  --skip-torch         do not run PyTorch; reuse OUT/torch.json
  --out DIR            output folder (default target/compare-cuda)
  --criterion-dir DIR  criterion's results (default target/criterion)
  --python PY          Python with a CUDA PyTorch (default: $PYTHON, else python3)
  --nvrtc-dir DIR      folder holding libnvrtc.so.13 (default: searched, see the file's header)
  --tf32               allow TF32 on the PyTorch side (default: strict fp32 on both sides)
  --quick              fewer repetitions on both sides (smoke test; noisier)
  --peak-tflops T      FP32 non-tensor peak for % of peak (default: by GPU name)
  -h, --help           this help
Output: OUT/{cactus.log,torch.json,compare.md,compare.json} (+ OUT/cactus_steps.log with
--steps-bin)
EOF
}

BENCH_BIN=""
STEPS_BIN=""
SKIP_CACTUS=0
SKIP_TORCH=0
OUT="target/compare-cuda"
CRIT_DIR="target/criterion"
PY="${PYTHON:-python3}"
NVRTC_DIR=""
TF32=0
QUICK=0
PEAK=""
EXTRA=()
need() { [[ $# -ge 2 ]] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bench-bin)     need "$@"; BENCH_BIN="$2"; shift 2 ;;
        --bench-bin=*)   BENCH_BIN="${1#*=}"; shift ;;
        --steps-bin)     need "$@"; STEPS_BIN="$2"; shift 2 ;;
        --steps-bin=*)   STEPS_BIN="${1#*=}"; [[ -n "$STEPS_BIN" ]] || { echo "error: --steps-bin needs a value (see --help)" >&2; exit 2; }; shift ;;
        --skip-cactus)   SKIP_CACTUS=1; shift ;;
        --skip-torch)    SKIP_TORCH=1; shift ;;
        --out)           need "$@"; OUT="$2"; shift 2 ;;
        --out=*)         OUT="${1#*=}"; shift ;;
        --criterion-dir) need "$@"; CRIT_DIR="$2"; shift 2 ;;
        --criterion-dir=*) CRIT_DIR="${1#*=}"; shift ;;
        --python)        need "$@"; PY="$2"; shift 2 ;;
        --python=*)      PY="${1#*=}"; shift ;;
        --nvrtc-dir)     need "$@"; NVRTC_DIR="$2"; shift 2 ;;
        --nvrtc-dir=*)   NVRTC_DIR="${1#*=}"; shift ;;
        --tf32)          TF32=1; shift ;;
        --quick)         QUICK=1; shift ;;
        --peak-tflops)   need "$@"; PEAK="$2"; shift 2 ;;
        --peak-tflops=*) PEAK="${1#*=}"; shift ;;
        -h|--help)       usage; exit 0 ;;
        --)              shift; EXTRA=("$@"); break ;;
        *)               echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }
OUT="$(abspath "$OUT")"
CRIT_DIR="$(abspath "$CRIT_DIR")"
[[ -n "$BENCH_BIN" ]] && BENCH_BIN="$(abspath "$BENCH_BIN")"
[[ -n "$STEPS_BIN" ]] && STEPS_BIN="$(abspath "$STEPS_BIN")"
[[ -n "$NVRTC_DIR" ]] && NVRTC_DIR="$(abspath "$NVRTC_DIR")"
TORCH_JSON="$OUT/torch.json"
mkdir -p "$OUT"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
command -v "$PY" >/dev/null 2>&1 || die "no Python '$PY' (use --python PATH or PYTHON=...)"
# One line: OK/NOGPU/NOTORCH and what PY's torch says about the GPU.
torch_probe() {
    "$PY" - <<'PY'
import sys
try:
    import torch
except Exception as e:
    print(f"NOTORCH cannot import torch ({type(e).__name__}: {e})")
    sys.exit(0)
if torch.cuda.is_available():
    print(f"OK torch {torch.__version__} (CUDA {torch.version.cuda}) sees {torch.cuda.get_device_name(0)}")
else:
    print(f"NOGPU torch {torch.__version__} (CUDA {torch.version.cuda}): torch.cuda.is_available() is False")
PY
}
# Folders where PY's nvidia wheels may keep libnvrtc.so.13 (cu13 and older layouts).
wheel_lib_dirs() {
    "$PY" - <<'PY'
import importlib.util, os
seen = []
for mod, subs in (("nvidia", ("cu13/lib", "cuda_nvrtc/lib")), ("nvidia.cu13", ("lib",)),
                  ("nvidia.cuda_nvrtc", ("lib",))):
    try:
        spec = importlib.util.find_spec(mod)
    except Exception:
        continue
    for base in (list(spec.submodule_search_locations or []) if spec else []):
        for sub in subs:
            d = os.path.join(base, sub)
            if d not in seen:
                seen.append(d)
print("\n".join(seen))
PY
}

# ---------------------------------------------------------------- the GPU
SMI_LINE=""
if command -v nvidia-smi >/dev/null 2>&1; then
    SMI_LINE="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)"
fi
DRIVER_CUDA="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1 || true)"
echo "GPU:     ${SMI_LINE:-nvidia-smi not available}${DRIVER_CUDA:+ (driver CUDA $DRIVER_CUDA)}"
if [[ $SKIP_TORCH -eq 0 ]]; then
    TORCH_LINE="$(torch_probe 2>&1)" || true
    case "$TORCH_LINE" in
        OK*) echo "PyTorch: ${TORCH_LINE#OK }" ;;
        NOGPU*) die "no GPU: $PY's ${TORCH_LINE#NOGPU }. Run this on a machine with an NVIDIA GPU and a CUDA build of PyTorch (or --skip-torch)." ;;
        NOTORCH*) die "$PY ${TORCH_LINE#NOTORCH } — pass --python with a CUDA PyTorch, or --skip-torch" ;;
        *) die "could not ask $PY about torch: $TORCH_LINE" ;;
    esac
elif [[ $SKIP_CACTUS -eq 0 && -z "$SMI_LINE" ]]; then
    die "no GPU: nvidia-smi lists none (and --skip-torch leaves no torch to ask)"
fi

STATUS=0
START_EPOCH="$(date +%s)"
NVRTC_USED=""

# ---------------------------------------------------------------- (a) cactus
NAMES=(matmul_4096 conv_fwd_128x128x16x16 iconv_fwd_128x128x16x16 prune_mask_gul1_13M fake_quant_int8_13M)
STEP_NAMES=(cnn7_cifar_std_b128 cnn7_cifar_ibp_b128 cnn7_cifar_sabr_b128 cnn7_cifar_cactus_b128)
if [[ $SKIP_CACTUS -eq 1 ]]; then
    step "cactus: skipped (reusing $CRIT_DIR)"
else
    if [[ -z "$BENCH_BIN" ]]; then
        BENCH_BIN="$(find "$ROOT/target/release/deps" -maxdepth 1 -type f -name 'kernels_cuda-*' \
            ! -name '*.d' -perm -u+x -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n1 | cut -d' ' -f2- || true)"
        [[ -n "$BENCH_BIN" ]] || die "no bench binary: no executable target/release/deps/kernels_cuda-* here.
       Build it where cargo is:  cargo bench --bench kernels_cuda --no-run
       (it prints 'Executable benches/kernels_cuda.rs (target/release/deps/kernels_cuda-<hash>)'),
       bring that file along and pass --bench-bin PATH (or --skip-cactus)."
    fi
    [[ -f "$BENCH_BIN" ]] || die "no bench binary at $BENCH_BIN"
    [[ -x "$BENCH_BIN" ]] || chmod u+x "$BENCH_BIN" 2>/dev/null || die "$BENCH_BIN is not executable"
    if [[ -n "$STEPS_BIN" ]]; then
        [[ -f "$STEPS_BIN" ]] || die "no steps bench binary at $STEPS_BIN (build it where cargo is: cargo bench --bench steps_cuda --no-run)"
        [[ -x "$STEPS_BIN" ]] || chmod u+x "$STEPS_BIN" 2>/dev/null || die "$STEPS_BIN is not executable"
    fi

    # NVRTC: the first folder that holds libnvrtc.so.13.
    has_nvrtc() { [[ -n "$1" && -e "$1/libnvrtc.so.13" ]]; }
    CANDIDATES=()
    if [[ -n "$NVRTC_DIR" ]]; then
        has_nvrtc "$NVRTC_DIR" || die "--nvrtc-dir $NVRTC_DIR holds no libnvrtc.so.13"
        CANDIDATES+=("$NVRTC_DIR")
    fi
    CANDIDATES+=("$ROOT/target/nvrtc")
    while IFS= read -r d; do CANDIDATES+=("$d"); done < <(wheel_lib_dirs 2>/dev/null || true)
    CANDIDATES+=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
    for d in "${CANDIDATES[@]}"; do
        if has_nvrtc "$d"; then NVRTC_USED="$d"; break; fi
    done
    if [[ -n "$NVRTC_USED" ]]; then
        echo "NVRTC:   $NVRTC_USED ($(cd "$NVRTC_USED" && ls libnvrtc-builtins.so.* 2>/dev/null | head -n1 || echo 'no builtins library beside it'))"
        export LD_LIBRARY_PATH="$NVRTC_USED${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        # A newer NVRTC than the driver's CUDA makes code the driver may reject.
        NV_MINOR="$(cd "$NVRTC_USED" && ls libnvrtc-builtins.so.13.* 2>/dev/null | head -n1 | sed -n 's/.*\.so\.13\.\([0-9]*\).*/\1/p')"
        DRV_MINOR="$(sed -n 's/^13\.\([0-9]*\).*/\1/p' <<<"$DRIVER_CUDA")"
        if [[ -n "$NV_MINOR" && -n "$DRV_MINOR" && "$NV_MINOR" -gt "$DRV_MINOR" ]]; then
            echo "WARNING: NVRTC 13.$NV_MINOR is newer than the driver's CUDA $DRIVER_CUDA; if the kernels fail to load," >&2
            echo "         use NVRTC 13.$DRV_MINOR (scripts/gpu/get_nvrtc.sh fetches 13.0 into target/nvrtc; --nvrtc-dir)" >&2
        fi
    elif ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.13 '; then
        NVRTC_USED="(system: ldconfig)"
        echo "NVRTC:   from the system library path"
    else
        die "libnvrtc.so.13 not found (looked in: ${CANDIDATES[*]}, ldconfig).
       Install PyPI's nvidia-cuda-nvrtc (13.x, matching the driver) into $PY, or run
       scripts/gpu/get_nvrtc.sh where there is a network and bring target/nvrtc, or pass --nvrtc-dir."
    fi

    CRIT_ARGS=(--bench --noplot)
    [[ $QUICK -eq 1 ]] && CRIT_ARGS+=(--warm-up-time 1 --measurement-time 2 --sample-size 10)
    CRIT_ARGS+=("${EXTRA[@]}")
    # Run one criterion binary (LABEL, BIN, LOG, GROUP, then the names it must leave fresh
    # results for under CRIT_DIR/GROUP); a failure, a skip or a missing result sets STATUS=1.
    run_cactus_bench() {
        local label="$1" bin="$2" log="$3" group="$4" rc n f
        shift 4
        step "$label: $bin ${CRIT_ARGS[*]}"
        set +e
        CRITERION_HOME="$CRIT_DIR" "$bin" "${CRIT_ARGS[@]}" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        set -e
        if [[ $rc -ne 0 ]]; then
            echo "error: the $label bench binary failed (exit $rc); see $log" >&2
            STATUS=1
        fi
        if grep -q 'SKIPPED' "$log"; then
            echo "error: the $label bench skipped: it found no usable GPU ($(grep -m1 SKIPPED "$log"))" >&2
            STATUS=1
        fi
        local missing=()
        for n in "$@"; do
            f="$CRIT_DIR/$group/$n/new/estimates.json"
            if [[ ! -f "$f" ]] || [[ "$(stat -c %Y "$f")" -lt "$START_EPOCH" ]]; then missing+=("$n"); fi
        done
        if [[ ${#missing[@]} -gt 0 && ${#EXTRA[@]} -eq 0 ]]; then
            echo "error: no fresh cactus result for: ${missing[*]} (under $CRIT_DIR/$group)" >&2
            STATUS=1
        fi
    }
    mkdir -p "$CRIT_DIR"
    run_cactus_bench "cactus" "$BENCH_BIN" "$OUT/cactus.log" kernels_cuda "${NAMES[@]}"
    # The training steps (benches/steps_cuda.rs), the same way, after the kernels.
    if [[ -n "$STEPS_BIN" ]]; then
        run_cactus_bench "cactus steps" "$STEPS_BIN" "$OUT/cactus_steps.log" steps_cuda \
            "${STEP_NAMES[@]}"
    fi
fi

# ---------------------------------------------------------------- (b) PyTorch
if [[ $SKIP_TORCH -eq 1 ]]; then
    step "PyTorch: skipped (reusing $TORCH_JSON)"
else
    TORCH_ARGS=(--device cuda --out "$TORCH_JSON")
    if [[ -n "$STEPS_BIN" ]]; then TORCH_ARGS+=(--group all); else TORCH_ARGS+=(--group kernels_cuda); fi
    [[ $TF32 -eq 1 ]] && TORCH_ARGS+=(--tf32)
    [[ $QUICK -eq 1 ]] && TORCH_ARGS+=(--quick)
    [[ -n "$PEAK" ]] && TORCH_ARGS+=(--peak-tflops "$PEAK")
    step "PyTorch: scripts/compare/bench_torch_cuda.py ${TORCH_ARGS[*]}"
    if ! PYTHONUNBUFFERED=1 "$PY" "$ROOT/scripts/compare/bench_torch_cuda.py" "${TORCH_ARGS[@]}"; then
        echo "error: bench_torch_cuda.py failed; the report will lack PyTorch results" >&2
        STATUS=1
    fi
fi

# ---------------------------------------------------------------- (c) report
step "report"
REPORT_ARGS=(--criterion-dir "$CRIT_DIR" --torch-json "$TORCH_JSON" --out-dir "$OUT"
             --bench-bin "$BENCH_BIN")
[[ -n "$STEPS_BIN" ]] && REPORT_ARGS+=(--steps-bin "$STEPS_BIN")
[[ -n "$NVRTC_USED" ]] && REPORT_ARGS+=(--nvrtc-dir "$NVRTC_USED")
[[ $SKIP_CACTUS -eq 0 ]] && REPORT_ARGS+=(--since "$START_EPOCH")
[[ -n "$PEAK" ]] && REPORT_ARGS+=(--peak-tflops "$PEAK")
"$PY" "$ROOT/scripts/compare/bench_torch_cuda.py" report "${REPORT_ARGS[@]}" || STATUS=1
exit $STATUS
