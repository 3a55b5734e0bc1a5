#!/usr/bin/env bash
# Starts a local wsroute cluster: a private Redis and three nodes, in the foreground.
# Ctrl-C drains the nodes (SIGTERM) and stops Redis.
#
#   scripts/cluster.sh            release build (first build: several minutes)
#   scripts/cluster.sh --debug    debug build (faster to build, slower to run)
#
# Nodes: node1..3 on ws://127.0.0.1:8081..8083/ws and gRPC 127.0.0.1:50051..50053.
# Redis: 127.0.0.1:6399. Logs: .local/logs/. Dev auth is on (connect with ?user=NAME).
# Secrets: .local/secrets/ (jwt-secret, api-key, mesh-secret; random, made on the first run),
# handed to the nodes as files (--*-file), so that `ps` shows none of them. A WSROUTE_API_KEY
# (or WSROUTE_JWT_SECRET, WSROUTE_MESH_SECRET) in the environment is written there instead.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
[ "${1:-}" = "--debug" ] && profile=debug
bash scripts/install-deps.sh
if [ "$profile" = release ]; then
  cargo build --release --locked -p wsroute-server -p router-cli
else
  cargo build --locked -p wsroute-server -p router-cli
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"

redis_port="${WSROUTE_DEV_REDIS_PORT:-6399}"
mkdir -p .local/logs
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping: draining nodes..."
  for p in "${pids[@]:1}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]:1}"; do wait "$p" 2>/dev/null || true; done
  kill "${pids[0]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped."
}
trap stop INT TERM EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  >.local/logs/redis.log 2>&1 &
pids+=($!)
export WSROUTE_REDIS_URL="redis://127.0.0.1:$redis_port"
export WSROUTE_DEV_AUTH=1

# One file per secret, readable by this user only.
secrets="$PWD/.local/secrets"
mkdir -p "$secrets"
chmod 700 "$secrets"
secret_file() { # NAME ENV_VAR: the file for the secret, from $ENV_VAR or made up once
  local file="$secrets/$1" given="${!2:-}"
  if [ -n "$given" ]; then
    (umask 077 && printf '%s\n' "$given" >"$file")
  elif [ ! -s "$file" ]; then
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$file" && echo >>"$file")
  fi
  echo "$file"
}
WSROUTE_JWT_SECRET_FILE="$(secret_file jwt-secret WSROUTE_JWT_SECRET)"
WSROUTE_API_KEY_FILE="$(secret_file api-key WSROUTE_API_KEY)"
WSROUTE_MESH_SECRET_FILE="$(secret_file mesh-secret WSROUTE_MESH_SECRET)"
# A secret and its file together is an error: only the files go to the nodes.
unset WSROUTE_JWT_SECRET WSROUTE_API_KEY WSROUTE_MESH_SECRET
export WSROUTE_JWT_SECRET_FILE WSROUTE_API_KEY_FILE WSROUTE_MESH_SECRET_FILE
for i in 1 2 3; do
  "$bin/wsroute-server" --node-id "node$i" \
    --ws-listen "127.0.0.1:808$i" --grpc-listen "127.0.0.1:5005$i" \
    >".local/logs/node$i.log" 2>&1 &
  pids+=($!)
done

deadline=$((SECONDS + 30))
for i in 1 2 3; do
  until curl -fsS "http://127.0.0.1:808$i/readyz" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "node$i did not become ready; see .local/logs/node$i.log" >&2
      tail -n 20 ".local/logs/node$i.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
done

cat <<TXT
wsroute is up: 3 nodes, dev auth on.

  node1  ws://127.0.0.1:8081/ws   gRPC 127.0.0.1:50051
  node2  ws://127.0.0.1:8082/ws   gRPC 127.0.0.1:50052
  node3  ws://127.0.0.1:8083/ws   gRPC 127.0.0.1:50053
  redis  $WSROUTE_REDIS_URL
  secrets $secrets/ (jwt-secret, api-key, mesh-secret)

Try it in a browser: http://127.0.0.1:8081/?user=alice and http://127.0.0.1:8082/?user=bob

Or in two more terminals:
  $bin/router-cli chat --url ws://127.0.0.1:8081/ws --user alice
  $bin/router-cli chat --url ws://127.0.0.1:8082/ws --user bob
  then type in alice's terminal:  bob hello from node1

Look around:
  WSROUTE_REDIS_URL=$WSROUTE_REDIS_URL $bin/router-cli nodes list
  WSROUTE_REDIS_URL=$WSROUTE_REDIS_URL $bin/router-cli routes get bob
  WSROUTE_REDIS_URL=$WSROUTE_REDIS_URL $bin/router-cli send bob '{"text":"hi"}' --api-key-file $WSROUTE_API_KEY_FILE
  WSROUTE_REDIS_URL=$WSROUTE_REDIS_URL $bin/router-cli stats node1 --mesh-secret-file $WSROUTE_MESH_SECRET_FILE

Logs in .local/logs/. Ctrl-C to stop.
TXT
wait "${pids[1]}"
