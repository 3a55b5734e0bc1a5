#!/usr/bin/env bash
# Installs what wsroute needs on a fresh Debian/Ubuntu machine and is missing: redis-server
# (tests and the local cluster start private instances of it), curl (readiness checks). With
# --for-tests also what the test suite needs: redis-sentinel (the failover test,
# tests/tests/redis_sentinel.rs); for the deployment checks (tests/tests/deploy.rs) docker-compose (checks docker-compose.yml without
# a container engine) and, with pip, PyYAML, kubernetes-validate (Kubernetes schemas) and
# promql-parser (the dashboard's queries); for the browser test (tests/tests/browser.rs) Debian's
# chromium, Node.js and npm, and the npm packages of tests/browser (playwright-core, which drives
# that chromium and never downloads a browser of its own); for the JavaScript client's tests
# (tests/tests/js_client.rs) the dev packages of clients/js (ws, typescript). Runs as root or with sudo, without a
# terminal. Rust itself must already be installed (https://rustup.rs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

for_tests=0
[ "${1:-}" = "--for-tests" ] && for_tests=1
# --for-bench: also valgrind (scripts/bench.sh instructions counts instructions with callgrind).
for_bench=0
[ "${1:-}" = "--for-bench" ] && for_bench=1

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust first (https://rustup.rs)" >&2; exit 1; }
if ((for_bench)); then
  command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
fi
if ((for_tests)); then
  command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
((for_tests)) || exit 0

# Python packages the deployment tests use, pinned; a Debian-managed python3 (PEP 668) needs
# --break-system-packages to install them for root.
if ! python3 -c 'import yaml, kubernetes_validate, promql_parser' >/dev/null 2>&1; then
  py_pkgs=(PyYAML 'kubernetes-validate==1.37.0' 'promql-parser==0.11.0')
  echo "installing (pip): ${py_pkgs[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${py_pkgs[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${py_pkgs[@]}"
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "warning: Node.js $(node --version) is older than playwright-core needs (20+): the browser test will fail" >&2
fi
# npm packages, exactly as each package-lock.json pins them; skipped when node_modules already
# matches its lock (so an offline machine that has them goes on).
npm_ci() {
  local dir="$root/$1" what="$2"
  if [ ! -f "$dir/node_modules/.package-lock.json" ] ||
    [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "installing $what's npm packages ($1)" >&2
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  fi
}
npm_ci tests/browser "the browser test"
npm_ci clients/js "the JavaScript client's tests (ws, typescript)"
