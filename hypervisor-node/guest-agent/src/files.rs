//! Files uploaded into the desktop: received into the signed-in user's transfer folder
//! (`~/Transfer`), and theirs only once the host commits them.
//!
//! While a file is received it is a hidden file of root's (`.<id>.atrium-part`, mode 0600) in
//! that folder: the user cannot read a file that a scanner has not passed yet, and nothing
//! looks complete that is not. A commit gives it to the user and links it under its name (or
//! `name (2).ext`, ... when that is taken); an abort, a session's end or the host going away
//! deletes it.
//!
//! The folder is the user's, so everything in it is reached from one handle of the folder
//! (`openat` and friends, never following a link): a user who swaps names around while a file
//! arrives can only confuse their own files, never make the agent (root) write elsewhere.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use atrium_protocol::agent::{MAX_OPEN_FILES, validate_file_name};

/// The folder in the user's home that uploads land in.
pub const TRANSFER_FOLDER: &str = "Transfer";

/// Whose transfer folder files go to: the signed-in user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub home: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// One file being received.
#[derive(Debug)]
struct Incoming {
    name: String,
    part: CString,
    dir: File,
    dir_path: PathBuf,
    file: File,
    owner: Owner,
    size: u64,
    written: u64,
    received: bool,
}

/// The files in transfer, by the host's id.
#[derive(Debug, Default)]
pub struct Transfers {
    open: HashMap<u32, Incoming>,
}

pub(crate) fn c_name(name: &str) -> Result<CString, String> {
    CString::new(name).map_err(|_| format!("{name:?} has a NUL byte"))
}

pub(crate) fn last_error(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// `fstatat` of `name` in `dir`, not following a link: (device, inode, is a regular file).
fn stat_at(dir: &File, name: &CString) -> Option<(u64, u64, bool)> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open descriptor, `name` a NUL-terminated string and `st` a valid
    // place for the answer, all alive for the call.
    let r = unsafe {
        libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW)
    };
    (r == 0).then_some((st.st_dev, st.st_ino, st.st_mode & libc::S_IFMT == libc::S_IFREG))
}

/// Opens (making it when missing) the owner's transfer folder: a real folder of theirs, never a
/// link.
pub(crate) fn open_folder(owner: &Owner) -> Result<(File, PathBuf), String> {
    let home = File::open(&owner.home).map_err(|e| format!("{}: {e}", owner.home.display()))?;
    let meta = home.metadata().map_err(|e| format!("{}: {e}", owner.home.display()))?;
    if !meta.is_dir() || meta.uid() != owner.uid {
        return Err(format!("{} is not the user's home folder", owner.home.display()));
    }
    let folder = c_name(TRANSFER_FOLDER)?;
    let path = owner.home.join(TRANSFER_FOLDER);
    // SAFETY: `home` is an open descriptor and `folder` a NUL-terminated string.
    let made = unsafe { libc::mkdirat(home.as_raw_fd(), folder.as_ptr(), 0o755) } == 0;
    // SAFETY: as above; O_NOFOLLOW and O_DIRECTORY make a link or a file fail.
    let fd = unsafe {
        libc::openat(
            home.as_raw_fd(),
            folder.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_error(&format!("{} is not a folder", path.display())));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let dir = unsafe { File::from_raw_fd(fd) };
    if made {
        // Still the empty folder root just made (the user may have put another of theirs in
        // its place, which must not be given to them again through this handle).
        let meta = dir.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me || meta.nlink() != 2 {
            return Err(format!("{} changed while it was made", path.display()));
        }
        std::os::unix::fs::fchown(&dir, Some(owner.uid), Some(owner.gid))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let meta = dir.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.uid() != owner.uid {
        return Err(format!("{} is not the user's", path.display()));
    }
    Ok((dir, path))
}

/// Bytes free for `size` more in the folder's file system, when it says (a RAM file system
/// may not).
fn check_space(dir: &File, size: u64, path: &Path) -> Result<(), String> {
    // SAFETY: an all-zero `statvfs` is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open and `st` a valid place for the answer.
    if unsafe { libc::fstatvfs(dir.as_raw_fd(), &raw mut st) } != 0 {
        return Err(last_error(&path.display().to_string()));
    }
    if st.f_blocks == 0 {
        return Ok(());
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < size {
        return Err(format!(
            "the desktop's disk has {} MiB free, too little for {} MiB",
            free >> 20,
            size.div_ceil(1 << 20)
        ));
    }
    Ok(())
}

/// `name`, then `stem (2).ext`, `stem (3).ext`, ...
fn variant(name: &str, n: u32) -> String {
    if n < 2 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

impl Incoming {
    /// Deletes the part file, if the name still is ours.
    fn remove(&self) {
        let ours = self.file.metadata().ok().map(|m| (m.dev(), m.ino()));
        if let (Some(ours), Some((dev, ino, _))) = (ours, stat_at(&self.dir, &self.part))
            && ours == (dev, ino)
        {
            // SAFETY: `dir` is open and `part` a NUL-terminated string.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.part.as_ptr(), 0) };
        }
    }
}

impl Transfers {
    /// Starts receiving file `id` for `owner`.
    pub fn open(&mut self, id: u32, name: &str, size: u64, owner: &Owner) -> Result<(), String> {
        validate_file_name(name)?;
        if self.open.contains_key(&id) {
            return Err(format!("file {id} is already in transfer"));
        }
        if self.open.len() >= MAX_OPEN_FILES {
            return Err(format!("{MAX_OPEN_FILES} files are in transfer already"));
        }
        let (dir, dir_path) = open_folder(owner)?;
        // The files still arriving need their room too.
        let owed: u64 = self.open.values().map(|f| f.size - f.written).sum();
        check_space(&dir, size.saturating_add(owed), &dir_path)?;
        let part = c_name(&format!(".{id}.atrium-part"))?;
        // A part file of an earlier agent with the same id is stale.
        if let Some((_, _, true)) = stat_at(&dir, &part) {
            // SAFETY: `dir` is open and `part` a NUL-terminated string.
            unsafe { libc::unlinkat(dir.as_raw_fd(), part.as_ptr(), 0) };
        }
        // SAFETY: `dir` is open and `part` a NUL-terminated string; O_EXCL|O_NOFOLLOW make a
        // name someone else put there fail instead of being written through.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                part.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(last_error(&format!("creating a file in {}", dir_path.display())));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        self.open.insert(
            id,
            Incoming {
                name: name.to_owned(),
                part,
                dir,
                dir_path,
                file,
                owner: owner.clone(),
                size,
                written: 0,
                received: false,
            },
        );
        Ok(())
    }

    /// Whether file `id` is in transfer.
    pub fn has(&self, id: u32) -> bool {
        self.open.contains_key(&id)
    }

    /// Writes the next bytes of file `id`. An error has thrown the file away.
    pub fn data(&mut self, id: u32, data: &[u8]) -> Result<(), String> {
        let f = self.open.get_mut(&id).ok_or_else(|| format!("no file {id} is in transfer"))?;
        let result = if f.received {
            Err("data after the end of the file".to_owned())
        } else if f.written + data.len() as u64 > f.size {
            Err(format!("more than the {} bytes announced", f.size))
        } else {
            f.file.write_all(data).map_err(|e| format!("writing {}: {e}", f.name))
        };
        match result {
            Ok(()) => {
                f.written += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.abort(id);
                Err(e)
            }
        }
    }

    /// All of file `id` was sent: checks its size and puts it on the disk. Returns the size.
    pub fn end(&mut self, id: u32) -> Result<u64, String> {
        let f = self.open.get_mut(&id).ok_or_else(|| format!("no file {id} is in transfer"))?;
        let result = if f.written == f.size {
            f.file.sync_data().map_err(|e| format!("writing {}: {e}", f.name))
        } else {
            Err(format!("{} of the {} bytes announced arrived", f.written, f.size))
        };
        match result {
            Ok(()) => {
                f.received = true;
                Ok(f.size)
            }
            Err(e) => {
                self.abort(id);
                Err(e)
            }
        }
    }

    /// Gives received file `id` to its owner under a free name; returns its path.
    pub fn commit(&mut self, id: u32) -> Result<PathBuf, String> {
        let f = self.open.remove(&id).ok_or_else(|| format!("no file {id} is in transfer"))?;
        let result = Self::give(&f);
        if result.is_err() {
            f.remove();
        }
        result
    }

    fn give(f: &Incoming) -> Result<PathBuf, String> {
        if !f.received {
            return Err(format!("{} was not received whole", f.name));
        }
        let meta = f.file.metadata().map_err(|e| e.to_string())?;
        match stat_at(&f.dir, &f.part) {
            Some((dev, ino, true)) if (dev, ino) == (meta.dev(), meta.ino()) => {}
            _ => return Err(format!("{} was moved in the desktop while it arrived", f.name)),
        }
        std::os::unix::fs::fchown(&f.file, Some(f.owner.uid), Some(f.owner.gid))
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                f.file.set_permissions(std::fs::Permissions::from_mode(0o644))
            })
            .map_err(|e| format!("giving {} to the user: {e}", f.name))?;
        for n in 1..=1000 {
            let name = variant(&f.name, n);
            if name.len() > atrium_protocol::agent::MAX_FILE_NAME {
                break;
            }
            let target = c_name(&name)?;
            // SAFETY: both descriptors are open and both names NUL-terminated; linkat does not
            // replace an existing name (EEXIST), and with flags 0 does not follow a link.
            let r = unsafe {
                libc::linkat(
                    f.dir.as_raw_fd(),
                    f.part.as_ptr(),
                    f.dir.as_raw_fd(),
                    target.as_ptr(),
                    0,
                )
            };
            if r == 0 {
                // SAFETY: `dir` is open and `part` a NUL-terminated string.
                unsafe { libc::unlinkat(f.dir.as_raw_fd(), f.part.as_ptr(), 0) };
                return Ok(f.dir_path.join(name));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("naming {name}: {e}"));
            }
        }
        Err(format!("no free name for {} in {}", f.name, f.dir_path.display()))
    }

    /// Throws file `id` away (nothing happens for an unknown id).
    pub fn abort(&mut self, id: u32) {
        if let Some(f) = self.open.remove(&id) {
            f.remove();
        }
    }

    /// Throws every file in transfer away (the session ended, the host went away).
    pub fn abort_all(&mut self) -> usize {
        let n = self.open.len();
        for (_, f) in self.open.drain() {
            f.remove();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner_here(name: &str) -> (PathBuf, Owner) {
        let home = std::env::temp_dir().join(format!("agent-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).expect("home");
        let meta = std::fs::metadata(&home).expect("stat");
        (home.clone(), Owner { home, uid: meta.uid(), gid: meta.gid() })
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_is_hidden_until_committed_then_named_freely() {
        let (home, owner) = owner_here("commit");
        let mut t = Transfers::default();
        for round in 0..2 {
            t.open(1, "report.pdf", 6, &owner).expect("open");
            t.data(1, b"abc").expect("data");
            t.data(1, b"def").expect("data");
            let folder = home.join(TRANSFER_FOLDER);
            assert_eq!(names(&folder).len(), round + 1, "only the part file is new");
            assert!(names(&folder).contains(&".1.atrium-part".to_owned()));
            assert_eq!(t.end(1), Ok(6));
            let path = t.commit(1).expect("commit");
            let want = if round == 0 { "report.pdf" } else { "report (2).pdf" };
            assert_eq!(path, folder.join(want));
            assert_eq!(std::fs::read(&path).expect("read"), b"abcdef");
        }
        assert_eq!(names(&home.join(TRANSFER_FOLDER)), ["report (2).pdf", "report.pdf"]);
        std::fs::remove_dir_all(&home).expect("cleanup");
    }

    #[test]
    fn short_long_and_aborted_files_leave_nothing() {
        let (home, owner) = owner_here("abort");
        let folder = home.join(TRANSFER_FOLDER);
        let mut t = Transfers::default();
        t.open(1, "a.txt", 4, &owner).expect("open");
        t.data(1, b"abc").expect("data");
        assert!(t.end(1).unwrap_err().contains("3 of the 4 bytes"));
        assert!(!t.has(1));
        t.open(2, "b.txt", 2, &owner).expect("open");
        assert!(t.data(2, b"abc").unwrap_err().contains("more than the 2 bytes"));
        t.open(3, "c.txt", 1, &owner).expect("open");
        t.abort(3);
        t.open(4, "d.txt", 1, &owner).expect("open");
        assert!(t.commit(4).unwrap_err().contains("not received whole"));
        t.open(5, "e.txt", 1, &owner).expect("open");
        assert_eq!(t.abort_all(), 1);
        assert!(names(&folder).is_empty(), "{:?}", names(&folder));
        for bad in ["../x", ".hidden", "a/b"] {
            assert!(t.open(6, bad, 1, &owner).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&home).expect("cleanup");
    }

    #[test]
    fn a_transfer_folder_that_is_a_link_is_refused() {
        let (home, owner) = owner_here("link");
        std::os::unix::fs::symlink("/etc", home.join(TRANSFER_FOLDER)).expect("link");
        let mut t = Transfers::default();
        let e = t.open(1, "passwd", 1, &owner).unwrap_err();
        assert!(e.contains("is not a folder"), "{e}");
        let mut other = owner.clone();
        other.uid += 1;
        assert!(t.open(1, "x", 1, &other).unwrap_err().contains("not the user's home"));
        std::fs::remove_dir_all(&home).expect("cleanup");
    }

    #[test]
    fn no_more_than_the_limit_at_once() {
        let (home, owner) = owner_here("limit");
        let mut t = Transfers::default();
        for id in 0..u32::try_from(MAX_OPEN_FILES).expect("small") {
            t.open(id, &format!("f{id}"), 1, &owner).expect("open");
        }
        assert!(t.open(99, "one-more", 1, &owner).unwrap_err().contains("in transfer already"));
        assert!(t.open(0, "again", 1, &owner).unwrap_err().contains("already in transfer"));
        t.abort_all();
        std::fs::remove_dir_all(&home).expect("cleanup");
    }

    #[test]
    fn variants_keep_the_extension() {
        assert_eq!(variant("a.tar.gz", 1), "a.tar.gz");
        assert_eq!(variant("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(variant("Makefile", 3), "Makefile (3)");
        assert_eq!(variant("x.", 2), "x (2).");
    }
}
