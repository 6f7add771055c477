//! The desktop image's sessions: the worker that keeps the desktop's shell (window manager and
//! panel, [`crate::shell`]) running, starts each signed-in user's session as that user (account,
//! home, runtime folder, X cookie, their name on the panel, then the session program) and ends
//! it, one at a time, off the thread that reads the host. Programs the panel's menu launches are
//! started here too, as the signed-in user.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use atrium_protocol::agent::{AgentMessage, SessionUser};

use crate::agent::{Agent, SessionCommand, write_world_readable};
use crate::files::Owner;
use crate::shell::{self, Shell};
use crate::xdesktop::Desktop;
use crate::{log, session};

/// How long after a failed start the shell is tried again.
const SHELL_RETRY: Duration = Duration::from_secs(5);

/// A signed-in user's running session.
#[derive(Debug)]
struct ActiveSession {
    account: session::Account,
    user: SessionUser,
    run: PathBuf,
    xauthority: PathBuf,
    /// The programs started as the user (the session program, the menu's launches), reaped as
    /// they end.
    programs: Vec<Child>,
}

/// What the worker keeps: the shell, the session on it, when the shell last failed to start.
#[derive(Debug, Default)]
struct Worker {
    shell: Option<Shell>,
    active: Option<ActiveSession>,
    shell_failed: Option<Instant>,
}

/// The desktop's session worker: keeps the shell running and starts and ends sessions one at a
/// time, off the thread that reads the host (pings must still be answered meanwhile).
pub(crate) fn session_worker(
    agent: &Agent,
    desktop: &Desktop,
    rx: &mpsc::Receiver<SessionCommand>,
) {
    // Sessions left by an earlier run of the agent (it was restarted) end now (the shell's
    // processes end when it starts again).
    for uid in session::user_uids() {
        log(&format!("ending the processes of uid {uid}, left from before"));
        session::end_processes(uid, Duration::from_secs(2));
    }
    let mut w = Worker::default();
    loop {
        let command = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Some(a) = w.active.as_mut() {
            a.programs.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        }
        // A shell that ended (it crashed, or X restarted) ends the session on it.
        if let Some(status) = w.shell.as_mut().and_then(Shell::ended) {
            log(&format!("the desktop's window manager ended ({status})"));
            w.shell = None;
            if let Some(a) = w.active.take() {
                end_desktop_session(agent, desktop, &mut w.shell, a);
            }
        }
        let retry = w.shell_failed.is_none_or(|t| t.elapsed() >= SHELL_RETRY);
        if w.shell.is_none() && retry && desktop.connected() {
            let _ =
                ensure_shell(agent, desktop, &mut w, true, Instant::now() + shell::PANEL_TIMEOUT);
        }
        match command {
            None => {}
            Some(SessionCommand::End) => match w.active.take() {
                Some(a) => end_desktop_session(agent, desktop, &mut w.shell, a),
                None => log("no session to end"),
            },
            Some(SessionCommand::Launch(name)) => launch(agent, desktop, &mut w, &name),
            Some(SessionCommand::WarmUp) => {
                if w.active.is_none()
                    && let Some(s) = w.shell.as_mut()
                {
                    warm_up(desktop, s);
                }
            }
            Some(SessionCommand::Start(user)) => {
                if let Some(a) = &w.active {
                    if a.account.name == user.username {
                        agent.send(&AgentMessage::SessionStarted { username: user.username });
                        continue;
                    }
                    if let Some(a) = w.active.take() {
                        log(&format!(
                            "{} signs in: ending the session of {}",
                            user.username, a.account.name
                        ));
                        end_desktop_session(agent, desktop, &mut w.shell, a);
                    }
                }
                match start_desktop_session(agent, desktop, &mut w, &user) {
                    Ok(mut a) => {
                        agent.send(&AgentMessage::SessionStarted { username: user.username });
                        // The new account's files, to the disk.
                        // SAFETY: sync has no preconditions.
                        unsafe { libc::sync() };
                        // The session program (keyboard layout, a terminal) after the answer:
                        // the desktop is there; its first window follows.
                        if let Err(e) = start_program(agent, desktop, &mut a, &["start"]) {
                            log(&e);
                        }
                        w.active = Some(a);
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

/// Starts the shell unless it runs (and, with `warm`, warms it up); the desktop is ready once
/// its panel is up.
fn ensure_shell<'w>(
    agent: &Agent,
    desktop: &Desktop,
    w: &'w mut Worker,
    warm: bool,
    deadline: Instant,
) -> Result<&'w mut Shell, String> {
    if w.shell.is_none() {
        let (Some(program), Some(template)) =
            (agent.opts.shell_command.as_deref(), agent.opts.panel_template.as_deref())
        else {
            return Err("no --shell-command and --panel-template".into());
        };
        match Shell::start(desktop, program, template, deadline) {
            Ok(mut s) => {
                w.shell_failed = None;
                if warm {
                    warm_up(desktop, &mut s);
                }
                desktop.panel_up.store(true, Ordering::SeqCst);
                w.shell = Some(s);
            }
            Err(e) => {
                log(&format!("the desktop's panel did not start: {e}"));
                w.shell_failed = Some(Instant::now());
                return Err(format!("the desktop's panel did not start: {e}"));
            }
        }
    }
    w.shell.as_mut().ok_or_else(|| "no shell".into())
}

/// A restart of the shell with nobody signed in ([`Shell::warm_up`]); a failure is only logged
/// (a sign-in's restart will say more).
fn warm_up(desktop: &Desktop, s: &mut Shell) {
    match s.warm_up(desktop) {
        Ok(d) => log(&format!("the desktop's panel warmed up in {} ms", d.as_millis())),
        Err(e) => log(&format!("warming the desktop's panel up: {e}")),
    }
}

/// Starts `program` (the session command with `args`) as the signed-in user.
fn start_program(
    agent: &Agent,
    desktop: &Desktop,
    a: &mut ActiveSession,
    args: &[&str],
) -> Result<(), String> {
    let program = agent.opts.session_command.as_deref().ok_or("no --session-command")?;
    let child = session::spawn(&session::Launch {
        program,
        args,
        account: &a.account,
        user: &a.user,
        display: desktop.display(),
        xauthority: &a.xauthority,
        runtime_dir: &a.run,
    })
    .map_err(|e| format!("starting {} {}: {e}", program.display(), args.join(" ")))?;
    a.programs.push(child);
    Ok(())
}

/// A program the panel's menu asked for, started as the signed-in user.
fn launch(agent: &Agent, desktop: &Desktop, w: &mut Worker, name: &str) {
    let Some(a) = w.active.as_mut() else {
        return log(&format!("nobody is signed in: {name} is not started"));
    };
    match start_program(agent, desktop, a, &["run", name]) {
        Ok(()) => log(&format!("started {name} for {}", a.account.name)),
        Err(e) => log(&e),
    }
}

/// The user's name on the panel (the window manager restarts meanwhile), then account, home,
/// runtime folder and cookie; done once the new panel is drawn. The session program starts
/// after the answer.
fn start_desktop_session(
    agent: &Agent,
    desktop: &Desktop,
    w: &mut Worker,
    user: &SessionUser,
) -> Result<ActiveSession, String> {
    let t0 = Instant::now();
    // One deadline for the whole sign-in, within the node's wait for the answer.
    let deadline = t0 + shell::PANEL_TIMEOUT;
    let restarted = ensure_shell(agent, desktop, w, false, deadline).and_then(|s| {
        desktop.show_greeter(false)?;
        s.restart(desktop, &shell::label(user))
    });
    let prepared = restarted.and_then(|()| {
        let accounts = session::Accounts { etc: "/etc".into() };
        let account = accounts.ensure(user, &agent.opts.homes)?;
        session::prepare_home(&account, Path::new("/etc/skel"))?;
        let run = session::runtime_dir(Path::new("/run/user"), &account)
            .map_err(|e| format!("/run/user/{}: {e}", account.uid))?;
        match shell::write_cookie(desktop, &account, &run) {
            Ok(xauthority) => Ok(ActiveSession {
                account,
                user: user.clone(),
                run,
                xauthority,
                programs: Vec::new(),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run);
                Err(e)
            }
        }
    });
    let a = match prepared {
        Ok(a) => a,
        Err(e) => {
            // The panel may have their name, or no configuration: it starts again afresh.
            if let Some(s) = w.shell.take() {
                s.stop();
            }
            if let Err(e) = desktop.show_greeter(true) {
                log(&format!("showing the sign-in screen: {e}"));
            }
            return Err(e);
        }
    };
    let account_ms = t0.elapsed().as_millis();
    let drawn = match w.shell.as_mut() {
        Some(s) => s.wait_drawn(desktop, deadline),
        None => Err("the desktop's panel ended".into()),
    };
    if let Err(e) = drawn {
        end_desktop_session(agent, desktop, &mut w.shell, a);
        return Err(e);
    }
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
        "session started for {} (uid {}) in {} ms (their name on the panel asked for, account, \
         home and cookie made: {account_ms} ms){memory}",
        user.username,
        a.account.uid,
        t0.elapsed().as_millis(),
    ));
    Ok(a)
}

/// Ends the user's processes, writes their files out, stops the shell (it starts again with
/// nobody's name, for the next sign-in), and shows the sign-in screen again.
fn end_desktop_session(
    agent: &Agent,
    desktop: &Desktop,
    shell: &mut Option<Shell>,
    mut a: ActiveSession,
) {
    agent.set_owner(None);
    session::end_processes(a.account.uid, Duration::from_secs(3));
    for child in &mut a.programs {
        let _ = child.wait();
    }
    // A dedicated user's home disk may be detached right after: everything on it now.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::remove_dir_all(&a.run);
    desktop.clear_clipboard();
    if let Err(e) = desktop.show_greeter(true) {
        log(&format!("showing the sign-in screen: {e}"));
    }
    if let Some(s) = shell.take() {
        s.stop();
    }
    if let Some(path) = &agent.opts.session_file {
        let _ = std::fs::remove_file(path);
    }
    log(&format!("session ended for {}", a.account.name));
}
