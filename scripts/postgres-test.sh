#!/usr/bin/env bash
# A throwaway PostgreSQL server for the store's tests, on loopback.
#
#   scripts/postgres-test.sh start   installs PostgreSQL if missing (Debian's, 15), creates a
#                                    cluster in $VMFLEET_PG_DIR (default /tmp/vmfleet-pg-test),
#                                    starts it on 127.0.0.1 at the first free port from
#                                    $VMFLEET_PG_PORT (default 54329) and prints the URL the
#                                    tests take in VMFLEET_TEST_POSTGRES_URL
#   scripts/postgres-test.sh stop    stops it and removes the directory
#   scripts/postgres-test.sh url     prints the URL again
#
# The tests log in as role `vmfleet`, which may create databases: each test makes its own and
# drops it. Everything else goes to stderr, so `URL=$(scripts/postgres-test.sh start)` works.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

PG_DIR="${VMFLEET_PG_DIR:-/tmp/vmfleet-pg-test}"
PG_PORT="${VMFLEET_PG_PORT:-54329}"
PG_ROLE=vmfleet
PG_PASSWORD=vmfleet-test

url() {
    local port
    port="$(cat "$PG_DIR/port" 2>/dev/null)" || { echo "vmfleet: no test PostgreSQL in $PG_DIR" >&2; exit 1; }
    echo "postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$port/postgres"
}

# The directory of initdb and pg_ctl: Debian keeps them out of PATH, under the version.
pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# Runs a command as the `postgres` user (initdb and the server refuse to run as root).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then
        "$@"
    elif [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres -- "$@"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    if ! pg_bindir >/dev/null; then
        ensure_packages postgresql
        # Debian's package creates and starts a default cluster (port 5432) where it can; the
        # tests do not use it.
        if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q " main "; then
            as_root pg_dropcluster --stop "$(pg_lsclusters -h | awk '$2 == "main" {print $1; exit}')" main >&2 || true
        fi
    fi
    local bin
    bin="$(pg_bindir)" || { echo "vmfleet: PostgreSQL's initdb not found under /usr/lib/postgresql" >&2; exit 1; }

    if [ -f "$PG_DIR/data/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
        echo "vmfleet: PostgreSQL already running in $PG_DIR" >&2
        url
        return 0
    fi
    local port="$PG_PORT"
    while port_in_use "$port"; do
        port=$((port + 1))
        if [ "$port" -ge $((PG_PORT + 100)) ]; then
            echo "vmfleet: no free port in $PG_PORT..$port for PostgreSQL" >&2
            exit 1
        fi
    done

    # $PG_DIR is ours (root's, it may come from mktemp -d); data/ and run/ (the socket, the
    # log) are the server's. Whatever a previous run left goes.
    as_root mkdir -p "$PG_DIR"
    as_root chmod 0755 "$PG_DIR"
    as_root rm -rf "$PG_DIR/data" "$PG_DIR/run" "$PG_DIR/port"
    as_root install -d -o postgres -g postgres -m 0700 "$PG_DIR/data" "$PG_DIR/run"
    local log
    log="$(mktemp)"
    # The superuser has no password: it logs in only over the socket, as the postgres user.
    if ! as_postgres "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth-local=peer \
        --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    # Throwaway data: no fsync. Room for many tests' pools at once.
    if ! as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/run/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR/run -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >&2; then
        as_root cat "$PG_DIR/run/server.log" >&2 || true
        exit 1
    fi
    as_postgres psql -h "$PG_DIR/run" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" >&2
    echo "$port" | as_root tee "$PG_DIR/port" >/dev/null
    echo "vmfleet: PostgreSQL on 127.0.0.1:$port (data in $PG_DIR)" >&2
    url
}

stop() {
    local bin
    if bin="$(pg_bindir)" && [ -f "$PG_DIR/data/postmaster.pid" ]; then
        as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >&2 || true
    fi
    if [ -d "$PG_DIR" ]; then
        as_root rm -rf "$PG_DIR"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    *)
        echo "usage: $0 start|stop|url" >&2
        exit 2
        ;;
esac
