#!/usr/bin/env bash
# Installs (from Debian) what the test suite runs besides ham, where it is missing: a C
# compiler, python3, systemd-notify and libsystemd, dbus-daemon, pkg-config, etcd, ip,
# promtool, man, unshare, zsh, fish. Used by .ci/run and scripts/soak-tests.sh, which then
# set HAM_REQUIRE_ETCD, HAM_REQUIRE_PROMTOOL and HAM_REQUIRE_PIDNS so that a test whose tool
# is missing fails instead of skipping.
set -euo pipefail
missing=""
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v systemd-notify >/dev/null 2>&1 || missing="$missing systemd"
command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
command -v dbus-daemon >/dev/null 2>&1 || missing="$missing dbus-daemon"
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v man >/dev/null 2>&1 || missing="$missing man-db"
command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
command -v zsh >/dev/null 2>&1 || missing="$missing zsh"
command -v fish >/dev/null 2>&1 || missing="$missing fish"
if [ -n "$missing" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
# promtool (Prometheus's checker) comes with the server; its recommends are not needed.
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
