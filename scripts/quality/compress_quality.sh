#!/usr/bin/env bash
# compress_quality.sh — the compression comparison: a model trained with SABR and with CACTUS
# (pruning, quantization, both) at one ε on mnist-mini (8 epochs) and on Fashion-MNIST (first
# 20,000 training images, 3 epochs), seeds 0 1 2, by cactus and by the PyTorch twin
# scripts/twin/torch_certified.py, each evaluated on the same grid: unpruned at fp32/fp16/int8/int4,
# and pruned (lul1, gul1, gsl2) at 0.5/0.7/0.9/0.95/0.99. One run at a time. Resumable: finished
# runs are skipped, a stopped cactus run is resumed (or only evaluated, if its training ended).
# Then prints the tables (scripts/quality/compress_table.py).
#
# Variants: sabr = --method sabr; cactus-prune = --method cactus --compress prune;
#           cactus-quant = --method cactus --compress quant;
#           cactus-both = --method cactus --compress prune+quant
# (every other CACTUS option at its default: gul1, sampling, η 0.5, one AWP step).
#
# Usage: bash scripts/quality/compress_quality.sh [--engines cactus,torch]
#            [--datasets mnist-mini,fashion-mnist]
#            [--variants sabr,cactus-prune,cactus-quant,cactus-both] [--seeds 0,1,2]
#            [--eps 0.1] [--model small] [--width 1] [--threads 2] [--out out/compress]
#            [--eval-limit N]   (evaluate on the first N test points only; default: all)
# Runs are named ENGINE-DATASET-eEPS-MODEL-VARIANT-sSEED (MODEL is cnn7w<WIDTH> for cnn7): a
# directory for cactus (report.json, history.json, model.safetensors), a JSON file (and .log) for
# torch.
# Needs: data/fashion-mnist (scripts/data/get_fashion_mnist.sh), .venv-bench with torch
# (scripts/twin/torch_certified.sh creates it on first use). Output: out/compress/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

ENGINES=cactus,torch DATASETS=mnist-mini,fashion-mnist SEEDS=0,1,2 THREADS=2 EPS=0.1
VARIANTS=sabr,cactus-prune,cactus-quant,cactus-both MODEL=small WIDTH=1 OUT=out/compress
EVAL_LIMIT=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --engines) ENGINES="$2"; shift 2 ;;
        --datasets) DATASETS="$2"; shift 2 ;;
        --variants) VARIANTS="$2"; shift 2 ;;
        --seeds) SEEDS="$2"; shift 2 ;;
        --eps) EPS="$2"; shift 2 ;;
        --model) MODEL="$2"; shift 2 ;;
        --width) WIDTH="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --eval-limit) EVAL_LIMIT="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

# The evaluation grid (the same for both engines).
PRUNE=none,lul1,gul1,gsl2 RATIOS=0.5,0.7,0.9,0.95,0.99 QUANT=fp32,fp16,int8,int4

case "$MODEL" in
    small) model_args=(--model small); tag=small ;;
    cnn7) model_args=(--model cnn7 --width "$WIDTH"); tag="cnn7w$WIDTH" ;;
    *) echo "unknown model $MODEL (small or cnn7)" >&2; exit 2 ;;
esac

cactus_limit=() torch_limit=()
if [[ -n "$EVAL_LIMIT" ]]; then
    cactus_limit=(--limit "$EVAL_LIMIT") torch_limit=(--limit-test "$EVAL_LIMIT")
fi

mkdir -p "$OUT"
[[ ",$ENGINES," == *,cactus,* ]] && cargo build --release --quiet
export RAYON_NUM_THREADS="$THREADS"

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
            cactus-both) method=(--method cactus --compress prune+quant) ;;
            *) echo "unknown variant $variant" >&2; exit 2 ;;
        esac
        for seed in ${SEEDS//,/ }; do
            for engine in ${ENGINES//,/ }; do
                name="$engine-$dataset-e$EPS-$tag-$variant-s$seed"
                case "$engine" in
                    cactus)
                        dir="$OUT/$name"
                        [[ -f "$dir/report.json" ]] && continue
                        echo "== $name"
                        resume=()
                        [[ -f "$dir/train_state.safetensors" || -f "$dir/manifest.json" ]] && resume=(--resume)
                        # A finished run given --resume trains no further epochs.
                        ./target/release/cactus train "${method[@]}" "${model_args[@]}" \
                            --dataset "$dataset" "${data[@]}" --eps "$EPS" --seed "$seed" \
                            "${extra[@]}" --out "$dir" --quiet --no-eval "${resume[@]}"
                        # The test split of the training's dataset; --data where it has files.
                        ./target/release/cactus eval --checkpoint "$dir/model.safetensors" \
                            "${data[@]}" --prune "$PRUNE" --ratios "$RATIOS" --quant "$QUANT" \
                            "${cactus_limit[@]}" --out "$dir" --quiet
                        ;;
                    torch)
                        file="$OUT/$name.json"
                        [[ -f "$file" ]] && continue
                        echo "== $name"
                        bash scripts/twin/torch_certified.sh "${method[@]}" "${model_args[@]}" \
                            --dataset "$dataset" "${data[@]}" --eps "$EPS" --seed "$seed" \
                            "${extra[@]}" --eval-prune "$PRUNE" --eval-ratios "$RATIOS" --eval-quant "$QUANT" \
                            "${torch_limit[@]}" --threads "$THREADS" --out "$file" > "$OUT/$name.log"
                        ;;
                    *) echo "unknown engine $engine" >&2; exit 2 ;;
                esac
            done
        done
    done
done
python3 scripts/quality/compress_table.py "$OUT"
