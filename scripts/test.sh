#!/usr/bin/env bash
# The test command: installs what is missing, builds every binary, runs every test (unit tests
# and the end-to-end suites, which start their own Redis and wsroute-server processes on
# loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --for-tests
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
# The foundation suites once more, against a private three-master Redis Cluster
# (redis+cluster://), as an operator who outgrew one Redis would run them.
# (--workspace, as above, so that the same build is reused.)
WSROUTE_TEST_REDIS=cluster cargo test --workspace --locked \
  --test delivery --test inbox --test api --test operations --test limits --test client_input \
  --test cid --test presence --test webhooks "$@"
