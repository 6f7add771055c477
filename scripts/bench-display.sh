#!/usr/bin/env bash
# Display proxy benchmark: encode cost at 1920x1080 (beside a whole-frame PNG and the same diff
# without scroll detection), motion as VP8 video against stills, fan-out of one synthetic
# desktop; with --audio, audio latency and input-to-pixel on a moving desktop with video on and
# off (headless Chromium); with --vs-novnc, those and Atrium against Debian's noVNC + websockify
# on one QEMU console guest and on a desktop guest playing a video, both in headless Chromium,
# in the same run. Release build. The last line is one JSON object.
#
# Watermark and recording costs run by default; with --seek (or --vs-novnc) seek times in a
# one-hour recording in the admin portal's player (headless Chromium, a real broker and slapd).
#
#   scripts/bench-display.sh [--vs-novnc] [--audio] [--seek] [--skip-encode] [--skip-motion]
#                            [--skip-watermark] [--skip-recording] [--skip-seek]
#                            [--skip-fanout] [--skip-audio] [--skip-console] [--skip-video]
#                            [--recording-secs N] [--fanout-secs N] [--image DIR]
#                            [--keep-refresh-ms N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh
install_apt_packages
cargo build --release --locked -p atrium-display -p atrium-node -p atrium-broker -p atrium-tests --bins
exec target/release/bench-display "$@"
