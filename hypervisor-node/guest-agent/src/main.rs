//! `atrium-guest-agent`: the small program inside every Atrium desktop VM.
//!
//! It talks to the host over the virtio-serial port `org.atrium.agent.0` with the JSON-lines
//! protocol of `atrium_protocol::agent` (documented in `docs/guest-agent-protocol.md`): it says
//! hello, says ready once the desktop can be used, answers pings, greets the signed-in user and
//! carries clipboard text both ways.
//!
//! It runs as root inside the guest (it must open the port, which only root may, and write to the
//! console); the user's shell runs unprivileged. Everything it takes from the user's side (the
//! clipboard file in their home) is opened without following links and checked before use.
//!
//! Logs go to stderr, which the image's init connects to the serial console. The agent uses no
//! logging framework on purpose: it is linked statically into every image and kept tiny.

mod clipboard;
mod options;
mod port;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use atrium_protocol::agent::{
    AgentMessage, HostMessage, Line, LineReader, MAX_CLIPBOARD, SessionUser, VERSION, encode_line,
};

use crate::clipboard::ClipboardFile;
use crate::options::Options;

/// What every thread of the agent shares.
#[derive(Debug)]
struct Agent {
    opts: Options,
    /// The write side of the port. Writes block while no host is connected.
    out: Mutex<File>,
    ready: AtomicBool,
    clipboard: Option<ClipboardFile>,
}

impl Agent {
    fn send(&self, msg: &AgentMessage) {
        let line = encode_line(msg);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            log(&format!("writing to the host failed: {e}"));
        }
    }

    fn hello(&self) {
        self.send(&AgentMessage::Hello {
            version: VERSION,
            agent: format!("atrium-guest-agent/{}", env!("CARGO_PKG_VERSION")),
        });
        if self.ready.load(Ordering::SeqCst) {
            self.send(&AgentMessage::Ready);
        }
    }

    fn handle_line(&self, line: &[u8]) {
        let msg: HostMessage = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(e) => {
                self.send(&AgentMessage::Error { message: format!("bad message from host: {e}") });
                return;
            }
        };
        match msg {
            HostMessage::Ping { id } => self.send(&AgentMessage::Pong { id }),
            HostMessage::Session { user } => self.start_session(&user),
            HostMessage::EndSession => self.end_session(),
            HostMessage::Clipboard { text } => self.paste_in(&text),
        }
    }

    fn start_session(&self, user: &SessionUser) {
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

    fn end_session(&self) {
        self.write_console("\r\n\x1b[1mThe session has ended.\x1b[0m\r\n");
        if let Some(path) = &self.opts.session_file {
            let _ = std::fs::remove_file(path);
        }
        log("session ended");
    }

    fn paste_in(&self, text: &str) {
        if text.len() > MAX_CLIPBOARD {
            self.send(&AgentMessage::Error {
                message: format!("clipboard text of {} bytes is over {MAX_CLIPBOARD}", text.len()),
            });
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

    /// Writes to the console terminal from a thread of its own: a terminal can block (output
    /// stopped with Ctrl-S, or a slow framebuffer), and the agent must keep answering.
    fn write_console(&self, text: &str) {
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

fn write_world_readable(path: &Path, body: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(body)?;
    std::fs::rename(&tmp, path)
}

fn log(msg: &str) {
    eprintln!("atrium-guest-agent: {msg}");
}

/// Waits until every file the image names exists (the framebuffer, the console's marker), then
/// reports ready. Reports an error (and keeps waiting) when that takes longer than the timeout.
fn wait_ready(agent: &Agent) {
    let start = Instant::now();
    let mut warned = false;
    loop {
        let missing: Vec<_> = agent.opts.wait_files.iter().filter(|p| !p.exists()).collect();
        if missing.is_empty() {
            break;
        }
        if !warned && start.elapsed() > agent.opts.ready_timeout {
            warned = true;
            let message = format!("still waiting for {}", missing[0].display());
            log(&message);
            agent.send(&AgentMessage::Error { message });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.ready.store(true, Ordering::SeqCst);
    log(&format!("ready after {} ms", start.elapsed().as_millis()));
    agent.send(&AgentMessage::Ready);
}

/// Sends the guest's clipboard to the host whenever the file changes (and has settled).
fn watch_clipboard(agent: &Agent, clip: &ClipboardFile) {
    let mut previous: Option<Vec<u8>> = None;
    let mut reported_error = false;
    loop {
        std::thread::sleep(agent.opts.poll);
        let current = match clip.read() {
            Ok(c) => {
                reported_error = false;
                c
            }
            Err(e) => {
                if !reported_error {
                    reported_error = true;
                    agent.send(&AgentMessage::Error { message: format!("clipboard: {e}") });
                }
                continue;
            }
        };
        // Act only on content seen twice in a row, so a file caught half-written is not sent.
        if current == previous
            && let Some(bytes) = current.as_deref()
            && clip.take_if_new(bytes)
        {
            let text = String::from_utf8_lossy(bytes).into_owned();
            agent.send(&AgentMessage::Clipboard { text });
        }
        previous = current;
    }
}

/// Reads host messages until the port fails. A read of 0 bytes means no host is connected: the
/// agent waits and, when a host speaks again, says hello again (and ready, if it is).
fn read_loop(agent: &Agent, mut input: File) -> io::Result<()> {
    let mut reader = LineReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut connected = true;
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            connected = false;
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if !connected {
            connected = true;
            log("host connected again");
            agent.hello();
        }
        for line in reader.push(&buf[..n]) {
            match line {
                Line::Complete(l) if l.iter().all(u8::is_ascii_whitespace) => {}
                Line::Complete(l) => agent.handle_line(&l),
                Line::TooLong => agent.send(&AgentMessage::Error {
                    message: "a message from the host was too long and was dropped".into(),
                }),
            }
        }
    }
}

fn main() {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            log(&e);
            log(options::USAGE);
            std::process::exit(2);
        }
    };
    let file = match port::open(opts.port.as_deref(), Duration::from_secs(30)) {
        Ok(f) => f,
        Err(e) => {
            log(&format!("cannot open the agent port: {e}"));
            // Slow down init's respawn loop.
            std::thread::sleep(Duration::from_secs(2));
            std::process::exit(1);
        }
    };
    let input = match file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            log(&format!("cannot duplicate the port handle: {e}"));
            std::process::exit(1);
        }
    };
    let clipboard = opts.clipboard_file.clone().map(|p| ClipboardFile::new(p, opts.user));
    let agent =
        Arc::new(Agent { opts, out: Mutex::new(file), ready: AtomicBool::new(false), clipboard });
    log("started");
    agent.hello();

    let a = Arc::clone(&agent);
    std::thread::spawn(move || wait_ready(&a));
    if agent.clipboard.is_some() {
        let a = Arc::clone(&agent);
        std::thread::spawn(move || {
            if let Some(clip) = &a.clipboard {
                watch_clipboard(&a, clip);
            }
        });
    }
    if let Err(e) = read_loop(&agent, input) {
        log(&format!("reading the agent port failed: {e}"));
        std::process::exit(1);
    }
}
