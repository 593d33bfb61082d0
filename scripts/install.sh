#!/usr/bin/env bash
# Installs ham on a box (or into a staging tree for a package):
#   scripts/install.sh [--from DIR] [--sysconfdir DIR] [PREFIX]      (default PREFIX /usr/local)
#
#   PREFIX/bin/          ham, hamctl, ham-client, ham-cluster (the cluster agent)
#   PREFIX/lib/          libham.so, libham.a, pkgconfig/ham.pc      (the C SDK)
#   PREFIX/include/      ham.h, ha/ham.h
#   PREFIX/share/man/    ham(8), hamctl(8), ham-client(1), ham.toml(5)
#   PREFIX/share/        bash, zsh and fish completions
#   PREFIX/share/ham/    init files: systemd unit, busybox inittab line, OpenWrt procd script
#   SYSCONFDIR/ham/ham.toml   a commented sample (never over an existing one: then .sample)
#
# --from DIR      take the binaries from DIR (ham, hamctl, ... and libham_detector_sdk.so in
#                 DIR or DIR/deps) instead of building them (`cargo build --release`)
# --sysconfdir    default /etc for PREFIX /usr or /usr/local, PREFIX/etc otherwise
# DESTDIR=...     (environment) installs under DESTDIR with paths inside files as without it
set -euo pipefail
cd "$(dirname "$0")/.."

from="" sysconfdir="" prefix=""
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from="$2"; shift 2 ;;
    --from=*) from="${1#--from=}"; shift ;;
    --sysconfdir) sysconfdir="$2"; shift 2 ;;
    --sysconfdir=*) sysconfdir="${1#--sysconfdir=}"; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$prefix" ] || { echo "install.sh: one PREFIX only" >&2; exit 2; }; prefix="$1"; shift ;;
  esac
done
prefix="${prefix:-/usr/local}"
case "$prefix" in /*) ;; *) echo "install.sh: PREFIX must be absolute: $prefix" >&2; exit 2 ;; esac
if [ -z "$sysconfdir" ]; then
  case "$prefix" in /usr|/usr/local) sysconfdir=/etc ;; *) sysconfdir="$prefix/etc" ;; esac
fi
dest="${DESTDIR:-}"

if [ -z "$from" ]; then
  cargo build --release -p ham-guardian -p ham-cluster -p ham-detector-sdk
  from=target/release
fi
find_file() { # NAME: DIR/NAME or DIR/deps/NAME
  if [ -e "$from/$1" ]; then echo "$from/$1"
  elif [ -e "$from/deps/$1" ]; then echo "$from/deps/$1"
  else echo "install.sh: no $1 in $from" >&2; exit 1
  fi
}

bindir="$prefix/bin"
for b in ham hamctl ham-client ham-cluster; do
  install -D -m 0755 "$(find_file "$b")" "$dest$bindir/$b"
done

# The C SDK.
install -D -m 0755 "$(find_file libham_detector_sdk.so)" "$dest$prefix/lib/libham.so"
if a="$(find_file libham_detector_sdk.a 2>/dev/null)"; then
  install -D -m 0644 "$a" "$dest$prefix/lib/libham.a"
fi
install -D -m 0644 ham-detector-sdk/include/ham.h "$dest$prefix/include/ham.h"
install -D -m 0644 ham-detector-sdk/include/ha/ham.h "$dest$prefix/include/ha/ham.h"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
mkdir -p "$dest$prefix/lib/pkgconfig"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" ham-detector-sdk/ham.pc.in \
  > "$dest$prefix/lib/pkgconfig/ham.pc"

# Man pages and completions (generated from the command lines and the README; a test keeps
# them current).
for page in docs/man/*.[0-9]; do
  section="${page##*.}"
  install -D -m 0644 "$page" "$dest$prefix/share/man/man$section/$(basename "$page")"
done
for p in ham hamctl ham-client; do
  install -D -m 0644 "docs/completions/$p.bash" "$dest$prefix/share/bash-completion/completions/$p"
  install -D -m 0644 "docs/completions/_$p" "$dest$prefix/share/zsh/site-functions/_$p"
  install -D -m 0644 "docs/completions/$p.fish" "$dest$prefix/share/fish/vendor_completions.d/$p.fish"
done

# Init files, with this installation's paths.
subst() { # TEMPLATE TARGET MODE
  mkdir -p "$(dirname "$2")"
  sed -e "s|@BINDIR@|$bindir|g" -e "s|@SYSCONFDIR@|$sysconfdir|g" "$1" > "$2"
  chmod "$3" "$2"
}
share="$dest$prefix/share/ham"
subst dist/systemd/ham.service.in "$share/systemd/ham.service" 0644
subst dist/busybox/inittab.in "$share/busybox/inittab" 0644
subst dist/openwrt/ham.init.in "$share/openwrt/ham" 0755

# The sample configuration, never over the one in use.
conf="$dest$sysconfdir/ham/ham.toml"
if [ -e "$conf" ]; then
  install -D -m 0644 dist/ham.toml "$conf.sample"
  echo "kept $sysconfdir/ham/ham.toml; the sample is $sysconfdir/ham/ham.toml.sample"
else
  install -D -m 0644 dist/ham.toml "$conf"
fi

echo "installed ham $version under ${dest}$prefix (configuration: $sysconfdir/ham/ham.toml)"
echo "boot integration: $prefix/share/ham/{systemd/ham.service,busybox/inittab,openwrt/ham}"
