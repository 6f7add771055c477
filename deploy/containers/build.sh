#!/usr/bin/env bash
# Builds Atrium's container images with podman, offline from any container registry: each
# image starts FROM scratch with a root file system made of Debian packages (resolved and
# downloaded by apt, as on any Debian host) and adds this workspace's binaries.
#
#   deploy/containers/build.sh [--binaries DIR] [--only NAME[,NAME...]]
#
#   --binaries DIR   take atrium-broker and atrium-display from DIR (default: build them with
#                    `cargo build --release` and take target/release)
#   --only NAMES     build only these of: broker, gateway, postgres, edge
#
# Images (each also tagged with a key of its content):
#   localhost/atrium-broker:VERSION    the broker (web client built in) and default policies
#   localhost/atrium-gateway:VERSION   the display gateway (atrium-display gateway)
#   localhost/atrium-postgres:VERSION  PostgreSQL 15
#   localhost/atrium-edge:VERSION      HAProxy, the edge for podman and bare hosts
#
# Debian packages and the root file systems made from them are cached by content under
# $ATRIUM_CACHE/containers (default ~/.cache/atrium): a second build takes seconds. Each build
# removes what earlier ones left: the images of other keys (but one a container still uses) and
# all but the two newest root file systems of each name, so a host that builds every commit
# (CI, a developer) does not fill its disk. The last line printed is one JSON object with each
# image's name, tag and size.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

binaries=""
only="broker,gateway,postgres,edge"
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) binaries="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "build: unknown argument: $1" >&2; exit 2 ;;
  esac
done

ATRIUM_CACHE="${ATRIUM_CACHE:-$HOME/.cache/atrium}"
cache="$ATRIUM_CACHE/containers"
mkdir -p "$cache/debs"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# Bump when what rootfs() does changes: every cached root file system is made again.
RECIPE=1

for tool in podman apt-get dpkg-deb tar sha256sum strip; do
  command -v "$tool" >/dev/null || { echo "build: $tool is missing (scripts/lib/deps.sh installs it)" >&2; exit 1; }
done
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  echo "build: apt lists are missing: apt-get update" >&2
  apt-get update -q >&2
fi

log() { echo "build: $*" >&2; }

# shellcheck source=scripts/lib/apt-resolve.sh
. "$root/scripts/lib/apt-resolve.sh"

# fetch FILE...: downloads into the cache the .deb files not already there.
fetch() {
  local want=() f
  for f in "$@"; do
    [ -s "$cache/debs/$f" ] || want+=("$(echo "$f" | sed -E 's/^([^_]+)_([^_]+)_.*$/\1=\2/; s/%3a/:/g')")
  done
  [ ${#want[@]} -eq 0 ] && return 0
  log "downloading ${#want[@]} Debian package(s)"
  (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "${want[@]}" >/dev/null)
  for f in "$@"; do
    [ -s "$cache/debs/$f" ] || { echo "build: $f was not downloaded" >&2; exit 1; }
  done
}

# rootfs NAME EXCLUDES PKG...: a root file system tar of the packages and their dependencies,
# without documentation (copyright files stay), manuals, locales and package-manager state,
# with a CA bundle, users (atrium 10001, postgres 999), /tmp and /var/run -> /run. Prints the
# tar's path; cached by the package versions and this recipe.
rootfs() {
  local name=$1 excludes=$2
  shift 2
  local debs key out
  debs=$(apt_resolve "$@")
  [ -n "$debs" ] || { echo "build: apt resolved nothing for: $*" >&2; exit 1; }
  key=$(printf '%s\n' "recipe $RECIPE" "$excludes" "$debs" | sha256sum | cut -c1-16)
  out="$cache/rootfs-$name-$key.tar"
  if [ -s "$out" ]; then
    log "$name root file system $key is in the cache"
    touch "$out"
    prune_rootfs "$name" "$out"
    echo "$out"
    return
  fi
  # shellcheck disable=SC2086
  fetch $debs
  log "$name root file system $key: $(echo "$debs" | wc -l) packages"
  local dir
  dir=$(mktemp -d)
  local ex=(--exclude=./usr/share/man --exclude=./usr/share/info --exclude=./usr/share/locale
    --exclude=./usr/share/lintian --exclude=./usr/share/bug --exclude=./usr/share/i18n
    --exclude=./usr/share/perl5 --exclude=./usr/share/debconf --exclude=./usr/share/bash-completion
    --exclude=./usr/lib/x86_64-linux-gnu/gconv)
  local e
  set -f # the patterns are tar's, not the shell's
  for e in $excludes; do ex+=("--exclude=.$e"); done
  set +f
  local f
  for f in $debs; do
    dpkg-deb --fsys-tarfile "$cache/debs/$f" | tar -x -C "$dir" "${ex[@]}"
  done
  # Documentation: only the copyright files (licences) stay.
  [ -d "$dir/usr/share/doc" ] && find "$dir/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  rm -rf "$dir/var/lib/dpkg" "$dir/var/cache" "$dir/var/log"
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir/run/lock" "$dir/home/atrium" "$dir/var/lib"
  if [ -d "$dir/usr/share/ca-certificates" ]; then
    cat "$dir"/usr/share/ca-certificates/*/*.crt >"$dir/etc/ssl/certs/ca-certificates.crt"
  fi
  printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
    'postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/usr/sbin/nologin' \
    'atrium:x:10001:10001:Atrium:/home/atrium:/usr/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >"$dir/etc/passwd"
  printf '%s\n' 'root:x:0:' 'postgres:x:999:' 'atrium:x:10001:' 'nogroup:x:65534:' >"$dir/etc/group"
  chmod 1777 "$dir/tmp"
  chown 10001:10001 "$dir/home/atrium"
  rm -rf "$dir/var/run" "$dir/var/lock"
  ln -s /run "$dir/var/run"
  ln -s /run/lock "$dir/var/lock"
  [ -e "$dir/bin/dash" ] && ln -sf dash "$dir/bin/sh"
  if [ -d "$dir/var/lib/postgresql" ]; then
    mkdir -p "$dir/var/lib/postgresql/data"
    chown -R 999:999 "$dir/var/lib/postgresql"
  fi
  tar -C "$dir" --numeric-owner --sort=name --mtime=@0 -cf "$out.part" .
  mv "$out.part" "$out"
  prune_rootfs "$name" "$out"
  rm -rf "$dir"
  echo "$out"
}

# prune_rootfs NAME KEEP: removes the cached root file systems of NAME but KEEP and the newest
# other (a build of the commit before, say, may still want it).
prune_rootfs() {
  local name=$1 keep=$2
  { ls -1t "$cache/rootfs-$name-"*.tar 2>/dev/null || true; } | { grep -Fvx -- "$keep" || true; } |
    tail -n +2 | xargs -r -d '\n' rm -f
}

# prune_images REF KEY: untags REF's images of other keys; an image left without a tag is
# removed. One a container uses (a tier running the build before) stays: podman refuses.
prune_images() {
  local ref=$1 key=$2 tag
  for tag in $(podman images --noheading --format '{{.Tag}}' "$ref" 2>/dev/null); do
    [[ "$tag" =~ ^[0-9a-f]{16}$ ]] && [ "$tag" != "$key" ] || continue
    podman image rm "$ref:$tag" >/dev/null 2>&1 || log "kept $ref:$tag (in use)"
  done
}

# image NAME ROOTFS FILE...: builds localhost/atrium-NAME from NAME.Containerfile with the root
# file system and FILEs (paths, copied by their base names) in its context. Skips the build
# when an image of the same content exists.
image() {
  local name=$1 rootfs=$2
  shift 2
  local ctx
  ctx=$(mktemp -d)
  ln "$rootfs" "$ctx/rootfs.tar" 2>/dev/null || cp "$rootfs" "$ctx/rootfs.tar"
  local f
  for f in "$@"; do
    if [ -d "$f" ]; then cp -r "$f" "$ctx/"; else cp "$f" "$ctx/"; fi
  done
  cp "$here/$name.Containerfile" "$ctx/Containerfile"
  local key
  key=$({
    (cd "$ctx" && find . -type f ! -name rootfs.tar -print0 | sort -z | xargs -0 sha256sum)
    basename "$rootfs"
  } | sha256sum | cut -c1-16)
  local ref="localhost/atrium-$name"
  if podman image exists "$ref:$key"; then
    log "$ref:$key exists"
  else
    log "building $ref:$key"
    podman build -q --network none --layers=false -t "$ref:$key" "$ctx" >/dev/null
  fi
  podman tag "$ref:$key" "$ref:$version"
  rm -rf "$ctx"
  prune_images "$ref" "$key"
  local size
  size=$(podman image inspect --format '{{.Size}}' "$ref:$key")
  log "$ref:$version = $key, $((size / 1000000)) MB"
  printf '"%s":{"image":"%s:%s","key":"%s","bytes":%s}' "$name" "$ref" "$version" "$key" "$size"
}

wants() { [[ ",$only," == *",$1,"* ]]; }

if wants broker || wants gateway; then
  if [ -z "$binaries" ]; then
    log "building the release binaries"
    cargo build --release --locked -q -p atrium-broker -p atrium-display
    binaries="$root/target/release"
  fi
  bins=$(mktemp -d)
  trap 'rm -rf "$bins"' EXIT
  for b in atrium-broker atrium-display; do
    [ -x "$binaries/$b" ] || { echo "build: $binaries/$b is missing" >&2; exit 1; }
    strip -o "$bins/$b" "$binaries/$b"
  done
  base=$(rootfs base "" libc6 libgcc-s1 ca-certificates)
fi

out=()
if wants broker; then
  out+=("$(image broker "$base" "$bins/atrium-broker" "$root/policies")")
fi
if wants gateway; then
  out+=("$(image gateway "$base" "$bins/atrium-display")")
fi
if wants postgres; then
  pg=$(rootfs postgres "/usr/lib/postgresql/15/lib/bitcode /usr/lib/postgresql/15/lib/llvmjit* /usr/lib/x86_64-linux-gnu/libLLVM* /usr/lib/x86_64-linux-gnu/libz3* /usr/bin/perl* /usr/lib/x86_64-linux-gnu/libperl* /usr/lib/x86_64-linux-gnu/perl* /usr/share/perl /usr/share/postgresql/15/man" dash postgresql-15)
  out+=("$(image postgres "$pg" "$here/postgres-entrypoint.sh")")
fi
if wants edge; then
  edge=$(rootfs edge "/usr/bin/perl* /usr/lib/x86_64-linux-gnu/libperl* /usr/lib/x86_64-linux-gnu/perl* /usr/share/perl" haproxy)
  out+=("$(image edge "$edge")")
fi
(IFS=,; echo "{${out[*]}}")
