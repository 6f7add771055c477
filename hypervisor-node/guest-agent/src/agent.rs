//! The agent's shared state ([`Agent`]) and what it does with each message from the host:
//! pings, sessions, the clipboard, renewals, screen sizes, uploads and downloads.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use atrium_protocol::agent::{
    AgentMessage, HostMessage, MAX_CLIPBOARD, SessionUser, VERSION, encode_line,
};

use crate::clipboard::ClipboardFile;
use crate::files::{Owner, Transfers};
use crate::options::Options;
use crate::outgoing::{self, Downloads};
use crate::xdesktop::{self, Desktop};
use crate::{lock, log, renew, resync};

/// What every thread of the agent shares.
#[derive(Debug)]
pub struct Agent {
    pub opts: Options,
    /// The write side of the port. Writes block while no host is connected.
    pub out: outgoing::Port,
    pub ready: AtomicBool,
    pub clipboard: Option<ClipboardFile>,
    /// The desktop image's X server.
    pub desktop: Option<Arc<Desktop>>,
    /// The desktop's session worker (starts and ends sessions, one at a time).
    pub sessions: Option<Mutex<mpsc::Sender<SessionCommand>>>,
    /// The desktop's screen worker (sizes asked for, the newest one wins).
    pub screen_sizes: Option<Mutex<mpsc::Sender<(u16, u16)>>>,
    /// The screen's size as last reported to the host.
    pub screen: Mutex<Option<(u16, u16)>>,
    /// Whose transfer folder uploads go to (the signed-in user, or the image's one user).
    pub owner: Mutex<Option<Owner>>,
    /// Files being uploaded.
    pub files: Mutex<Transfers>,
    /// Files being downloaded.
    pub downloads: Arc<Downloads>,
    /// The nonce of the last hello: the host's `sync` must carry it.
    pub nonce: Mutex<u64>,
    /// This clone's renewal, once renewed.
    pub renewal: Mutex<renew::Renewal>,
}

/// Work for the desktop's session worker.
#[derive(Debug)]
pub enum SessionCommand {
    Start(SessionUser),
    End,
    /// A program the panel's menu asked for, by name.
    Launch(String),
    /// This desktop was just cloned: the shell's restart runs once before a sign-in needs it.
    WarmUp,
}

impl Agent {
    pub fn send(&self, msg: &AgentMessage) {
        let line = encode_line(msg);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            log(&format!("writing to the host failed: {e}"));
        }
    }

    /// Says hello with a new nonce (returned): nothing the host sends counts until its `sync`.
    pub fn hello(&self) -> u64 {
        let nonce = resync::nonce();
        *lock(&self.nonce) = nonce;
        self.send(&AgentMessage::Hello {
            version: VERSION,
            agent: format!("atrium-guest-agent/{}", env!("CARGO_PKG_VERSION")),
            nonce: Some(nonce),
        });
        if self.ready.load(Ordering::SeqCst) {
            self.send(&AgentMessage::Ready);
        }
        let screen = *lock(&self.screen);
        if let Some((width, height)) = screen {
            self.send(&AgentMessage::Screen { width: width.into(), height: height.into() });
        }
        nonce
    }

    /// Tells the host the screen's size.
    pub fn screen_is(&self, width: u16, height: u16) {
        *lock(&self.screen) = Some((width, height));
        self.send(&AgentMessage::Screen { width: width.into(), height: height.into() });
    }

    pub fn handle_line(&self, line: &[u8]) {
        let msg: HostMessage = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(e) => {
                self.send(&AgentMessage::Error { message: format!("bad message from host: {e}") });
                return;
            }
        };
        match msg {
            HostMessage::Sync { .. } => {} // a late or repeated one: nothing to do
            HostMessage::Ping { id } => self.send(&AgentMessage::Pong { id }),
            HostMessage::Session { user } => match &self.sessions {
                Some(tx) => {
                    if let Err(e) = user.validate() {
                        self.send(&AgentMessage::Error {
                            message: format!("session refused: {e}"),
                        });
                        return;
                    }
                    let _ = lock(tx).send(SessionCommand::Start(user));
                }
                None => self.start_session(&user),
            },
            HostMessage::EndSession => match &self.sessions {
                Some(tx) => {
                    let _ = lock(tx).send(SessionCommand::End);
                }
                None => self.end_session(),
            },
            HostMessage::Clipboard { text } => self.paste_in(&text),
            HostMessage::ClipboardImage { png } => self.paste_image(png),
            HostMessage::Renew { entropy, time_ms, hostname } => {
                let renewed = lock(&self.renewal).apply(&entropy, time_ms, &hostname);
                match renewed {
                    Ok((machine_id, new)) => {
                        if new {
                            log(&format!("made its own as {hostname}: a clone of a template"));
                            if let Some(tx) = &self.sessions {
                                let _ = lock(tx).send(SessionCommand::WarmUp);
                            }
                        }
                        self.send(&AgentMessage::Renewed { machine_id });
                    }
                    Err(message) => self.send(&AgentMessage::Error { message }),
                }
            }
            HostMessage::ScreenSize { width, height } => self.resize(width, height),
            HostMessage::FileOpen { id, name, size } => {
                // The owner stays locked while the file opens: a sign-out in between would
                // leave a file of the user before in transfer (lock order: owner, files).
                let owner = lock(&self.owner);
                let r = match owner.as_ref() {
                    None => Err("nobody is signed in to this desktop".to_owned()),
                    Some(o) => lock(&self.files).open(id, &name, size, o),
                };
                drop(owner);
                match r {
                    Ok(()) => self.send(&AgentMessage::FileReady { id }),
                    Err(message) => self.file_failed(id, message),
                }
            }
            HostMessage::FileEnd { id } => match lock(&self.files).end(id) {
                Ok(size) => self.send(&AgentMessage::FileReceived { id, size }),
                Err(message) => self.file_failed(id, message),
            },
            HostMessage::FileCommit { id } => match lock(&self.files).commit(id) {
                Ok(path) => {
                    log(&format!("file {id} saved as {}; {}", path.display(), memory()));
                    let path = path.to_string_lossy().into_owned();
                    self.send(&AgentMessage::FileSaved { id, path });
                }
                Err(message) => self.file_failed(id, message),
            },
            HostMessage::FileAbort { id } => {
                lock(&self.files).abort(id);
                self.downloads.abort(id);
            }
            HostMessage::ListFiles { id } => {
                let r = match lock(&self.owner).as_ref() {
                    None => Err("nobody is signed in to this desktop".to_owned()),
                    Some(o) => outgoing::list(o),
                };
                match r {
                    Ok(files) => self.send(&AgentMessage::FileList { id, files }),
                    Err(message) => self.file_failed(id, message),
                }
            }
            HostMessage::FileGet { id, name, window } => {
                // The owner stays locked while the file opens, as for uploads.
                let owner = lock(&self.owner);
                let r = match owner.as_ref() {
                    None => Err("nobody is signed in to this desktop".to_owned()),
                    Some(o) => self.downloads.start(&self.out, id, &name, window, o),
                };
                drop(owner);
                if let Err(message) = r {
                    self.file_failed(id, message);
                }
            }
            HostMessage::FileMore { id, bytes } => self.downloads.more(id, bytes),
        }
    }

    /// The next bytes of an upload. Data for a file that already failed is dropped quietly (the
    /// host sent it before it heard).
    pub fn file_data(&self, id: u32, data: &[u8]) {
        let mut files = lock(&self.files);
        if !files.has(id) {
            return;
        }
        if let Err(message) = files.data(id, data) {
            drop(files);
            self.file_failed(id, message);
        }
    }

    pub fn file_failed(&self, id: u32, message: String) {
        log(&format!("file {id}: {message}"));
        self.send(&AgentMessage::FileError { id, message });
    }

    /// Whose folder uploads go to from now on; files in transfer for someone else are dropped.
    pub fn set_owner(&self, owner: Option<Owner>) {
        let mut current = lock(&self.owner);
        if *current != owner {
            let dropped = lock(&self.files).abort_all() + self.downloads.abort_all();
            if dropped > 0 {
                log(&format!("{dropped} files in transfer dropped: the user changed"));
            }
        }
        *current = owner;
    }

    pub fn resize(&self, width: u32, height: u32) {
        let Some(tx) = &self.screen_sizes else {
            self.send(&AgentMessage::Error {
                message: "this image has no graphical screen to resize".into(),
            });
            return;
        };
        match (u16::try_from(width), u16::try_from(height)) {
            (Ok(w), Ok(h)) if w > 0 && h > 0 => {
                let _ = lock(tx).send((w, h));
            }
            _ => self.send(&AgentMessage::Error {
                message: format!("screen size {width}x{height} refused"),
            }),
        }
    }

    pub fn start_session(&self, user: &SessionUser) {
        if let Err(e) = user.validate() {
            self.send(&AgentMessage::Error { message: format!("session refused: {e}") });
            return;
        }
        let name = user.display_name.as_deref().unwrap_or(&user.username);
        let greeting = format!(
            "\r\n\x1b[1mWelcome, {name} ({})! This desktop is yours.\x1b[0m\r\n",
            user.username
        );
        self.write_console(&greeting);
        if let Some(path) = &self.opts.session_file {
            let body = format!("{}\n{}\n", user.username, name);
            if let Err(e) = write_world_readable(path, body.as_bytes()) {
                log(&format!("writing {} failed: {e}", path.display()));
            }
        }
        log(&format!("session started for {}", user.username));
        self.send(&AgentMessage::SessionStarted { username: user.username.clone() });
    }

    pub fn end_session(&self) {
        lock(&self.files).abort_all();
        self.downloads.abort_all();
        self.write_console("\r\n\x1b[1mThe session has ended.\x1b[0m\r\n");
        if let Some(path) = &self.opts.session_file {
            let _ = std::fs::remove_file(path);
        }
        log("session ended");
    }

    pub fn paste_in(&self, text: &str) {
        if text.len() > MAX_CLIPBOARD {
            self.send(&AgentMessage::Error {
                message: format!("clipboard text of {} bytes is over {MAX_CLIPBOARD}", text.len()),
            });
            return;
        }
        if let Some(desktop) = &self.desktop {
            if let Err(e) = desktop.paste(xdesktop::Clip::Text(text.as_bytes().to_vec())) {
                self.send(&AgentMessage::Error { message: format!("clipboard: {e}") });
            }
            return;
        }
        let Some(clip) = &self.clipboard else {
            self.send(&AgentMessage::Error { message: "this image has no clipboard".into() });
            return;
        };
        if let Err(e) = clip.write(text.as_bytes()) {
            self.send(&AgentMessage::Error { message: format!("clipboard write failed: {e}") });
        }
    }

    /// An image for the clipboard: only a graphical desktop takes one.
    pub fn paste_image(&self, png: Vec<u8>) {
        let Some(desktop) = &self.desktop else {
            self.send(&AgentMessage::Error {
                message: "this desktop's clipboard takes text only, not images".into(),
            });
            return;
        };
        if let Err(e) = desktop.paste(xdesktop::Clip::Png(png)) {
            self.send(&AgentMessage::Error { message: format!("clipboard image: {e}") });
        }
    }

    /// Writes to the console terminal from a thread of its own: a terminal can block (output
    /// stopped with Ctrl-S, or a slow framebuffer), and the agent must keep answering.
    pub fn write_console(&self, text: &str) {
        let Some(tty) = self.opts.console_tty.clone() else { return };
        let text = text.to_owned();
        std::thread::spawn(move || {
            let r = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&tty)
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = r {
                log(&format!("writing to {} failed: {e}", tty.display()));
            }
        });
    }
}

pub fn write_world_readable(path: &Path, body: &[u8]) -> io::Result<()> {
    replace_file(path, body, 0o644)
}

/// Replaces `path` with `body` (a new file of `mode`, renamed over it; its folder made when
/// missing).
pub fn replace_file(path: &Path, body: &[u8], mode: u32) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(body)?;
    std::fs::rename(&tmp, path)
}

/// The agent's resident memory, now and at most since it started, for the log after a file
/// (operators, and the transfer benchmark, read how much a transfer cost inside the guest).
pub fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .map_or_else(|| "?".to_owned(), |v| v.trim().to_owned())
    };
    format!("agent memory: {} KiB now, {} KiB at most", field("VmRSS:"), field("VmHWM:"))
}
