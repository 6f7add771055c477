#!/usr/bin/env bash
# Builds the guest images the tests boot (console and desktop), or reuses them from the cache.
#
# Each image is keyed by its content: the Debian package versions apt resolves today, the hash
# of the guest agent binary and the image builder's version (`atrium-node image key`). So a
# second run reuses it, and a new kernel in Debian or a changed agent makes a new one.
#
#   result:  $ATRIUM_CACHE/images/<kind>-<key>/         (ATRIUM_CACHE defaults to ~/.cache/atrium)
#   link:    $ATRIUM_CACHE/images/<kind> -> <kind>-<key>    (what the tests use)
#   prints:  ATRIUM_CONSOLE_IMAGE=<folder> and ATRIUM_DESKTOP_IMAGE=<folder> (the last lines)

#
# Tests take ATRIUM_CONSOLE_IMAGE / ATRIUM_DESKTOP_IMAGE when set, else the links; see
# tests/src/node.rs. The desktop image's files must belong to root: it is built as root, or
# under fakeroot.
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
# Its own profile and target share nothing with other builds: no lint wrapper either (the
# agent alone leaves features of the protocol crate out, which clippy is not run on).
RUSTFLAGS="-C target-feature=+crt-static" env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
  cargo build --locked --quiet -p atrium-guest-agent --profile guest-agent --target "$target"
agent="target/$target/guest-agent/atrium-guest-agent"

# The node binary of the profile the caller builds (ATRIUM_PROFILE=release for the quick start).
# Built as the callers build it, every binary of the workspace: `-p atrium-node` alone would
# resolve dependencies' features differently and compile about 110 crates a second time.
profile="${ATRIUM_PROFILE:-debug}"
if [ "$profile" = release ]; then
  cargo build --locked --quiet --release --workspace --bins
else
  cargo build --locked --quiet --workspace --bins
fi
node="target/$profile/atrium-node"

# build_kind KIND [WRAPPER...]: builds (or reuses) one kind of image, keeps its link.
build_kind() {
  local kind=$1
  shift
  local key dir
  key=$("$node" image key --kind "$kind" --agent "$agent")
  dir="$images/$kind-$key"
  if [ -f "$dir/manifest.json" ]; then
    echo "images: $kind image $key is in the cache" >&2
  else
    echo "images: building $kind image $key" >&2
    "$@" "$node" image build --kind "$kind" --agent "$agent" --out "$dir" \
      --cache "$ATRIUM_CACHE/debs" >&2
  fi
  ln -sfn "$kind-$key" "$images/$kind"
  # Keep the current image and the two most recent others.
  { ls -1dt "$images/$kind"-* 2>/dev/null || true; } | { grep -vx "$dir" || true; } |
    tail -n +3 | xargs -r rm -rf
  echo "$dir"
}

console=$(build_kind console)
# The desktop's root file system keeps its files' owners (root, setuid bits): root or fakeroot.
if [ "$(id -u)" = 0 ]; then
  desktop=$(build_kind desktop)
elif command -v fakeroot >/dev/null; then
  desktop=$(build_kind desktop fakeroot)
else
  desktop=$(build_kind desktop sudo)
fi

echo "ATRIUM_CONSOLE_IMAGE=$console"
echo "ATRIUM_DESKTOP_IMAGE=$desktop"
