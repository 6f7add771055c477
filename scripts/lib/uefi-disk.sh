#!/usr/bin/env bash
# Builds a UEFI-bootable disk image that Atrium did not make the usual way, for the tests of
# imported images (docs/images.md): a GPT disk whose EFI system partition holds systemd-boot
# (Debian's systemd-boot-efi, fetched with apt-get download into the package cache) and the
# console image's kernel and initramfs (with Atrium's guest agent in it). OVMF boots it as it
# boots any OS: firmware, boot loader, kernel.
#
#   usage:   scripts/lib/uefi-disk.sh CONSOLE_IMAGE_FOLDER
#   result:  $ATRIUM_CACHE/images/uefi-disk-<key>.raw, keyed by the console image's manifest,
#            systemd-boot's version and this script; printed as ATRIUM_UEFI_DISK=<file>
#   link:    $ATRIUM_CACHE/images/uefi-disk.raw -> uefi-disk-<key>.raw (what the tests use)
#
# Needs mkfs.vfat (dosfstools), mtools, sfdisk (fdisk) and dpkg-deb.
set -euo pipefail

console=${1:?usage: uefi-disk.sh CONSOLE_IMAGE_FOLDER}
ATRIUM_CACHE="${ATRIUM_CACHE:-$HOME/.cache/atrium}"
images="$ATRIUM_CACHE/images"
debs="$ATRIUM_CACHE/debs"
mkdir -p "$images" "$debs"

version=$(apt-cache policy systemd-boot-efi | awk '/Candidate/{print $2}')
[ -n "$version" ] && [ "$version" != "(none)" ] || {
  echo "uefi-disk: apt knows no systemd-boot-efi (apt-get update?)" >&2
  exit 1
}
key=$( { cat "$console/manifest.json"; echo "$version"; cat "$0"; } | sha256sum | cut -c1-16)
out="$images/uefi-disk-$key.raw"
if [ -f "$out" ]; then
  echo "uefi-disk: $out is in the cache" >&2
  ln -sfn "uefi-disk-$key.raw" "$images/uefi-disk.raw"
  echo "ATRIUM_UEFI_DISK=$out"
  exit 0
fi
echo "uefi-disk: building $out" >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
deb=$(ls "$debs"/systemd-boot-efi_*.deb 2>/dev/null | grep -F "_${version//:/%3a}_" | head -1 || true)
if [ -z "$deb" ]; then
  (cd "$debs" && apt-get download -q "systemd-boot-efi=$version" >&2)
  deb=$(ls "$debs"/systemd-boot-efi_*.deb | grep -F "_${version//:/%3a}_" | head -1)
fi
dpkg-deb -x "$deb" "$work/deb"
boot="$work/deb/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
[ -f "$boot" ] || { echo "uefi-disk: $deb has no systemd-bootx64.efi" >&2; exit 1; }

cmdline=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["boot"]["cmdline"])' \
  "$console/manifest.json")

# The EFI system partition: 64 MiB of FAT with the boot loader, its menu and the kernel.
esp="$work/esp.img"
mkfs.vfat -C -n ATRIUM-ESP "$esp" $((64 * 1024)) >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" "$boot" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$console/vmlinuz" ::/vmlinuz
mcopy -i "$esp" "$console/initrd.img" ::/initrd.img
printf 'default atrium.conf\ntimeout 0\n' > "$work/loader.conf"
printf 'title Atrium console (UEFI)\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' \
  "$cmdline" > "$work/atrium.conf"
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/atrium.conf" ::/loader/entries/atrium.conf

# A GPT disk of 80 MiB with the ESP at 1 MiB.
disk="$work/disk.raw"
truncate -s 80M "$disk"
printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"\n' \
  $((64 * 2048)) | sfdisk -q "$disk"
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
mv "$disk" "$out.part"
mv "$out.part" "$out"
ln -sfn "uefi-disk-$key.raw" "$images/uefi-disk.raw"
# Keep this disk and the two most recent others.
{ ls -1t "$images"/uefi-disk-?*.raw 2>/dev/null || true; } | { grep -vx "$out" || true; } |
  tail -n +3 | xargs -r rm -f
echo "ATRIUM_UEFI_DISK=$out"
