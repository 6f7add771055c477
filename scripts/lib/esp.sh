# An EFI system partition booting one Linux entry with systemd-boot (sourced by
# scripts/lib/uefi-disk.sh and scripts/lib/debian-disk.sh).

# make_esp IMAGE SIZE_MIB BOOT_EFI KERNEL INITRD TITLE CMDLINE: a FAT file system of SIZE_MIB
# holding systemd-boot (BOOT_EFI) as the removable-media loader (EFI/BOOT/BOOTX64.EFI, which
# the firmware finds with no boot entry of its own), a menu with one entry and no wait, and the
# kernel and initramfs it boots with CMDLINE. Needs mkfs.vfat (dosfstools) and mtools.
make_esp() {
  local image=$1 size=$2 boot=$3 kernel=$4 initrd=$5 title=$6 cmdline=$7 conf
  conf=$(mktemp -d)
  rm -f "$image"
  mkfs.vfat -C -n ATRIUM-ESP "$image" $((size * 1024)) >/dev/null
  mmd -i "$image" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
  mcopy -i "$image" "$boot" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$image" "$kernel" ::/vmlinuz
  mcopy -i "$image" "$initrd" ::/initrd.img
  printf 'default entry.conf\ntimeout 0\n' > "$conf/loader.conf"
  printf 'title %s\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$title" "$cmdline" \
    > "$conf/entry.conf"
  mcopy -i "$image" "$conf/loader.conf" ::/loader/loader.conf
  mcopy -i "$image" "$conf/entry.conf" ::/loader/entries/entry.conf
  rm -rf "$conf"
}
