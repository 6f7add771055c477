//! The Linux console's virtual terminals, as `--login-tty` uses them ([`crate::login_session`]):
//! opened without becoming the agent's, written without waiting, hung up and given back to
//! root between sessions, brought to the screen, and the console's keyboard layout (console-
//! setup's `ckbcomp` and kbd's `loadkeys`, as a Debian install has).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::log;
use crate::options::vt_number;

/// `ioctl`s of the Linux console (`linux/vt.h`, `asm-generic/ioctls.h`).
const VT_ACTIVATE: libc::c_ulong = 0x5606;
const TIOCVHANGUP: libc::c_ulong = 0x5437;

/// The terminal, opened without becoming the agent's controlling terminal.
pub(crate) fn open_tty(tty: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(tty)
}

/// Writes to the terminal without waiting: a terminal stopped (Ctrl-S, Scroll Lock) takes
/// nothing, and what it does not take is dropped rather than blocking the session worker.
pub(crate) fn write_tty(tty: &Path, text: &str) -> io::Result<()> {
    let mut f =
        OpenOptions::new().write(true).custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK).open(tty)?;
    match f.write_all(text.as_bytes()) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

/// The terminal back to root before and after a session (as a getty does): hung up, so
/// nothing of the user before holds it; its owner root and mode 0600, so nothing of theirs
/// opens it again to read the next user's keys; its output started again if it was stopped.
pub(crate) fn take_back(tty: &Path) -> io::Result<()> {
    hang_up(tty)?;
    std::os::unix::fs::chown(tty, Some(0), None)?;
    std::fs::set_permissions(tty, std::fs::Permissions::from_mode(0o600))?;
    let f = open_tty(tty)?;
    // SAFETY: TCXONC with TCOON on a descriptor the agent owns.
    unsafe { libc::ioctl(f.as_raw_fd(), libc::TCXONC, libc::TCOON) };
    Ok(())
}

/// `vhangup` for a terminal the agent does not control: whatever holds it loses it.
fn hang_up(tty: &Path) -> io::Result<()> {
    let f = open_tty(tty)?;
    // SAFETY: an ioctl without argument on a descriptor the agent owns.
    if unsafe { libc::ioctl(f.as_raw_fd(), TIOCVHANGUP, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings the virtual terminal to the screen (what `chvt` does).
pub(crate) fn activate(tty: &Path) -> io::Result<()> {
    let n = vt_number(tty).ok_or_else(|| io::Error::other("not a virtual terminal"))?;
    let f = open_tty(tty)?;
    // SAFETY: VT_ACTIVATE takes the terminal's number by value.
    if unsafe { libc::ioctl(f.as_raw_fd(), VT_ACTIVATE, libc::c_ulong::from(n)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `program args...` (found on the system's paths, with a clean environment): its
/// output, or why it failed (with what it said).
fn run_tool(program: &str, args: &[&str], stdin: Option<File>) -> Result<Vec<u8>, String> {
    let path = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("the image has no {program}"))?;
    let mut cmd = Command::new(&path);
    cmd.args(args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    match stdin {
        Some(input) => cmd.stdin(input),
        None => cmd.stdin(std::process::Stdio::null()),
    };
    let out = cmd.output().map_err(|e| format!("{}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// The console's keyboard layout for an XKB layout name (`de`, `fr(azerty)`): compiled by
/// console-setup's `ckbcomp` and loaded by kbd's `loadkeys`, as `setupcon` does.
pub(crate) fn set_layout(tty: &Path, layout: &str) -> Result<(), String> {
    let args = ckbcomp_args(layout)?;
    let keymap = run_tool("ckbcomp", &args, None)?;
    if keymap.is_empty() {
        return Err(format!("ckbcomp made no keymap of {layout}"));
    }
    let file = tempfile_with(&keymap).map_err(|e| format!("the keymap: {e}"))?;
    run_tool("loadkeys", &["-q", "-C", &tty.to_string_lossy()], Some(file)).map(drop)
}

/// `ckbcomp`'s arguments for an XKB layout name: the layout, and its variant if any.
fn ckbcomp_args(layout: &str) -> Result<Vec<&str>, String> {
    let (name, variant) = match layout.split_once('(') {
        Some((n, v)) => (n, v.strip_suffix(')').ok_or_else(|| format!("{layout:?}: no ')'"))?),
        None => (layout, ""),
    };
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !word(name) || !(variant.is_empty() || word(variant)) {
        return Err(format!("{layout:?} is not a layout name"));
    }
    let mut args = vec![name];
    if !variant.is_empty() {
        args.push(variant);
    }
    Ok(args)
}

/// The image's own layout again (console-setup's `setupcon`; else kbd's default keymap).
pub(crate) fn restore_layout(tty: &Path) -> Result<(), String> {
    match run_tool("setupcon", &["-k", "--force"], None) {
        Ok(_) => Ok(()),
        Err(e) => {
            log(&format!("{e}; loading the default keymap"));
            run_tool("loadkeys", &["-q", "-C", &tty.to_string_lossy(), "-d"], None).map(drop)
        }
    }
}

/// An unnamed file holding `bytes`, read from its start (a program's standard input).
fn tempfile_with(bytes: &[u8]) -> io::Result<File> {
    use std::io::{Seek, SeekFrom};
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open("/run")?;
    f.write_all(bytes)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_become_ckbcomp_arguments() {
        assert_eq!(ckbcomp_args("de"), Ok(vec!["de"]));
        assert_eq!(ckbcomp_args("fr(azerty)"), Ok(vec!["fr", "azerty"]));
        assert_eq!(ckbcomp_args("de(nodeadkeys)"), Ok(vec!["de", "nodeadkeys"]));
        for bad in ["-x", "de(-x)", "de(", "(x)", "de()x", "de(x)(y)", "", "a+b"] {
            assert!(ckbcomp_args(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn a_keymap_file_reads_from_its_start() {
        use std::io::Read;
        let mut f = tempfile_with(b"keymaps 0-127\n").expect("a file in /run");
        let mut text = String::new();
        f.read_to_string(&mut text).expect("read");
        assert_eq!(text, "keymaps 0-127\n");
    }
}
