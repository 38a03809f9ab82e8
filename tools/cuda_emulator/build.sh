#!/usr/bin/env bash
# Build the CUDA emulator (an emulated libcuda.so.1 and libnvrtc.so.13 that run src/**/*.cu on
# the CPU) into a folder and print the folder; put it first on LD_LIBRARY_PATH to use it.
# Usage: bash tools/cuda_emulator/build.sh [OUT_DIR]   (default: target/cuda-emulator)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../target/cuda-emulator}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cxx="${CXX:-c++}"
if ! command -v "$cxx" >/dev/null 2>&1; then
    echo "the CUDA emulator needs a C++17 compiler (\$CXX or c++); none found" >&2
    exit 1
fi
flags=(-std=c++17 -O2 -fPIC -shared -Wall -Wextra -Wno-unused-parameter)
"$cxx" "${flags[@]}" "$here/driver.cpp" -o "$out/libcuda.so.1" -ldl
"$cxx" "${flags[@]}" -DCACTUS_EMU_DIR="\"$here\"" "$here/nvrtc.cpp" -o "$out/libnvrtc.so.13"
ln -sf libcuda.so.1 "$out/libcuda.so"
ln -sf libnvrtc.so.13 "$out/libnvrtc.so"
# The emulator's own checks (barriers, shuffles, deadlock detection, indices).
"$cxx" -std=c++17 -O2 -ffp-contract=off -Wall -Wextra -Wno-unused-parameter \
    "$here/selftest.cpp" -o "$out/selftest"
"$out/selftest" >&2
echo "$out"
