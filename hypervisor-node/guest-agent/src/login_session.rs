//! Sign-in on a Linux system with an init of its own (`--login-tty`): an operator's image with
//! systemd and the agent installed as a service (`atrium-guest-agent.service`,
//! docs/images.md). The signed-in directory user gets an account as in the desktop image
//! ([`session::Accounts`]), a home from `/etc/skel`, and `login -f` on the agent's virtual
//! terminal, brought to the screen: a session of the system's own (PAM; systemd-logind registers
//! it), with their keyboard layout on the console where the image can set one (console-setup's
//! `ckbcomp` and kbd's `loadkeys`, as a Debian install has). Their clipboard is
//! `~/clipboard.txt`, their transfers `~/Transfer`. When their shell
//! ends (`exit`), `login -f` starts again for them, as a getty would: the desktop is theirs until
//! the session ends. One session at a time, off the thread that reads the host.
//!
//! The agent signs users in only to accounts it made itself (listed in [`MADE`]): a directory
//! user named like one of the image's own accounts (the operator's, `nobody`) is refused. At
//! each sign-in, what is left of the users before (a background job) ends. The signed-in user is
//! kept in [`SAVED`] (`/run`, which the unit keeps across the agent's restarts): an agent that
//! restarted signs them in again, afresh.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use atrium_protocol::agent::{AgentMessage, SessionUser};

use crate::agent::{Agent, SessionCommand, replace_file, write_world_readable};
use crate::files::Owner;
use crate::vt::{activate, open_tty, restore_layout, set_layout, take_back, write_tty};
use crate::{log, session};

/// The system's login program (shadow's or util-linux's: both take `-f NAME` from root).
const LOGIN: &str = "/bin/login";
/// A login that ended within this of its start is started again only this long after it (a
/// broken login is not restarted in a loop).
const RESPAWN_PAUSE: Duration = Duration::from_secs(5);
/// How long a login has to end once its terminal is hung up.
const LOGIN_GRACE: Duration = Duration::from_secs(3);

/// A login that keeps ending at once is started again less and less often, up to this.
const RESPAWN_MAX: Duration = Duration::from_secs(60);

/// The accounts the agent made, a name a line.
const MADE: &str = "/var/lib/atrium/accounts";
/// The signed-in user (`SessionUser` as JSON), while one is.
const SAVED: &str = "/run/atrium/login-session.json";

/// The signed-in user's session.
#[derive(Debug)]
struct Active {
    account: session::Account,
    /// `login -f`, while it runs.
    login: Option<Child>,
    /// When `login` last started.
    started: Instant,
    /// How long after a start `login` may start again ([`RESPAWN_PAUSE`] to [`RESPAWN_MAX`]).
    pause: Duration,
    /// Whether the console's keyboard layout was set for them.
    layout_set: bool,
}

/// The session worker of `--login-tty`: starts and ends sessions one at a time and keeps the
/// signed-in user's login running.
pub(crate) fn login_worker(agent: &Agent, tty: &Path, rx: &mpsc::Receiver<SessionCommand>) {
    let mut active = resume(agent, tty);
    loop {
        let command = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Some(a) = active.as_mut() {
            keep_login(tty, a);
        }
        match command {
            // A panel's menu and clones' warm-ups are the desktop image's.
            None | Some(SessionCommand::Launch(_) | SessionCommand::WarmUp) => {}
            Some(SessionCommand::End) => match active.take() {
                Some(a) => end(agent, tty, a),
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
                        end(agent, tty, a);
                    }
                }
                match start(agent, tty, &user) {
                    Ok(a) => {
                        agent.send(&AgentMessage::SessionStarted { username: user.username });
                        active = Some(a);
                        // The new account's files, to the disk, once the user is answered.
                        // SAFETY: sync has no preconditions.
                        unsafe { libc::sync() };
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

/// At the agent's start: the session an earlier run of the agent left (it was restarted) is
/// started again for the same user, afresh (what they ran ends); none, and the terminal is
/// hung up whatever holds it.
fn resume(agent: &Agent, tty: &Path) -> Option<Active> {
    let saved =
        std::fs::read(SAVED).ok().and_then(|b| serde_json::from_slice::<SessionUser>(&b).ok());
    let _ = std::fs::remove_file(SAVED);
    let Some(user) = saved else {
        if let Err(e) = take_back(tty) {
            log(&format!("{}: {e}", tty.display()));
        }
        return None;
    };
    log(&format!("the agent restarted: signing {} in again", user.username));
    if let Some(uid) = uid_of(&user.username) {
        session::end_processes(uid, LOGIN_GRACE);
    }
    if user.keyboard_layout.is_some()
        && let Err(e) = restore_layout(tty)
    {
        log(&format!("the image's keyboard layout not set again: {e}"));
    }
    match start(agent, tty, &user) {
        Ok(a) => {
            agent.send(&AgentMessage::SessionStarted { username: user.username });
            Some(a)
        }
        Err(e) => {
            log(&format!("the session of {} did not start again: {e}", user.username));
            agent.send(&AgentMessage::Error {
                message: format!("the session of {} did not start again: {e}", user.username),
            });
            None
        }
    }
}

/// The names of the accounts the agent made.
fn made_accounts() -> Vec<String> {
    std::fs::read_to_string(MADE)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The uid of account `name` in `/etc/passwd`.
fn uid_of(name: &str) -> Option<u32> {
    session::uid_of(Path::new("/etc"), name)
}

/// Refuses a name the image has an account of its own for (one the agent did not make).
fn check_not_the_images(name: &str) -> Result<(), String> {
    if uid_of(name).is_some() && !made_accounts().iter().any(|m| m == name) {
        return Err(format!(
            "the image has an account {name:?} of its own; Atrium signs users in only to \
             accounts it made"
        ));
    }
    Ok(())
}

/// Adds `name` to the accounts the agent made.
fn record_made(name: &str) -> io::Result<()> {
    if made_accounts().iter().any(|m| m == name) {
        return Ok(());
    }
    let dir = Path::new(MADE).parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(MADE)?;
    writeln!(f, "{name}")
}

/// Account, home, the terminal brought to the screen, then `login -f`.
fn start(agent: &Agent, tty: &Path, user: &SessionUser) -> Result<Active, String> {
    let t0 = Instant::now();
    check_not_the_images(&user.username)?;
    let accounts = session::Accounts { etc: "/etc".into() };
    let account = accounts.ensure(user, &agent.opts.homes)?;
    record_made(&account.name).map_err(|e| format!("{MADE}: {e}"))?;
    session::prepare_home(&account, Path::new("/etc/skel"))?;
    // What the users before left running (a background job) ends.
    for name in made_accounts().iter().filter(|n| **n != account.name) {
        if let Some(uid) = uid_of(name).filter(|u| *u != account.uid) {
            session::end_processes(uid, LOGIN_GRACE);
        }
    }
    take_back(tty).map_err(|e| format!("{}: {e}", tty.display()))?;
    let name = user.display_name.as_deref().unwrap_or(&user.username);
    write_tty(
        tty,
        &format!(
            "\x1b[H\x1b[2J\x1b[1mWelcome, {name} ({})! This desktop is yours.\x1b[0m\r\n",
            user.username
        ),
    )
    .map_err(|e| format!("{}: {e}", tty.display()))?;
    activate(tty).map_err(|e| format!("bringing {} to the screen: {e}", tty.display()))?;
    // Best effort: an image that cannot set it keeps its own, which the log says.
    let layout_set = match user.keyboard_layout.as_deref() {
        Some(layout) => match set_layout(tty, layout) {
            Ok(()) => {
                log(&format!("keyboard layout {layout} on {}", tty.display()));
                true
            }
            Err(e) => {
                log(&format!("keyboard layout {layout} not set: {e}"));
                false
            }
        },
        None => false,
    };
    let login = match spawn_login(tty, &account.name) {
        Ok(c) => c,
        Err(e) => {
            if layout_set && let Err(e) = restore_layout(tty) {
                log(&format!("the image's keyboard layout not set again: {e}"));
            }
            return Err(format!("starting {LOGIN} -f {} on {}: {e}", account.name, tty.display()));
        }
    };
    agent.set_owner(Some(Owner { home: account.home.clone(), uid: account.uid, gid: account.gid }));
    if let Some(clip) = &agent.clipboard {
        clip.set(Some((account.home.join("clipboard.txt"), Some((account.uid, account.gid)))));
    }
    if let Some(path) = &agent.opts.session_file {
        let body = format!("{}\n{name}\n", user.username);
        if let Err(e) = write_world_readable(path, body.as_bytes()) {
            log(&format!("writing {} failed: {e}", path.display()));
        }
    }
    match serde_json::to_vec(user) {
        Ok(saved) => {
            if let Err(e) = replace_file(Path::new(SAVED), &saved, 0o600) {
                log(&format!("{SAVED}: {e}"));
            }
        }
        Err(e) => log(&format!("{SAVED}: {e}")),
    }
    log(&format!(
        "session started for {} (uid {}) on {} in {} ms",
        account.name,
        account.uid,
        tty.display(),
        t0.elapsed().as_millis()
    ));
    Ok(Active {
        account,
        login: Some(login),
        started: Instant::now(),
        pause: RESPAWN_PAUSE,
        layout_set,
    })
}

/// Starts `login -f` again once the user's shell has ended, [`RESPAWN_PAUSE`] after the last
/// start at the soonest (longer, up to [`RESPAWN_MAX`], while it keeps ending at once).
fn keep_login(tty: &Path, a: &mut Active) {
    if let Some(child) = a.login.as_mut() {
        match child.try_wait() {
            Ok(None) => return,
            Ok(Some(status)) => {
                log(&format!("the login of {} ended ({status})", a.account.name));
            }
            Err(e) => log(&format!("waiting for the login of {}: {e}", a.account.name)),
        }
        a.login = None;
        // One that ended at once: later each time; one that ran: soon again.
        a.pause = if a.started.elapsed() < RESPAWN_PAUSE {
            (a.pause * 2).min(RESPAWN_MAX)
        } else {
            RESPAWN_PAUSE
        };
    }
    if a.started.elapsed() < a.pause {
        return;
    }
    a.started = Instant::now();
    match spawn_login(tty, &a.account.name) {
        Ok(c) => a.login = Some(c),
        Err(e) => log(&format!("starting {LOGIN} -f {} again: {e}", a.account.name)),
    }
}

/// Hangs the terminal up (its session's processes lose it and get SIGHUP), ends the user's
/// processes, writes their files out, and says so on the screen.
fn end(agent: &Agent, tty: &Path, mut a: Active) {
    agent.set_owner(None);
    if let Some(clip) = &agent.clipboard {
        clip.set(None);
    }
    let _ = std::fs::remove_file(SAVED);
    if let Err(e) = take_back(tty) {
        log(&format!("{}: {e}", tty.display()));
    }
    session::end_processes(a.account.uid, LOGIN_GRACE);
    // `login` itself runs as root: it ends with its terminal, or is ended.
    if let Some(mut child) = a.login.take() {
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) && start.elapsed() < LOGIN_GRACE {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    // A dedicated user's home disk may be detached right after: everything on it now.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if a.layout_set
        && let Err(e) = restore_layout(tty)
    {
        log(&format!("the image's keyboard layout not set again: {e}"));
    }
    if let Err(e) = write_tty(tty, "\x1b[H\x1b[2J\x1b[1mThe session has ended.\x1b[0m\r\n") {
        log(&format!("{}: {e}", tty.display()));
    }
    if let Some(path) = &agent.opts.session_file {
        let _ = std::fs::remove_file(path);
    }
    log(&format!("session ended for {}", a.account.name));
}

/// `login -f NAME` on the terminal, in a session of its own that the terminal controls, with a
/// clean environment (login makes the user's).
fn spawn_login(tty: &Path, name: &str) -> io::Result<Child> {
    let f = open_tty(tty)?;
    let mut cmd = Command::new(LOGIN);
    cmd.args(["-f", name])
        .env_clear()
        .env("TERM", "linux")
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(f.try_clone()?)
        .stdout(f.try_clone()?)
        .stderr(f);
    // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 1) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}
