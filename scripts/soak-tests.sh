#!/usr/bin/env bash
# Runs the whole test suite N times (default 10) with every CPU kept busy, and ends with
# "N passed, M failed" (one count per run of the suite). Flaky is broken: every run must pass.
#
# Usage: scripts/soak-tests.sh [N]
# The load is stress-ng (installed from Debian if missing), one CPU worker per core, started
# and stopped by this script (by its own pid). Each failed run's output is kept under
# target/soak/.
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}

if ! command -v stress-ng >/dev/null 2>&1; then
  echo "soak: installing stress-ng" >&2
  { apt-get update -qq && apt-get install -y -qq stress-ng; } >/dev/null 2>&1 \
    || { echo "soak: cannot install stress-ng (apt-get install stress-ng)" >&2; exit 2; }
fi

# The whole suite, as CI runs it: what its tests run besides ham is installed, and a test
# whose tool is missing fails instead of skipping (a machine without etcd once skipped every
# cluster test here, silently).
bash scripts/test-deps.sh >/dev/null || { echo "soak: cannot install what the tests need (scripts/test-deps.sh)" >&2; exit 2; }
export HAM_REQUIRE_ETCD=1 HAM_REQUIRE_PROMTOOL=1 HAM_REQUIRE_PIDNS=1

# Build first, without the load, so every run measures the tests only.
cargo test --workspace --no-run >/dev/null 2>&1 || { echo "soak: the tests do not build" >&2; exit 2; }

mkdir -p target/soak
stress-ng --cpu "$(nproc)" --timeout 0 --quiet &
load=$!
trap 'kill "$load" 2>/dev/null; wait "$load" 2>/dev/null' EXIT

passed=0
failed=0
for k in $(seq "$n"); do
  log="target/soak/run-$k.log"
  start=$(date +%s)
  if cargo test --workspace >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "soak: run $k passed ($(( $(date +%s) - start )) s)"
    rm -f "$log"
  else
    failed=$((failed + 1))
    echo "soak: run $k FAILED ($(( $(date +%s) - start )) s), output in $log:"
    grep -E '^test .* FAILED$|panicked at' "$log" | head -10 | sed 's/^/  /'
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
