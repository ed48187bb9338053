#!/usr/bin/env bash
# Runs every test of vmfleet on a Debian machine: installs what the tests need, then checks
# formatting and lints, builds, and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_rust
# One build from a clean checkout: incremental caches would only take disk (GBs of it).
export CARGO_INCREMENTAL=0
echo "== disk free where the build goes: $(df -h --output=avail . | tail -1 | tr -d ' ')"
# What the test suite drives for real: QEMU guests (TCG), their image build, Docker.
ensure_packages qemu-system-x86 cpio busybox-static e2fsprogs xz-utils docker.io iproute2 curl

# The test guest (kernel, initramfs, root filesystem) from Debian's packages, cached.
scripts/guest/build-guest-image.sh

# The web dashboard first: the binary the tests run embeds web/dist.
echo "== web dashboard (npm ci, type check, vite build)"
build_dashboard
echo "== web dashboard unit tests (Vitest)"
(cd web && npm test --silent)

echo "== cargo fmt"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --workspace --bins --locked
# The dashboard in a real browser (Debian's Chromium driven by playwright-core) against a real
# `vmfleet up` with a QEMU guest; screenshots go to target/screenshots/.
echo "== web dashboard in Chromium (Playwright)"
ensure_packages chromium
(cd web && VMFLEET_BIN="$PWD/../target/debug/vmfleet" npm run --silent e2e)
# The store's tests run against SQLite and PostgreSQL: a throwaway server on loopback, in a
# directory of this run's own, stopped and removed however the script ends.
echo "== PostgreSQL for the store's tests"
VMFLEET_PG_DIR="$(mktemp -d /tmp/vmfleet-pg.XXXXXX)"
export VMFLEET_PG_DIR
trap 'scripts/postgres-test.sh stop' EXIT
VMFLEET_TEST_POSTGRES_URL="$(scripts/postgres-test.sh start)"
export VMFLEET_TEST_POSTGRES_URL
# The official python-socketio client, for the /fleet interoperability tests.
VMFLEET_PYTHON="$(ensure_python_socketio)"
export VMFLEET_PYTHON
# ... and socket.io-client for Node.js.
ensure_node_socketio
echo "== cargo test"
cargo test --workspace --locked
# The benchmarks' harness: every scenario, small and short, against the debug build (its
# figures are not reported); wrk drives the api scenario, the plots need a font, the fleet
# scenario's Node.js peer builds better-sqlite3 when no prebuilt binary can be fetched.
echo "== vmfleet-bench all --quick"
ensure_packages wrk fonts-dejavu-core python3 make g++
if [ ! -d bench/node-fleet/node_modules/socket.io ]; then
    (cd bench/node-fleet && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
VMFLEET_BENCH_OUT="$(mktemp -d /tmp/vmfleet-bench-quick.XXXXXX)"
target/debug/vmfleet-bench all --quick --server-bin target/debug/vmfleet --out "$VMFLEET_BENCH_OUT"
rm -rf "$VMFLEET_BENCH_OUT"
# The REST API fuzzed from its own /openapi.json: any 5xx fails the run.
echo "== schemathesis"
scripts/schemathesis.sh
