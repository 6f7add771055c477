#!/usr/bin/env bash
# Builds the console guest image the tests boot, or reuses it from the cache.
#
# The image is keyed by its content: the Debian package versions apt resolves today, the hash
# of the guest agent binary and the image builder's version (`atrium-node image key`). So a
# second run reuses it, and a new kernel in Debian or a changed agent makes a new one.
#
#   result:  $ATRIUM_CACHE/images/console-<key>/        (ATRIUM_CACHE defaults to ~/.cache/atrium)
#   link:    $ATRIUM_CACHE/images/console -> console-<key>   (what the tests use)
#   prints:  ATRIUM_CONSOLE_IMAGE=<folder>              (as its last line)
#
# Tests take ATRIUM_CONSOLE_IMAGE when set, else the link; see tests/src/node.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."

ATRIUM_CACHE="${ATRIUM_CACHE:-$HOME/.cache/atrium}"
images="$ATRIUM_CACHE/images"
mkdir -p "$images" "$ATRIUM_CACHE/debs"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# apt-get download and apt-cache need the package lists.
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  echo "images: apt lists are missing: apt-get update"
  as_root apt-get update -q
fi

# The guest agent runs inside every guest: linked statically (glibc, crt-static), built with
# the small `guest-agent` profile. RUSTFLAGS applies to the --target build only.
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --quiet -p atrium-guest-agent --profile guest-agent --target "$target"
agent="target/$target/guest-agent/atrium-guest-agent"

# The node binary of the profile the caller builds (ATRIUM_PROFILE=release for the quick start).
profile="${ATRIUM_PROFILE:-debug}"
if [ "$profile" = release ]; then
  cargo build --locked --quiet --release -p atrium-node
else
  cargo build --locked --quiet -p atrium-node
fi
node="target/$profile/atrium-node"

key=$("$node" image key --kind console --agent "$agent")
dir="$images/console-$key"
if [ -f "$dir/manifest.json" ]; then
  echo "images: console image $key is in the cache"
else
  echo "images: building console image $key"
  "$node" image build --kind console --agent "$agent" --out "$dir" --cache "$ATRIUM_CACHE/debs"
fi
ln -sfn "console-$key" "$images/console"

# Keep the current image and the two most recent others.
{ ls -1dt "$images"/console-* 2>/dev/null || true; } | { grep -vx "$dir" || true; } | tail -n +3 | xargs -r rm -rf

echo "ATRIUM_CONSOLE_IMAGE=$dir"
