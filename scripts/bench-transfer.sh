#!/usr/bin/env bash
# File transfer benchmark: a large file (1 GiB by default) uploaded into a signed-in desktop
# (the desktop image under QEMU) and downloaded back, through Atrium (a viewer speaking the
# display protocol as the web client does, the display proxy, the node, the guest agent), then
# by the web client in headless Chromium through the same hops (unless --skip-browser), and, in
# the same run, through the agent's virtio-serial port written directly; with the memory the
# browser, the proxy, the node and the agent took. Release build. The last line is one JSON
# object (upload_ratio, download_ratio, most_extra_mib_on_a_hop, ...).
#
#   scripts/bench-transfer.sh [--mib N] [--image DIR] [--skip-browser]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh
install_apt_packages
scripts/lib/images.sh >&2
install_node_packages
cargo build --release --locked -p atrium-display -p atrium-node -p atrium-tests --bins
exec target/release/bench-transfer "$@"
