//! A VM's memory for instant clones: a template boots with its RAM in a file (a shared
//! mapping), and its device state is saved without that RAM (QEMU's `x-ignore-shared`); a
//! clone maps the template's RAM privately (pages shared copy-on-write until written) and loads
//! the device state instead of booting.
//!
//! Clones map a sealed copy of the template's RAM ([`SealedMemory`]: a memfd that nothing can
//! write any more), not the file: QEMU opens the backing file read-write, so a guest that
//! escaped into one clone's QEMU could otherwise change the memory every other clone of the
//! template reads.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a VM's memory comes from.
#[derive(Debug, Clone, Default)]
pub enum GuestMemory {
    /// Its own, from nothing (a boot).
    #[default]
    Private,
    /// Boot as a template: RAM in `file` (created, shared), so that [`super::VmHandle::save_template`]
    /// saves its devices alone.
    Template { file: PathBuf },
    /// A clone of a template: RAM mapped privately from `memory`, devices loaded from `state`
    /// (what [`super::VmHandle::save_template`] wrote) instead of a boot.
    Clone { memory: Arc<SealedMemory>, state: PathBuf },
}

/// A template's RAM, copied into a memfd sealed against writes, growth and shrinking: clones
/// map it privately, and no process (a clone's QEMU included) can change it.
#[derive(Debug)]
pub struct SealedMemory {
    fd: OwnedFd,
    size: u64,
}

impl SealedMemory {
    /// Copies the template's RAM from `file` (what it booted with) and seals the copy.
    pub fn from_file(file: &Path) -> io::Result<Self> {
        /// Linux 6.3's `MFD_NOEXEC_SEAL`: hosts with `vm.memfd_noexec = 2` refuse a memfd
        /// without it; older kernels refuse the flag (then it is left out).
        const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;
        let name = c"atrium-template";
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let mut raw = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_NOEXEC_SEAL) };
        if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // SAFETY: as above.
            raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        }
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut copy = File::from(fd.try_clone()?);
        let size = io::copy(&mut File::open(file)?, &mut copy)?;
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on an fd this function owns; it changes no memory of ours.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, size })
    }

    /// Its size in bytes (the template's RAM).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A path another process of this host opens it by (as root, or as this process's user):
    /// `/proc/<this process>/fd/<fd>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_sealed_copy_reads_as_the_template_and_takes_no_writes() {
        let path = std::env::temp_dir().join(format!("atrium-tpl-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
        let m = SealedMemory::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m.size(), 1 << 16);
        let mut back = Vec::new();
        File::open(m.path()).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![7u8; 1 << 16]);
        // Opened for writing through its path (as QEMU does), it still takes no write.
        let mut w = std::fs::OpenOptions::new().write(true).open(m.path()).unwrap();
        assert!(w.write_all(b"x").is_err(), "a sealed template took a write");
        assert!(SealedMemory::from_file(Path::new("/nonexistent/template")).is_err());
    }
}
