#!/usr/bin/env bash
# Run the GPU parity tests (tests/cuda_*.rs) without a GPU, on the CPU emulator of
# tools/cuda_emulator: the same Rust code, launch wrappers and kernels (src/**/*.cu) as on a GPU, with
# the driver and NVRTC replaced by emulated ones that build the kernels with the host C++
# compiler and run them on the CPU. A skipped test is a failure here (CACTUS_REQUIRE_CUDA).
# tests/cuda_kernels.rs is left out: it checks the real NVRTC's output. Then the command line:
# `cactus train --device cuda` (CACTUS, a few batches) and `cactus eval` of its checkpoint on the
# emulated GPU and on the CPU must give the same report.
# Usage: bash scripts/gpu/test_cuda_emulated.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
emulator="$(bash tools/cuda_emulator/build.sh target/cuda-emulator)"
tests=()
for f in tests/cuda_*.rs; do
    name="$(basename "$f" .rs)"
    [ "$name" = cuda_kernels ] || tests+=(--test "$name")
done
export LD_LIBRARY_PATH="$emulator${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CACTUS_EMU_CACHE="$emulator/modules"
# The emulated NVRTC's output names a library under CACTUS_EMU_CACHE: keep its entries apart
# from real CUBINs in the kernel cache.
export CACTUS_KERNEL_CACHE="$emulator/kernel-cache"
export CACTUS_REQUIRE_CUDA=1
# Buffers exactly as long as asked: an access past a buffer's end hits the emulator's guard page.
export CACTUS_EXACT_BUFFERS=1
echo "GPU parity tests on the CPU emulator ($emulator): ${tests[*]}" >&2
cargo test --release --locked "${tests[@]}" "$@"
# Every GEMM tile shape's entry points (the automatic choice keeps small test shapes on 64x64).
for tiles in 64x64 128x64 64x128 128x128 16x256; do
    echo "conv, GEMM and op tests with CACTUS_GEMM_TILES=$tiles" >&2
    CACTUS_GEMM_TILES=$tiles cargo test --release --locked --test cuda_conv --test cuda_ops "$@"
done

# The command line on the emulated GPU: train, then evaluate on both devices.
cargo build --release --locked --bin cactus
run_dir="$(mktemp -d)"
trap 'rm -rf "$run_dir"' EXIT
./target/release/cactus train --device cuda --method cactus --epochs 1 --limit-train 256 \
    --batch-size 64 --no-eval --out "$run_dir/run"
grid=(--limit 64 --prune gul1,gsl2,2:4 --ratios 0.5,0.9 --quant fp32,int8)
./target/release/cactus eval --device cuda --checkpoint "$run_dir/run/model.safetensors" \
    "${grid[@]}" --out "$run_dir/gpu"
./target/release/cactus eval --device cpu --checkpoint "$run_dir/run/model.safetensors" \
    "${grid[@]}" --out "$run_dir/cpu"
# Every column but the last (the certifiers' seconds, which differ by device).
if ! diff <(cut -d, -f1-8 "$run_dir/gpu/report.csv") <(cut -d, -f1-8 "$run_dir/cpu/report.csv"); then
    echo "cactus eval: the emulated GPU and the CPU disagree on the report above" >&2
    exit 1
fi
echo "cactus train/eval --device cuda on the emulator: the same report as the CPU's" >&2
