#!/usr/bin/env bash
# Connect benchmark: a user in headless Chromium clicks Connect on a graphical desktop pool with
# a ready spare and waits for their desktop, on the whole of Atrium on loopback (directory,
# broker, node agent with the desktop image under QEMU, display proxy); pools of booted and of
# cloned spares in the same run, interleaved. Release build. The last line is one JSON object
# (per pool: answer_ms, frame_ms, desktop_ms, medians).
#
#   scripts/bench-connect.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh
install_apt_packages
scripts/lib/images.sh >&2
install_node_packages
cargo build --release --locked -p atrium-display -p atrium-node -p atrium-broker -p atrium-tests --bins
exec target/release/bench-connect "$@"
