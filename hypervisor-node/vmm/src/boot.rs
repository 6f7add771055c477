//! Loading what the vCPUs start: a Linux kernel (ELF `vmlinux` or `bzImage`) with its boot
//! parameters, command line and initramfs, or the flat test firmware with its boot info.

use std::fs::File;
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{KernelLoader, bzimage::BzImage, elf::Elf};
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::StartMode;
use crate::config::FramebufferConfig;
use crate::firmware::BootInfo;
use crate::layout::{
    BOOT_STACK, CMDLINE, EBDA_START, FRAMEBUFFER_START, FW_BOOT_INFO, FW_STACK_TOP, HIGH_RAM_START,
    HIMEM_START, MMIO_HOLE_START, ZERO_PAGE,
};
use crate::memory::GuestMemory;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("cannot load the kernel (neither ELF nor bzImage): {0}")]
    Kernel(String),
    #[error("the initramfs ({0} bytes) does not fit in guest memory")]
    InitramfsTooLarge(u64),
    #[error("the firmware ({0} bytes) does not fit below the MMIO hole")]
    FirmwareTooLarge(u64),
    #[error("writing boot data to guest memory: {0}")]
    Memory(String),
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const VIDEO_TYPE_VLFB: u8 = 0x23;
const VIDEO_TYPE_EFI: u8 = 0x70;

fn mem_err(e: impl std::fmt::Display) -> BootError {
    BootError::Memory(e.to_string())
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open { path: path.display().to_string(), source })
}

/// How the framebuffer is announced to Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenInfo {
    pub config: FramebufferConfig,
    pub size: u64,
    /// `true`: an EFI framebuffer (Debian 6.12 has `FB_EFI` but not `FB_VESA`); `false`: VESA.
    pub efi: bool,
}

/// Loads a Linux kernel and writes everything the 64-bit boot protocol needs.
pub fn load_linux(
    mem: &GuestMemory,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    rsdp: u64,
    screen: Option<ScreenInfo>,
) -> Result<StartMode, BootError> {
    let mut image = open(kernel)?;
    let high = Some(GuestAddress(HIMEM_START));
    let (result, entry) = match Elf::load(mem, None, &mut image, high) {
        Ok(r) => {
            let entry = r.kernel_load.raw_value();
            (r, entry)
        }
        Err(elf_err) => {
            let r = BzImage::load(mem, None, &mut image, high)
                .map_err(|bz| BootError::Kernel(format!("ELF: {elf_err}; bzImage: {bz}")))?;
            // The 64-bit entry point of a bzImage is 0x200 past its protected-mode code.
            let entry = r.kernel_load.raw_value() + 0x200;
            (r, entry)
        }
    };

    let mut params = boot_params::default();
    if let Some(hdr) = result.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.kernel_alignment = 0x0100_0000;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE).expect("below 4 GiB");
    params.hdr.cmdline_size = u32::try_from(cmdline.len()).map_err(mem_err)?;
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE)).map_err(mem_err)?;

    if let Some(path) = initramfs {
        let data = std::fs::read(path)
            .map_err(|source| BootError::Open { path: path.display().to_string(), source })?;
        let size = data.len() as u64;
        let low_end = mem.last_addr().raw_value().min(MMIO_HOLE_START - 1) + 1;
        let kernel_end = result.kernel_end;
        let addr = low_end
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= kernel_end.max(HIMEM_START))
            .ok_or(BootError::InitramfsTooLarge(size))?;
        mem.write_slice(&data, GuestAddress(addr)).map_err(mem_err)?;
        params.hdr.ramdisk_image = u32::try_from(addr).map_err(mem_err)?;
        params.hdr.ramdisk_size =
            u32::try_from(size).map_err(|_| BootError::InitramfsTooLarge(size))?;
    }

    params.acpi_rsdp_addr = rsdp;
    let mut e820 = vec![
        (0, EBDA_START, E820_RAM),
        (
            crate::layout::ACPI_START,
            crate::layout::ACPI_END - crate::layout::ACPI_START,
            E820_RESERVED,
        ),
    ];
    let mem_end = mem.last_addr().raw_value() + 1;
    if mem_end <= MMIO_HOLE_START {
        e820.push((HIMEM_START, mem_end - HIMEM_START, E820_RAM));
    } else {
        e820.push((HIMEM_START, MMIO_HOLE_START - HIMEM_START, E820_RAM));
        e820.push((HIGH_RAM_START, mem_end - HIGH_RAM_START, E820_RAM));
    }
    for (i, (addr, size, type_)) in e820.into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr, size, r#type: type_ };
        params.e820_entries = u8::try_from(i + 1).expect("a handful of entries");
    }

    if let Some(s) = screen {
        let si = &mut params.screen_info;
        si.orig_video_isVGA = if s.efi { VIDEO_TYPE_EFI } else { VIDEO_TYPE_VLFB };
        si.lfb_base = u32::try_from(FRAMEBUFFER_START).expect("below 4 GiB");
        // VESA counts the size in 64 KiB units, EFI in bytes.
        si.lfb_size =
            u32::try_from(if s.efi { s.size } else { s.size / 65536 }).map_err(mem_err)?;
        si.lfb_width = u16::try_from(s.config.width).map_err(mem_err)?;
        si.lfb_height = u16::try_from(s.config.height).map_err(mem_err)?;
        si.lfb_depth = 32;
        si.lfb_linelength = u16::try_from(s.config.width * 4).map_err(mem_err)?;
        si.red_size = 8;
        si.red_pos = 16;
        si.green_size = 8;
        si.green_pos = 8;
        si.blue_size = 8;
        si.blue_pos = 0;
        si.rsvd_size = 8;
        si.rsvd_pos = 24;
        si.pages = 1;
    }
    mem.write_obj(params, GuestAddress(ZERO_PAGE)).map_err(mem_err)?;
    Ok(StartMode::Linux { entry, boot_params: ZERO_PAGE, stack: BOOT_STACK })
}

/// Copies the flat firmware to 1 MiB and writes its boot info.
pub fn load_firmware(
    mem: &GuestMemory,
    path: &Path,
    info: BootInfo,
) -> Result<StartMode, BootError> {
    let image = std::fs::read(path)
        .map_err(|source| BootError::Open { path: path.display().to_string(), source })?;
    let size = image.len() as u64;
    let end = mem.last_addr().raw_value().min(MMIO_HOLE_START - 1) + 1;
    if HIMEM_START + size + 0x10_0000 > end {
        // The image, plus room for its bss and queues.
        return Err(BootError::FirmwareTooLarge(size));
    }
    mem.write_slice(&image, GuestAddress(HIMEM_START)).map_err(mem_err)?;
    info.write(mem, FW_BOOT_INFO).map_err(mem_err)?;
    Ok(StartMode::Firmware { entry: HIMEM_START, boot_info: FW_BOOT_INFO, stack: FW_STACK_TOP })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_kernel() {
        let dir = std::env::temp_dir().join(format!("atrium-vmm-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let k = dir.join("junk");
        std::fs::write(&k, vec![0x5a; 8192]).expect("write");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("mem");
        assert!(matches!(load_linux(&mem, &k, None, "", 0, None), Err(BootError::Kernel(_))));
        assert!(matches!(
            load_linux(&mem, &dir.join("missing"), None, "", 0, None),
            Err(BootError::Open { .. })
        ));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn firmware_and_boot_info_land_in_place() {
        let dir = std::env::temp_dir().join(format!("atrium-vmm-fw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("fw.bin");
        std::fs::write(&f, crate::firmware::TEST_FIRMWARE).expect("write");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("mem");
        let mode = load_firmware(&mem, &f, BootInfo::default()).expect("load");
        assert_eq!(
            mode,
            StartMode::Firmware {
                entry: HIMEM_START,
                boot_info: FW_BOOT_INFO,
                stack: FW_STACK_TOP
            }
        );
        let magic: u64 = mem.read_obj(GuestAddress(FW_BOOT_INFO)).expect("mem");
        assert_eq!(magic, crate::firmware::BOOT_MAGIC);
        let tiny = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        assert!(matches!(
            load_firmware(&tiny, &f, BootInfo::default()),
            Err(BootError::FirmwareTooLarge(_))
        ));
        std::fs::remove_dir_all(dir).ok();
    }
}
