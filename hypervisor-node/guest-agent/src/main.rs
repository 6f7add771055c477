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
//! In an operator's own Linux image with systemd (`--login-tty`, installed as a service with
//! `atrium-guest-agent.service`) it signs each user in on a terminal of its own with the system's
//! `login` ([`login_session`]).
//!
//! In the desktop image (`--x-display`) it is also the display manager: it shows a "waiting for
//! sign-in" screen on X, runs the desktop's shell behind it ([`shell`]), says ready once both are
//! up, starts each signed-in user's session as that user ([`desktop_session`], [`session`]) and
//! the programs the panel's menu asks for, bridges X's clipboard ([`xdesktop`]), and gives the
//! screen the size the host asks for ([`xscreen`]), reporting every size it takes. Run as
//! `atrium-guest-agent --launch NAME`, it is instead that menu's entry: it asks the running agent
//! to start program NAME as the signed-in user.
//!
//! The shared state and each host message's handling are in [`agent`], the threads in
//! [`workers`]; `main` opens the port and starts them.
//!
//! Logs go to stderr, which the image's init (or the unit file) connects to the serial console.
//! The agent uses no logging framework on purpose: it is linked statically into every image and
//! kept tiny.

mod agent;
mod clipboard;
mod desktop_session;
mod files;
mod login_session;
mod options;
mod outgoing;
mod port;
mod renew;
mod resync;
mod session;
mod shell;
mod vt;
mod workers;
mod xauth;
mod xdesktop;
mod xscreen;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use crate::agent::Agent;
use crate::clipboard::ClipboardFile;
use crate::files::{Owner, Transfers};
use crate::options::Options;
use crate::xdesktop::Desktop;

pub fn log(msg: &str) {
    eprintln!("atrium-guest-agent: {msg}");
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    let clipboard = match (&opts.clipboard_file, &opts.login_tty) {
        (Some(p), _) => Some(ClipboardFile::new(p.clone(), opts.user)),
        // The signed-in user's, once someone is.
        (None, Some(_)) => Some(ClipboardFile::unset()),
        (None, None) => None,
    };
    let desktop = match (&opts.x_display, &opts.x_authority) {
        (Some(d), Some(a)) => Some(Arc::new(Desktop::new(d.clone(), a.clone()))),
        _ => None,
    };
    let has_sessions = desktop.is_some() || opts.login_tty.is_some();
    let (session_tx, session_rx) = mpsc::channel();
    let (screen_tx, screen_rx) = mpsc::channel();
    let agent = Arc::new(Agent {
        opts,
        out: Arc::new(Mutex::new(file)),
        ready: AtomicBool::new(false),
        clipboard,
        sessions: has_sessions.then(|| Mutex::new(session_tx)),
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
        workers::start_desktop(&agent, desktop, screen_rx, session_rx);
    } else if let Some(tty) = agent.opts.login_tty.clone() {
        let a = Arc::clone(&agent);
        std::thread::spawn(move || login_session::login_worker(&a, &tty, &session_rx));
    }
    let a = Arc::clone(&agent);
    std::thread::spawn(move || workers::wait_ready(&a));
    if agent.clipboard.is_some() {
        let a = Arc::clone(&agent);
        std::thread::spawn(move || {
            if let Some(clip) = &a.clipboard {
                workers::watch_clipboard(&a, clip);
            }
        });
    }
    if let Err(e) = workers::read_loop(&agent, input) {
        log(&format!("reading the agent port failed: {e}"));
        std::process::exit(1);
    }
}
