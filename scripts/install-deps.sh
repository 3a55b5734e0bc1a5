#!/usr/bin/env bash
# Installs what wsroute needs on a fresh Debian/Ubuntu machine and is missing: redis-server
# (tests and the local cluster start private instances of it) and curl (readiness checks).
# Rust itself must already be installed (https://rustup.rs).
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust first (https://rustup.rs)" >&2; exit 1; }
