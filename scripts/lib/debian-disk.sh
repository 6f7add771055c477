#!/usr/bin/env bash
# Builds a Debian disk as an operator would install one (the host's release: Debian 12 here), for the tests of imported images
# (docs/images.md): systemd as init, Debian's kernel and the initramfs its own maintainer
# scripts make (mmdebstrap installs the packages from the host's apt sources and runs their
# scripts), booted by systemd-boot (Debian's systemd-boot-efi) from an EFI system partition, the
# root file system on a partition of its own. In it, Atrium's guest agent installed as
# docs/images.md tells operators to: the static binary in /usr/local/sbin and its unit file
# (hypervisor-node/guest-agent/atrium-guest-agent.service), enabled.
#
#   usage:   scripts/lib/debian-disk.sh AGENT_BINARY
#   result:  $ATRIUM_CACHE/images/debian-disk-<key>.raw (2.5 GB, sparse: some 700 MB used),
#            linked as debian-disk.raw (what the tests use)
#   cache:   the root file system (a few minutes to make) as debian-rootfs-<key>.tar, keyed
#            by the versions of the packages it is made of; the disk by that, the agent, the
#            unit file and this script (seconds to make again). Only the newest disk is kept
#            (a new agent makes a new one), and the two newest root file systems.
#
# Needs root (the root file system keeps its files' owners), mmdebstrap, mke2fs (e2fsprogs),
# mkfs.vfat (dosfstools), mtools and sfdisk (scripts/lib/deps.sh installs them for the tests).
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"
agent=${1:?usage: debian-disk.sh AGENT_BINARY}
[ -x "$agent" ] || { echo "debian-disk: $agent is not an executable" >&2; exit 1; }
agent=$(realpath "$agent")
cd "$(dirname "$0")/../.."
script=scripts/lib/debian-disk.sh
[ "$(id -u)" = 0 ] || { echo "debian-disk: needs root (the files' owners)" >&2; exit 1; }
unit=hypervisor-node/guest-agent/atrium-guest-agent.service
ATRIUM_CACHE="${ATRIUM_CACHE:-$HOME/.cache/atrium}"
images="$ATRIUM_CACHE/images"
mkdir -p "$images"

# What the root file system is made of, besides Debian's essential packages (mmdebstrap's
# minbase variant): systemd as init, logind for users' sessions, udev, Debian's kernel, and
# the console's keyboard layouts (console-setup and kbd, as Debian's installer sets up).
packages=(systemd-sysv libpam-systemd dbus udev linux-image-amd64 console-setup kbd)
# Bump when how the root file system is made changes: it is made again.
RECIPE=1

# shellcheck source=scripts/lib/apt-resolve.sh
. scripts/lib/apt-resolve.sh
# shellcheck source=scripts/lib/esp.sh
. scripts/lib/esp.sh

# The release: the host's (its apt lists give the versions, its sources the mirror).
suite=$(. /etc/os-release && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}") || true
[ -n "$suite" ] || { echo "debian-disk: the host is not Debian (/etc/os-release)" >&2; exit 1; }
# mmdebstrap's minbase: the Essential and the Priority: required packages.
essential=(base-files base-passwd bash bsdutils coreutils dash debianutils diffutils dpkg
  e2fsprogs findutils grep gzip hostname init-system-helpers libc-bin login mawk ncurses-base
  ncurses-bin perl-base sed sysvinit-utils tar tzdata util-linux apt systemd-boot-efi)
# With them named, what mmdebstrap installs: the root file system's key.
debs=$(apt_resolve "${essential[@]}" "${packages[@]}")
[ -n "$debs" ] || { echo "debian-disk: apt resolved nothing (apt-get update?)" >&2; exit 1; }
root_key=$(printf '%s\n' "recipe $RECIPE" "$suite" "${packages[*]}" "$debs" | sha256sum | cut -c1-16)
rootfs="$images/debian-rootfs-$root_key.tar"

if [ -s "$rootfs" ]; then
  echo "debian-disk: root file system $root_key is in the cache" >&2
  touch "$rootfs"
else
  echo "debian-disk: making root file system $root_key with mmdebstrap (a few minutes)" >&2
  # The host's own Debian sources (its mirror, its updates), else Debian's mirror.
  sources=http://deb.debian.org/debian
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then sources=$f; break; fi
  done
  include=$(IFS=,; echo "${packages[*]},systemd-boot-efi")
  # No documentation, manuals or translations: a smaller disk, as an operator's minimal
  # install. The hooks are what an installer does last: the host's name, how the root file
  # system is mounted (mmdebstrap leaves /etc/machine-id empty: each VM makes its own).
  trap 'rm -f "$rootfs.part"' EXIT
  mmdebstrap --variant=minbase --format=tar --include="$include" --quiet \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='echo atrium-debian > "$1/etc/hostname"' \
    --customize-hook='printf "LABEL=atrium-root / ext4 errors=remount-ro 0 1\n" > "$1/etc/fstab"' \
    "$suite" "$rootfs.part" "$sources" >&2
  mv "$rootfs.part" "$rootfs"
  trap - EXIT
fi

key=$( { echo "$root_key"; sha256sum "$agent" "$unit" "$script" scripts/lib/esp.sh; } | sha256sum | cut -c1-16)
out="$images/debian-disk-$key.raw"
if [ -f "$out" ]; then
  echo "debian-disk: $out is in the cache" >&2
  ln -sfn "debian-disk-$key.raw" "$images/debian-disk.raw"
  exit 0
fi
echo "debian-disk: building $out" >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/root"
tar -C "$work/root" --numeric-owner -xpf "$rootfs"
boot="$work/root/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
kernel=$(find "$work/root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -1)
initrd=$(find "$work/root/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -1)
for f in "$boot" "$kernel" "$initrd"; do
  [ -n "$f" ] && [ -f "$f" ] ||
    { echo "debian-disk: the root file system lacks the boot loader, a kernel or an initramfs" >&2; exit 1; }
done
title=$(. "$work/root/etc/os-release" && echo "${PRETTY_NAME:-Debian GNU/Linux}")

# The agent, installed as docs/images.md says (`systemctl enable` makes this link).
install -m 0755 "$agent" "$work/root/usr/local/sbin/atrium-guest-agent"
install -m 0644 "$unit" "$work/root/etc/systemd/system/atrium-guest-agent.service"
mkdir -p "$work/root/etc/systemd/system/multi-user.target.wants"
ln -sfn /etc/systemd/system/atrium-guest-agent.service \
  "$work/root/etc/systemd/system/multi-user.target.wants/atrium-guest-agent.service"

# A GPT disk of 2.5 GiB (sparse): an EFI system partition (256 MiB of FAT at 1 MiB) with the
# boot loader, its menu, the kernel and the initramfs; the root file system (ext4, labelled
# atrium-root) after it.
esp="$work/esp.img" part="$work/root.img" disk="$work/disk.raw"
make_esp "$esp" 256 "$boot" "$kernel" "$initrd" "$title" \
  "root=LABEL=atrium-root ro console=tty1 console=ttyS0,115200 quiet"
mke2fs -q -t ext4 -L atrium-root -d "$work/root" "$part" 2200M >/dev/null
truncate -s 2500M "$disk"
printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"\nstart=%d, size=%d, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"\n' \
  $((256 * 2048)) $((257 * 2048)) $((2200 * 2048)) | sfdisk -q "$disk"
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$part" of="$disk" bs=1M seek=257 conv=notrunc,sparse status=none
mv "$disk" "$out.part"
mv "$out.part" "$out"
ln -sfn "debian-disk-$key.raw" "$images/debian-disk.raw"

# Only this disk is kept, and this root file system and the newest other.
{ ls -1t "$images"/debian-disk-????????????????.raw 2>/dev/null || true; } |
  { grep -Fvx -e "$out" || true; } | xargs -r -d '\n' rm -f
{ ls -1t "$images"/debian-rootfs-????????????????.tar 2>/dev/null || true; } |
  { grep -Fvx -e "$rootfs" || true; } | tail -n +2 | xargs -r -d '\n' rm -f
echo "debian-disk: $out"
