#!/usr/bin/env bash
# vnncomp_compare.sh — build cactus (cargo build --release) and run
# scripts/verify/vnncomp_compare.py with the system python3 (standard library only).
#
# Usage: bash scripts/verify/vnncomp_compare.sh --benchmark tests/fixtures/vnncomp/mnistfc \
#            [--timeout-scale 0.5] [--out out/vnncomp/mnistfc] [--published FILE] ...
#        (all arguments go to vnncomp_compare.py; see its --help). With --results FILE nothing
#        is built or run: the existing results.csv is compared.
# Exit status: that of vnncomp_compare.py (1 on a contradiction with the published results).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
build=1
for a in "$@"; do [[ "$a" == "--results" || "$a" == --results=* ]] && build=0; done
if [[ $build == 1 ]]; then
    (cd "$ROOT" && cargo build --release)
fi
exec python3 "$HERE/vnncomp_compare.py" --cactus "$ROOT/target/release/cactus" "$@"
