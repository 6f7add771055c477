//! The desktop image's sessions: the worker that starts each signed-in user's session as that
//! user (account, home, runtime folder, X cookie, the session program) and ends it, one at a
//! time, off the thread that reads the host.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use atrium_protocol::agent::{AgentMessage, SessionUser};

use crate::files::Owner;
use crate::xdesktop::Desktop;
use crate::{Agent, SessionCommand, log, session, write_world_readable};

/// How long a session has to draw its panel before the agent gives up on it (within the node's
/// 60 s wait for the session's confirmation).
const PANEL_TIMEOUT: Duration = Duration::from_secs(45);
/// How often the agent looks at the panel while the session draws it. Looking more often
/// confirms a drawn panel sooner but takes CPU from the session drawing it (one vCPU): at 50 ms
/// the panel came no sooner in all (docs/PERFORMANCE.md, "Connect to the desktop drawn").
const PANEL_POLL: Duration = Duration::from_millis(200);

/// A signed-in user's running session.
#[derive(Debug)]
struct ActiveSession {
    account: session::Account,
    child: std::process::Child,
}

/// The desktop's session worker: starts and ends sessions one at a time, off the thread that
/// reads the host (a session takes seconds to draw, and pings must still be answered).
pub(crate) fn session_worker(
    agent: &Agent,
    desktop: &Desktop,
    rx: &mpsc::Receiver<SessionCommand>,
) {
    // Sessions left by an earlier run of the agent (it was restarted) end now.
    for uid in session::user_uids() {
        log(&format!("ending the processes of uid {uid}, left from before"));
        session::end_processes(uid, Duration::from_secs(2));
    }
    let mut active: Option<ActiveSession> = None;
    loop {
        let command = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // A session whose program ended (the user quit it, or it crashed) is over.
        if let Some(a) = active.as_mut()
            && let Ok(Some(status)) = a.child.try_wait()
        {
            log(&format!("the session of {} ended ({status})", a.account.name));
            if let Some(a) = active.take() {
                end_desktop_session(agent, desktop, a);
            }
        }
        match command {
            None => {}
            Some(SessionCommand::End) => match active.take() {
                Some(a) => end_desktop_session(agent, desktop, a),
                None => log("no session to end"),
            },
            Some(SessionCommand::Start(user)) => {
                if let Some(a) = &active {
                    if a.account.name == user.username {
                        agent.send(&AgentMessage::SessionStarted { username: user.username });
                        continue;
                    }
                    if let Some(a) = active.take() {
                        log(&format!(
                            "{} signs in: ending the session of {}",
                            user.username, a.account.name
                        ));
                        end_desktop_session(agent, desktop, a);
                    }
                }
                match start_desktop_session(agent, desktop, &user) {
                    Ok(a) => {
                        active = Some(a);
                        agent.send(&AgentMessage::SessionStarted { username: user.username });
                    }
                    Err(e) => {
                        log(&format!("the session of {} did not start: {e}", user.username));
                        agent.send(&AgentMessage::Error {
                            message: format!("the session of {} did not start: {e}", user.username),
                        });
                    }
                }
            }
        }
    }
}

/// The user's copy of the X server's cookie: one entry for its display on any host name (a
/// clone's host name is not the one the cookie was written under).
fn user_cookie(desktop: &Desktop) -> Result<Vec<u8>, String> {
    let path = desktop.xauthority();
    let file = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let entries =
        crate::xauth::parse(&file).ok_or_else(|| format!("{}: truncated", path.display()))?;
    let number = crate::xauth::display_number(desktop.display())
        .ok_or_else(|| format!("display {:?} has no number", desktop.display()))?;
    let (name, data) = crate::xauth::cookie_for(&entries, number)
        .ok_or_else(|| format!("{}: no cookie for display :{number}", path.display()))?;
    crate::xauth::wild_file(number, &name, &data).ok_or_else(|| "the cookie is too long".into())
}

/// Account, home, runtime folder, cookie; then the session program as the user; then waits
/// until its panel is drawn.
fn start_desktop_session(
    agent: &Agent,
    desktop: &Desktop,
    user: &SessionUser,
) -> Result<ActiveSession, String> {
    let t0 = Instant::now();
    let program = agent.opts.session_command.as_deref().ok_or("no --session-command")?;
    let accounts = session::Accounts { etc: "/etc".into() };
    let account = accounts.ensure(user, &agent.opts.homes)?;
    session::prepare_home(&account, Path::new("/etc/skel"))?;
    let run = session::runtime_dir(Path::new("/run/user"), &account)
        .map_err(|e| format!("/run/user/{}: {e}", account.uid))?;
    let cookie = user_cookie(desktop)?;
    let xauthority = run.join("Xauthority");
    session::write_owned(&xauthority, &cookie, account.uid, account.gid, 0o600)
        .map_err(|e| format!("{}: {e}", xauthority.display()))?;
    let prepared = t0.elapsed();
    desktop.show_greeter(false)?;
    let child = session::spawn(&session::Launch {
        program,
        account: &account,
        user,
        display: desktop.display(),
        xauthority: &xauthority,
        runtime_dir: &run,
    })
    .map_err(|e| format!("starting {}: {e}", program.display()))?;
    let mut a = ActiveSession { account, child };
    let drawn = match wait_for_panel(desktop, &mut a.child) {
        Ok(d) => d,
        Err(e) => {
            end_desktop_session(agent, desktop, a);
            return Err(e);
        }
    };
    agent.set_owner(Some(Owner {
        home: a.account.home.clone(),
        uid: a.account.uid,
        gid: a.account.gid,
    }));
    if let Some(path) = &agent.opts.session_file {
        let name = user.display_name.as_deref().unwrap_or(&user.username);
        let body = format!("{}\n{}\n", user.username, name);
        if let Err(e) = write_world_readable(path, body.as_bytes()) {
            log(&format!("writing {} failed: {e}", path.display()));
        }
    }
    let memory = session::memory_mib()
        .map(|(used, total)| format!("; guest memory in use {used} MiB of {total} MiB"))
        .unwrap_or_default();
    log(&format!(
        "session started for {} (uid {}) in {} ms (account, home and cookie {} ms; its panel \
         first drawn {} ms after the program started){memory}",
        user.username,
        a.account.uid,
        t0.elapsed().as_millis(),
        prepared.as_millis(),
        drawn.as_millis()
    ));
    Ok(a)
}

/// Waits until a panel is mapped and drawn: two pictures of it in a row alike, and not blank.
/// Says when it was first seen drawn.
fn wait_for_panel(desktop: &Desktop, child: &mut std::process::Child) -> Result<Duration, String> {
    let start = Instant::now();
    let mut previous: Option<Vec<u8>> = None;
    let mut seen: Option<Duration> = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the session program ended ({status}) before its panel showed"));
        }
        let pixels = desktop.panel_pixels()?;
        if let Some(p) = &pixels {
            let blank = p.chunks_exact(4).all(|px| px == &p[..4.min(p.len())]);
            if !blank {
                let first = *seen.get_or_insert_with(|| start.elapsed());
                if previous.as_ref() == Some(p) {
                    return Ok(first);
                }
            }
        }
        previous = pixels;
        if start.elapsed() > PANEL_TIMEOUT {
            return Err(format!("no panel was drawn within {} s", PANEL_TIMEOUT.as_secs()));
        }
        std::thread::sleep(PANEL_POLL);
    }
}

/// Ends the user's processes, writes their files out, and shows the sign-in screen again.
fn end_desktop_session(agent: &Agent, desktop: &Desktop, mut a: ActiveSession) {
    agent.set_owner(None);
    session::end_processes(a.account.uid, Duration::from_secs(3));
    let _ = a.child.wait();
    // A dedicated user's home disk may be detached right after: everything on it now.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::remove_dir_all(Path::new("/run/user").join(a.account.uid.to_string()));
    desktop.clear_clipboard();
    if let Err(e) = desktop.show_greeter(true) {
        log(&format!("showing the sign-in screen: {e}"));
    }
    if let Some(path) = &agent.opts.session_file {
        let _ = std::fs::remove_file(path);
    }
    log(&format!("session ended for {}", a.account.name));
}
