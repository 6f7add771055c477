//! The desktop's shell: the window manager and its panel (JWM), started before anyone signs in,
//! as a system account of its own (`atrium-shell`), the way the X server already runs before
//! anyone signs in.
//!
//! Starting a window manager under emulation takes seconds (dynamic linking, fonts); restarting
//! it in place takes a fraction of that. So a sign-in only puts the user's name on the panel:
//! the agent writes the panel's configuration again and asks the running window manager to
//! restart, reading it. The user's own programs run as the user: the panel's menu entries run
//! `atrium-guest-agent --launch NAME`, which asks the agent over a Unix socket that only the
//! shell's account may use, and the agent starts the session program (`run NAME`) as the
//! signed-in user. The agent takes a name, never a command line, from that socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use atrium_protocol::agent::SessionUser;

use crate::session::{self, Account};
use crate::xdesktop::Desktop;

/// The shell's system account (the image's `/etc/passwd`).
pub const ACCOUNT: &str = "atrium-shell";
/// Where the agent takes launches from the panel's menu.
pub const LAUNCH_SOCKET: &str = "/run/atrium/launch";
/// The panel's label while nobody is signed in (the sign-in screen covers it).
const NOBODY: &str = "Atrium";
/// What makes JWM restart in place, reading its configuration again (`jwm -restart` sends it).
const RESTART: &str = "_JWM_RESTART";
/// How long the window manager has to draw its panel; a sign-in has this long in all (within
/// the node's 60 s wait for a session's confirmation).
pub const PANEL_TIMEOUT: Duration = Duration::from_secs(45);
/// How often the agent looks at the panel while the window manager starts. Looking more often
/// takes CPU from the window manager drawing it (one vCPU): at 50 ms the panel of a fresh start
/// came no sooner in all (docs/PERFORMANCE.md, "Connect to the desktop drawn").
const START_POLL: Duration = Duration::from_millis(200);
/// How often it looks while the window manager restarts for a sign-in (a fraction of a start).
const RESTART_POLL: Duration = Duration::from_millis(40);
/// A launch's name: the session program's entries (`terminal`, `files`, `editor`).
const NAME_MAX: usize = 32;

/// The running shell.
#[derive(Debug)]
pub struct Shell {
    account: Account,
    config: PathBuf,
    template: String,
    child: Child,
    /// The panel's window now (a restart makes a new one).
    panel: u32,
}

impl Shell {
    /// Starts the shell as its account with nobody's name on the panel, and waits (until
    /// `deadline`) for the panel to be mapped. Processes the account has left (an earlier shell)
    /// end first.
    pub fn start(
        desktop: &Desktop,
        program: &Path,
        template: &Path,
        deadline: Instant,
    ) -> Result<Self, String> {
        let t0 = Instant::now();
        let template = std::fs::read_to_string(template)
            .map_err(|e| format!("{}: {e}", template.display()))?;
        let account = session::system_account(Path::new("/etc"), ACCOUNT)?;
        session::end_processes(account.uid, Duration::from_secs(2));
        let run = session::runtime_dir(Path::new("/run/user"), &account)
            .map_err(|e| format!("/run/user/{}: {e}", account.uid))?;
        let xauthority = write_cookie(desktop, &account, &run)?;
        let config = run.join("jwmrc");
        write_config(&config, &template, NOBODY)?;
        let nobody = SessionUser {
            username: account.name.clone(),
            display_name: None,
            uid: None,
            gid: None,
            keyboard_layout: None,
        };
        let child = session::spawn(&session::Launch {
            program,
            args: &[],
            account: &account,
            user: &nobody,
            display: desktop.display(),
            xauthority: &xauthority,
            runtime_dir: &run,
        })
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
        let mut shell = Self { account, config, template, child, panel: 0 };
        // The sign-in screen covers the panel, so what X gives of its pixels is undefined: the
        // panel mapped is enough here (a sign-in restarts it, and waits for it drawn).
        match wait_for_panel(desktop, &mut shell.child, None, START_POLL, false, deadline) {
            Ok(panel) => shell.panel = panel,
            Err(e) => {
                shell.stop();
                return Err(e);
            }
        }
        crate::log(&format!(
            "the desktop's panel is up, {} ms after its start",
            t0.elapsed().as_millis()
        ));
        Ok(shell)
    }

    /// Asks for `label` on the panel: the configuration written again, the window manager told
    /// to restart in place. [`Shell::wait_drawn`] waits for the new panel.
    pub fn restart(&self, desktop: &Desktop, label: &str) -> Result<(), String> {
        write_config(&self.config, &self.template, label)?;
        desktop.tell_window_manager(RESTART)
    }

    /// Waits until the panel that follows a restart is drawn (the sign-in screen hidden), until
    /// `deadline`.
    pub fn wait_drawn(&mut self, desktop: &Desktop, deadline: Instant) -> Result<(), String> {
        let panel = wait_for_panel(
            desktop,
            &mut self.child,
            Some(self.panel),
            RESTART_POLL,
            true,
            deadline,
        )?;
        self.panel = panel;
        Ok(())
    }

    /// Restarts the window manager once with nobody's name, while nobody is signed in, so that
    /// a sign-in's restart finds its code and data already in the guest's memory and, under
    /// emulation, already translated (a clone comes up with neither). Returns once the new
    /// panel is mapped (behind the sign-in screen: hiding that screen so X draws the panel too
    /// made sign-ins no faster, docs/PERFORMANCE.md).
    pub fn warm_up(&mut self, desktop: &Desktop) -> Result<Duration, String> {
        let t0 = Instant::now();
        self.restart(desktop, NOBODY)?;
        let deadline = t0 + PANEL_TIMEOUT;
        let panel = wait_for_panel(
            desktop,
            &mut self.child,
            Some(self.panel),
            RESTART_POLL,
            false,
            deadline,
        )?;
        self.panel = panel;
        Ok(t0.elapsed())
    }

    /// How the window manager ended, once it has.
    pub fn ended(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Ends the shell's processes.
    pub fn stop(mut self) {
        session::end_processes(self.account.uid, Duration::from_secs(2));
        let _ = self.child.wait();
    }
}

/// A copy of the X server's cookie for `account` in its runtime folder: one entry for the
/// display on any host name (a clone's host name is not the one the cookie was written under).
pub fn write_cookie(desktop: &Desktop, account: &Account, run: &Path) -> Result<PathBuf, String> {
    let path = desktop.xauthority();
    let file = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let entries =
        crate::xauth::parse(&file).ok_or_else(|| format!("{}: truncated", path.display()))?;
    let number = crate::xauth::display_number(desktop.display())
        .ok_or_else(|| format!("display {:?} has no number", desktop.display()))?;
    let (name, data) = crate::xauth::cookie_for(&entries, number)
        .ok_or_else(|| format!("{}: no cookie for display :{number}", path.display()))?;
    let cookie = crate::xauth::wild_file(number, &name, &data).ok_or("the cookie is too long")?;
    let xauthority = run.join("Xauthority");
    session::write_owned(&xauthority, &cookie, account.uid, account.gid, 0o600)
        .map_err(|e| format!("{}: {e}", xauthority.display()))?;
    Ok(xauthority)
}

/// The panel's configuration: the template with `label` (XML-escaped) where it says `@NAME@`.
/// Root's, readable by the shell; written aside and renamed over the old one, so the window
/// manager never finds it missing or half written.
fn write_config(path: &Path, template: &str, label: &str) -> Result<(), String> {
    let body = template.replace("@NAME@", &xml_escape(label));
    let aside = path.with_extension("new");
    session::write_owned(&aside, body.as_bytes(), 0, 0, 0o644)
        .and_then(|()| std::fs::rename(&aside, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// What the panel says of a user: "Display Name (login)", or the login alone.
pub fn label(user: &SessionUser) -> String {
    match user.display_name.as_deref().map(str::trim) {
        Some(d) if !d.is_empty() && d != user.username => format!("{d} ({})", user.username),
        _ => user.username.clone(),
    }
}

/// Waits until a panel other than `old` is mapped and, when `drawn`, drawn: a picture of it not
/// blank (the window manager draws the whole panel at once; the viewer connects after the
/// answer, by when it is done). Returns its window.
fn wait_for_panel(
    desktop: &Desktop,
    child: &mut Child,
    old: Option<u32>,
    poll: Duration,
    drawn: bool,
    deadline: Instant,
) -> Result<u32, String> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the window manager ended ({status}) before its panel showed"));
        }
        let pixels = desktop.panel_pixels()?.filter(|(w, _)| Some(*w) != old);
        if let Some((w, p)) = &pixels {
            let blank = p.chunks_exact(4).all(|px| px == &p[..4.min(p.len())]);
            if !drawn || !blank {
                return Ok(*w);
            }
        }
        if Instant::now() > deadline {
            let waited = start.elapsed().as_secs();
            return Err(format!("no panel was drawn within {waited} s"));
        }
        std::thread::sleep(poll);
    }
}

/// A launch's name, checked: 1 to 32 of `a-z`, `0-9` and `-`.
pub fn launch_name(s: &str) -> Result<&str, String> {
    let ok = !s.is_empty()
        && s.len() <= NAME_MAX
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(s) } else { Err(format!("{s:?} is not a program's name (a-z, 0-9, -)")) }
}

/// The uid of the process at the other end of a Unix socket.
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).unwrap_or(0);
    // SAFETY: `cred` and `len` are valid for the size given; the descriptor is the stream's.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if r == 0 { Ok(cred.uid) } else { Err(std::io::Error::last_os_error()) }
}

/// Takes launches from the panel's menu at `socket` and hands each name to `launch`. Only the
/// shell's account (and root) may connect: the socket is `root:atrium-shell 0660`, and each
/// peer's uid is checked as well.
pub fn serve_launches(socket: &Path, launch: &dyn Fn(String)) {
    let account = match session::system_account(Path::new("/etc"), ACCOUNT) {
        Ok(a) => a,
        Err(e) => return crate::log(&format!("no launches from the panel: {e}")),
    };
    let listener = match bind(socket, account.gid) {
        Ok(l) => l,
        Err(e) => return crate::log(&format!("no launches from the panel: {e}")),
    };
    for stream in listener.incoming() {
        let result = match stream {
            Ok(s) => serve_launch(s, account.uid, launch),
            Err(e) => {
                std::thread::sleep(Duration::from_millis(100));
                Err(format!("accepting: {e}"))
            }
        };
        if let Err(e) = result {
            crate::log(&format!("a launch from the panel refused: {e}"));
        }
    }
}

fn bind(socket: &Path, gid: u32) -> Result<UnixListener, String> {
    let shown = socket.display();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let listener = UnixListener::bind(socket).map_err(|e| format!("{shown}: {e}"))?;
    std::os::unix::fs::lchown(socket, Some(0), Some(gid)).map_err(|e| format!("{shown}: {e}"))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("{shown}: {e}"))?;
    Ok(listener)
}

/// Only the shell's account and root may ask for launches.
fn may_launch(peer: u32, shell_uid: u32) -> bool {
    peer == shell_uid || peer == 0
}

/// One launch: `NAME\n` in, `ok\n` or `error: ...\n` out.
fn serve_launch(mut s: UnixStream, shell_uid: u32, launch: &dyn Fn(String)) -> Result<(), String> {
    let peer = peer_uid(&s).map_err(|e| format!("its peer: {e}"))?;
    let answer = |s: &mut UnixStream, r: &Result<String, String>| {
        let line = match r {
            Ok(_) => "ok\n".to_owned(),
            Err(e) => format!("error: {e}\n"),
        };
        let _ = s.write_all(line.as_bytes());
    };
    if !may_launch(peer, shell_uid) {
        let r = Err(format!("uid {peer} may not launch programs"));
        answer(&mut s, &r);
        return r.map(drop);
    }
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let read = BufReader::new(&s)
        .take(NAME_MAX as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading: {e}"));
    let r = read.and_then(|_| {
        let text = std::str::from_utf8(&line).map_err(|_| "not UTF-8".to_owned())?;
        launch_name(text.strip_suffix('\n').unwrap_or(text)).map(str::to_owned)
    });
    answer(&mut s, &r);
    launch(r?);
    Ok(())
}

/// `atrium-guest-agent --launch NAME`: asks the agent at `socket` to start the program `name`
/// as the signed-in user. The exit code says whether the agent took it.
pub fn launch_client(socket: &Path, name: &str) -> Result<(), String> {
    let name = launch_name(name)?;
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(format!("{name}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .take(512)
        .read_line(&mut answer)
        .map_err(|e| format!("the agent's answer: {e}"))?;
    match answer.trim_end() {
        "ok" => Ok(()),
        "" => Err("the agent did not answer".into()),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_who_is_signed_in() {
        let user = |name: &str, display: Option<&str>| SessionUser {
            username: name.into(),
            display_name: display.map(Into::into),
            uid: None,
            gid: None,
            keyboard_layout: None,
        };
        assert_eq!(label(&user("alice", Some("Alice Example"))), "Alice Example (alice)");
        assert_eq!(label(&user("alice", Some("alice"))), "alice");
        assert_eq!(label(&user("alice", Some("  "))), "alice");
        assert_eq!(label(&user("alice", None)), "alice");
    }

    #[test]
    fn the_configuration_takes_the_label_escaped() {
        let dir = std::env::temp_dir().join(format!("atrium-shell-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwmrc");
        let template = "<TrayButton label=\"@NAME@\" popup=\"Signed in as @NAME@\"/>\n";
        write_config(&path, template, "O'Brien <ob> & \"co\"\n").unwrap();
        write_config(&path, template, "Mallory\u{7}").unwrap();
        let body = std::fs::read_to_string(&path).unwrap();
        assert_eq!(body, "<TrayButton label=\"Mallory\" popup=\"Signed in as Mallory\"/>\n");
        write_config(&path, template, "O'Brien <ob> & \"co\"").unwrap();
        let body = std::fs::read_to_string(&path).unwrap();
        assert!(body.contains("label=\"O&apos;Brien &lt;ob&gt; &amp; &quot;co&quot;\""), "{body}");
        // A label that says @NAME@ itself is not replaced again.
        write_config(&path, "[@NAME@]", "x @NAME@").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[x @NAME@]");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn launch_names_are_names_not_commands() {
        assert_eq!(launch_name("terminal"), Ok("terminal"));
        assert_eq!(launch_name("text-editor2"), Ok("text-editor2"));
        for bad in ["", "xterm -e sh", "../x", "Terminal", "a;b", &"a".repeat(33), "a\n"] {
            assert!(launch_name(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn only_the_shell_and_root_may_launch() {
        assert!(may_launch(901, 901));
        assert!(may_launch(0, 901));
        assert!(!may_launch(10_001, 901));
        assert!(!may_launch(65_534, 901));
    }

    /// A peer that is neither the shell nor root is refused before anything is read, even when
    /// the socket's mode would let it in: a child process of uid 65534 asks, and is told no.
    #[test]
    fn other_users_may_not_launch() {
        let dir = std::env::temp_dir().join(format!("atrium-launch-uid-{}", std::process::id()));
        let socket = dir.join("launch");
        let listener = bind(&socket, 0).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: an all-zero sockaddr_un is valid; the path fits (checked).
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap();
        let path = socket.as_os_str().as_encoded_bytes();
        assert!(path.len() < addr.sun_path.len());
        for (d, b) in addr.sun_path.iter_mut().zip(path) {
            *d = (*b).cast_signed();
        }
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>()).unwrap();
        // SAFETY: the child makes only async-signal-safe calls (no allocation) and `_exit`s.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; `addr` and the buffers live on this stack.
            unsafe {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(3);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                    libc::_exit(4);
                }
                let ask = b"files\n";
                libc::write(fd, ask.as_ptr().cast(), ask.len());
                let mut answer = [0u8; 7];
                let n = libc::read(fd, answer.as_mut_ptr().cast(), answer.len());
                libc::_exit(if n == 7 && &answer == b"error: " { 0 } else { 5 });
            }
        }
        assert!(pid > 0, "fork failed");
        let (s, _) = listener.accept().unwrap();
        let launched = std::cell::Cell::new(false);
        let r = serve_launch(s, 4242, &|_| launched.set(true));
        assert!(r.is_err_and(|e| e.contains("uid 65534")), "the launch was not refused");
        assert!(!launched.get());
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child: {status:#x}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn launches_are_taken_from_the_socket_and_checked() {
        let dir = std::env::temp_dir().join(format!("atrium-launch-{}", std::process::id()));
        let socket = dir.join("launch");
        let listener = bind(&socket, 0).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            for _ in 0..3 {
                let (s, _) = listener.accept().unwrap();
                let tx = tx.clone();
                let _ = serve_launch(s, me, &move |n| tx.send(n).unwrap());
            }
        });
        assert_eq!(launch_client(&socket, "files"), Ok(()));
        assert_eq!(rx.recv().unwrap(), "files");
        // A bad name is refused by the client before it asks, and by the agent if it is asked.
        assert!(launch_client(&socket, "sh -c id").is_err());
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(b"rm -rf /\n").unwrap();
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        assert!(answer.starts_with("error: "), "{answer}");
        // A line longer than any name ends the read.
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(&[b'a'; 200]).unwrap();
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        assert!(answer.starts_with("error: "), "{answer}");
        server.join().unwrap();
        assert!(rx.try_recv().is_err(), "a refused launch was handed on");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
