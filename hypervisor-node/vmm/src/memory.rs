//! Guest memory: RAM in one memfd (shared mapping), so that a snapshot can write it to a file
//! and a restored VM can map that file back copy-on-write (`MAP_PRIVATE`) at the same offsets;
//! the framebuffer in a memfd of its own, which the display proxy maps read-only.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use thiserror::Error;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::layout::{HIGH_RAM_START, MMIO_HOLE_START};

pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("memfd_create: {0}")]
    Memfd(std::io::Error),
    #[error("sizing the memfd: {0}")]
    Size(std::io::Error),
    #[error("mapping guest memory: {0}")]
    Map(String),
}

/// Creates an empty memfd of `size` bytes, closed on exec, sealed at that size: whoever it is
/// shared with (the display proxy maps the framebuffer) can rely on it never shrinking under
/// its mapping (which would be SIGBUS), and the seals themselves cannot be changed.
pub fn create_memfd(name: &CStr, size: u64) -> Result<File, MemoryError> {
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid for memfd_create.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Size)?;
    seal_size(&file)?;
    Ok(file)
}

/// The seals every memfd of ours carries.
pub const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

fn seal_size(file: &File) -> Result<(), MemoryError> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a file descriptor we own, with a valid command and seal flags.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) };
    if r < 0 {
        return Err(MemoryError::Size(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Guest RAM ranges for `size` bytes: low RAM up to the MMIO hole, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(HIGH_RAM_START), size - MMIO_HOLE_START),
        ]
    }
}

/// Guest RAM. Every region maps the same memfd at consecutive offsets
/// (`GuestMemoryRegion::file_offset`), the layout a snapshot writes out and a clone maps back.
#[derive(Debug)]
pub struct GuestRam {
    pub memory: GuestMemory,
    /// The RAM is a snapshot's file mapped privately ([`map_snapshot_ram`]): the file does not
    /// hold what the guest wrote since.
    pub from_snapshot: bool,
}

pub fn create_guest_ram(size: u64) -> Result<GuestRam, MemoryError> {
    let memfd = create_memfd(c"atrium-guest-ram", size)?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let file = memfd.try_clone().map_err(MemoryError::Size)?;
        let len_usize = usize::try_from(len).map_err(|e| MemoryError::Map(e.to_string()))?;
        ranges.push((addr, len_usize, Some(FileOffset::new(file, offset))));
        offset += len;
    }
    let memory =
        GuestMemory::from_ranges_with_files(ranges).map_err(|e| MemoryError::Map(e.to_string()))?;
    Ok(GuestRam { memory, from_snapshot: false })
}

/// Guest RAM of `size` bytes from a snapshot's memory file (at least `size` bytes, checked by
/// the caller), mapped privately: reads share the file's page cache with every other VM
/// restored from it; a write copies the page for this VM alone and never reaches the file.
pub fn map_snapshot_ram(file: &File, size: u64) -> Result<GuestRam, MemoryError> {
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let clone = file.try_clone().map_err(MemoryError::Size)?;
        let len_usize = usize::try_from(len).map_err(|e| MemoryError::Map(e.to_string()))?;
        let mapping = MmapRegionBuilder::new(len_usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::new(clone, offset))
            .build()
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| MemoryError::Map("a RAM range wraps the address space".into()))?;
        regions.push(region);
        offset += len;
    }
    let memory = GuestMemory::from_regions(regions).map_err(|e| MemoryError::Map(e.to_string()))?;
    Ok(GuestRam { memory, from_snapshot: true })
}

/// A shared mapping of a whole memfd (the framebuffer).
pub fn map_memfd(file: &File, size: u64) -> Result<MmapRegion<()>, MemoryError> {
    let size = usize::try_from(size).map_err(|e| MemoryError::Map(e.to_string()))?;
    let clone = file.try_clone().map_err(MemoryError::Size)?;
    MmapRegion::from_file(FileOffset::new(clone, 0), size)
        .map_err(|e| MemoryError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_is_split_around_the_hole() {
        assert_eq!(ram_ranges(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1], (GuestAddress(HIGH_RAM_START), (4 << 30) - MMIO_HOLE_START));
    }

    #[test]
    fn memfds_are_sealed_at_their_size() {
        use std::os::fd::AsRawFd;
        let f = create_memfd(c"atrium-test", 8192).unwrap();
        // SAFETY: fcntl on a file descriptor we own, with a valid command.
        let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & SEALS, SEALS);
        assert!(f.set_len(4096).is_err(), "a sealed memfd cannot shrink");
        assert!(f.set_len(16384).is_err(), "nor grow");
        assert_eq!(f.metadata().unwrap().len(), 8192);
    }

    #[test]
    fn guest_ram_is_backed_by_the_memfd() {
        use std::os::unix::fs::FileExt;
        let ram = create_guest_ram(2 << 20).expect("memfd");
        assert_eq!(ram.memory.num_regions(), 1);
        ram.memory.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).expect("in range");
        let mut b = [0u8; 4];
        let region = ram.memory.iter().next().expect("one region");
        let memfd = region.file_offset().expect("file-backed").file();
        memfd.read_exact_at(&mut b, 0x1000).expect("read memfd");
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
    }

    #[test]
    fn snapshot_ram_is_copy_on_write() {
        use std::os::unix::fs::FileExt;
        let path = std::env::temp_dir().join(format!("atrium-snap-ram-{}", std::process::id()));
        let file = File::create(&path).expect("create");
        file.set_len(2 << 20).expect("size");
        file.write_all_at(&0x1234_5678_u32.to_le_bytes(), 0x2000).expect("write");
        let ro = File::open(&path).expect("open read-only");
        let a = map_snapshot_ram(&ro, 2 << 20).expect("map");
        let b = map_snapshot_ram(&ro, 2 << 20).expect("map");
        assert_eq!(a.memory.read_obj::<u32>(GuestAddress(0x2000)).expect("read"), 0x1234_5678);
        a.memory.write_obj(7u32, GuestAddress(0x2000)).expect("write");
        assert_eq!(a.memory.read_obj::<u32>(GuestAddress(0x2000)).expect("read"), 7);
        assert_eq!(b.memory.read_obj::<u32>(GuestAddress(0x2000)).expect("read"), 0x1234_5678);
        let mut on_disk = [0u8; 4];
        ro.read_exact_at(&mut on_disk, 0x2000).expect("read");
        assert_eq!(u32::from_le_bytes(on_disk), 0x1234_5678, "the file is never written");
        std::fs::remove_file(path).ok();
    }
}
