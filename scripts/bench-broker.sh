#!/usr/bin/env bash
# Broker benchmark: sign-ins/s through the broker vs raw LDAP binds/s on the same slapd, and
# warm-pool connect latency. Release build. The last line is one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh
install_apt_packages
cargo build --release --locked -p atrium-broker -p atrium-tests --bins
exec target/release/bench-broker "$@"
