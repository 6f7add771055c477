#!/usr/bin/env bash
# Display gateway benchmark: one desktop stream relayed by atrium-display gateway and by
# Debian's HAProxy in TCP mode, both terminating TLS, in the same run: CPU per relayed MB (and
# the ratio to HAProxy's) and the input-to-pixel latency each adds over a direct connection.
# Release build. The last line is one JSON object (cpu_ratio_vs_haproxy, added_p50_ms, ...).
#
#   scripts/bench-gateway.sh [--secs N] [--rounds N] [--viewers N] [--samples N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh
install_apt_packages
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  echo "bench: installing haproxy (Debian)"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends haproxy
fi
export PATH="$PATH:/usr/sbin"
cargo build --release --locked -p atrium-display -p atrium-tests --bins
exec target/release/bench-gateway "$@"
