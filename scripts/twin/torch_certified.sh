#!/usr/bin/env bash
# torch_certified.sh — run scripts/twin/torch_certified.py (the PyTorch twin of cactus's certified
# training and evaluation) in the venv .venv-bench at the repo root, creating it on first use
# with `pip install torch numpy` (a large download, done once; shared with compare_pytorch.sh).
#
# Usage: bash scripts/twin/torch_certified.sh --method sabr --dataset mnist-mini --epochs 10 \
#            --seed 0 --threads 2 --out out/torch_sabr_s0.json
#        (all arguments go to torch_certified.py; see its --help)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-bench"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating virtual environment $VENV" >&2
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import torch, numpy' 2>/dev/null; then
    echo "installing torch and numpy into $VENV (large download, done once)" >&2
    "$VENV/bin/python" -m pip install --upgrade pip >/dev/null || true
    "$VENV/bin/python" -m pip install torch numpy >&2
fi
exec "$VENV/bin/python" "$ROOT/scripts/twin/torch_certified.py" "$@"
