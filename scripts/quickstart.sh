#!/usr/bin/env bash
# Atrium's quick start: one command that installs what is missing, builds, builds the console
# guest image if it is absent, and runs a throwaway directory, the broker (SQLite), one node and
# the display proxy on loopback. It prints `ready: http://127.0.0.1:<port>` and a demo login.
# Ctrl+C stops everything it started; a second run reuses what the first built.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh
install_apt_packages runtime
require_cargo
echo "quickstart: building (release; the first build takes a while)"
cargo build --release --locked --bins
echo "quickstart: guest image"
ATRIUM_PROFILE=release scripts/lib/images.sh | tail -n 1
exec target/release/atrium-quickstart
