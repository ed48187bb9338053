#!/usr/bin/env bash
# Runs vmfleet on a Debian machine: installs what it needs on first run, builds the web
# dashboard and the release binary (which embeds it), then starts `vmfleet up` (control plane +
# local agent, SQLite in ./vmfleet-data).
# Arguments are passed to `vmfleet up`, e.g. `scripts/run.sh --listen 127.0.0.1:9000`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_rust
ensure_packages qemu-system-x86 cpio busybox-static e2fsprogs xz-utils

# The test guest (kernel, initramfs, root filesystem) from Debian's packages, cached.
scripts/guest/build-guest-image.sh

# The web dashboard (Node.js, npm packages pinned by web/package-lock.json) into web/dist,
# embedded by the build below: the binary serves it at / with nothing beside it.
build_dashboard

cargo build --release --locked --bin vmfleet
exec target/release/vmfleet up "$@"
