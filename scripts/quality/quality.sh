#!/usr/bin/env bash
# quality.sh — the accuracy comparison of the README: `small` trained with IBP and SABR at
# ε = 0.1 on mnist-mini (8 epochs, the default run) and on Fashion-MNIST (first 20,000 training
# images, 3 epochs), seeds 0 1 2, by cactus and by the PyTorch twin scripts/twin/torch_certified.py,
# one run at a time. Resumable: finished runs are skipped, a stopped cactus run is resumed.
# Then prints the table (scripts/quality/quality_table.py).
#
# Usage: bash scripts/quality/quality.sh [--engines cactus,torch]
#            [--datasets mnist-mini,fashion-mnist] [--methods ibp,sabr] [--seeds 0,1,2]
#            [--threads 2] [--out out/quality]
# Needs: data/fashion-mnist (scripts/data/get_fashion_mnist.sh), .venv-bench with torch
# (scripts/twin/torch_certified.sh creates it on first use). Output: out/quality/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

ENGINES=cactus,torch DATASETS=mnist-mini,fashion-mnist METHODS=ibp,sabr SEEDS=0,1,2 THREADS=2
OUT=out/quality
while [[ $# -gt 0 ]]; do
    case "$1" in
        --engines) ENGINES="$2"; shift 2 ;;
        --datasets) DATASETS="$2"; shift 2 ;;
        --methods) METHODS="$2"; shift 2 ;;
        --seeds) SEEDS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

mkdir -p "$OUT"
cargo build --release --quiet
export RAYON_NUM_THREADS="$THREADS"

for dataset in ${DATASETS//,/ }; do
    case "$dataset" in
        mnist-mini) extra=(--epochs 8) ;;
        fashion-mnist)
            [[ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]] \
                || bash scripts/data/get_fashion_mnist.sh
            extra=(--data data/fashion-mnist --limit-train 20000 --epochs 3) ;;
        *) echo "unknown dataset $dataset" >&2; exit 2 ;;
    esac
    for method in ${METHODS//,/ }; do
        for seed in ${SEEDS//,/ }; do
            for engine in ${ENGINES//,/ }; do
                name="$engine-$dataset-$method-s$seed"
                case "$engine" in
                    cactus)
                        dir="$OUT/$name"
                        [[ -f "$dir/report.json" ]] && continue
                        resume=()
                        [[ -f "$dir/train_state.safetensors" || -f "$dir/manifest.json" ]] && resume=(--resume)
                        echo "== $name"
                        ./target/release/cactus train --method "$method" --dataset "$dataset" \
                            --eps 0.1 --seed "$seed" "${extra[@]}" --out "$dir" --quiet "${resume[@]}"
                        ;;
                    torch)
                        file="$OUT/$name.json"
                        [[ -f "$file" ]] && continue
                        echo "== $name"
                        bash scripts/twin/torch_certified.sh --method "$method" \
                            --dataset "$dataset" --eps 0.1 --seed "$seed" "${extra[@]}" \
                            --threads "$THREADS" --out "$file" > "$OUT/$name.log"
                        ;;
                    *) echo "unknown engine $engine" >&2; exit 2 ;;
                esac
            done
        done
    done
done
python3 scripts/quality/quality_table.py "$OUT"
