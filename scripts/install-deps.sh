#!/usr/bin/env bash
# Installs what wsroute needs on a fresh Debian/Ubuntu machine and is missing: redis-server
# (tests and the local cluster start private instances of it), curl (readiness checks), and
# for the deployment checks (tests/tests/deploy.rs): docker-compose (checks docker-compose.yml
# without a container engine) and, with pip, PyYAML, kubernetes-validate (Kubernetes schemas)
# and promql-parser (the dashboard's queries). Rust itself must already be installed (https://rustup.rs).
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Python packages the deployment tests use, pinned; a Debian-managed python3 (PEP 668) needs
# --break-system-packages to install them for root.
if ! python3 -c 'import yaml, kubernetes_validate, promql_parser' >/dev/null 2>&1; then
  py_pkgs=(PyYAML 'kubernetes-validate==1.37.0' 'promql-parser==0.11.0')
  echo "installing (pip): ${py_pkgs[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${py_pkgs[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${py_pkgs[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust first (https://rustup.rs)" >&2; exit 1; }
