//! A writer for the `newc` cpio format the kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`). Entries carry fixed times and
//! the owners given, so the same inputs give the same archive.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes entries one after the other; [`CpioWriter::finish`] writes the trailer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
}

/// Owner and permission bits of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    pub const fn root(mode: u32) -> Self {
        Self { mode, uid: 0, gid: 0 }
    }
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_ino: 1, offset: 0 }
    }

    pub fn dir(&mut self, path: &str, meta: Meta) -> io::Result<()> {
        self.entry(path, S_IFDIR | (meta.mode & 0o7777), meta, 2, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, meta: Meta, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (meta.mode & 0o7777), meta, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, Meta::root(0o777), 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(
        &mut self,
        path: &str,
        meta: Meta,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(path, S_IFCHR | (meta.mode & 0o7777), meta, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, Meta::root(0), 1, (0, 0), &[])?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        meta: Meta,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.as_bytes().contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad path {path:?}")));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            meta.uid, meta.gid, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.offset += u64::try_from(b.len()).expect("usize fits in u64");
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = self.offset % 4;
        if rem != 0 {
            let zeros = [0u8; 3];
            let n = usize::try_from(4 - rem).expect("at most 3");
            self.write(&zeros[..n])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/etc", Meta::root(0o755)).expect("dir");
        w.file("/etc/hostname", Meta::root(0o644), b"atrium\n").expect("file");
        w.file("/home/user/a", Meta { mode: 0o600, uid: 1000, gid: 1000 }, b"x").expect("file");
        w.symlink("/bin/sh", "busybox").expect("link");
        w.char_device("/dev/console", Meta::root(0o600), 5, 1).expect("dev");
        w.finish().expect("finish")
    }

    #[test]
    fn the_cpio_tool_reads_it_back() {
        let bytes = archive();
        assert_eq!(bytes.len() % 4, 0);
        let dir = std::env::temp_dir().join(format!("atrium-cpio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run cpio (a test dependency of the project)");
        child.stdin.take().expect("stdin").write_all(&bytes).expect("feed cpio");
        assert!(child.wait().expect("wait").success());
        assert_eq!(std::fs::read(dir.join("etc/hostname")).expect("read"), b"atrium\n");
        assert_eq!(std::fs::read_link(dir.join("bin/sh")).expect("link").to_str(), Some("busybox"));
        let listing = std::process::Command::new("cpio")
            .args(["-t", "-v", "-n", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().expect("stdin").write_all(&bytes)?;
                c.wait_with_output()
            })
            .expect("cpio -t");
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains("crw-------"), "{text}");
        assert!(text.lines().any(|l| l.contains("1000") && l.ends_with("home/user/a")), "{text}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn refuses_empty_and_nul_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/", Meta::root(0o644), b"").is_err());
        assert!(w.file("a\0b", Meta::root(0o644), b"").is_err());
    }
}
