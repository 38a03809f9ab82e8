#!/usr/bin/env bash
# verify_quality.sh — the verifier comparison: `small` trained with SABR and with CACTUS (pruning)
# at ε = 0.1 on mnist-mini (8 epochs) and on Fashion-MNIST (first 20,000 training images,
# 3 epochs), the settings of scripts/quality/compress_quality.sh, then each network certified by the
# cascade IBP → CROWN → α-CROWN → branch and bound, as it is, pruned by LUL1 at 0.7 and by GSL2
# at 0.5, and quantized to int8. One run at a time; resumable (finished runs are skipped, their
# networks reused). Then prints the table (scripts/quality/verify_table.py).
#
# Usage: bash scripts/quality/verify_quality.sh [--datasets mnist-mini,fashion-mnist]
#            [--variants sabr,cactus-prune] [--seeds 0,1,2] [--limit 200] [--bab-timeout 5]
#            [--threads 2] [--out out/verify]
# Output: out/verify/NAME/ (model, report-*.json, points-*.jsonl).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DATASETS=mnist-mini,fashion-mnist VARIANTS=sabr,cactus-prune SEEDS=0,1,2 LIMIT=200
BAB_TIMEOUT=5 THREADS=2 OUT=out/verify EPS=0.1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --datasets) DATASETS="$2"; shift 2 ;;
        --variants) VARIANTS="$2"; shift 2 ;;
        --seeds) SEEDS="$2"; shift 2 ;;
        --limit) LIMIT="$2"; shift 2 ;;
        --bab-timeout) BAB_TIMEOUT="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

mkdir -p "$OUT"
cargo build --release --quiet
export RAYON_NUM_THREADS="$THREADS"
cascade=(--certifier ibp,crown,alpha-crown,bab --unsound --bab-timeout "$BAB_TIMEOUT" --limit "$LIMIT")

for dataset in ${DATASETS//,/ }; do
    case "$dataset" in
        mnist-mini) data=() extra=(--epochs 8) ;;
        fashion-mnist)
            [[ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]] \
                || bash scripts/data/get_fashion_mnist.sh
            data=(--data data/fashion-mnist) extra=(--limit-train 20000 --epochs 3) ;;
        *) echo "unknown dataset $dataset" >&2; exit 2 ;;
    esac
    for variant in ${VARIANTS//,/ }; do
        case "$variant" in
            sabr) method=(--method sabr) ;;
            cactus-prune) method=(--method cactus --compress prune) ;;
            cactus-quant) method=(--method cactus --compress quant) ;;
            *) echo "unknown variant $variant" >&2; exit 2 ;;
        esac
        for seed in ${SEEDS//,/ }; do
            name="$dataset-e$EPS-small-$variant-s$seed"
            dir="$OUT/$name"
            [[ -f "$dir/report-gsl2.json" ]] && continue
            echo "== $name"
            if [[ ! -f "$dir/history.json" ]] || [[ -f "$dir/train_state.safetensors" && ! -f "$dir/trained" ]]; then
                resume=()
                [[ -f "$dir/train_state.safetensors" || -f "$dir/manifest.json" ]] && resume=(--resume)
                ./target/release/cactus train "${method[@]}" --model small --dataset "$dataset" \
                    "${data[@]}" --eps "$EPS" --seed "$seed" "${extra[@]}" --out "$dir" \
                    --quiet --no-eval "${resume[@]}"
                touch "$dir/trained"
            fi
            # Two evaluations: the network as it is, int8 and LUL1 0.7; then GSL2 0.5.
            ./target/release/cactus eval --checkpoint "$dir/model.safetensors" "${data[@]}" \
                --prune lul1 --ratios 0.7 --quant fp32,int8 "${cascade[@]}" \
                --per-point "$dir/points-lul1.jsonl" --out "$dir/eval-lul1" --quiet
            cp "$dir/eval-lul1/report.json" "$dir/report-lul1.json"
            ./target/release/cactus eval --checkpoint "$dir/model.safetensors" "${data[@]}" \
                --prune gsl2 --ratios 0.5 "${cascade[@]}" \
                --per-point "$dir/points-gsl2.jsonl" --out "$dir/eval-gsl2" --quiet
            cp "$dir/eval-gsl2/report.json" "$dir/report-gsl2.json"
        done
    done
done
python3 scripts/quality/verify_table.py "$OUT"
