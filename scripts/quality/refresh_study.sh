#!/usr/bin/env bash
# CACTUS set caching (--refresh-every K): trains the README's default CACTUS run (`small`,
# pruning by GUL1 at a ratio drawn from U(0.25, 0.75), ε = 0.1) for each K and seed, one run at
# a time, with the default final evaluation, and records each run's wall time next to it
# (OUT/NAME/wall_seconds). `python3 scripts/quality/refresh_table.py OUT` prints the table.
#
# Usage: bash scripts/quality/refresh_study.sh [--out out/refresh] [--ks 1,4,16] [--seeds 0,1,2]
#            [--datasets mnist-mini,fashion-mnist] [--threads 2] [--bin PATH] [--eval-limit N]
#            [--compress prune|quant|prune+quant]
# mnist-mini: 8 epochs, the whole test split; fashion-mnist: the first 20,000 training images,
# 3 epochs, the first 5,000 test images (as docs/results.md's CACTUS-against-SABR tables).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=out/refresh KS=1,4,16 SEEDS=0,1,2 DATASETS=mnist-mini THREADS=2 BIN="" EVAL_LIMIT="" COMPRESS=prune
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --ks) KS="$2"; shift 2 ;;
        --seeds) SEEDS="$2"; shift 2 ;;
        --datasets) DATASETS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --bin) BIN="$2"; shift 2 ;;
        --eval-limit) EVAL_LIMIT="$2"; shift 2 ;;
        --compress) COMPRESS="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [[ -z "$BIN" ]]; then
    cargo build --release --quiet
    BIN="${CARGO_TARGET_DIR:-target}/release/cactus"
fi
export RAYON_NUM_THREADS="$THREADS"
mkdir -p "$OUT"
for dataset in ${DATASETS//,/ }; do
    case "$dataset" in
        mnist-mini) extra=() ;;
        fashion-mnist)
            [[ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]] \
                || bash scripts/data/get_fashion_mnist.sh
            extra=(--dataset fashion-mnist --data data/fashion-mnist --limit-train 20000
                   --epochs 3 --eval-limit "${EVAL_LIMIT:-5000}") ;;
        *) echo "unknown dataset $dataset" >&2; exit 2 ;;
    esac
    [[ "$dataset" == mnist-mini && -n "$EVAL_LIMIT" ]] && extra+=(--eval-limit "$EVAL_LIMIT")
    for seed in ${SEEDS//,/ }; do
        for k in ${KS//,/ }; do
            dir="$OUT/$dataset-k$k-s$seed"
            [[ -f "$dir/report.json" ]] && continue
            rm -rf "$dir"
            echo "== $dir"
            start=$(date +%s.%N)
            "$BIN" train "${extra[@]}" --compress "$COMPRESS" --seed "$seed" --refresh-every "$k" --out "$dir" \
                2> "$dir.log"
            end=$(date +%s.%N)
            echo "$end - $start" | bc > "$dir/wall_seconds"
        done
    done
done
