//! The agent's threads: the host's messages read from the port ([`read_loop`], on the main
//! thread), ready said once the desktop is up, the clipboard file watched, and the desktop's
//! own threads (X, the screen's sizes, sessions, the panel's launches).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use atrium_protocol::agent::{AgentMessage, Line, LineReader};

use crate::agent::{Agent, SessionCommand};
use crate::clipboard::ClipboardFile;
use crate::xdesktop::{self, Desktop};
use crate::{desktop_session, lock, log, resync, shell};

/// Waits until every file the image names exists (the framebuffer, the console's marker), then
/// reports ready. Reports an error (and keeps waiting) when that takes longer than the timeout.
pub fn wait_ready(agent: &Agent) {
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
pub fn watch_clipboard(agent: &Agent, clip: &ClipboardFile) {
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
pub fn read_loop(agent: &Agent, mut input: File) -> io::Result<()> {
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

/// The desktop image's threads: X (its clipboard and screen changes reported to the host), the
/// screen's sizes, the sessions one at a time, and the panel's launches.
pub fn start_desktop(
    agent: &Arc<Agent>,
    desktop: Arc<Desktop>,
    screen_rx: mpsc::Receiver<(u16, u16)>,
    session_rx: mpsc::Receiver<SessionCommand>,
) {
    let a = Arc::clone(agent);
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
    let a = Arc::clone(agent);
    let d = Arc::clone(&desktop);
    std::thread::spawn(move || screen_worker(&a, &d, &screen_rx));
    let a = Arc::clone(agent);
    std::thread::spawn(move || desktop_session::session_worker(&a, &desktop, &session_rx));
    let a = Arc::clone(agent);
    std::thread::spawn(move || {
        shell::serve_launches(Path::new(shell::LAUNCH_SOCKET), &|name| {
            if let Some(tx) = &a.sessions {
                let _ = lock(tx).send(SessionCommand::Launch(name));
            }
        });
    });
}
