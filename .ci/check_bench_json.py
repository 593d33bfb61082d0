"""Checks that ham-bench's JSON output has the shape docs/BENCHMARKS.md promises.

It never judges the numbers: CI machines are noisy, and speed targets are read as ratios
from a full run, not asserted.
"""
import json
import numbers
import sys

REQUIRED = {
    "restart_latency",
    "restart_storm",
    "takeover",
    "footprint",
    "idle",
    "heartbeat_cost",
    "ring_throughput",
    "ring_latency",
    "heartbeat_miss_delay",
    "storm_ping",
    "storm_restart",
    "pss_put",
    "mts_roundtrip",
    "cluster_failover",
    "scale",
}
# The systems each SDK scenario must report (they have no peers to skip).
SYSTEMS = {
    "heartbeat_cost": {"ham", "store", "sd_notify"},
    "ring_throughput": {"ham-1p", "ham-2p", "ham-4p"},
    "ring_latency": {"ham"},
    "storm_ping": {"ham-idle", "ham-storm"},
    "storm_restart": {"ham-idle", "ham-storm"},
    "heartbeat_miss_delay": {"ham"},
    "pss_put": {"ham", "pwrite-shm", "ham-durable", "file-fsync"},
    "mts_roundtrip": {"ham", "unix-dgram", "unix-relay"},
    "cluster_failover": {"ham", "view"},
    # --quick measures 10 and 100 entities (the full run adds 1000 and 10000).
    "scale": {"ham-10", "ham-100"},
    # ham without heartbeats (and with exited and held-off entities), then with them.
    "idle": {"ham-quiet", "ham"},
}
STATS = ("n", "median", "p90", "p99", "max")


def fail(msg):
    print(f"bench JSON: {msg}", file=sys.stderr)
    sys.exit(1)


def main(path):
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        fail("top level is not a list")
    seen = set()
    for obj in data:
        name = obj.get("scenario")
        if not isinstance(name, str):
            fail(f"an object has no scenario name: {obj}")
        seen.add(name)
        if not isinstance(obj.get("unit"), str):
            fail(f"{name}: no unit")
        systems = obj.get("systems")
        if not isinstance(systems, dict) or not systems:
            fail(f"{name}: no systems")
        missing_systems = SYSTEMS.get(name, set()) - set(systems)
        if missing_systems:
            fail(f"{name}: systems missing: {sorted(missing_systems)}")
        measured = 0
        for sysname, st in systems.items():
            if st == "skipped":
                continue
            if not isinstance(st, dict):
                fail(f"{name}/{sysname}: neither 'skipped' nor an object")
            if "error" in st:
                fail(f"{name}/{sysname}: error {st['error']}")
            for k in STATS:
                if not isinstance(st.get(k), numbers.Number):
                    fail(f"{name}/{sysname}: {k} missing or not a number")
            if st["n"] < 1:
                fail(f"{name}/{sysname}: n = {st['n']}")
            measured += 1
        if not any(s.startswith("ham") for s in systems if systems[s] != "skipped"):
            fail(f"{name}: ham was not measured")
        if not isinstance(obj.get("ratios"), dict):
            fail(f"{name}: ratios is not an object")
        for k, v in obj["ratios"].items():
            if v is not None and not isinstance(v, numbers.Number):
                fail(f"{name}: ratio {k} is not a number")
    missing = REQUIRED - seen
    if missing:
        fail(f"missing scenarios: {sorted(missing)}")
    print(f"bench JSON: {len(data)} scenarios, well-formed")


if __name__ == "__main__":
    main(sys.argv[1])
