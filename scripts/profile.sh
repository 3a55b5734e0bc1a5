#!/usr/bin/env bash
# Counts what the nodes execute, with valgrind's callgrind (instructions, allocations), for the
# two paths the performance issues care about. Counts repeat to about 1% on a quiet machine,
# where CPU seconds on 2 shared cores do not; load elsewhere still shifts them a few per cent
# (timing changes how work batches), so compare builds in one quiet sitting.
#
#   scripts/profile.sh messages   2 nodes, 200 users, 300 msg/s for 20 s (cross-node share 0.5)
#   scripts/profile.sh connects   1 node, 3,000 connects held 1 s, then the node stops
#   scripts/profile.sh schedstat  3 nodes, no valgrind: 3,000 users at RATE msg/s (10,000) for
#                                 10 s; every thread's time running and waiting for a core
#                                 (/proc/.../schedstat) over 5 s of the steady window, and p99
#
# BIN_DIR=dir profiles the binaries there (default target/release, built if missing); N=count
# changes the connects; LOADGEN=path drives the nodes with another router-cli; NODE_ARGS adds
# flags to every node (scripts/rounds.sh runs schedstat over several builds in rotated rounds). Prints, per node: instructions executed and heap allocations
# (__rust_alloc calls); leaves the callgrind files in .local/profile/ for callgrind_annotate.
# Everything listens on 127.0.0.1 only (Redis on 6497, nodes on 9371-9372 / 5371-5372) and is
# stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-messages}"
bin="${BIN_DIR:-target/release}"
if [ -z "${BIN_DIR:-}" ] && [ ! -x "$bin/wsroute-server" ]; then
  cargo build --release --locked -p wsroute-server -p router-cli
fi
loadgen="${LOADGEN:-$bin/router-cli}"
if [ "$what" != schedstat ]; then
  command -v valgrind >/dev/null || { echo "profile.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
fi
out=.local/profile
rm -rf "$out" && mkdir -p "$out"
pids=()
node_pids=()
# Stops the nodes and Redis (every mode, on any exit).
stop_all() {
  for p in "${node_pids[@]}" "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${node_pids[@]}" "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  node_pids=()
}
trap stop_all EXIT

redis-server --port 6497 --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
pids+=($!)
until redis-cli -p 6497 ping >/dev/null 2>&1; do sleep 0.1; done

case "$what" in
  messages) nodes=2 ;;
  connects) nodes=1 ;;
  schedstat) nodes=3 ;;
  *) echo "profile.sh: unknown mode '$what' (messages | connects | schedstat)" >&2; exit 2 ;;
esac
urls=()
for i in $(seq 1 "$nodes"); do
  wrap=(valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out/callgrind.n$i")
  [ "$what" = schedstat ] && wrap=()
  WSROUTE_LOG=warn "${wrap[@]}" \
    "$bin/wsroute-server" --node-id "n$i" --dev-auth --ws-listen "127.0.0.1:$((9370 + i))" \
    --grpc-listen "127.0.0.1:$((5370 + i))" --redis-url redis://127.0.0.1:6497 ${NODE_ARGS:-} \
    >"$out/n$i.log" 2>&1 &
  node_pids+=($!)
  urls+=(--url "ws://127.0.0.1:$((9370 + i))/ws")
done
for i in $(seq 1 "$nodes"); do
  until curl -fsS "http://127.0.0.1:$((9370 + i))/readyz" >/dev/null 2>&1; do sleep 0.2; done
done

if [ "$what" = schedstat ]; then
  # One line per thread: process, thread id, name, then ns running, ns waiting, times on a core.
  snap() {
    local p t
    for p in "${node_pids[@]}" "${pids[0]}" $(pgrep -x router-cli || true); do
      for t in /proc/"$p"/task/*; do
        echo "$p ${t##*/} $(tr ' ' _ <"$t/comm") $(cat "$t/schedstat")"
      done 2>/dev/null
    done
  }
  (sleep 7; snap >"$out/sched-a"; sleep 5; snap >"$out/sched-b") &
  sampler=$!
  "$loadgen" --redis-url redis://127.0.0.1:6497 bench messages "${urls[@]}" --json \
    --users "${USERS:-3000}" --rate "${RATE:-10000}" --duration 10s --warmup 2s >"$out/bench.json"
  wait "$sampler"
  stop_all
  python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/bench.json"))
e = r["latency_us"]["end_to_end"]
print(f"bench: ok={r['ok']} delivered/s={r['throughput_per_s']} lost={r['lost']} "
      f"duplicates={r['duplicates']} p50={e['p50'] / 1000:.2f} ms p99={e['p99'] / 1000:.2f} ms")
def read(name):
    rows = {}
    for line in open(f"{out}/{name}"):
        # A thread that ended between listing and reading leaves a short line.
        if len(line.split()) != 6:
            continue
        pid, tid, comm, run, wait, slices = line.split()
        rows[(pid, tid)] = (comm, int(run), int(wait), int(slices))
    return rows
a, b = read("sched-a"), read("sched-b")
print("pid      thread           running  waiting  on-core  wait/on-core  (5 s; threads that ran >1%)")
for key, (comm, run, wait, slices) in sorted(b.items()):
    if key not in a or run - a[key][1] < 5e7:
        continue
    run, wait, slices = run - a[key][1], wait - a[key][2], slices - a[key][3]
    print(f"{key[0]:8} {comm:16} {run / 5e7:7.1f}% {wait / 5e7:7.1f}% {slices:8} "
          f"{wait / max(slices, 1) / 1000:9.0f} us")
EOF
  exit 0
fi

if [ "$what" = messages ]; then
  "$loadgen" --redis-url redis://127.0.0.1:6497 bench messages "${urls[@]}" --json \
    --users 200 --rate 300 --duration 20s --warmup 2s --cross 0.5 --drain 10s >"$out/bench.json"
else
  "$loadgen" --redis-url redis://127.0.0.1:6497 bench connections "${urls[@]}" --json \
    --count "${N:-3000}" --hold 1s --concurrency 64 >"$out/bench.json"
fi
# The nodes write their counts when they exit.
for p in "${node_pids[@]}"; do kill -TERM "$p"; done
for p in "${node_pids[@]}"; do wait "$p" || true; done

python3 - "$out" "$nodes" <<'EOF'
import json, re, subprocess, sys
out, nodes = sys.argv[1], int(sys.argv[2])
r = json.load(open(f"{out}/bench.json"))
print("bench:", {k: r.get(k) for k in ("ok", "received", "lost", "duplicates", "connections", "dropped") if k in r})
for i in range(1, nodes + 1):
    path = f"{out}/callgrind.n{i}"
    text = subprocess.run(["callgrind_annotate", "--tree=caller", "--inclusive=yes", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    total = re.search(r"^\s*([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text, re.M)
    allocs = re.search(r"< \?\?\?:__rustc::__rust_alloc \(([\d,]+)x\)", text)
    print(f"n{i}: {total.group(1) if total else '?'} instructions, "
          f"{allocs.group(1) if allocs else '?'} allocations")
EOF
