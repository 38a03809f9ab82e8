#!/usr/bin/env bash
# get_nvrtc.sh [DIR] — put NVRTC 13.0 (libnvrtc.so.13 and libnvrtc-builtins.so.13.0, from PyPI's
# wheel nvidia-cuda-nvrtc==13.0.88) in DIR (default target/nvrtc) and print DIR. With it on
# LD_LIBRARY_PATH, the CUDA kernels compile without a GPU or a CUDA toolkit. Pinned to 13.0: the
# GPUs here run driver 580 (CUDA 13.0), which rejects code from a newer NVRTC.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DIR="${1:-target/nvrtc}"
if [[ -f "$DIR/libnvrtc.so.13" && -f "$DIR/libnvrtc-builtins.so.13.0" ]]; then
    cd "$DIR" && pwd && exit 0
fi
mkdir -p "$DIR"
WHEELS="$DIR/wheel"
mkdir -p "$WHEELS"
python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_12_x86_64 \
    --python-version 3.11 nvidia-cuda-nvrtc==13.0.88 -d "$WHEELS" >&2
python3 - "$DIR" "$WHEELS" <<'PY'
import glob, sys, zipfile
out, wheels = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{wheels}/nvidia_cuda_nvrtc-13.0.88-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for name in ("libnvrtc.so.13", "libnvrtc-builtins.so.13.0"):
        member = next(n for n in z.namelist() if n.endswith("/lib/" + name))
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(member))
PY
rm -rf "$WHEELS"
cd "$DIR" && pwd
