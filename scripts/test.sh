#!/usr/bin/env bash
# The test command: installs what is missing, builds every binary, runs every test (unit tests
# and the end-to-end suites, which start their own Redis and wsroute-server processes on
# loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
# A fresh clone's build and test run writes about 3.5 GB under target/; say so up front when the
# disk is short of that rather than let a linker fail on it minutes later.
free_kb=$(df -Pk "${CARGO_TARGET_DIR:-.}" 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((4 * 1024 * 1024)) ]; then
  echo "scripts/test.sh: warning: $((free_kb / 1024)) MiB free for target/; a fresh build and test run needs about 3.5 GB" >&2
fi
bash scripts/install-deps.sh --for-tests
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
# The foundation suites once more, against a private three-master Redis Cluster
# (redis+cluster://), as an operator who outgrew one Redis would run them.
# (--workspace, as above, so that the same build is reused.)
WSROUTE_TEST_REDIS=cluster cargo test --workspace --locked \
  --test delivery --test inbox --test api --test operations --test limits --test client_input \
  --test cid --test presence --test webhooks "$@"
