#!/usr/bin/env bash
# crosscheck_auto_lirpa.sh — run scripts/verify/crosscheck_auto_lirpa.py (cactus's CROWN /
# CROWN-IBP / alpha-CROWN bounds against auto_LiRPA's) in a virtual environment outside the repo,
# creating it on first use (idempotent: a venv that already imports torch and auto_LiRPA is used
# as it is).
#
#   LIRPA_VENV       the venv (default .venv-lirpa in the repository, ignored by git)
#   AUTO_LIRPA_SRC   a checkout of auto_LiRPA (GitHub: Verified-Intelligence/auto_LiRPA; checked
#                    with its May 2026 release, version 0.7.1) to install from (default
#                    .auto_LiRPA in the repository, cloned from GitHub when missing)
#   TORCH_SPEC       the torch to install (default torch==2.8.0; auto_LiRPA needs >=2.0,<2.9)
#
# torch comes from PyPI (a large download: the CUDA build, which also runs on the CPU).
# auto_LiRPA is installed with --no-deps (its requirements pin test tools and torchvision,
# which bounding does not need); its run-time needs are installed here.
#
# Usage: bash scripts/verify/crosscheck_auto_lirpa.sh --checkpoint out/x/model.safetensors \
#            --per-point out/x/per_point.jsonl --eps 0.1 [--method crown] [--row 0] ...
#        (all arguments go to crosscheck_auto_lirpa.py; see its --help)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${LIRPA_VENV:-$ROOT/.venv-lirpa}"
SRC="${AUTO_LIRPA_SRC:-$ROOT/.auto_LiRPA}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.8.0}"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    echo "creating virtual environment $VENV" >&2
    python3 -m venv "$VENV"
fi
if ! "$PY" -c 'import torch, numpy' 2>/dev/null; then
    echo "installing $TORCH_SPEC and numpy into $VENV (large download, done once)" >&2
    "$PY" -m pip install --upgrade pip >/dev/null 2>&1 || true
    "$PY" -m pip install "$TORCH_SPEC" numpy >&2
fi
if ! "$PY" -c 'import auto_LiRPA' 2>/dev/null; then
    if [[ ! -e "$SRC" && -z "${AUTO_LIRPA_SRC:-}" ]]; then
        echo "cloning auto_LiRPA into $SRC" >&2
        git clone --depth 1 https://github.com/Verified-Intelligence/auto_LiRPA "$SRC" >&2 || true
    fi
    if [[ ! -f "$SRC/setup.py" ]]; then
        echo "error: auto_LiRPA is not installed in $VENV and AUTO_LIRPA_SRC=$SRC is not a" \
             "checkout of it (clone Verified-Intelligence/auto_LiRPA there, or point" \
             "AUTO_LIRPA_SRC at a checkout)" >&2
        exit 2
    fi
    echo "installing auto_LiRPA from $SRC into $VENV" >&2
    "$PY" -m pip install packaging appdirs pyyaml tqdm graphviz >&2
    "$PY" -m pip install --no-deps "$SRC" >&2
    if ! "$PY" -c 'import auto_LiRPA'; then
        echo "error: auto_LiRPA installed but does not import" >&2
        exit 2
    fi
fi
exec "$PY" "$HERE/crosscheck_auto_lirpa.py" "$@"
