//! The test firmware (`firmware/start.S`, `firmware/fw.c`, built by `build.rs`): a flat image
//! loaded at 1 MiB, entered at its first byte in long mode at CPL 3 with `rdi` pointing at a
//! [`BootInfo`]. QEMU can boot the same image through its multiboot header.

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// The firmware image.
pub const TEST_FIRMWARE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/atrium-test-fw.bin"));
/// The same program as an ELF executable (loaded at 1 MiB, entry at its first byte). Booted as a
/// "kernel" it runs at CPL 0 without boot info: it prints two lines on COM1 and spins, which is
/// enough to exercise the kernel path of a runtime quickly.
pub const TEST_FIRMWARE_ELF: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/atrium-test-fw.elf"));

/// "ATRFWM01", little-endian.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"ATRFWM01");

/// What the VMM tells the firmware (layout mirrored in `fw.c`'s `struct boot_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootInfo {
    pub fb_addr: u64,
    pub fb_width: u32,
    pub fb_height: u32,
    pub fb_stride: u32,
    pub virtio_count: u32,
    pub virtio_base: u64,
    pub virtio_stride: u32,
}

impl BootInfo {
    pub fn to_bytes(self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0..8].copy_from_slice(&BOOT_MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&self.fb_addr.to_le_bytes());
        b[16..20].copy_from_slice(&self.fb_width.to_le_bytes());
        b[20..24].copy_from_slice(&self.fb_height.to_le_bytes());
        b[24..28].copy_from_slice(&self.fb_stride.to_le_bytes());
        b[28..32].copy_from_slice(&self.virtio_count.to_le_bytes());
        b[32..40].copy_from_slice(&self.virtio_base.to_le_bytes());
        b[40..44].copy_from_slice(&self.virtio_stride.to_le_bytes());
        b
    }

    pub fn write(self, mem: &GuestMemory, at: u64) -> vm_memory::GuestMemoryResult<()> {
        mem.write_slice(&self.to_bytes(), GuestAddress(at))
    }
}

/// The pixel the firmware draws at `(x, y)` of the top half of a `w` x `h` screen
/// (`pattern()` in `fw.c`).
pub fn pattern(x: u32, y: u32, w: u32, h: u32) -> u32 {
    let r = (x * 255) / (w - 1);
    let g = (y * 255) / (h - 1);
    let b = (x ^ y) & 0xff;
    (r << 16) | (g << 8) | b
}

/// The pixel rectangle the firmware fills when key `code` goes down or up
/// (`draw_key()` in `fw.c`): `(x0, y0)`, 16 x 16. `None` when it would not fit.
pub fn key_block(code: u32, w: u32, h: u32) -> Option<(u32, u32)> {
    let cols = w / 16;
    let (x0, y0) = ((code % cols) * 16, h / 2 + (code / cols) * 16);
    (y0 + 16 <= h).then_some((x0, y0))
}

/// Colours of a key block.
pub const KEY_DOWN_RGB: u32 = 0x00ff_ffff;
pub const KEY_UP_RGB: u32 = 0x0040_4040;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_has_its_entry_and_multiboot_header() {
        assert!(TEST_FIRMWARE.len() > 64 && TEST_FIRMWARE.len() < 64 * 1024);
        let magic = u32::from_le_bytes(TEST_FIRMWARE[4..8].try_into().expect("4 bytes"));
        assert_eq!(magic, 0x1BAD_B002);
        assert_eq!(&BootInfo::default().to_bytes()[0..8], b"ATRFWM01");
        assert_eq!(&TEST_FIRMWARE_ELF[..4], b"\x7fELF");
    }

    #[test]
    fn pattern_corners() {
        assert_eq!(pattern(0, 0, 640, 480), 0);
        assert_eq!(pattern(639, 0, 640, 480), 0x00ff_007f);
        assert_eq!(key_block(30, 640, 480), Some((480, 240)));
        assert_eq!(key_block(255, 640, 256), Some((240, 224)));
        assert_eq!(key_block(255, 640, 200), None);
    }
}
