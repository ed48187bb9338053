# Shared by scripts/run.sh and scripts/test.sh: installs what vmfleet needs on a Debian machine.
# Sourced, not run.

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "vmfleet: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# Installs the Debian packages named, skipping those already installed.
ensure_packages() {
    local missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "vmfleet: installing ${missing[*]}" >&2
    as_root apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# Rust cannot come from Debian's packages (too old for the workspace's edition): it must be
# there already, from rustup.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "vmfleet: cargo not found. Install Rust 1.95 or newer (https://rustup.rs) and re-run." >&2
        exit 1
    fi
}

# A Python virtual environment under target/ with the official Socket.IO client, for the
# interoperability tests; prints the interpreter to use.
ensure_python_socketio() {
    local venv=target/py-interop
    if [ ! -x "$venv/bin/python" ]; then
        command -v python3 >/dev/null 2>&1 || ensure_packages python3
        python3 -m venv "$venv" >/dev/null 2>&1 || {
            ensure_packages python3-venv
            python3 -m venv "$venv" >&2
        }
    fi
    if ! "$venv/bin/python" -c "import socketio, websocket" 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "python-socketio[client]>=5,<6" >&2
    fi
    echo "$PWD/$venv/bin/python"
}

# schemathesis (PyPI, version $1) in its own venv, target/py-schemathesis; prints its path.
ensure_schemathesis() {
    local version="$1" venv=target/py-schemathesis
    if [ ! -x "$venv/bin/python" ]; then
        command -v python3 >/dev/null 2>&1 || ensure_packages python3
        python3 -m venv "$venv" >/dev/null 2>&1 || {
            ensure_packages python3-venv
            python3 -m venv "$venv" >&2
        }
    fi
    if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" != "$version" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$version" >&2
    fi
    echo "$PWD/$venv/bin/schemathesis"
}

# Node.js and npm (from Debian when missing).
ensure_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || ensure_packages nodejs npm
}

# The web dashboard (web/, pinned by web/package-lock.json): its packages installed when missing
# or older than the lock file, then type-checked and built into web/dist, which the server
# crate's build.rs embeds into the binary. Run it before building the binary.
build_dashboard() {
    ensure_node
    if [ ! -f web/node_modules/.package-lock.json ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
        # The lock's versions, as `npm ci` would install them; but `npm ci` refuses a lock that
        # lacks other platforms' optional packages (rollup's, esbuild's), which registry
        # mirrors without them leave out, so: `npm install` without touching the lock.
        (cd web && npm install --no-save --no-audit --no-fund --loglevel=error >&2)
    fi
    (cd web && npm run --silent build >&2)
}

# socket.io-client for Node.js (pinned by crates/tests/interop/package-lock.json), for the
# interoperability tests.
ensure_node_socketio() {
    ensure_node
    if [ ! -d crates/tests/interop/node_modules/socket.io-client ]; then
        (cd crates/tests/interop && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
}
