#!/usr/bin/env bash
# Builds disk images that Atrium did not make the usual way, for the tests of imported images
# (docs/images.md): GPT disks whose EFI system partition holds systemd-boot (Debian's
# systemd-boot-efi) and the console image's kernel and initramfs: one with Atrium's guest agent
# in it, one without (a login prompt on its console instead); and a PC (MBR) disk for BIOS
# firmware, with the agent, booted by SYSLINUX (Debian's syslinux and syslinux-common) from a
# FAT partition holding the same kernel and initramfs. The packages are fetched with apt-get
# download into the package cache. The firmware boots them as it boots any OS: firmware, boot
# loader, kernel.
#
#   usage:   scripts/lib/uefi-disk.sh CONSOLE_IMAGE_FOLDER
#   result:  $ATRIUM_CACHE/images/uefi-disk-<key>.raw, keyed by the console image's manifest,
#            the boot loaders' versions and this script; printed as ATRIUM_UEFI_DISK=<file>;
#            uefi-disk-noagent-<key>.raw and bios-disk-<key>.raw beside it
#   links:   $ATRIUM_CACHE/images/uefi-disk.raw, uefi-disk-noagent.raw and bios-disk.raw (what
#            the tests use)
#
# Needs mkfs.vfat (dosfstools), mtools, sfdisk (fdisk), cpio and dpkg-deb (scripts/lib/deps.sh
# installs them for the tests).
set -euo pipefail
# mkfs.vfat and sfdisk are in /sbin, which a user's PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

console=${1:?usage: uefi-disk.sh CONSOLE_IMAGE_FOLDER}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib/esp.sh
. "$here/esp.sh"
ATRIUM_CACHE="${ATRIUM_CACHE:-$HOME/.cache/atrium}"
images="$ATRIUM_CACHE/images"
debs="$ATRIUM_CACHE/debs"
mkdir -p "$images" "$debs"

# candidate PACKAGE: the version apt would install.
candidate() {
  local v
  v=$(apt-cache policy "$1" | awk '/Candidate/{print $2}')
  [ -n "$v" ] && [ "$v" != "(none)" ] || {
    echo "uefi-disk: apt knows no $1 (apt-get update?)" >&2
    exit 1
  }
  echo "$v"
}
version=$(candidate systemd-boot-efi)
syslinux_version=$(candidate syslinux)
syslinux_common_version=$(candidate syslinux-common)
key=$( { cat "$console/manifest.json"; echo "$version $syslinux_version $syslinux_common_version"; cat "$0" "$here/esp.sh"; } |
  sha256sum | cut -c1-16)
out="$images/uefi-disk-$key.raw"
noagent="$images/uefi-disk-noagent-$key.raw"
bios="$images/bios-disk-$key.raw"
link_all() {
  ln -sfn "uefi-disk-$key.raw" "$images/uefi-disk.raw"
  ln -sfn "uefi-disk-noagent-$key.raw" "$images/uefi-disk-noagent.raw"
  ln -sfn "bios-disk-$key.raw" "$images/bios-disk.raw"
}
if [ -f "$out" ] && [ -f "$noagent" ] && [ -f "$bios" ]; then
  echo "uefi-disk: $out is in the cache" >&2
  link_all
  echo "ATRIUM_UEFI_DISK=$out"
  exit 0
fi
echo "uefi-disk: building $out" >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# fetch PACKAGE VERSION: the package's .deb in the cache (downloaded when missing).
fetch() {
  local deb
  deb=$( (ls "$debs"/"$1"_*.deb 2>/dev/null || true) | grep -F "_${2//:/%3a}_" | head -1 || true)
  if [ -z "$deb" ]; then
    (cd "$debs" && apt-get download -q "$1=$2" >&2)
    deb=$( (ls "$debs"/"$1"_*.deb 2>/dev/null || true) | grep -F "_${2//:/%3a}_" | head -1 || true)
    [ -n "$deb" ] || { echo "uefi-disk: apt-get download gave no $1 $2" >&2; exit 1; }
  fi
  echo "$deb"
}
deb=$(fetch systemd-boot-efi "$version")
dpkg-deb -x "$deb" "$work/deb"
dpkg-deb -x "$(fetch syslinux "$syslinux_version")" "$work/syslinux"
dpkg-deb -x "$(fetch syslinux-common "$syslinux_common_version")" "$work/syslinux"
boot="$work/deb/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
[ -f "$boot" ] || { echo "uefi-disk: $deb has no systemd-bootx64.efi" >&2; exit 1; }

# The console image's kernel command line, from its manifest (`"cmdline": "..."`, one line).
cmdline=$(sed -n 's/^ *"cmdline": "\([^"\\]*\)",\{0,1\}$/\1/p' "$console/manifest.json" | head -1)
[ -n "$cmdline" ] || { echo "uefi-disk: no kernel command line in $console/manifest.json" >&2; exit 1; }

# make_disk OUT INITRD: a GPT disk of 80 MiB whose EFI system partition (64 MiB of FAT, at
# 1 MiB) holds the boot loader, its menu, the kernel and INITRD.
make_disk() {
  local out=$1 initrd=$2 esp="$work/esp.img" disk="$work/disk.raw"
  rm -f "$esp" "$disk"
  make_esp "$esp" 64 "$boot" "$console/vmlinuz" "$initrd" "Atrium console (UEFI)" "$cmdline"
  truncate -s 80M "$disk"
  printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"\n' \
    $((64 * 2048)) | sfdisk -q "$disk"
  dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
  mv "$disk" "$out.part"
  mv "$out.part" "$out"
}

# With the agent: the console image's own initramfs.
make_disk "$out" "$console/initrd.img"

# Without it: the same initramfs with a second archive after it, whose /etc/inittab (it
# replaces the first's) starts no agent and puts the OS's own login on the console (busybox
# getty and login), as an OS Atrium has no agent for.
mkdir -p "$work/overlay/etc"
cat > "$work/overlay/etc/inittab" <<'INITTAB'
# An OS without Atrium's agent (the tests of imported images): a login on tty1.
tty1::respawn:/bin/busybox getty 38400 tty1
::respawn:/sbin/acpid -d -c /etc/acpi
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
INITTAB
cp "$console/initrd.img" "$work/initrd-noagent.img"
# The kernel reads concatenated archives, each starting on a 4-byte boundary.
truncate -s %512 "$work/initrd-noagent.img"
(cd "$work/overlay" && find . | cpio -o -H newc -R 0:0 --quiet) >> "$work/initrd-noagent.img"
make_disk "$noagent" "$work/initrd-noagent.img"

# For BIOS: an MBR disk of 80 MiB, SYSLINUX's boot code in its first sector, one bootable FAT
# partition (64 MiB at 1 MiB) holding SYSLINUX (installed by its own tool, through mtools), its
# menu, the kernel and the agent's initramfs.
part="$work/part.img" disk="$work/bios.raw"
mkfs.vfat -C -n ATRIUM-BIOS "$part" $((64 * 1024)) >/dev/null
mcopy -i "$part" "$console/vmlinuz" ::/vmlinuz
mcopy -i "$part" "$console/initrd.img" ::/initrd.img
printf 'DEFAULT atrium\nPROMPT 0\nTIMEOUT 0\nLABEL atrium\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' \
  "$cmdline" > "$work/syslinux.cfg"
mcopy -i "$part" "$work/syslinux.cfg" ::/syslinux.cfg
"$work/syslinux/usr/bin/syslinux" --install "$part"
truncate -s 80M "$disk"
printf 'label: dos\nstart=2048, size=%d, type=c, bootable\n' $((64 * 2048)) | sfdisk -q "$disk"
dd if="$work/syslinux/usr/lib/syslinux/mbr/mbr.bin" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$part" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
mv "$disk" "$bios.part"
mv "$bios.part" "$bios"
link_all

# Keep these disks and the two most recent others of each kind.
for kind in uefi-disk uefi-disk-noagent bios-disk; do
  { ls -1t "$images/$kind"-????????????????.raw 2>/dev/null || true; } |
    { grep -Fvx -e "$out" -e "$noagent" -e "$bios" || true; } | tail -n +3 | xargs -r -d '\n' rm -f
done
echo "ATRIUM_UEFI_DISK=$out"
