#!/usr/bin/env bash
# Installs the C SDK: libham.so and libham.a, include/ham.h (and include/ha/ham.h, QNX's path)
# and a pkg-config file.
#   scripts/install-sdk.sh [PREFIX]      (default /usr/local; run as root for system paths)
# Then: cc prog.c $(pkg-config --cflags --libs ham)
#   (or: cc -I PREFIX/include prog.c -L PREFIX/lib -lham)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:-/usr/local}"
cargo build --release -p ham-detector-sdk
install -D -m 0755 target/release/libham_detector_sdk.so "$prefix/lib/libham.so"
install -D -m 0644 target/release/libham_detector_sdk.a "$prefix/lib/libham.a"
install -D -m 0644 ham-detector-sdk/include/ham.h "$prefix/include/ham.h"
install -D -m 0644 ham-detector-sdk/include/ha/ham.h "$prefix/include/ha/ham.h"
mkdir -p "$prefix/lib/pkgconfig"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" ham-detector-sdk/ham.pc.in \
  > "$prefix/lib/pkgconfig/ham.pc"
echo "installed the ham C SDK $version under $prefix"
