//! `atrium-guest-agent`: the small program inside every Atrium desktop VM.
//!
//! It talks to the host over the virtio-serial port `org.atrium.agent.0` with the JSON-lines
//! protocol of `atrium_protocol::agent` (documented in `docs/guest-agent-protocol.md`): it says
//! hello, says ready once the desktop can be used, answers pings, greets the signed-in user and
//! carries the clipboard (text, and PNG images in the desktop image) both ways, receives
//! uploaded files into the user's `~/Transfer` ([`files`]), and lists and sends the files there
//! that the user downloads ([`outgoing`]).
//!
//! It runs as root inside the guest (it must open the port, which only root may, and write to the
//! console); the user's shell runs unprivileged. Everything it takes from the user's side (the
//! clipboard file in their home) is opened without following links and checked before use.
//!
//! In the desktop image (`--x-display`) it is also the display manager: it shows a "waiting for
//! sign-in" screen on X, runs the desktop's shell behind it ([`shell`]), says ready once both are
//! up, starts each signed-in user's session as that user ([`desktop_session`], [`session`]) and
//! the programs the panel's menu asks for, bridges X's clipboard ([`xdesktop`]), and gives the
//! screen the size the host asks for ([`xscreen`]), reporting every size it takes. Run as
//! `atrium-guest-agent --launch NAME`, it is instead that menu's entry: it asks the running agent
//! to start program NAME as the signed-in user.
//!
//! Logs go to stderr, which the image's init connects to the serial console. The agent uses no
//! logging framework on purpose: it is linked statically into every image and kept tiny.

mod clipboard;
mod desktop_session;
mod files;
mod options;
mod outgoing;
mod port;
mod renew;
mod resync;
mod session;
mod shell;
mod xauth;
mod xdesktop;
mod xscreen;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use atrium_protocol::agent::{
    AgentMessage, HostMessage, Line, LineReader, MAX_CLIPBOARD, SessionUser, VERSION, encode_line,
};

use crate::clipboard::ClipboardFile;
use crate::files::{Owner, Transfers};
use crate::options::Options;
use crate::outgoing::Downloads;
use crate::xdesktop::Desktop;

/// What every thread of the agent shares.
#[derive(Debug)]
struct Agent {
    opts: Options,
    /// The write side of the port. Writes block while no host is connected.
    out: outgoing::Port,
    ready: AtomicBool,
    clipboard: Option<ClipboardFile>,
    /// The desktop image's X server.
    desktop: Option<Arc<Desktop>>,
    /// The desktop's session worker (starts and ends sessions, one at a time).
    sessions: Option<Mutex<mpsc::Sender<SessionCommand>>>,
    /// The desktop's screen worker (sizes asked for, the newest one wins).
    screen_sizes: Option<Mutex<mpsc::Sender<(u16, u16)>>>,
    /// The screen's size as last reported to the host.
    screen: Mutex<Option<(u16, u16)>>,
    /// Whose transfer folder uploads go to (the signed-in user, or the image's one user).
    owner: Mutex<Option<Owner>>,
    /// Files being uploaded.
    files: Mutex<Transfers>,
    /// Files being downloaded.
    downloads: Arc<Downloads>,
    /// The nonce of the last hello: the host's `sync` must carry it.
    nonce: Mutex<u64>,
    /// This clone's renewal, once renewed.
    renewal: Mutex<renew::Renewal>,
}

/// Work for the desktop's session worker.
#[derive(Debug)]
enum SessionCommand {
    Start(SessionUser),
    End,
    /// A program the panel's menu asked for, by name.
    Launch(String),
    /// This desktop was just cloned: the shell's restart runs once before a sign-in needs it.
    WarmUp,
}

impl Agent {
    fn send(&self, msg: &AgentMessage) {
        let line = encode_line(msg);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            log(&format!("writing to the host failed: {e}"));
        }
    }

    /// Says hello with a new nonce (returned): nothing the host sends counts until its `sync`.
    fn hello(&self) -> u64 {
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
    fn screen_is(&self, width: u16, height: u16) {
        *lock(&self.screen) = Some((width, height));
        self.send(&AgentMessage::Screen { width: width.into(), height: height.into() });
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
    fn file_data(&self, id: u32, data: &[u8]) {
        let mut files = lock(&self.files);
        if !files.has(id) {
            return;
        }
        if let Err(message) = files.data(id, data) {
            drop(files);
            self.file_failed(id, message);
        }
    }

    fn file_failed(&self, id: u32, message: String) {
        log(&format!("file {id}: {message}"));
        self.send(&AgentMessage::FileError { id, message });
    }

    /// Whose folder uploads go to from now on; files in transfer for someone else are dropped.
    fn set_owner(&self, owner: Option<Owner>) {
        let mut current = lock(&self.owner);
        if *current != owner {
            let dropped = lock(&self.files).abort_all() + self.downloads.abort_all();
            if dropped > 0 {
                log(&format!("{dropped} files in transfer dropped: the user changed"));
            }
        }
        *current = owner;
    }

    fn resize(&self, width: u32, height: u32) {
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
        lock(&self.files).abort_all();
        self.downloads.abort_all();
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
    fn paste_image(&self, png: Vec<u8>) {
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

/// The agent's resident memory, now and at most since it started, for the log after a file
/// (operators, and the transfer benchmark, read how much a transfer cost inside the guest).
fn memory() -> String {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until every file the image names exists (the framebuffer, the console's marker), then
/// reports ready. Reports an error (and keeps waiting) when that takes longer than the timeout.
fn wait_ready(agent: &Agent) {
    let start = Instant::now();
    let mut warned = false;
    loop {
        let mut missing: Vec<String> = agent
            .opts
            .wait_files
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if let Some(d) = &agent.desktop
            && !d.greeter_drawn.load(Ordering::SeqCst)
        {
            missing.push(format!("the sign-in screen on X {}", d.display()));
        } else if let Some(d) = &agent.desktop
            && !d.panel_up.load(Ordering::SeqCst)
        {
            missing.push(format!("the desktop's panel on X {}", d.display()));
        }
        if missing.is_empty() {
            break;
        }
        if !warned && start.elapsed() > agent.opts.ready_timeout {
            warned = true;
            let message = format!("still waiting for {}", missing[0]);
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
    // Nothing counts until the host answers the hello main said.
    let mut waiting = Some(resync::Unsynced::new(*lock(&agent.nonce)));
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if connected {
                let dropped = lock(&agent.files).abort_all() + agent.downloads.abort_all();
                if dropped > 0 {
                    log(&format!("{dropped} files in transfer dropped: the host went away"));
                }
            }
            connected = false;
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if !connected {
            connected = true;
            log("host connected again");
            waiting = Some(resync::Unsynced::new(agent.hello()));
        }
        let fresh;
        let data = match waiting.as_mut() {
            None => &buf[..n],
            Some(w) => match w.push(&buf[..n]) {
                None => continue,
                Some(rest) => {
                    waiting = None;
                    reader = LineReader::new();
                    fresh = rest;
                    &fresh[..]
                }
            },
        };
        for line in reader.push(data) {
            match line {
                Line::Complete(l) if l.iter().all(u8::is_ascii_whitespace) => {}
                Line::Complete(l) => agent.handle_line(&l),
                Line::Data { id, data } => agent.file_data(id, &data),
                Line::TooLong => agent.send(&AgentMessage::Error {
                    message: "a message from the host was too long and was dropped".into(),
                }),
                Line::BadFrame => agent.send(&AgentMessage::Error {
                    message: "a data frame from the host had a bad header".into(),
                }),
            }
        }
    }
}

/// Gives the screen the sizes the host asks for, one at a time; when several are waiting only
/// the newest is made (a window being dragged asks for many).
fn screen_worker(agent: &Agent, desktop: &Desktop, sizes: &mpsc::Receiver<(u16, u16)>) {
    while let Ok(mut want) = sizes.recv() {
        while let Ok(newer) = sizes.try_recv() {
            want = newer;
        }
        match desktop.set_screen_size(want.0, want.1) {
            // Said even when nothing changed: the host waits for an answer.
            Ok((width, height)) => agent.screen_is(width, height),
            Err(e) => {
                let message = format!("screen size {}x{}: {e}", want.0, want.1);
                log(&message);
                agent.send(&AgentMessage::Error { message });
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
    // An entry of the desktop's panel menu: ask the running agent, then end.
    if let Some(name) = &opts.launch {
        if let Err(e) = shell::launch_client(Path::new(shell::LAUNCH_SOCKET), name) {
            log(&format!("launching {name}: {e}"));
            std::process::exit(1);
        }
        return;
    }
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
    let desktop = match (&opts.x_display, &opts.x_authority) {
        (Some(d), Some(a)) => Some(Arc::new(Desktop::new(d.clone(), a.clone()))),
        _ => None,
    };
    let (session_tx, session_rx) = mpsc::channel();
    let (screen_tx, screen_rx) = mpsc::channel();
    let agent = Arc::new(Agent {
        opts,
        out: Arc::new(Mutex::new(file)),
        ready: AtomicBool::new(false),
        clipboard,
        sessions: desktop.as_ref().map(|_| Mutex::new(session_tx)),
        screen_sizes: desktop.as_ref().map(|_| Mutex::new(screen_tx)),
        screen: Mutex::new(None),
        owner: Mutex::new(None),
        files: Mutex::new(Transfers::default()),
        downloads: Arc::default(),
        nonce: Mutex::new(0),
        renewal: Mutex::default(),
        desktop,
    });
    if let (Some(home), Some((uid, gid))) = (&agent.opts.home, agent.opts.user) {
        agent.set_owner(Some(Owner { home: home.clone(), uid, gid }));
    }
    log("started");
    agent.hello();

    if let Some(desktop) = agent.desktop.clone() {
        let a = Arc::clone(&agent);
        let d = Arc::clone(&desktop);
        std::thread::spawn(move || {
            let copied = |clip: xdesktop::Clip| match clip {
                xdesktop::Clip::Text(text) => a.send(&AgentMessage::Clipboard {
                    text: String::from_utf8_lossy(&text).into_owned(),
                }),
                xdesktop::Clip::Png(png) => a.send(&AgentMessage::ClipboardImage { png }),
            };
            let resized = |width, height| a.screen_is(width, height);
            xdesktop::run(&d, &copied, &resized, &log);
        });
        let a = Arc::clone(&agent);
        let d = Arc::clone(&desktop);
        std::thread::spawn(move || screen_worker(&a, &d, &screen_rx));
        let a = Arc::clone(&agent);
        std::thread::spawn(move || desktop_session::session_worker(&a, &desktop, &session_rx));
        let a = Arc::clone(&agent);
        std::thread::spawn(move || {
            shell::serve_launches(Path::new(shell::LAUNCH_SOCKET), &|name| {
                if let Some(tx) = &a.sessions {
                    let _ = lock(tx).send(SessionCommand::Launch(name));
                }
            });
        });
    }
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
