#!/usr/bin/env bash
# Starts a local wsroute cluster: a private Redis and three nodes, in the foreground.
# Ctrl-C drains the nodes (SIGTERM) and stops Redis.
#
#   scripts/cluster.sh            release build (first build: several minutes)
#   scripts/cluster.sh --debug    debug build (faster to build, slower to run)
#   scripts/cluster.sh --bin DIR  the wsroute-server and router-cli already in DIR (builds nothing)
#
# Nodes: node1..3 on ws://127.0.0.1:8081..8083/ws and gRPC 127.0.0.1:50051..50053.
# Redis: 127.0.0.1:6399. Logs: .local/logs/. Dev auth is on (connect with ?user=NAME).
# Secrets: .local/secrets/ (jwt-secret, api-key, mesh-secret; random, made on the first run),
# handed to the nodes as files (--*-file), so that `ps` shows none of them. A WSROUTE_API_KEY
# (or WSROUTE_JWT_SECRET, WSROUTE_MESH_SECRET) in the environment is written there instead.
# .local/cluster.env sets what router-cli needs to reach this cluster (Redis, the API key and
# mesh secret files): `source .local/cluster.env` in another shell.
# Elsewhere: WSROUTE_DEV_WS_PORTS ("8081 8082 8083"), WSROUTE_DEV_GRPC_PORTS ("50051 50052
# 50053"), WSROUTE_DEV_REDIS_PORT (6399), WSROUTE_DEV_DIR (.local).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
bin=""
case "${1:-}" in
  --debug) profile=debug ;;
  --bin)
    bin="${2:?--bin needs a directory}"
    for b in wsroute-server router-cli; do
      [ -x "$bin/$b" ] || { echo "cluster.sh: no $bin/$b" >&2; exit 2; }
    done
    ;;
  "") ;;
  *) echo "usage: scripts/cluster.sh [--debug | --bin DIR]" >&2; exit 2 ;;
esac
bash scripts/install-deps.sh
if [ -z "$bin" ]; then
  if [ "$profile" = release ]; then
    cargo build --release --locked -p wsroute-server -p router-cli
  else
    cargo build --locked -p wsroute-server -p router-cli
  fi
  bin="${CARGO_TARGET_DIR:-target}/$profile"
fi

read -r -a ws_ports <<<"${WSROUTE_DEV_WS_PORTS:-8081 8082 8083}"
read -r -a grpc_ports <<<"${WSROUTE_DEV_GRPC_PORTS:-50051 50052 50053}"
if ((${#ws_ports[@]} != 3 || ${#grpc_ports[@]} != 3)); then
  echo "cluster.sh: WSROUTE_DEV_WS_PORTS and WSROUTE_DEV_GRPC_PORTS name three ports each" >&2
  exit 2
fi
redis_port="${WSROUTE_DEV_REDIS_PORT:-6399}"
dir="${WSROUTE_DEV_DIR:-.local}"
mkdir -p "$dir/logs"
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
  >"$dir/logs/redis.log" 2>&1 &
pids+=($!)
export WSROUTE_REDIS_URL="redis://127.0.0.1:$redis_port"
export WSROUTE_DEV_AUTH=1

# One file per secret, readable by this user only.
secrets="$(cd "$dir" && pwd)/secrets"
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
    --ws-listen "127.0.0.1:${ws_ports[i-1]}" --grpc-listen "127.0.0.1:${grpc_ports[i-1]}" \
    >"$dir/logs/node$i.log" 2>&1 &
  pids+=($!)
done

deadline=$((SECONDS + 30))
for i in 1 2 3; do
  until curl -fsS "http://127.0.0.1:${ws_ports[i-1]}/readyz" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "node$i did not become ready; see $dir/logs/node$i.log" >&2
      tail -n 20 "$dir/logs/node$i.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
done

# What router-cli (and curl) need to reach this cluster, for another shell to source.
q() { printf '%q' "$1"; }
cat >"$dir/cluster.env" <<ENV
# Written by scripts/cluster.sh: \`source\` it to point router-cli at the local cluster.
export WSROUTE_REDIS_URL=$(q "$WSROUTE_REDIS_URL")
export WSROUTE_API_KEY_FILE=$(q "$WSROUTE_API_KEY_FILE")
export WSROUTE_MESH_SECRET_FILE=$(q "$WSROUTE_MESH_SECRET_FILE")
ENV

cli="WSROUTE_REDIS_URL=$(q "$WSROUTE_REDIS_URL") $(q "$bin")/router-cli"
api_key="--api-key-file $(q "$WSROUTE_API_KEY_FILE")"
mesh_secret="--mesh-secret-file $(q "$WSROUTE_MESH_SECRET_FILE")"
ws() { echo "ws://127.0.0.1:${ws_ports[$1-1]}/ws"; }
cat <<TXT
wsroute is up: 3 nodes, dev auth on.

  node1  $(ws 1)   gRPC 127.0.0.1:${grpc_ports[0]}
  node2  $(ws 2)   gRPC 127.0.0.1:${grpc_ports[1]}
  node3  $(ws 3)   gRPC 127.0.0.1:${grpc_ports[2]}
  redis  $WSROUTE_REDIS_URL
  secrets $secrets/ (jwt-secret, api-key, mesh-secret)

Try it in a browser: http://127.0.0.1:${ws_ports[0]}/?user=alice and http://127.0.0.1:${ws_ports[1]}/?user=bob

Or in two more terminals:
  $(q "$bin")/router-cli chat --url $(ws 1) --user alice
  $(q "$bin")/router-cli chat --url $(ws 2) --user bob
  then type in alice's terminal:  bob hello from node1

Look around (each line works as printed):
  $cli nodes list
  $cli routes get bob
  $cli inbox bob
  $cli send bob '{"text":"hi"}' $api_key
  $cli stats node2 $mesh_secret
  $cli watch --count 3 $mesh_secret
  curl -H "Authorization: Bearer \$(cat $(q "$WSROUTE_API_KEY_FILE"))" -d '{"body":{"text":"hi"}}' http://127.0.0.1:${ws_ports[0]}/v1/users/bob/messages
Or, once in a shell: source $(q "$dir/cluster.env")
  and then any router-cli command finds Redis, the API key and the mesh secret by itself:
  $(q "$bin")/router-cli stats node3

Logs in $dir/logs/. Ctrl-C to stop.
TXT
wait "${pids[1]}"
