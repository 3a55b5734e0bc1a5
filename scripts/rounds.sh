#!/usr/bin/env bash
# Compares builds' latency at a fixed rate on a noisy machine: rotated rounds of
# `scripts/profile.sh schedstat` (3 nodes, 3,000 users, RATE msg/s for 10 s), every build once per
# round, the order shifted by one each round, one load generator for all. Prints every run, then
# per build the median p50 and p99 and the ratio of its median p99 to the first build's.
#
#   BUILDS="base=/tmp/base ours=target/release" RATE=10000 ROUNDS=6 scripts/rounds.sh
#
# BUILDS: label=directory pairs (each directory holds wsroute-server). LOADGEN: the router-cli that
# drives every build (default: the last build's). NODE_ARGS="--http-workers 2" adds node flags to
# every build (say so in the label). OUT: where the raw lines go (default
# bench/rounds-<date>-<rate>.txt, appended). Between runs it waits (at most 90 s) until fewer
# than 12,000 sockets are in TIME_WAIT, so that one run's closed sockets do not crowd the next.
# Ports and bounds are profile.sh's: everything on 127.0.0.1, stopped at the end of each run.
set -euo pipefail
cd "$(dirname "$0")/.."

builds=(${BUILDS:?BUILDS="label=dir label=dir" names the builds to compare})
rate="${RATE:-10000}"
rounds="${ROUNDS:-6}"
out="${OUT:-bench/rounds-$(date -u +%Y%m%d)-$rate.txt}"
last="${builds[${#builds[@]} - 1]#*=}"
loadgen="${LOADGEN:-$last/router-cli}"
for b in "${builds[@]}"; do
  [ -x "${b#*=}/wsroute-server" ] || { echo "rounds.sh: no wsroute-server in ${b#*=}" >&2; exit 2; }
done
[ -x "$loadgen" ] || { echo "rounds.sh: no load generator at $loadgen" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
echo "# $(date -u +%FT%TZ) rate=$rate rounds=$rounds loadgen=$loadgen node_args=${NODE_ARGS:-} builds=${builds[*]}" >>"$out"

time_wait() { ss -tan state time-wait | wc -l; }
results=$(mktemp)
trap 'rm -f "$results"' EXIT
n=${#builds[@]}
for round in $(seq 1 "$rounds"); do
  for j in $(seq 0 $((n - 1))); do
    b=${builds[$(((j + round) % n))]}
    label=${b%%=*}
    for _ in $(seq 1 90); do [ "$(time_wait)" -lt 12000 ] && break; sleep 1; done
    # A run that fails (a node that would not start, connections refused) is recorded as such
    # and the rounds go on.
    run=$(BIN_DIR="${b#*=}" LOADGEN="$loadgen" RATE="$rate" bash scripts/profile.sh schedstat 2>&1) ||
      run="bench: failed: $(tail -n 3 <<<"$run" | tr '\n' ' ')"
    line=$(grep -m1 '^bench: \(ok=\|failed\)' <<<"$run" || echo "bench: failed: no result")
    echo "round $round $label $line" | tee -a "$out"
    grep -E 'actix|tokio|router' <<<"$run" | sed "s/^/    round $round $label /" >>"$out" || true
    echo "$label $line" >>"$results"
  done
done

python3 - "$results" "${builds[@]}" <<'EOF'
import re, statistics, sys
path, builds = sys.argv[1], [b.split("=", 1)[0] for b in sys.argv[2:]]
runs = {b: [] for b in builds}
failed = {}
for line in open(path):
    label, rest = line.split(" ", 1)
    p50 = re.search(r"p50=([\d.]+) ms", rest)
    p99 = re.search(r"p99=([\d.]+) ms", rest)
    ok = "ok=True" in rest and " lost=0 " in rest
    if p50 and p99:
        runs[label].append((float(p50.group(1)), float(p99.group(1)), ok))
    else:
        failed[label] = failed.get(label, 0) + 1
first = None
print(f"{'build':24} {'runs':>4} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}  p99 of each run")
for b in builds:
    r = runs[b]
    if failed.get(b):
        print(f"{b:24} {failed[b]} run(s) failed: see the raw lines")
    if not r:
        continue
    p50 = statistics.median(x[0] for x in r)
    p99 = statistics.median(x[1] for x in r)
    first = first or p99
    bad = "" if all(x[2] for x in r) else "  (a run lost messages or was not ok)"
    print(f"{b:24} {len(r):4} {p50:8.2f} {p99:8.2f} {p99 / first:6.2f}  "
          + " / ".join(f"{x[1]:.2f}" for x in r) + bad)
EOF
