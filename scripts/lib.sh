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
