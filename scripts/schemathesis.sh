#!/usr/bin/env bash
# Fuzzes the control plane's REST API with schemathesis (PyPI, pinned) from its own
# /openapi.json: a real `vmfleet server` (the debug binary) on a loopback port with a throwaway
# data dir, called with its admin token. Fails on any 5xx. Usage: scripts/schemathesis.sh
# [extra schemathesis args]; SCHEMATHESIS_EXAMPLES sets the examples per operation and
# SCHEMATHESIS_MAX_TIME the whole run's budget in seconds. One worker: CPython 3.11's parser is
# not thread-safe under hypothesis's lambda inspection ("AST constructor recursion depth
# mismatch" with --workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SCHEMATHESIS_VERSION=4.32.5
bin=target/debug/vmfleet
[ -x "$bin" ] || cargo build -p vmfleet-cli --bin vmfleet --locked
st="$(ensure_schemathesis "$SCHEMATHESIS_VERSION")"

data="$(mktemp -d /tmp/vmfleet-st.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin" server --data-dir "$data" --listen "127.0.0.1:$port" >"$data/server.log" 2>&1 &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
    if [ -s "$data/admin.token" ] && curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
        break
    fi
    kill -0 "$server" 2>/dev/null || { cat "$data/server.log" >&2; exit 1; }
    sleep 0.1
done
token="$(tr -d '[:space:]' <"$data/admin.token")"

status=0
"$st" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-30}" \
    --seed 2024 \
    --workers 1 \
    --request-timeout 30 \
    --max-time "${SCHEMATHESIS_MAX_TIME:-100}" \
    --generation-database none \
    --no-color \
    "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "== the server's log (errors)" >&2
    grep -E "ERROR|panicked" "$data/server.log" | tail -50 >&2 || true
fi
exit "$status"
