//! Single sign-on into the desktop: the signed-in directory user gets a Unix account in the
//! guest (their directory uid/gid when the directory has them), a home, and a graphical session
//! started as them, with no password prompt (the broker signed them in).
//!
//! The agent runs as root; the user's home is theirs. Everything in it is reached without
//! following symbolic links, and nothing of the user's is read as root.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atrium_protocol::agent::SessionUser;

/// The first uid given to users the directory has no uid for.
pub const FIRST_UID: u32 = 10_000;
/// Uids handed out (when the directory has none) stay below this.
pub const LAST_UID: u32 = 59_999;
/// The image's `users` group, the one system group a directory may give its users.
pub const USERS_GID: u32 = 100;

/// Where account files live (`/etc` in the guest; a folder of its own in tests).
#[derive(Debug, Clone)]
pub struct Accounts {
    pub etc: PathBuf,
}

/// A Unix account for a directory user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

/// The fields of a `passwd` line.
fn passwd_entries(text: &str) -> Vec<(String, u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then(|| (f[0].to_owned(), f[2].parse().ok(), f[3].parse().ok()))
        })
        .filter_map(|(n, u, g)| Some((n, u?, g?)))
        .collect()
}

fn group_entries(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3).then(|| f[2].parse().ok().map(|g| (f[0].to_owned(), g)))?
        })
        .collect()
}

/// The uid of account `name` in `etc/passwd`, if it has one.
pub fn uid_of(etc: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(etc.join("passwd")).ok()?;
    passwd_entries(&text).into_iter().find(|(n, _, _)| n == name).map(|(_, uid, _)| uid)
}

/// A system account of the image's own (in `etc/passwd`), e.g. the desktop shell's.
pub fn system_account(etc: &Path, name: &str) -> Result<Account, String> {
    let path = etc.join("passwd");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == name)
        .ok_or_else(|| format!("{} has no account {name}", path.display()))?;
    let id =
        |s: &str| s.parse::<u32>().map_err(|_| format!("{name}'s id {s:?} in {}", path.display()));
    let (uid, gid) = (id(line[2])?, id(line[3])?);
    if uid == 0 || uid >= 1000 {
        return Err(format!("{name} in {} is not a system account (uid {uid})", path.display()));
    }
    Ok(Account { name: name.to_owned(), uid, gid, home: line[5].into(), shell: line[6].into() })
}

/// A name for `passwd`'s comment field: no separators or control characters.
fn gecos(display_name: Option<&str>) -> String {
    display_name
        .unwrap_or_default()
        .chars()
        .map(|c| if c == ':' || c == ',' || c == '=' || c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// A uid for a user the directory gives none: the same one on every desktop (a hash of the
/// name), so a home disk kept from an earlier desktop stays theirs.
pub fn stable_uid(username: &str) -> u32 {
    // FNV-1a.
    let mut h: u32 = 0x811c_9dc5;
    for b in username.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    FIRST_UID + h % (LAST_UID - FIRST_UID + 1)
}

/// Appends a line to an account file, replacing it atomically (readers never see half a file);
/// the new file keeps the old one's owner and mode (`/etc/shadow` is `root:shadow 0640` on
/// Debian: its password checker reads it as group `shadow`), `mode` is for a file that was not
/// there. Not flushed to the disk here: the session worker syncs once the sign-in is answered,
/// off the user's wait (ext4 writes a file replaced by a rename before the rename itself).
fn append_line(path: &Path, line: &str, mode: u32) -> io::Result<()> {
    let mut text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    let tmp = path.with_extension("atrium-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let kept = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file());
    let written = f.write_all(text.as_bytes()).and_then(|()| match &kept {
        Some(m) => std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))
            .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))),
        None => Ok(()),
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

unsafe extern "C" {
    /// glibc's lock of the account files (`/etc/.pwd.lock`), which `useradd` and friends take.
    fn lckpwdf() -> libc::c_int;
    fn ulckpwdf() -> libc::c_int;
}

/// The system's lock of its account files, held while they are changed (a `useradd` of the
/// image's own at the same time would lose one of the two lines). Best effort: without it
/// (never on a folder other than `/etc`, as in tests) the change goes on.
struct AccountsLock(bool);

impl AccountsLock {
    fn take(etc: &Path) -> Self {
        // SAFETY: lckpwdf takes no arguments; it waits at most 15 s for the lock.
        Self(etc == Path::new("/etc") && unsafe { lckpwdf() } == 0)
    }
}

impl Drop for AccountsLock {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: releases the lock this process took.
            unsafe { ulckpwdf() };
        }
    }
}

impl Accounts {
    /// The account for `user`, made when missing. Its uid is, in order: the directory's, the
    /// owner of an existing home (a kept home disk), or [`stable_uid`]; its group the
    /// directory's gid, else a group of the user's own with the uid's number.
    pub fn ensure(&self, user: &SessionUser, homes: &Path) -> Result<Account, String> {
        let name = user.username.as_str();
        if name == "." || name == ".." {
            return Err(format!("username {name:?} cannot be a home folder"));
        }
        let passwd_path = self.etc.join("passwd");
        let group_path = self.etc.join("group");
        let _lock = AccountsLock::take(&self.etc);
        let passwd = std::fs::read_to_string(&passwd_path)
            .map_err(|e| format!("{}: {e}", passwd_path.display()))?;
        let users = passwd_entries(&passwd);
        let home = homes.join(name);
        if let Some((_, uid, gid)) = users.iter().find(|(n, _, _)| n == name) {
            if *uid < 1000 {
                return Err(format!("{name:?} is a system account of this desktop"));
            }
            if user.uid.is_some_and(|u| u != *uid) {
                return Err(format!(
                    "{name:?} has uid {uid} in this desktop, not the directory's {}",
                    user.uid.unwrap_or_default()
                ));
            }
            return Ok(Account {
                name: name.to_owned(),
                uid: *uid,
                gid: *gid,
                home,
                shell: "/bin/bash".into(),
            });
        }
        let existing_owner = std::fs::symlink_metadata(&home)
            .ok()
            .filter(|m| m.is_dir() && m.uid() >= 1000)
            .map(|m| (m.uid(), m.gid()));
        let (uid, derived_gid) = match (user.uid, existing_owner) {
            (Some(u), _) => (u, u),
            (None, Some((u, g))) => (u, g),
            (None, None) => {
                let mut u = stable_uid(name);
                while users.iter().any(|(_, taken, _)| *taken == u) {
                    u = if u >= LAST_UID { FIRST_UID } else { u + 1 };
                }
                (u, u)
            }
        };
        if uid < 1000 {
            return Err(format!("uid {uid} is reserved for the desktop's own accounts"));
        }
        if uid >= 65_534 {
            return Err(format!("uid {uid} is nobody's or reserved"));
        }
        if let Some((other, _, _)) = users.iter().find(|(_, u, _)| *u == uid) {
            return Err(format!("uid {uid} belongs to {other:?} in this desktop"));
        }
        let gid = user.gid.unwrap_or(derived_gid);
        // A system group would give the user what it guards (the terminals' `tty`, the panel's
        // launch socket): only `users` (100) of those, as directories often have it.
        if gid < 1000 && gid != USERS_GID {
            return Err(format!("gid {gid} is reserved for the desktop's own groups"));
        }
        let groups = std::fs::read_to_string(&group_path)
            .map_err(|e| format!("{}: {e}", group_path.display()))?;
        let groups = group_entries(&groups);
        if !groups.iter().any(|(_, g)| *g == gid) {
            let group_name = if groups.iter().any(|(n, _)| n == name) {
                format!("g{gid}")
            } else {
                name.to_owned()
            };
            append_line(&group_path, &format!("{group_name}:x:{gid}:"), 0o644)
                .map_err(|e| format!("{}: {e}", group_path.display()))?;
        }
        let shell = "/bin/bash".to_owned();
        let line = format!(
            "{name}:x:{uid}:{gid}:{}:{}:{shell}",
            gecos(user.display_name.as_deref()),
            home.display()
        );
        append_line(&passwd_path, &line, 0o644)
            .map_err(|e| format!("{}: {e}", passwd_path.display()))?;
        let shadow = self.etc.join("shadow");
        append_line(&shadow, &format!("{name}:*:20000:0:99999:7:::"), 0o600)
            .map_err(|e| format!("{}: {e}", shadow.display()))?;
        Ok(Account { name: name.to_owned(), uid, gid, home, shell })
    }
}

/// Makes the user's home when missing (from `skel`), or gives a kept one back to them when
/// their uid changed. Refuses a home that is not a real folder.
pub fn prepare_home(account: &Account, skel: &Path) -> Result<(), String> {
    let home = &account.home;
    match std::fs::symlink_metadata(home) {
        Ok(m) if !m.is_dir() => {
            return Err(format!("{} is not a folder", home.display()));
        }
        Ok(m) => {
            if m.uid() != account.uid || m.gid() != account.gid {
                chown_tree(home, account.uid, account.gid).map_err(|e| {
                    format!("giving {} to uid {}: {e}", home.display(), account.uid)
                })?;
            }
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", home.display())),
    }
    std::fs::create_dir(home).map_err(|e| format!("{}: {e}", home.display()))?;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", home.display()))?;
    if let Ok(entries) = std::fs::read_dir(skel) {
        for entry in entries.flatten() {
            let from = entry.path();
            if std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
                let to = home.join(entry.file_name());
                std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", to.display()))?;
            }
        }
    }
    chown_tree(home, account.uid, account.gid).map_err(|e| format!("{}: {e}", home.display()))
}

/// `chown -R` that never follows a link (`lchown` on each entry).
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_dir() {
            chown_tree(&path, uid, gid)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// Writes a file the user owns, in a folder root made for them (`/run/user/<uid>`).
pub fn write_owned(path: &Path, body: &[u8], uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(body)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
}

/// `/run/user/<uid>`, new for each session: 0700, the user's.
pub fn runtime_dir(root: &Path, account: &Account) -> io::Result<PathBuf> {
    let dir = root.join(account.uid.to_string());
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(root)?;
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::lchown(&dir, Some(account.uid), Some(account.gid))?;
    Ok(dir)
}

/// What the session program gets.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: &'a [&'a str],
    pub account: &'a Account,
    pub user: &'a SessionUser,
    pub display: &'a str,
    pub xauthority: &'a Path,
    pub runtime_dir: &'a Path,
}

/// Starts the session program as the user, in a process group of its own, with a clean
/// environment. Its output goes to the agent's (the serial console).
pub fn spawn(l: &Launch<'_>) -> io::Result<Child> {
    let a = l.account;
    let mut cmd = Command::new(l.program);
    cmd.args(l.args)
        .env_clear()
        .env("HOME", &a.home)
        .env("USER", &a.name)
        .env("LOGNAME", &a.name)
        .env("SHELL", &a.shell)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("DISPLAY", l.display)
        .env("XAUTHORITY", l.xauthority)
        .env("XDG_RUNTIME_DIR", l.runtime_dir)
        .env("ATRIUM_DISPLAY_NAME", l.user.display_name.as_deref().unwrap_or(&a.name))
        .env("ATRIUM_KEYBOARD_LAYOUT", l.user.keyboard_layout.as_deref().unwrap_or_default())
        .current_dir(&a.home)
        .stdin(Stdio::null())
        .process_group(0)
        // Supplementary groups are dropped with the change of uid.
        .gid(a.gid)
        .uid(a.uid);
    cmd.spawn()
}

/// Live processes and their owners (from `/proc`; zombies, already ended, are left out).
fn processes() -> Vec<(i32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(m) = std::fs::metadata(entry.path()) else { continue };
        // `pid (comm) S ...`: the state follows the last parenthesis.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
        if state != Some("Z") {
            out.push((pid, m.uid()));
        }
    }
    out
}

/// The pids of processes owned by `uid`.
pub fn processes_of(uid: u32) -> Vec<i32> {
    processes().into_iter().filter(|(_, u)| *u == uid).map(|(p, _)| p).collect()
}

/// The uids (from 1000) that have processes: users' sessions, in a desktop whose own accounts
/// are all system accounts.
pub fn user_uids() -> Vec<u32> {
    let mut uids: Vec<u32> =
        processes().into_iter().map(|(_, u)| u).filter(|u| (1000..65534).contains(u)).collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Ends every process of `uid`: SIGTERM, then SIGKILL for what is left after `grace`.
pub fn end_processes(uid: u32, grace: Duration) {
    let signal_all = |sig: i32| {
        for pid in processes_of(uid) {
            // SAFETY: kill has no memory-safety preconditions; a pid that has gone in between
            // only makes it fail with ESRCH.
            unsafe { libc::kill(pid, sig) };
        }
    };
    signal_all(libc::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if processes_of(uid).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A process that forks as fast as it is killed: again, until none is left (or 2 s).
    let start = Instant::now();
    while !processes_of(uid).is_empty() && start.elapsed() < Duration::from_secs(2) {
        signal_all(libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Guest memory in use and in total, in MiB (`/proc/meminfo`).
pub fn memory_mib() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok())
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some(((total - available.min(total)) / 1024, total / 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agent-session-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("etc")).expect("mkdir");
        std::fs::create_dir_all(d.join("home")).expect("mkdir");
        std::fs::write(d.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").expect("w");
        std::fs::write(d.join("etc/group"), "root:x:0:\nusers:x:100:\n").expect("w");
        std::fs::write(d.join("etc/shadow"), "root:*:20000:0:99999:7:::\n").expect("w");
        d
    }

    fn user(name: &str, uid: Option<u32>, gid: Option<u32>) -> SessionUser {
        SessionUser {
            username: name.into(),
            display_name: Some("Alice: Example, PhD".into()),
            uid,
            gid,
            keyboard_layout: Some("de".into()),
        }
    }

    #[test]
    fn accounts_take_the_directory_ids_and_are_made_once() {
        let d = temp("ids");
        let accounts = Accounts { etc: d.join("etc") };
        let a =
            accounts.ensure(&user("alice", Some(20001), Some(20002)), &d.join("home")).expect("ok");
        assert_eq!((a.uid, a.gid), (20001, 20002));
        assert_eq!(a.home, d.join("home/alice"));
        let passwd = std::fs::read_to_string(d.join("etc/passwd")).expect("read");
        assert!(
            passwd.contains("alice:x:20001:20002:Alice  Example  PhD:"),
            "separators are removed from the name: {passwd}"
        );
        assert!(
            std::fs::read_to_string(d.join("etc/group")).expect("r").contains("alice:x:20002:")
        );
        assert!(std::fs::read_to_string(d.join("etc/shadow")).expect("r").contains("alice:*:"));
        // Again: the same account, nothing added.
        let again =
            accounts.ensure(&user("alice", Some(20001), None), &d.join("home")).expect("ok");
        assert_eq!(again, a);
        assert_eq!(std::fs::read_to_string(d.join("etc/passwd")).expect("r"), passwd);
        // The directory now says another uid: refused rather than mixing owners.
        assert!(accounts.ensure(&user("alice", Some(3), None), &d.join("home")).is_err());
        // Another user asking for alice's uid.
        assert!(accounts.ensure(&user("mallory", Some(20001), None), &d.join("home")).is_err());
        assert!(accounts.ensure(&user("root", Some(20005), None), &d.join("home")).is_err());
        assert!(accounts.ensure(&user("..", None, None), &d.join("home")).is_err());
        // System groups are the desktop's (tty, the panel's); `users` may be a directory's.
        for gid in [5, 901, 999] {
            assert!(
                accounts
                    .ensure(&user("sysgroup", Some(20007), Some(gid)), &d.join("home"))
                    .is_err()
            );
        }
        let u = accounts.ensure(&user("usersgroup", Some(20008), Some(100)), &d.join("home"));
        assert_eq!(u.map(|a| a.gid), Ok(100));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn account_files_keep_their_owner_and_mode_and_nobody_is_refused() {
        let d = temp("modes");
        let accounts = Accounts { etc: d.join("etc") };
        let shadow = d.join("etc/shadow");
        std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let gid = std::fs::metadata(&shadow).expect("stat").gid();
        accounts.ensure(&user("alice", Some(20_001), None), &d.join("home")).expect("made");
        let meta = std::fs::metadata(&shadow).expect("stat");
        assert_eq!(
            (meta.mode() & 0o7777, meta.gid()),
            (0o640, gid),
            "shadow's mode or group changed"
        );
        assert!(std::fs::read_to_string(&shadow).expect("read").contains("alice:*:"));
        let nobody = accounts.ensure(&user("nobody2", Some(65_534), None), &d.join("home"));
        assert!(nobody.is_err(), "uid 65534 was given: {nobody:?}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn users_without_directory_ids_get_stable_ones_or_their_homes_owner() {
        let d = temp("stable");
        let accounts = Accounts { etc: d.join("etc") };
        let b = accounts.ensure(&user("bob", None, None), &d.join("home")).expect("ok");
        assert_eq!((b.uid, b.gid), (stable_uid("bob"), stable_uid("bob")));
        assert!((FIRST_UID..=LAST_UID).contains(&b.uid));
        assert_ne!(stable_uid("bob"), stable_uid("carol"));
        // A kept home disk: its owner's uid wins over the hash.
        let home = d.join("home/carol");
        std::fs::create_dir_all(&home).expect("mkdir");
        std::os::unix::fs::chown(&home, Some(31000), Some(31001))
            .expect("chown (tests run as root)");
        let c = accounts.ensure(&user("carol", None, None), &d.join("home")).expect("ok");
        assert_eq!((c.uid, c.gid), (31000, 31001));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn homes_are_made_from_skel_and_given_back_without_following_links() {
        let d = temp("home");
        std::fs::create_dir_all(d.join("skel")).expect("mkdir");
        std::fs::write(d.join("skel/.bashrc"), "PS1='x'\n").expect("w");
        let a = Account {
            name: "alice".into(),
            uid: 20001,
            gid: 20001,
            home: d.join("home/alice"),
            shell: "/bin/bash".into(),
        };
        prepare_home(&a, &d.join("skel")).expect("made");
        let m = std::fs::metadata(&a.home).expect("stat");
        assert_eq!((m.uid(), m.mode() & 0o777), (20001, 0o700));
        assert_eq!(std::fs::metadata(a.home.join(".bashrc")).expect("stat").uid(), 20001);
        // A file outside, linked from the home: a later chown must not reach it.
        std::fs::write(d.join("outside"), "root's").expect("w");
        std::os::unix::fs::symlink(d.join("outside"), a.home.join("link")).expect("ln");
        let moved = Account { uid: 20002, gid: 20002, ..a.clone() };
        prepare_home(&moved, &d.join("skel")).expect("given back");
        assert_eq!(std::fs::metadata(a.home.join(".bashrc")).expect("stat").uid(), 20002);
        assert_eq!(std::fs::metadata(d.join("outside")).expect("stat").uid(), 0);
        // Not a folder.
        std::fs::write(d.join("home/file"), "x").expect("w");
        let bad = Account { home: d.join("home/file"), ..a };
        assert!(prepare_home(&bad, &d.join("skel")).is_err());
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn runtime_dirs_are_new_and_private() {
        let d = temp("run");
        let a = Account {
            name: "alice".into(),
            uid: 20001,
            gid: 20001,
            home: d.join("home/alice"),
            shell: "/bin/bash".into(),
        };
        let dir = runtime_dir(&d.join("run/user"), &a).expect("made");
        std::fs::write(dir.join("old"), "x").expect("w");
        let dir = runtime_dir(&d.join("run/user"), &a).expect("made again");
        assert!(!dir.join("old").exists());
        let m = std::fs::metadata(&dir).expect("stat");
        assert_eq!((m.uid(), m.mode() & 0o777), (20001, 0o700));
        write_owned(&dir.join("Xauthority"), b"cookie", 20001, 20001, 0o600).expect("write");
        assert_eq!(std::fs::metadata(dir.join("Xauthority")).expect("stat").uid(), 20001);
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn sessions_run_as_the_user_and_end_with_their_processes() {
        let d = temp("spawn");
        let a = Account {
            name: "alice".into(),
            uid: 20011,
            gid: 20011,
            home: d.clone(),
            shell: "/bin/sh".into(),
        };
        let script = d.join("session");
        // Written aside and renamed: the file appears only with its content.
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"$(id -u) $1\" > \"$XDG_RUNTIME_DIR/uid.new\"\nmv \"$XDG_RUNTIME_DIR/uid.new\" \"$XDG_RUNTIME_DIR/uid\"\nexec sleep 60\n",
        )
        .expect("w");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let run = d.join("run");
        std::fs::create_dir_all(&run).expect("mkdir");
        std::os::unix::fs::chown(&run, Some(20011), Some(20011)).expect("chown");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let u = user("alice", Some(20011), Some(20011));
        let mut child = spawn(&Launch {
            program: &script,
            args: &["start"],
            account: &a,
            user: &u,
            display: ":0",
            xauthority: &run.join("Xauthority"),
            runtime_dir: &run,
        })
        .expect("spawn");
        let start = Instant::now();
        while !run.join("uid").exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(run.join("uid")).expect("ran").trim(), "20011 start");
        assert!(!processes_of(20011).is_empty());
        end_processes(20011, Duration::from_secs(2));
        let _ = child.wait();
        assert!(processes_of(20011).is_empty(), "the user's processes survived");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn system_accounts_are_read_and_must_be_system_accounts() {
        let d = temp("system");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(
            d.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\natrium-shell:x:901:901:Panel:/run/user/901:/bin/false\n\
             alice:x:20001:20001:Alice:/home/alice:/bin/bash\nbroken:x:9x:1::/:/bin/false\n",
        )
        .expect("w");
        let a = system_account(&d, "atrium-shell").expect("the shell's account");
        assert_eq!((a.uid, a.gid, a.home.as_path()), (901, 901, Path::new("/run/user/901")));
        for refused in ["root", "alice", "broken", "nobody"] {
            assert!(system_account(&d, refused).is_err(), "{refused} was taken");
        }
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn memory_is_read() {
        let (used, total) = memory_mib().expect("meminfo");
        assert!(total > 0 && used <= total);
    }
}
