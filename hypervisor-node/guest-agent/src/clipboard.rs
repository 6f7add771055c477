//! The clipboard of desktops without X: a plain file in the user's home (`~/clipboard.txt`): the
//! console image's one user's, or (`--login-tty`) the signed-in user's, set at each sign-in.
//!
//! Text pasted in from the host is written there; whatever the user writes there is copied out
//! to the host. The file lives in a directory the (unprivileged) user controls and the agent is
//! root, so it is opened without following links and without blocking, and must be a regular
//! file owned by the user, no larger than the protocol's clipboard limit.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use atrium_protocol::agent::MAX_CLIPBOARD;

/// The file, and the user who must own it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    path: PathBuf,
    owner: Option<(u32, u32)>,
}

#[derive(Debug)]
pub struct ClipboardFile {
    /// `None` while nobody is signed in (`--login-tty`).
    target: Mutex<Option<Target>>,
    /// The text both sides already know (last pasted in, or last copied out).
    known: Mutex<Option<Vec<u8>>>,
    counter: AtomicU64,
}

impl ClipboardFile {
    /// The text already in the file (a home disk kept from an earlier session) counts as known,
    /// so it is not copied out at start.
    pub fn new(path: PathBuf, owner: Option<(u32, u32)>) -> Self {
        let clip = Self::unset();
        clip.set(Some((path, owner)));
        clip
    }

    /// A clipboard with no file until someone signs in.
    pub fn unset() -> Self {
        Self { target: Mutex::new(None), known: Mutex::new(None), counter: AtomicU64::new(0) }
    }

    /// The file from now on (`None`: nobody's). What it holds already counts as known, as at
    /// start: a user signing in again does not have their old text copied out.
    pub fn set(&self, target: Option<(PathBuf, Option<(u32, u32)>)>) {
        let target = target.map(|(path, owner)| Target { path, owner });
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = target;
        let text = self.read().ok().flatten();
        *self.known.lock().unwrap_or_else(PoisonError::into_inner) = text;
    }

    fn target(&self) -> Option<Target> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The file's content, `None` when it does not exist (or nobody is signed in).
    pub fn read(&self) -> io::Result<Option<Vec<u8>>> {
        let Some(Target { path, owner }) = self.target() else { return Ok(None) };
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link; refused",
                    path.display()
                )));
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file; refused",
                path.display()
            )));
        }
        if let Some((uid, _)) = owner
            && meta.uid() != uid
        {
            return Err(io::Error::other(format!(
                "{} is not owned by uid {uid}; refused",
                path.display()
            )));
        }
        let limit = u64::try_from(MAX_CLIPBOARD).expect("the limit fits in u64");
        if meta.len() > limit {
            return Err(io::Error::other(format!(
                "{} is larger than {MAX_CLIPBOARD} bytes",
                path.display()
            )));
        }
        let mut text = Vec::new();
        file.take(limit + 1).read_to_end(&mut text)?;
        if text.len() > MAX_CLIPBOARD {
            return Err(io::Error::other("the clipboard file grew past the limit while read"));
        }
        Ok(Some(text))
    }

    /// Replaces the file's content atomically (a new file renamed over the old one).
    pub fn write(&self, text: &[u8]) -> io::Result<()> {
        let Some(Target { path, owner }) = self.target() else {
            return Err(io::Error::other("nobody is signed in to this desktop"));
        };
        let dir = path.parent().ok_or_else(|| io::Error::other("clipboard path has no folder"))?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".clipboard.{}.{n}.tmp", std::process::id()));
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let result = file
            .write_all(text)
            .and_then(|()| match owner {
                Some((uid, gid)) => std::os::unix::fs::fchown(&file, Some(uid), Some(gid)),
                None => Ok(()),
            })
            .and_then(|()| {
                let previous = self
                    .known
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .replace(text.to_vec());
                std::fs::rename(&tmp, &path).inspect_err(|_| {
                    *self.known.lock().unwrap_or_else(PoisonError::into_inner) = previous;
                })
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Whether `text` differs from what both sides know; if so, it becomes known.
    pub fn take_if_new(&self, text: &[u8]) -> bool {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.as_deref() == Some(text) {
            return false;
        }
        *known = Some(text.to_vec());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agent-clip-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn paste_in_is_not_copied_back_out_but_a_user_change_is() {
        let d = temp("roundtrip");
        let clip = ClipboardFile::new(d.join("clipboard.txt"), None);
        assert_eq!(clip.read().expect("read"), None);
        clip.write(b"from host").expect("write");
        assert_eq!(clip.read().expect("read").as_deref(), Some(&b"from host"[..]));
        assert!(!clip.take_if_new(b"from host"), "the pasted text was reported as a change");
        std::fs::write(d.join("clipboard.txt"), b"from guest").expect("user writes");
        assert!(clip.take_if_new(b"from guest"));
        assert!(!clip.take_if_new(b"from guest"));
        let leftovers: Vec<_> = std::fs::read_dir(&d).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "temporary files were left behind");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_clipboard_follows_whoever_signs_in() {
        let d = temp("follows");
        let clip = ClipboardFile::unset();
        assert_eq!(clip.read().expect("read"), None);
        assert!(clip.write(b"nobody").is_err(), "a paste with nobody signed in was written");
        let (alice, bob) = (d.join("alice"), d.join("bob"));
        std::fs::create_dir_all(&alice).expect("mkdir");
        std::fs::create_dir_all(&bob).expect("mkdir");
        std::fs::write(bob.join("clipboard.txt"), b"bob's old text").expect("write");
        clip.set(Some((alice.join("clipboard.txt"), None)));
        clip.write(b"for alice").expect("write");
        assert_eq!(std::fs::read(alice.join("clipboard.txt")).expect("read"), b"for alice");
        // Bob signs in: his old text is known (not copied out), alice's file is not read.
        clip.set(Some((bob.join("clipboard.txt"), None)));
        assert!(!clip.take_if_new(b"bob's old text"));
        assert_eq!(clip.read().expect("read").as_deref(), Some(&b"bob's old text"[..]));
        clip.set(None);
        assert_eq!(clip.read().expect("read"), None);
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn text_present_at_start_is_known() {
        let d = temp("start");
        std::fs::write(d.join("clipboard.txt"), b"old").expect("write");
        let clip = ClipboardFile::new(d.join("clipboard.txt"), None);
        assert!(!clip.take_if_new(b"old"));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn refuses_links_fifos_other_owners_and_big_files() {
        let d = temp("refuse");
        let path = d.join("clipboard.txt");
        std::fs::write(d.join("secret"), b"root only").expect("write");
        std::os::unix::fs::symlink(d.join("secret"), &path).expect("symlink");
        let clip = ClipboardFile::new(path.clone(), None);
        assert!(clip.read().is_err(), "a symlink was followed");
        std::fs::remove_file(&path).expect("rm");

        let status = std::process::Command::new("mkfifo").arg(&path).status().expect("mkfifo");
        assert!(status.success());
        assert!(clip.read().is_err(), "a fifo was read");
        std::fs::remove_file(&path).expect("rm");

        std::fs::write(&path, vec![b'x'; MAX_CLIPBOARD + 1]).expect("write");
        assert!(clip.read().is_err(), "an oversize file was read");

        std::fs::write(&path, b"mine").expect("write");
        let me = std::fs::metadata(&path).expect("stat").uid();
        let other = ClipboardFile::new(path.clone(), Some((me + 1, me + 1)));
        assert!(other.read().is_err(), "a file of another owner was read");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
