//! Command-line options. The image's init passes them; there is no configuration file.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const USAGE: &str = "usage: atrium-guest-agent [--port DEV] [--wait-file PATH]... \
[--ready-timeout SECS] [--console-tty DEV] [--clipboard-file PATH] [--user UID:GID] \
[--home DIR] \
[--session-file PATH] [--poll-ms MS] [--x-display :N --x-authority FILE \
--session-command PATH --shell-command PATH --panel-template PATH [--homes DIR]] \
[--login-tty /dev/ttyN [--homes DIR]] | --launch NAME";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The agent's port; found by name under `/dev/virtio-ports` or sysfs when absent.
    pub port: Option<PathBuf>,
    /// Files that must all exist before the agent says ready.
    pub wait_files: Vec<PathBuf>,
    /// How long to wait for them before reporting an error (the agent keeps waiting).
    pub ready_timeout: Duration,
    /// The terminal on which the user is greeted.
    pub console_tty: Option<PathBuf>,
    /// The file that stands for the clipboard (console images have no real one).
    pub clipboard_file: Option<PathBuf>,
    /// Owner of the clipboard file; with `home`, the user files are uploaded to.
    pub user: Option<(u32, u32)>,
    /// The home of `user` (an image without sign-in has one user): uploads go to its
    /// `Transfer` folder. The desktop image uses the signed-in user's home instead.
    pub home: Option<PathBuf>,
    /// Where the signed-in user's name is written for the guest's own scripts.
    pub session_file: Option<PathBuf>,
    /// How often the clipboard file is checked.
    pub poll: Duration,
    /// The desktop image's X display (`:0`): sign-in screen, X clipboard, graphical sessions.
    pub x_display: Option<String>,
    /// The X server's cookie (root's).
    pub x_authority: Option<PathBuf>,
    /// The program that runs a signed-in user's session, started as that user.
    pub session_command: Option<PathBuf>,
    /// The desktop's shell (window manager and panel), run before anyone signs in as the
    /// `atrium-shell` account.
    pub shell_command: Option<PathBuf>,
    /// The panel's configuration, with `@NAME@` where the signed-in user's name goes.
    pub panel_template: Option<PathBuf>,
    /// Where users' homes are (`/home`).
    pub homes: PathBuf,
    /// A Linux system with an init of its own (an operator's image with systemd): each
    /// signed-in user gets an account and `login -f` on this virtual terminal, brought to the
    /// screen; their clipboard is `~/clipboard.txt`.
    pub login_tty: Option<PathBuf>,
    /// `--launch NAME`: not an agent but an entry of the panel's menu, asking the running agent
    /// to start a program as the signed-in user.
    pub launch: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            port: None,
            wait_files: Vec::new(),
            ready_timeout: Duration::from_secs(120),
            console_tty: None,
            clipboard_file: None,
            user: None,
            home: None,
            session_file: None,
            poll: Duration::from_millis(250),
            x_display: None,
            x_authority: None,
            session_command: None,
            shell_command: None,
            panel_template: None,
            homes: PathBuf::from("/home"),
            login_tty: None,
            launch: None,
        }
    }
}

impl Options {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut o = Self::default();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--port" => o.port = Some(value()?.into()),
                "--wait-file" => o.wait_files.push(value()?.into()),
                "--ready-timeout" => {
                    o.ready_timeout = Duration::from_secs(number(&flag, &value()?)?);
                }
                "--console-tty" => o.console_tty = Some(value()?.into()),
                "--clipboard-file" => o.clipboard_file = Some(value()?.into()),
                "--session-file" => o.session_file = Some(value()?.into()),
                "--home" => o.home = Some(value()?.into()),
                "--user" => {
                    let v = value()?;
                    let (u, g) =
                        v.split_once(':').ok_or_else(|| format!("--user {v:?} is not UID:GID"))?;
                    let uid = u32::try_from(number(&flag, u)?).map_err(|e| e.to_string())?;
                    let gid = u32::try_from(number(&flag, g)?).map_err(|e| e.to_string())?;
                    if uid == 0 {
                        return Err("--user must not be root".into());
                    }
                    o.user = Some((uid, gid));
                }
                "--poll-ms" => {
                    let ms = number(&flag, &value()?)?;
                    if ms == 0 {
                        return Err("--poll-ms must be positive".into());
                    }
                    o.poll = Duration::from_millis(ms);
                }
                "--x-display" => {
                    let v = value()?;
                    if !v.starts_with(':') || v[1..].split('.').next().is_none_or(str::is_empty) {
                        return Err(format!("--x-display {v:?} is not a local display like :0"));
                    }
                    o.x_display = Some(v);
                }
                "--x-authority" => o.x_authority = Some(value()?.into()),
                "--session-command" => o.session_command = Some(value()?.into()),
                "--shell-command" => o.shell_command = Some(value()?.into()),
                "--panel-template" => o.panel_template = Some(value()?.into()),
                "--homes" => o.homes = value()?.into(),
                "--login-tty" => {
                    let v = value()?;
                    if vt_number(Path::new(&v)).is_none() {
                        return Err(format!(
                            "--login-tty {v:?} is not a virtual terminal like /dev/tty7"
                        ));
                    }
                    o.login_tty = Some(v.into());
                }
                "--launch" => o.launch = Some(value()?),
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if o.launch.is_some() && o != (Options { launch: o.launch.clone(), ..Self::default() }) {
            return Err("--launch NAME goes alone".into());
        }
        let desktop = [
            o.x_display.is_some(),
            o.x_authority.is_some(),
            o.session_command.is_some(),
            o.shell_command.is_some(),
            o.panel_template.is_some(),
        ];
        if desktop.iter().any(|d| *d) && !desktop.iter().all(|d| *d) {
            return Err("--x-display, --x-authority, --session-command, --shell-command and \
                 --panel-template go together (a desktop image)"
                .into());
        }
        if o.home.is_some() && (o.user.is_none() || o.x_display.is_some()) {
            return Err("--home goes with --user, in an image without sign-in".into());
        }
        if o.x_display.is_some() && o.clipboard_file.is_some() {
            return Err("--clipboard-file is for images without X; the desktop has X's".into());
        }
        if o.login_tty.is_some()
            && (o.x_display.is_some()
                || o.user.is_some()
                || o.clipboard_file.is_some()
                || o.console_tty.is_some())
        {
            return Err("--login-tty signs each user in on their own: it goes without \
                 --x-display, --user, --home, --clipboard-file and --console-tty"
                .into());
        }
        Ok(o)
    }
}

/// The number N of a virtual terminal `/dev/ttyN` (1 to 63).
pub fn vt_number(path: &Path) -> Option<u16> {
    let n = path.to_str()?.strip_prefix("/dev/tty")?;
    if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|n| (1..=63).contains(n))
}

fn number(flag: &str, v: &str) -> Result<u64, String> {
    v.parse().map_err(|_| format!("{flag}: {v:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_the_console_image_command_line() {
        let o = parse(&[
            "--wait-file",
            "/sys/class/graphics/fb0",
            "--wait-file",
            "/run/atrium/console-up",
            "--console-tty",
            "/dev/tty1",
            "--clipboard-file",
            "/home/user/clipboard.txt",
            "--user",
            "1000:1000",
            "--home",
            "/home/user",
            "--poll-ms",
            "100",
        ])
        .expect("valid options");
        assert_eq!(o.wait_files.len(), 2);
        assert_eq!(o.user, Some((1000, 1000)));
        assert_eq!(o.home, Some(PathBuf::from("/home/user")));
        assert_eq!(o.poll, Duration::from_millis(100));
        assert_eq!(o.port, None);
    }

    #[test]
    fn parses_the_desktop_image_command_line() {
        let o = parse(&[
            "--x-display",
            ":0",
            "--x-authority",
            "/run/atrium/xauth",
            "--session-command",
            "/usr/lib/atrium/session",
            "--shell-command",
            "/usr/lib/atrium/shell",
            "--panel-template",
            "/etc/atrium/jwmrc.in",
            "--homes",
            "/home",
            "--session-file",
            "/run/atrium/session",
        ])
        .expect("valid options");
        assert_eq!(o.x_display.as_deref(), Some(":0"));
        assert_eq!(o.session_command, Some(PathBuf::from("/usr/lib/atrium/session")));
        assert_eq!(o.shell_command, Some(PathBuf::from("/usr/lib/atrium/shell")));
        assert_eq!(o.panel_template, Some(PathBuf::from("/etc/atrium/jwmrc.in")));
        assert_eq!(o.launch, None);
    }

    #[test]
    fn parses_the_unit_file_of_an_operators_image() {
        let unit = include_str!("../atrium-guest-agent.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit file has an ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/sbin/atrium-guest-agent"));
        let o = Options::parse(words.map(str::to_owned)).expect("the unit's options are valid");
        assert_eq!(o.login_tty, Some(PathBuf::from("/dev/tty7")));
        assert_eq!(o.session_file, Some(PathBuf::from("/run/atrium/session")));
        assert_eq!(o.homes, PathBuf::from("/home"));
        assert!(o.clipboard_file.is_none() && o.x_display.is_none() && o.user.is_none());
    }

    #[test]
    fn knows_virtual_terminals() {
        assert_eq!(vt_number(Path::new("/dev/tty7")), Some(7));
        assert_eq!(vt_number(Path::new("/dev/tty63")), Some(63));
        for bad in [
            "/dev/tty0",
            "/dev/tty64",
            "/dev/tty07",
            "/dev/ttyS0",
            "/dev/tty",
            "tty7",
            "/dev/tty+7",
        ] {
            assert_eq!(vt_number(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn parses_a_launch_from_the_panel() {
        let o = parse(&["--launch", "terminal"]).expect("valid options");
        assert_eq!(o.launch.as_deref(), Some("terminal"));
        assert!(o.wait_files.is_empty() && o.clipboard_file.is_none());
    }

    #[test]
    fn refuses_bad_options() {
        for bad in [
            &["--user", "0:0"][..],
            &["--user", "1000"],
            &["--user", "a:b"],
            &["--user", "99999999999:1"],
            &["--poll-ms", "0"],
            &["--home", "/home/user"],
            &["--ready-timeout", "soon"],
            &["--port"],
            &["--frobnicate"],
            &["--x-display", "host:0", "--x-authority", "/a", "--session-command", "/s"],
            &["--x-display", ":", "--x-authority", "/a", "--session-command", "/s"],
            &["--x-display", ":0"],
            &["--x-display", ":0", "--x-authority", "/a", "--session-command", "/s"],
            &["--launch", "terminal", "--port", "/dev/vport0p1"],
            &["--login-tty", "/dev/ttyS0"],
            &["--login-tty", "/dev/tty7", "--user", "1000:1000"],
            &["--login-tty", "/dev/tty7", "--clipboard-file", "/c"],
            &["--login-tty", "/dev/tty7", "--console-tty", "/dev/tty1"],
            &["--launch"],
            &[
                "--x-display",
                ":0",
                "--x-authority",
                "/a",
                "--session-command",
                "/s",
                "--shell-command",
                "/sh",
                "--panel-template",
                "/t",
                "--clipboard-file",
                "/c",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
