# What apt would install, without installing it (sourced by deploy/containers/build.sh and
# scripts/lib/debian-disk.sh).

# apt_resolve PKG...: the .deb file names apt would install on an empty system with these
# packages asked for and no recommends, one per line, sorted: what an image made of them holds,
# versions included (its cache key).
apt_resolve() {
  local empty
  empty=$(mktemp)
  apt-get -o Dir::State::Status="$empty" -o Debug::NoLocking=1 --no-install-recommends \
    --print-uris -qq install "$@" | awk '{print $2}' | sort
  rm -f "$empty"
}
