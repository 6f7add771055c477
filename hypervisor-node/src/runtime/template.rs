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
        let copy = File::from(fd.try_clone()?);
        let size = copy_pages(&mut File::open(file)?, &copy)?;
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on an fd this function owns; it changes no memory of ours.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, size })
    }

    /// The host memory it takes, in bytes (its pages of zeros are holes and take none).
    pub fn resident(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.fd
            .try_clone()
            .map(File::from)
            .and_then(|f| f.metadata())
            .map_or(0, |m| m.blocks() * 512)
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

/// Copies `from` into `to` (empty), page by page, leaving out pages of zeros: they stay holes,
/// which read as zeros and take no memory (a guest touches a fraction of its RAM). Returns the
/// size copied.
fn copy_pages(from: &mut File, to: &File) -> io::Result<u64> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    let size = from.metadata()?.len();
    to.set_len(size)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        // Whole buffers (a short read only at the end), so pages stay aligned.
        let mut n = 0;
        while n < buf.len() {
            match from.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let mut i = 0;
        while i < n {
            let zero = |p: usize| buf[p..(p + PAGE).min(n)].iter().all(|b| *b == 0);
            if zero(i) {
                i += PAGE;
                continue;
            }
            let mut j = i + PAGE;
            while j < n && !zero(j) {
                j += PAGE;
            }
            let j = j.min(n);
            to.write_all_at(&buf[i..j], at + i as u64)?;
            i = j;
        }
        at += n as u64;
    }
    if at != size {
        return Err(io::Error::other(format!("read {at} bytes of {size}")));
    }
    Ok(size)
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

    #[test]
    fn pages_of_zeros_are_left_out_of_the_copy() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let path = std::env::temp_dir().join(format!("atrium-tpl-sparse-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        // Two pages of data far apart, and a page of zeros written out.
        f.write_all_at(&[1u8; 4096], 4096).unwrap();
        f.write_all_at(&[0u8; 4096], 8 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        let m = SealedMemory::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m.size(), 64 << 20);
        let copy = File::open(m.path()).unwrap();
        let used = copy.metadata().unwrap().blocks() * 512;
        // Two pages of data (two huge pages where shmem uses them), not 64 MiB.
        assert!(used <= 4 << 20, "a mostly empty template's copy takes {used} bytes");
        let mut page = [0u8; 4096];
        copy.read_exact_at(&mut page, 4096).unwrap();
        assert_eq!(page, [1u8; 4096]);
        copy.read_exact_at(&mut page, 8 << 20).unwrap();
        assert_eq!(page, [0u8; 4096]);
        let mut end = [0u8; 3];
        copy.read_exact_at(&mut end, (64 << 20) - 3).unwrap();
        assert_eq!(&end, b"end");
    }
}
