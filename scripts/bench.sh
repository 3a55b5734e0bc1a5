#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md on this machine: builds release binaries, starts
# private Redis + node clusters on loopback, runs `router-cli bench`, and appends one JSON line
# per run to bench/results-<date>.jsonl; then prints the tables (scripts/bench_report.py).
#
#   scripts/bench.sh              everything (about 15 minutes on 2 cores)
#   scripts/bench.sh throughput   one group: throughput | latency | scaling | connections | ceiling
#                                 | instructions
#
# BIN_DIR=dir uses the binaries there instead of building (to compare two builds in one session)
# and LABEL=name tags every result line with that build's name. FANOUTS="route" skips the
# broadcast baseline, RATES="10000 20000" picks the latency group's rates. The ceiling group runs
# the same throughput and latency loads against the ceiling server (../shared/ceiling, built into
# .local/ceiling-target; CEILING_BIN names another binary), one process on 127.0.0.1:9400
# given as three URLs so that the bench's users split as they do over three nodes.
# NODE_ARGS="--http-workers 2" adds flags to every node's command line (say so in the LABEL).
# NODE_CPUS=0 LOADGEN_CPUS=1 pins the nodes and the connections group's load generator to
# separate cores (taskset).
#
# Every process it starts listens on 127.0.0.1 only and is stopped at the end; every run is
# bounded in users, duration and count.
set -euo pipefail
cd "$(dirname "$0")/.."

groups="${1:-throughput latency scaling connections}"
runs="${RUNS:-3}"
bash scripts/install-deps.sh
bin="${BIN_DIR:-target/release}"
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p wsroute-server -p router-cli
fi
build="${LABEL:-}"
out="${OUT:-bench/results-$(date -u +%Y%m%d).jsonl}"
mkdir -p bench .local/logs
redis_port=6420
pids=()
# NODE_CPUS / LOADGEN_CPUS (e.g. 0 and 1): pin the nodes and the connections group's load
# generator to those cores (taskset), so that a node's connect rate is not its share of a core
# it splits with the load generator.
node_pin=${NODE_CPUS:+taskset -c $NODE_CPUS}
loadgen_pin=${LOADGEN_CPUS:+taskset -c $LOADGEN_CPUS}

stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

# start N FANOUT: a fresh Redis and N nodes on ws 127.0.0.1:93NN, gRPC 127.0.0.1:53NN.
start() {
  local n=$1 fanout=$2
  stop_all
  redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  pids+=($!)
  until redis-cli -p $redis_port ping >/dev/null 2>&1; do sleep 0.1; done
  node_pids=()
  urls=()
  for i in $(seq 1 "$n"); do
    WSROUTE_LOG=warn $node_pin ${node_wrap:-} "$bin/wsroute-server" --node-id "n$i" --dev-auth --fanout "$fanout" \
      --ws-listen "127.0.0.1:$((9300 + i))" --grpc-listen "127.0.0.1:$((5300 + i))" \
      --redis-url "redis://127.0.0.1:$redis_port" ${NODE_ARGS:-} >".local/logs/bench-n$i.log" 2>&1 &
    pids+=($!)
    node_pids+=($!)
    urls+=(--url "ws://127.0.0.1:$((9300 + i))/ws")
  done
  for i in $(seq 1 "$n"); do
    until curl -fsS "http://127.0.0.1:$((9300 + i))/readyz" >/dev/null 2>&1; do sleep 0.2; done
  done
}

# CPU ticks (user+system) used so far by Redis.
redis_ticks() {
  awk '{print $14 + $15}' "/proc/${pids[0]}/stat"
}

# CPU ticks (user+system) used so far by the nodes.
node_ticks() {
  local t=0 p
  for p in "${node_pids[@]}"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo $t
}

redis_calls() {
  redis-cli -p $redis_port info commandstats | awk -F'[:=,]' '/^cmdstat_/ {s += $3} END {print s + 0}'
}

# measure GROUP LABEL NODES FANOUT bench-args...: one run, one JSON line.
measure() {
  local group=$1 label=$2 nodes=$3 fanout=$4
  shift 4
  local t0 t1 r0 r1 rt0 rt1 res
  t0=$(node_ticks)
  rt0=$(redis_ticks)
  r0=$(redis_calls)
  # Redis calls in the steady window only (after connecting and warm-up, before the end):
  # two samples SAMPLE_AT and SAMPLE_AT+5 seconds into the run.
  (sleep "${SAMPLE_AT:-4}"; redis_calls >.local/redis-a; sleep 5; redis_calls >.local/redis-b) &
  local sampler=$!
  res=$("$bin/router-cli" --redis-url "redis://127.0.0.1:$redis_port" bench messages "${urls[@]}" --json "$@" || true)
  wait $sampler || true
  t1=$(node_ticks)
  rt1=$(redis_ticks)
  r1=$(redis_calls)
  BUILD_TAG="${build:+ [$build]}" python3 - "$group" "$label" "$nodes" "$fanout" "$((t1 - t0))" "$(getconf CLK_TCK)" "$((r1 - r0))" \
    "$(( $(cat .local/redis-b) - $(cat .local/redis-a) ))" "$((rt1 - rt0))" "$*" "$res" >>"$out" <<'PY'
import json, os, sys
group, label, nodes, fanout, ticks, hz, redis, steady, rticks, args, res = sys.argv[1:]
try:
    r = json.loads(res)
except ValueError:
    r = {"error": res[-500:]}
label += os.environ.get("BUILD_TAG", "")
print(json.dumps({"group": group, "label": label, "nodes": int(nodes), "fanout": fanout,
                  "node_cpu_s": int(ticks) / int(hz), "redis_cpu_s": int(rticks) / int(hz),
                  "redis_calls": int(redis), "redis_calls_steady_5s": int(steady),
                  "args": args, "result": r}))
PY
  tail -n 1 "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); r=d["result"]; print(d["label"], d["fanout"], d["nodes"], "nodes:", {k: r.get(k) for k in ("ok","throughput_per_s","sent","lost","duplicates","out_of_order","acked_rejected","problems")}, "cpu", d["node_cpu_s"], "redis cpu", d.get("redis_cpu_s"), "redis", d["redis_calls"], "steady 5s", d["redis_calls_steady_5s"])'
}

for g in $groups; do
  case $g in
  throughput)
    for fanout in ${FANOUTS:-route broadcast}; do
      start 3 $fanout
      for r in $(seq "$runs"); do
        measure throughput "max-3-nodes" 3 $fanout --users 3000 --window 8 --duration 10s --warmup 2s
      done
    done
    ;;
  latency)
    for fanout in ${FANOUTS:-route broadcast}; do
      start 3 $fanout
      for rate in ${RATES:-10000 20000 30000}; do
        for r in $(seq "$runs"); do
          measure latency "rate-$rate" 3 $fanout --users 3000 --rate $rate --duration 10s --warmup 2s
        done
      done
    done
    ;;
  scaling)
    # Two rates per configuration: the difference isolates the cost of a message from what a
    # node costs while idle (timers, heartbeats), which grows with the node count anyway.
    for n in 2 4 8; do
      for fanout in route broadcast; do
        start "$n" $fanout
        for rate in 1000 5000; do
          for r in $(seq "$runs"); do
            SAMPLE_AT=6 measure scaling "rate-$rate" "$n" $fanout --users 800 --rate $rate --duration 8s --warmup 4s
          done
        done
      done
    done
    ;;
  connections)
    for r in $(seq "$runs"); do
      # The last run's 15,000 closed sockets sit in TIME_WAIT for a minute; connecting past
      # them makes the kernel search for free ports and the rate fall by half or more (a run
      # right after another measured 1,400/s here). Wait until they are gone (at most 90 s).
      for _ in $(seq 90); do
        [ "$(ss -Htan state time-wait | wc -l)" -lt 500 ] && break
        sleep 1
      done
      start 1 route
      res=$($loadgen_pin "$bin/router-cli" --redis-url "redis://127.0.0.1:$redis_port" bench connections \
        --url ws://127.0.0.1:9301/ws --count 15000 --hold 5s --pid "${node_pids[0]}" --json || true)
      BUILD_TAG="${build:+ [$build]}" python3 -c 'import json,os,sys; print(json.dumps({"group":"connections","label":"idle-15000"+os.environ["BUILD_TAG"],"nodes":1,"fanout":"route","result":json.loads(sys.argv[1])}))' "$res" >>"$out"
      tail -n 1 "$out"
    done
    ;;
  ceiling)
    # The ceiling server (../shared/ceiling), built here into .local/ceiling-target when no
    # CEILING_BIN is given (../shared may be read-only).
    if [ -z "${CEILING_BIN:-}" ]; then
      [ -d ../shared/ceiling ] || { echo "no ../shared/ceiling to build the ceiling server from" >&2; exit 2; }
      (cd ../shared/ceiling && CARGO_TARGET_DIR="$OLDPWD/.local/ceiling-target" cargo build --release --quiet)
    fi
    ceiling="${CEILING_BIN:-.local/ceiling-target/release/wsroute-ceiling}"
    [ -x "$ceiling" ] || { echo "no ceiling server at $ceiling" >&2; exit 2; }
    stop_all
    redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
    pids+=($!)
    until redis-cli -p $redis_port ping >/dev/null 2>&1; do sleep 0.1; done
    "$ceiling" --listen 127.0.0.1:9400 >.local/logs/bench-ceiling.log 2>&1 &
    pids+=($!)
    node_pids=($!)
    urls=(--url ws://127.0.0.1:9400/ws --url ws://127.0.0.1:9400/ws --url ws://127.0.0.1:9400/ws)
    until curl -s -o /dev/null "http://127.0.0.1:9400/" 2>/dev/null || (echo >/dev/tcp/127.0.0.1/9400) 2>/dev/null; do sleep 0.1; done
    for r in $(seq "$runs"); do
      measure throughput "max-3-nodes" 1 ceiling --users 3000 --window 8 --duration 10s --warmup 2s
    done
    for rate in ${RATES:-10000 20000 30000}; do
      for r in $(seq "$runs"); do
        measure latency "rate-$rate" 1 ceiling --users 3000 --rate $rate --duration 10s --warmup 2s
      done
    done
    ;;
  instructions)
    # Instructions per delivered message summed over every node, counted by callgrind (which
    # counts what the nodes execute, repeatably, however busy the machine is; it does not see
    # the kernel). Every node runs under valgrind; two runs per configuration, at INSTR_LOW and
    # INSTR_HIGH msg/s, each on a fresh cluster, so that start-up, connects, timers and the
    # shutdown cancel out: (Ir_high - Ir_low) / (delivered_high - delivered_low). The
    # cross-node share is held at 0.5 for every node count.
    bash scripts/install-deps.sh --for-bench
    cg_dir=.local/callgrind
    for n in ${INSTR_NODES:-2 4 8}; do
      for fanout in ${FANOUTS:-route broadcast}; do
        for rate in ${INSTR_LOW:-20} ${INSTR_HIGH:-120}; do
          rm -rf "$cg_dir" && mkdir -p "$cg_dir"
          node_wrap="valgrind --tool=callgrind --dump-instr=no --callgrind-out-file=$cg_dir/cg.%p" start "$n" "$fanout"
          res=$("$bin/router-cli" --redis-url "redis://127.0.0.1:$redis_port" bench messages "${urls[@]}" --json \
            --users ${INSTR_USERS:-200} --rate "$rate" --duration ${INSTR_SECONDS:-20}s --warmup 2s --cross 0.5 --drain 10s || true)
          # A node stopped by SIGTERM drains and exits; valgrind then writes its counts.
          stop_all
          ir=$(cat "$cg_dir"/cg.* | awk '/^summary:/ {s += $2} END {print s + 0}')
          BUILD_TAG="${build:+ [$build]}" python3 - "$n" "$fanout" "$rate" "$ir" "$res" >>"$out" <<'PY'
import json, os, sys
nodes, fanout, rate, ir, res = sys.argv[1:]
try:
    r = json.loads(res)
except ValueError:
    r = {"error": res[-500:]}
print(json.dumps({"group": "instructions", "label": f"rate-{rate}" + os.environ.get("BUILD_TAG", ""),
                  "nodes": int(nodes), "fanout": fanout, "instructions": int(ir), "result": r}))
PY
          tail -n 1 "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); r=d["result"]; print(d["label"], d["fanout"], d["nodes"], "nodes:", d["instructions"], "instructions", {k: r.get(k) for k in ("ok","received","lost","duplicates","problems")})'
        done
      done
    done
    ;;
  *) echo "unknown group $g" >&2; exit 2 ;;
  esac
done
stop_all
python3 scripts/bench_report.py "$out"
