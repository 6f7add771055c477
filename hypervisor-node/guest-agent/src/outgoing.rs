//! Files downloaded from the desktop: the signed-in user's transfer folder (`~/Transfer`) is
//! listed for the host, and a file of it is sent as data frames, never more ahead than the host
//! has made room for.
//!
//! The folder is the user's, so everything in it is reached from one handle of the folder and
//! never through a link, and only regular files the user owns are listed or sent: the agent
//! (root) hands out nothing the user could not read themselves. Each download is read and sent
//! by a thread of its own, which waits while the host has no room; the thread that reads the
//! host stays free.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use atrium_protocol::agent::{
    AgentMessage, FileEntry, MAX_FILE_CHUNK, MAX_FILE_WINDOW, MAX_LISTED_FILES, MAX_OPEN_FILES,
    encode_data, encode_line, validate_file_name,
};

use crate::files::{Owner, c_name, last_error, open_folder};

/// How long a download waits for the host to take more before it is stopped.
const STALL: Duration = Duration::from_secs(120);

/// The write side of the agent's port, shared by every thread that writes to it.
pub type Port = Arc<Mutex<File>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `bytes` (one whole message or frame) to the host.
fn write_port(port: &Port, bytes: &[u8]) -> io::Result<()> {
    let mut out = lock(port);
    out.write_all(bytes).and_then(|()| out.flush())
}

/// The files in the owner's transfer folder that may be downloaded, newest first.
pub fn list(owner: &Owner) -> Result<Vec<FileEntry>, String> {
    let (dir, path) = open_folder(owner)?;
    // The listing reads its own handle of the very folder opened (never its path again).
    // SAFETY: `dir` is an open descriptor; dup returns a new one or -1.
    let fd = unsafe { libc::dup(dir.as_raw_fd()) };
    if fd < 0 {
        return Err(last_error(&path.display().to_string()));
    }
    // SAFETY: `fd` is an open folder descriptor that the stream owns from here on.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        // SAFETY: fdopendir failed, so `fd` is still ours to close.
        unsafe { libc::close(fd) };
        return Err(last_error(&path.display().to_string()));
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: `stream` is an open folder stream; the entry stays valid until the next call.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: `d_name` of an entry readdir returned is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if let Ok(name) = name.to_str()
            && validate_file_name(name).is_ok()
        {
            names.push(name.to_owned());
        }
    }
    // SAFETY: `stream` is open and closed once (its descriptor with it).
    unsafe { libc::closedir(stream) };
    let mut files: Vec<FileEntry> = names
        .into_iter()
        .filter_map(|name| {
            let c = CString::new(name.as_str()).ok()?;
            let st = stat_at(&dir, &c)?;
            let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
            (regular && st.st_uid == owner.uid).then(|| FileEntry {
                name,
                size: u64::try_from(st.st_size).unwrap_or(0),
                modified: u64::try_from(st.st_mtime).unwrap_or(0),
            })
        })
        .collect();
    files.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| a.name.cmp(&b.name)));
    files.truncate(MAX_LISTED_FILES);
    Ok(files)
}

fn stat_at(dir: &File, name: &CString) -> Option<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `name` NUL-terminated and `st` a valid place for the answer.
    let r = unsafe {
        libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW)
    };
    (r == 0).then_some(st)
}

/// Opens file `name` of the owner's transfer folder for sending: a regular file of theirs,
/// never a link. Returns it and its size.
pub fn open_file(owner: &Owner, name: &str) -> Result<(File, u64), String> {
    validate_file_name(name)?;
    let (dir, path) = open_folder(owner)?;
    let c = c_name(name)?;
    // SAFETY: `dir` is open and `c` NUL-terminated. O_NOFOLLOW makes a link fail; O_NONBLOCK
    // keeps a FIFO from blocking the open (it is refused below).
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => format!("{name} is not in {}", path.display()),
            Some(libc::ELOOP) => format!("{name} is a link: only files are downloaded"),
            _ => format!("{}: {e}", path.join(name).display()),
        });
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("{name} is not a file: only files are downloaded"));
    }
    if meta.uid() != owner.uid {
        return Err(format!("{name} is not the user's own file"));
    }
    Ok((file, meta.len()))
}

/// How far one download may run ahead of the host.
#[derive(Debug, Default)]
struct Flow {
    state: Mutex<FlowState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct FlowState {
    credit: u64,
    stopped: bool,
}

/// Why sending stopped: the host said so (nothing to tell it), or a failure to tell.
enum Stop {
    Host,
    Failed(String),
}

impl Flow {
    /// Waits for room, then takes up to `max` bytes of it.
    fn take(&self, max: u64) -> Result<u64, Stop> {
        let mut s = lock(&self.state);
        loop {
            if s.stopped {
                return Err(Stop::Host);
            }
            if s.credit > 0 {
                let n = s.credit.min(max);
                s.credit -= n;
                return Ok(n);
            }
            let (next, waited) =
                self.wake.wait_timeout(s, STALL).unwrap_or_else(PoisonError::into_inner);
            s = next;
            if waited.timed_out() && s.credit == 0 && !s.stopped {
                return Err(Stop::Failed(format!(
                    "the host took nothing for {} s",
                    STALL.as_secs()
                )));
            }
        }
    }

    fn add(&self, bytes: u64) {
        let mut s = lock(&self.state);
        s.credit = (s.credit + bytes).min(u64::from(MAX_FILE_WINDOW));
        self.wake.notify_one();
    }

    fn stop(&self) {
        lock(&self.state).stopped = true;
        self.wake.notify_one();
    }
}

/// The downloads being sent, by the host's id.
#[derive(Debug, Default)]
pub struct Downloads {
    flows: Mutex<HashMap<u32, Arc<Flow>>>,
}

impl Downloads {
    /// Starts sending file `name` of `owner` as download `id`: says its size, then sends its
    /// bytes from a thread of its own as the host makes room.
    pub fn start(
        self: &Arc<Self>,
        port: &Port,
        id: u32,
        name: &str,
        window: u32,
        owner: &Owner,
    ) -> Result<(), String> {
        let flow = {
            let mut flows = lock(&self.flows);
            if flows.contains_key(&id) {
                return Err(format!("file {id} is already in transfer"));
            }
            if flows.len() >= MAX_OPEN_FILES {
                return Err(format!("{MAX_OPEN_FILES} files are being downloaded already"));
            }
            let (file, size) = open_file(owner, name)?;
            let flow = Arc::new(Flow::default());
            flow.add(u64::from(window));
            flows.insert(id, Arc::clone(&flow));
            (flow, file, size)
        };
        let (flow, file, size) = flow;
        if let Err(e) = write_port(port, &encode_line(&AgentMessage::FileSending { id, size })) {
            lock(&self.flows).remove(&id);
            return Err(format!("writing to the host: {e}"));
        }
        let (port, downloads, name) = (Arc::clone(port), Arc::clone(self), name.to_owned());
        std::thread::spawn(move || {
            let result = send_file(&port, &flow, id, file, size);
            lock(&downloads.flows).remove(&id);
            match result {
                Ok(()) => crate::log(&format!(
                    "download {id} sent: {size} bytes; {}",
                    crate::agent::memory()
                )),
                Err(Stop::Failed(message)) => {
                    crate::log(&format!("download {id} ({name}): {message}"));
                    let _ =
                        write_port(&port, &encode_line(&AgentMessage::FileError { id, message }));
                }
                Err(Stop::Host) => {}
            }
        });
        Ok(())
    }

    /// The host made room for `bytes` more of download `id` (nothing for an unknown id: it
    /// ended already).
    pub fn more(&self, id: u32, bytes: u32) {
        if let Some(f) = lock(&self.flows).get(&id) {
            f.add(u64::from(bytes));
        }
    }

    /// Whether `id` is a download being sent.
    #[cfg(test)]
    pub fn has(&self, id: u32) -> bool {
        lock(&self.flows).contains_key(&id)
    }

    /// Stops download `id`.
    pub fn abort(&self, id: u32) {
        if let Some(f) = lock(&self.flows).remove(&id) {
            f.stop();
        }
    }

    /// Stops every download (the session ended, the host went away). Returns how many.
    pub fn abort_all(&self) -> usize {
        let mut flows = lock(&self.flows);
        let n = flows.len();
        for (_, f) in flows.drain() {
            f.stop();
        }
        n
    }
}

/// Sends `size` bytes of `file` as data frames of download `id`, as the flow allows.
fn send_file(port: &Port, flow: &Flow, id: u32, mut file: File, size: u64) -> Result<(), Stop> {
    let mut buf = vec![0u8; MAX_FILE_CHUNK];
    let mut left = size;
    while left > 0 {
        let max = left.min(MAX_FILE_CHUNK as u64);
        let n = usize::try_from(flow.take(max)?).expect("at most MAX_FILE_CHUNK");
        file.read_exact(&mut buf[..n]).map_err(|e| {
            Stop::Failed(if e.kind() == io::ErrorKind::UnexpectedEof {
                "the file got shorter while it was downloaded".to_owned()
            } else {
                format!("reading the file: {e}")
            })
        })?;
        write_port(port, &encode_data(id, &buf[..n]))
            .map_err(|e| Stop::Failed(format!("writing to the host: {e}")))?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_protocol::agent::{Line, LineReader};
    use std::path::PathBuf;

    fn owner_here(name: &str) -> (PathBuf, Owner) {
        let home = std::env::temp_dir().join(format!("agent-out-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(home.join(crate::files::TRANSFER_FOLDER)).expect("home");
        let meta = std::fs::metadata(&home).expect("stat");
        (home.clone(), Owner { home, uid: meta.uid(), gid: meta.gid() })
    }

    #[test]
    fn only_the_users_own_files_are_listed_and_opened() {
        let (home, owner) = owner_here("list");
        let folder = home.join(crate::files::TRANSFER_FOLDER);
        std::fs::write(folder.join("report.pdf"), b"12345").expect("write");
        std::fs::write(folder.join(".1.atrium-part"), b"x").expect("write");
        std::fs::write(folder.join(".hidden"), b"x").expect("write");
        std::fs::create_dir(folder.join("sub")).expect("dir");
        std::os::unix::fs::symlink("/etc/shadow", folder.join("shadow")).expect("link");
        let files = list(&owner).expect("list");
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!((files[0].name.as_str(), files[0].size), ("report.pdf", 5));
        assert_eq!(open_file(&owner, "report.pdf").expect("open").1, 5);
        for (bad, why) in [
            ("shadow", "is a link"),
            ("sub", "not a file"),
            ("missing", "is not in"),
            (".hidden", "hidden files"),
            ("../x", "names a folder"),
        ] {
            let e = open_file(&owner, bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let mut other = owner.clone();
        other.uid += 1;
        assert!(list(&other).is_err(), "another user's home is not listed");
        std::fs::remove_dir_all(&home).expect("cleanup");
    }

    /// Reads everything the port got as lines and frames.
    fn frames(path: &std::path::Path) -> Vec<Line> {
        LineReader::new().push(&std::fs::read(path).expect("read port"))
    }

    #[test]
    fn a_download_goes_out_as_frames_within_its_window() {
        let (home, owner) = owner_here("send");
        let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(home.join(crate::files::TRANSFER_FOLDER).join("big.bin"), &body)
            .expect("write");
        let port_path = home.join("port");
        let port: Port = Arc::new(Mutex::new(File::create(&port_path).expect("port")));
        let downloads = Arc::new(Downloads::default());
        downloads.start(&port, 7, "big.bin", 300_000, &owner).expect("start");
        assert!(downloads.start(&port, 7, "big.bin", 1, &owner).is_err(), "one id once");
        // It sends its window, then waits for room.
        let sent = |want: usize| {
            for _ in 0..500 {
                let got: usize = frames(&port_path)
                    .iter()
                    .map(|l| if let Line::Data { data, .. } = l { data.len() } else { 0 })
                    .sum();
                if got >= want {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("fewer than {want} bytes were sent");
        };
        assert_eq!(sent(300_000), 300_000);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(sent(300_000), 300_000, "nothing beyond the window");
        downloads.more(7, 400_000);
        assert_eq!(sent(600_000), 600_000);
        for _ in 0..500 {
            if !downloads.has(7) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!downloads.has(7), "a download sent whole is over");
        let lines = frames(&port_path);
        let Line::Complete(first) = &lines[0] else { panic!("{:?}", lines[0]) };
        let first: AgentMessage = serde_json::from_slice(first).expect("json");
        assert_eq!(first, AgentMessage::FileSending { id: 7, size: 600_000 });
        let got: Vec<u8> = lines
            .iter()
            .filter_map(
                |l| if let Line::Data { id: 7, data } = l { Some(data.clone()) } else { None },
            )
            .flatten()
            .collect();
        assert_eq!(got, body);
        std::fs::remove_dir_all(&home).expect("cleanup");
    }

    #[test]
    fn a_stopped_download_sends_nothing_more() {
        let (home, owner) = owner_here("stop");
        std::fs::write(home.join(crate::files::TRANSFER_FOLDER).join("f"), vec![1u8; 100_000])
            .expect("write");
        let port_path = home.join("port");
        let port: Port = Arc::new(Mutex::new(File::create(&port_path).expect("port")));
        let downloads = Arc::new(Downloads::default());
        downloads.start(&port, 1, "f", 0, &owner).expect("start");
        assert_eq!(downloads.abort_all(), 1);
        downloads.more(1, 100_000);
        std::thread::sleep(Duration::from_millis(100));
        let lines = frames(&port_path);
        assert_eq!(lines.len(), 1, "only the size: {lines:?}");
        std::fs::remove_dir_all(&home).expect("cleanup");
    }
}
