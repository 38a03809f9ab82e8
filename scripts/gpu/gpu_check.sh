#!/usr/bin/env bash
# gpu_check.sh — run cactus's prebuilt CUDA parity tests (and optionally the kernel comparison
# with PyTorch and a compute-sanitizer pass) on a GPU machine that has no Rust toolchain.
#
# Where cargo is, in the repo root, build and strip the binaries into one folder:
#     bash scripts/gpu/gpu_check.sh --prepare       # -> target/gpu/{cuda_*,kernels_cuda,steps_cuda}
# (every tests/cuda_*.rs and benches/*_cuda.rs, and the cactus binary), then, on the GPU machine, from the same checkout with target/gpu beside it:
#     bash scripts/gpu/gpu_check.sh --out DIR [--compare] [--sanitize SECONDS]
# Each test binary's log lands in DIR/<name>.log and a summary line per binary on stdout; with
# --compare, scripts/compare/compare_cuda.sh writes DIR/cmp/compare.md (kernels_cuda and steps_cuda
# against PyTorch), then the kernels and the SABR step run again with CACTUS_GEMM_TILES=64x64;
# with --sanitize, each test binary runs again under `compute-sanitizer --tool memcheck`
# (at most SECONDS each). Exit status 1 when a test failed or was skipped for want of a GPU.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BIN_DIR="target/gpu"
OUT_DIR="target/gpu-out"
COMPARE=0
SANITIZE=0
PREPARE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --prepare) PREPARE=1; shift ;;
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --compare) COMPARE=1; shift ;;
        --sanitize) SANITIZE="$2"; shift 2 ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# Newest executable cargo printed for a test or bench target.
newest() { ls -t target/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -n1; }

if [[ $PREPARE == 1 ]]; then
    # Cargo's status, and its own diagnostics at the start of a line (a crate such as
    # `thiserror` must not read as an error).
    log="$(cargo test --release --no-run 2>&1)" || { echo "$log" >&2; exit 1; }
    grep -E '^(error|warning: unused)' <<<"$log" >&2 && exit 1
    benches=(benches/*_cuda.rs)
    cargo bench $(for b in "${benches[@]}"; do echo --bench "$(basename "$b" .rs)"; done) \
        --no-run >/dev/null 2>&1 || {
        echo "gpu_check.sh: cargo bench --no-run failed" >&2; exit 1; }
    mkdir -p "$BIN_DIR"
    for src in tests/cuda_*.rs "${benches[@]}"; do
        name="$(basename "$src" .rs)"
        exe="$(newest "$name")"
        [[ -n "$exe" ]] || { echo "gpu_check.sh: no binary for $src" >&2; exit 1; }
        objcopy --strip-debug "$exe" "$BIN_DIR/$name"
    done
    cargo build --release --bin cactus >/dev/null 2>&1 || {
        echo "gpu_check.sh: cargo build --release failed" >&2; exit 1; }
    objcopy --strip-debug target/release/cactus "$BIN_DIR/cactus"
    du -sh "$BIN_DIR"
    exit 0
fi

mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    || echo "nvidia-smi: not available"
# NVRTC: the Python's nvidia wheels (PyTorch's CUDA builds ship it), else the CUDA toolkit.
NVRTC="$(python3 - <<'PY' 2>/dev/null
import importlib.util, os, glob
for mod in ("nvidia",):
    spec = importlib.util.find_spec(mod)
    for base in (spec.submodule_search_locations or []) if spec else []:
        hits = glob.glob(os.path.join(base, "**", "libnvrtc.so.13"), recursive=True)
        if hits:
            print(os.path.dirname(hits[0]))
            raise SystemExit
PY
)"
[[ -z "$NVRTC" && -e /usr/local/cuda/lib64/libnvrtc.so.13 ]] && NVRTC=/usr/local/cuda/lib64
[[ -e target/nvrtc/libnvrtc.so.13 ]] && NVRTC="$ROOT/target/nvrtc"
echo "NVRTC: ${NVRTC:-not found} ($(ls "$NVRTC"/libnvrtc-builtins.so.* 2>/dev/null | head -n1))"
export LD_LIBRARY_PATH="${NVRTC}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CACTUS_REQUIRE_NVRTC=1
export CACTUS_REQUIRE_CUDA=1

status=0
for exe in "$BIN_DIR"/cuda_*; do
    name="$(basename "$exe")"
    start=$SECONDS
    "$exe" --test-threads=1 --nocapture >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    skipped=$(grep -c 'SKIPPED' "$OUT_DIR/$name.log")
    summary=$(grep -E '^test result' "$OUT_DIR/$name.log" | tail -n1)
    echo "$name: rc=$rc, $((SECONDS - start)) s, skipped=$skipped: $summary"
    grep -E "FAILED|panicked" "$OUT_DIR/$name.log" | head -n 20
    [[ $rc != 0 || $skipped != 0 ]] && status=1
done

# Every GEMM tile shape's entry points (the automatic choice keeps small test shapes on 64x64).
for tiles in 64x64 128x64 64x128 128x128 16x256; do
    for name in cuda_conv cuda_ops; do
        [[ -x "$BIN_DIR/$name" ]] || continue
        CACTUS_GEMM_TILES=$tiles "$BIN_DIR/$name" --test-threads=1 >"$OUT_DIR/$name.$tiles.log" 2>&1
        rc=$?
        echo "$name with CACTUS_GEMM_TILES=$tiles: rc=$rc: $(grep -E '^test result' "$OUT_DIR/$name.$tiles.log" | tail -n1)"
        [[ $rc != 0 ]] && status=1
    done
done

if [[ $COMPARE == 1 ]]; then
    steps=()
    [[ -x "$BIN_DIR/steps_cuda" ]] && steps=(--steps-bin "$BIN_DIR/steps_cuda")
    bash scripts/compare/compare_cuda.sh --bench-bin "$BIN_DIR/kernels_cuda" "${steps[@]}" \
        --out "$OUT_DIR/cmp" ${NVRTC:+--nvrtc-dir "$NVRTC"} || status=1
    # The kernels and the SABR step with the 64x64 tiles only, in the same run: what the other
    # tile shapes gain.
    for bench in kernels_cuda steps_cuda; do
        [[ -x "$BIN_DIR/$bench" ]] || continue
        filter=()
        [[ $bench == steps_cuda ]] && filter=(sabr)
        CACTUS_GEMM_TILES=64x64 "$BIN_DIR/$bench" --bench "${filter[@]}" \
            >"$OUT_DIR/$bench.64x64.log" 2>&1 || status=1
        grep -E "^[a-z0-9_]+/|time:" "$OUT_DIR/$bench.64x64.log" | paste - - | sed 's/^/64x64 only: /'
    done
fi

if [[ $SANITIZE != 0 ]]; then
    for exe in "$BIN_DIR"/cuda_*; do
        name="$(basename "$exe")"
        timeout "$SANITIZE" compute-sanitizer --tool memcheck --print-limit 20 "$exe" \
            --test-threads=1 >"$OUT_DIR/$name.memcheck.log" 2>&1
        echo "memcheck $name: rc=$? $(grep -E 'ERROR SUMMARY' "$OUT_DIR/$name.memcheck.log" | tail -n1)"
    done
fi
exit $status
