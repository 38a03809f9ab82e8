#!/usr/bin/env bash
# get_fashion_mnist.sh — put real Fashion-MNIST (Zalando, MIT/Expat) in IDX format into DEST.
#
# Source: the Debian package `dataset-fashion-mnist`, which ships the four IDX files, gzipped,
# under /usr/share/datasets/fashion-mnist/. The package is fetched with `apt-get download`
# (no system-wide install, no root needed beyond what apt-get download needs) and unpacked
# with `dpkg-deb -x` into a temporary directory; if the package is already installed, its
# files are copied directly.
#
# Usage: bash scripts/data/get_fashion_mnist.sh [DEST]  (default DEST: <repo>/data/fashion-mnist)
# Then:  cactus train --dataset fashion-mnist --data DEST ...
#
# Idempotent: when DEST already holds the four files with valid headers, nothing is fetched.
# Each file is checked (IDX magic number, 60,000 / 10,000 items, 28x28 images) and written
# to a temporary name then renamed, so an interrupted run never leaves a partial file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
case "${1:-}" in
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[[ $# -le 1 ]] || { echo "error: at most one argument (DEST), see --help" >&2; exit 2; }
DEST="${1:-$ROOT/data/fashion-mnist}"
PKG=dataset-fashion-mnist
INSTALLED=/usr/share/datasets/fashion-mnist
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

# check FILE: the decompressed header has the IDX magic and item count this file should have.
check() {
    local f="$1" name want_magic want_count hdr
    name="$(basename "$f")"
    case "$name" in
        train-images*) want_magic=00000803; want_count=60000 ;;
        train-labels*) want_magic=00000801; want_count=60000 ;;
        t10k-images*)  want_magic=00000803; want_count=10000 ;;
        t10k-labels*)  want_magic=00000801; want_count=10000 ;;
    esac
    [[ -s "$f" ]] || return 1
    hdr="$( { gzip -dc "$f" 2>/dev/null || true; } | head -c 16 | od -An -tx1 -v | tr -d ' \n')"
    [[ "${hdr:0:8}" == "$want_magic" ]] || return 1
    [[ $((16#${hdr:8:8})) -eq $want_count ]] || return 1
    if [[ $want_magic == 00000803 ]]; then
        [[ "${hdr:16:16}" == "0000001c0000001c" ]] || return 1   # 28 x 28
    fi
    gzip -t "$f" 2>/dev/null
}

all_ok() {
    local f
    for f in "${FILES[@]}"; do check "$1/$f" || return 1; done
}

if all_ok "$DEST"; then
    echo "Fashion-MNIST already in $DEST"
else
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    if all_ok "$INSTALLED"; then
        SRC="$INSTALLED"
        echo "copying from the installed package ($SRC)"
    else
        echo "fetching the Debian package $PKG"
        fetched=0
        for attempt in 1 2; do
            # apt-get download writes into the current directory; the _apt sandbox user may not
            # be able to write there, hence the chmod (apt then downloads as the caller).
            chmod 777 "$TMP"
            if (cd "$TMP" && apt-get download -q "$PKG" >/dev/null 2>"$TMP/apt.err"); then
                fetched=1; break
            fi
            # Stale or missing package lists: refresh once (needs root), then retry.
            [[ $attempt -eq 1 ]] && { apt-get update -q >/dev/null 2>&1 || true; }
        done
        if [[ $fetched -eq 0 ]]; then
            # Fall back to the URI apt resolves, fetched with curl or wget.
            uri="$(apt-get download --print-uris "$PKG" 2>/dev/null | awk '{print $1}' | tr -d "'" | head -n1)"
            if [[ -n "$uri" ]]; then
                if command -v curl >/dev/null; then curl -fsSL -o "$TMP/$PKG.deb" "$uri" || true
                elif command -v wget >/dev/null; then wget -q -O "$TMP/$PKG.deb" "$uri" || true
                fi
            fi
        fi
        deb="$(find "$TMP" -maxdepth 1 -name '*.deb' -size +1k | head -n1)"
        if [[ -z "$deb" ]]; then
            echo "error: could not download the Debian package $PKG" >&2
            [[ -s "$TMP/apt.err" ]] && sed 's/^/  apt-get: /' "$TMP/apt.err" >&2
            echo "  (try: apt-get update && apt-get download $PKG)" >&2
            exit 1
        fi
        dpkg-deb -x "$deb" "$TMP/root"
        SRC="$TMP/root$INSTALLED"
    fi
    mkdir -p "$DEST"
    for f in "${FILES[@]}"; do
        if ! check "$SRC/$f"; then
            echo "error: $SRC/$f is missing or not a valid Fashion-MNIST IDX file" >&2
            exit 1
        fi
        cp "$SRC/$f" "$DEST/.$f.tmp"
        mv -f "$DEST/.$f.tmp" "$DEST/$f"
    done
    all_ok "$DEST" || { echo "error: the files in $DEST do not check out" >&2; exit 1; }
    echo "Fashion-MNIST written to $DEST"
fi
for f in "${FILES[@]}"; do
    printf '  %-28s %9d bytes\n' "$f" "$(stat -c %s "$DEST/$f")"
done
echo "use: --dataset fashion-mnist --data $DEST"
