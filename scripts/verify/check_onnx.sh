#!/usr/bin/env bash
# Check `cactus export` with tools that are not cactus: onnx.checker (full check) and
# onnxruntime, on mlp, small and cnn7 (with batch norm), plain, pruned, int8 per channel
# (dequantized and as stored, QDQ), int4 and fp16 (as stored): onnxruntime's logits must match
# cactus's within 1e-5 of their scale on random inputs (scripts/verify/check_onnx.py).
#
#   bash scripts/verify/check_onnx.sh [WORKDIR]
#
# Installs onnx and onnxruntime from PyPI into WORKDIR/site (default: target/onnx-check); exits
# 3 when they cannot be installed (no network), 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${1:-target/onnx-check}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
export PYTHONPATH="$WORK/site"
if ! python3 -c "import onnx, onnxruntime, numpy" 2>/dev/null; then
    python3 -m pip install -q --disable-pip-version-check --target "$WORK/site" \
        onnx onnxruntime numpy >&2 || { echo "could not install onnx and onnxruntime" >&2; exit 3; }
fi
PY=python3
cargo build --release -q
C=target/release/cactus
NETS="$WORK/nets"
rm -rf "$NETS" && mkdir -p "$NETS"

# Briefly trained networks (batch-norm statistics and normalisation that are not defaults).
for model in mlp small cnn7; do
    "$C" train --model "$model" --width 0.25 --init ibp --method ibp --epochs 1 --limit-train 256 \
        --warmup-batches 0 --ramp-batches 2 --no-eval --seed 1 --out "$NETS/$model-run" >/dev/null
    ckpt="$NETS/$model-run/model.safetensors"
    "$C" compress --checkpoint "$ckpt" --prune gul1 --ratio 0.7 --out "$NETS/$model-pruned.safetensors" >/dev/null
    "$C" compress --checkpoint "$ckpt" --prune gul1 --ratio 0.5 --quant int8 --granularity per-channel \
        --out "$NETS/$model-int8.safetensors" >/dev/null
    "$C" compress --checkpoint "$ckpt" --quant int4 --out "$NETS/$model-int4.safetensors" >/dev/null
    "$C" compress --checkpoint "$ckpt" --quant fp16 --out "$NETS/$model-fp16.safetensors" >/dev/null
    for variant in plain pruned int8 int8-qdq int4-qdq fp16-qdq; do
        case "$variant" in
            plain) src="$ckpt"; flags="" ;;
            *-qdq) src="$NETS/$model-${variant%-qdq}.safetensors"; flags="--qdq" ;;
            *) src="$NETS/$model-$variant.safetensors"; flags="" ;;
        esac
        # shellcheck disable=SC2086
        "$C" export --checkpoint "$src" --onnx "$NETS/$model-$variant/net.onnx" --test-data 4 \
            --seed 3 $flags >/dev/null
    done
done
"$PY" scripts/verify/check_onnx.py --rtol 1e-5 $(dirname "$NETS"/*/net.onnx)
