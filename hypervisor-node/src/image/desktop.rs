//! The `desktop` kind: a graphical Linux desktop from Debian packages.
//!
//! - An initramfs (busybox, the kernel modules, `desktop/initramfs-init`) mounts the root disk
//!   and hands over to it.
//! - The root disk (`root.img`, ext4 made with `mke2fs -d`) holds the closure of
//!   [`ROOT_PACKAGES`] unpacked with `dpkg -x`: Xorg (modesetting on QEMU's VGA), JWM (window
//!   manager and panel), xterm, Xfe (file manager, with its text editor Xfwrite), xclip, DejaVu
//!   fonts, GStreamer's player (Ogg Theora/Vorbis/Opus video and sound), bash and busybox. It
//!   is the image's read-only base: every VM of a pool shares it, each with a copy-on-write
//!   layer of its own (the node's layer over the base), which goes with the VM.
//! - A user's home is a disk of its own for dedicated desktops (the VM's persistent disk,
//!   formatted by the guest on first use); floating desktops keep it in their layer.
//! - The guest agent shows a "waiting for sign-in" screen, runs the desktop's shell (JWM and its
//!   panel, `desktop/shell`) as the `atrium-shell` account behind it, says ready once both are
//!   up, puts each signed-in user's name on the panel and starts their programs as that user
//!   (`desktop/session`).
//!
//! No maintainer scripts run (`dpkg -x`), so what they would do is done here: accounts (the agent
//! adds users), the font cache (the image's own `fc-cache`, run with `--sysroot`), and links for
//! busybox's programs. Packages only maintainer scripts or absent hardware need are left out
//! ([`EXCLUDED`]); [`check_libraries`] then proves that every program still finds its libraries.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::build::{BuildError, run_tool};
use super::debs::Package;
use super::elf;
use super::resolve::{self, Apt};

/// The packages the root file system is made of (with their dependencies).
pub const ROOT_PACKAGES: &[&str] = &[
    "busybox-static",            // sh, init, and the small tools
    "bash",                      // the users' shell
    "libc-bin",                  // the C.UTF-8 locale (X programs need a UTF-8 locale)
    "ncurses-base",              // terminal descriptions (xterm-256color)
    "xserver-xorg-core",         // Xorg with the modesetting driver
    "xserver-xorg-input-evdev",  // keyboard and absolute pointer
    "xkb-data",                  // keyboard layouts
    "x11-xkb-utils",             // xkbcomp (Xorg runs it) and setxkbmap
    "xauth",                     // the X server's access cookie
    "jwm",                       // window manager and panel
    "xterm",                     // terminal
    "xfe",                       // file manager, and its text editor (xfwrite)
    "xclip",                     // the clipboard from the command line
    "fonts-dejavu-core",         // readable fonts
    "e2fsprogs",                 // formats a new home disk
    "alsa-utils",                // aplay and speaker-test: sound from the command line
    "gstreamer1.0-tools",        // gst-play-1.0 and gst-launch-1.0: video and sound
    "gstreamer1.0-plugins-base", // Ogg, Theora, Vorbis, Opus; test pictures and tones
    "gstreamer1.0-x",            // video in an X window (ximagesink)
    "gstreamer1.0-alsa",         // sound out through ALSA (alsasink)
];

/// Kernel modules the desktop loads besides the console's: sound on QEMU's Intel HD Audio
/// controller and its output codec. The codec's driver first: the controller finds its codec
/// after `insmod` returns, and there is no modprobe to fetch the driver then.
pub const MODULES: &[&str] = &["snd_hda_codec_generic", "snd_hda_intel"];

/// Packages left out of the root on purpose, with why. A dependency on one of them counts as met.
pub const EXCLUDED: &[(&str, &str)] = &[
    ("debconf", "only maintainer scripts use it (dpkg -x runs none)"),
    ("perl-base", "only maintainer scripts use it"),
    ("dpkg", "packages are unpacked at build time, not installed in the guest"),
    ("tar", "only dpkg needs it"),
    ("passwd", "the guest agent writes the accounts"),
    ("adduser", "the guest agent writes the accounts"),
    ("init-system-helpers", "busybox init starts everything"),
    ("sysvinit-utils", "busybox init starts everything"),
    ("lsb-base", "no init scripts run"),
    ("udev", "no udev daemon runs: X's input devices are configured statically"),
    ("kmod", "the initramfs loads the kernel modules (alsa-utils' scripts would use modprobe)"),
    ("keyboard-configuration", "the keyboard layout comes from the session (setxkbmap)"),
    ("libgl1-mesa-dri", "no 3D: QEMU's VGA has none and X runs without GLX (pulls in LLVM)"),
    ("libglx-mesa0", "no 3D (loads the Mesa drivers above)"),
    ("libegl-mesa0", "no 3D (X's glamor acceleration is off)"),
    ("libegl1", "X's glamor acceleration is off"),
    ("libgbm1", "X's glamor acceleration is off"),
    ("libepoxy0", "X's glamor acceleration is off"),
];

/// Folders of unpacked packages nothing in the guest reads.
const PRUNED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/doc-base",
    "usr/share/gtk-doc",
    "usr/share/menu",
    // JWM's own configuration, which it falls back to when its `-f` file cannot be read: its
    // menu runs programs directly, as the shell's account. The agent writes the only one.
    "etc/jwm",
];

/// The guest's kernel command line: fbcon on tty1 until X takes the screen, the serial port for
/// the node's console log, and a VM that stops rather than reboots on panic.
pub const CMDLINE: &str = "console=tty1 console=ttyS0,115200 quiet loglevel=3 panic=-1";

/// Free space in the root file system beyond its content (the VM's own writes, and the homes of
/// floating desktops).
pub const ROOT_FREE_MIB: u64 = 512;
/// The size of a dedicated user's home disk (a qcow2 file: it grows as it is written).
pub const HOME_DISK_MIB: u64 = 4096;
/// Guest memory below which the desktop does not fit (X, JWM, xterm, page cache).
pub const MIN_MEMORY_MIB: u32 = 384;

/// The initramfs's own files (besides busybox and the modules).
pub const INITRAMFS_FILES: &[(&str, &str, u32)] =
    &[("init", include_str!("desktop/initramfs-init"), 0o755)];

pub const INITRAMFS_DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("newroot", 0o755),
    ("lib", 0o755),
    ("lib/modules", 0o755),
];

/// Atrium's files in the root file system: path, content, mode.
pub const ROOT_FILES: &[(&str, &str, u32)] = &[
    ("etc/inittab", include_str!("desktop/inittab"), 0o644),
    ("etc/passwd", include_str!("desktop/passwd"), 0o644),
    ("etc/group", include_str!("desktop/group"), 0o644),
    ("etc/shadow", include_str!("desktop/shadow"), 0o600),
    ("etc/profile", include_str!("desktop/profile"), 0o644),
    ("etc/hostname", "atrium\n", 0o644),
    ("etc/X11/xorg.conf", include_str!("desktop/xorg.conf"), 0o644),
    ("etc/asound.conf", include_str!("desktop/asound.conf"), 0o644),
    ("etc/atrium/jwmrc.in", include_str!("desktop/jwmrc.in"), 0o644),
    ("etc/atrium/Xresources", include_str!("desktop/Xresources"), 0o644),
    ("etc/acpi/PWRF/00000080", include_str!("desktop/acpi-power"), 0o755),
    ("usr/lib/atrium/sysinit", include_str!("desktop/sysinit"), 0o755),
    ("usr/lib/atrium/xserver", include_str!("desktop/xserver"), 0o755),
    ("usr/lib/atrium/session", include_str!("desktop/session"), 0o755),
    ("usr/lib/atrium/shell", include_str!("desktop/shell"), 0o755),
    ("usr/lib/atrium/shutdown", include_str!("desktop/shutdown"), 0o755),
];

/// Links the root needs that maintainer scripts would make: `/etc/mtab` (e2fsprogs' `mke2fs`
/// refuses to run without it).
const ROOT_LINKS: &[(&str, &str)] = &[("etc/mtab", "/proc/self/mounts")];

/// Folders the root needs that no package makes.
const ROOT_DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("mnt", 0o755),
    ("var/log", 0o755),
    ("var/tmp", 0o1777),
    ("var/lib/xkb", 0o755),
    ("var/cache/fontconfig", 0o755),
    ("etc/atrium", 0o755),
    ("etc/acpi/PWRF", 0o755),
    ("usr/lib/atrium", 0o755),
];

/// Where the dynamic loader looks without a cache (Debian's multiarch folders first).
const LIBRARY_DIRS: &[&str] =
    &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64"];

/// Programs that must start: every file in the usual program folders, and the X modules this
/// image loads (its modesetting and evdev drivers; not glamor, which is off).
const PROGRAM_DIRS: &[&str] = &["bin", "sbin", "usr/bin", "usr/sbin"];
const X_MODULES: &[&str] = &[
    "usr/lib/xorg/Xorg",
    "usr/lib/xorg/modules/drivers/modesetting_drv.so",
    "usr/lib/xorg/modules/input/evdev_drv.so",
    "usr/lib/xorg/modules/libshadow.so",
];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_path_buf(), source }
}

/// The root's packages, resolved with the machine's apt.
pub fn root_packages() -> Result<Vec<Package>, BuildError> {
    let excluded: Vec<&str> = EXCLUDED.iter().map(|(n, _)| *n).collect();
    resolve::closure(&mut Apt, ROOT_PACKAGES, &excluded).map_err(|e| match e {
        resolve::ResolveError::Deb(d) => BuildError::Deb(d),
        other => BuildError::Package(other.to_string()),
    })
}

/// What the content key covers besides the packages: every file and rule of this kind.
pub fn key_material() -> String {
    let mut s = format!("cmdline {CMDLINE}\nroot-free {ROOT_FREE_MIB}\nhome {HOME_DISK_MIB}\n");
    for (n, _) in EXCLUDED {
        s.push_str(&format!("excluded {n}\n"));
    }
    for p in PRUNED {
        s.push_str(&format!("pruned {p}\n"));
    }
    for (path, body, mode) in INITRAMFS_FILES.iter().chain(ROOT_FILES) {
        s.push_str(&format!("file {path} {mode:o} {}\n{body}", body.len()));
    }
    for (path, target) in ROOT_LINKS {
        s.push_str(&format!("link {path} {target}\n"));
    }
    s
}

/// Requires root (or fakeroot): `dpkg -x` and `mke2fs -d` give the root's files their owners
/// (root, and setuid bits) only then; as another user, every file would be that user's.
pub fn check_privileges() -> Result<(), BuildError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BuildError::Invalid(
            "building a desktop image needs root, for the owners of its files: run it as root \
             or under fakeroot (`fakeroot atrium-node image build ...`)"
                .into(),
        ));
    }
    Ok(())
}

/// Prepares the unpacked tree as the guest's root: removes what nothing reads, adds Atrium's
/// files and the guest agent, links busybox's programs, makes the font cache.
pub fn finish_root(root: &Path, agent: &[u8], image_id: &str) -> Result<(), BuildError> {
    for p in PRUNED {
        let dir = root.join(p);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
    }
    for (dir, mode) in ROOT_DIRS {
        make_dir(&root.join(dir), *mode)?;
    }
    for (path, body, mode) in ROOT_FILES {
        write_file(&root.join(path), body.as_bytes(), *mode)?;
    }
    for (path, target) in ROOT_LINKS {
        let path = root.join(path);
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        std::os::unix::fs::symlink(target, &path).map_err(io_err(&path))?;
    }
    write_file(&root.join("sbin/atrium-guest-agent"), agent, 0o755)?;
    write_file(&root.join("etc/atrium-image"), image_id.as_bytes(), 0o644)?;
    link_busybox(root)?;
    font_cache(root)?;
    check_libraries(root)
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io_err(dir))
}

fn write_file(path: &Path, body: &[u8], mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    // A package may have put a link here (its own version of the file): replace it.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    std::fs::write(path, body).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Links each busybox program (`busybox --list-full`) that no package provides to
/// `/bin/busybox`. busybox-static runs on the build machine as it is.
fn link_busybox(root: &Path) -> Result<(), BuildError> {
    let busybox = root.join("bin/busybox");
    let listed = run_tool(
        Command::new(&busybox).arg("--list-full"),
        &format!("{} --list-full", busybox.display()),
        "",
    )?;
    for rel in String::from_utf8_lossy(&listed).lines() {
        let rel = rel.trim().trim_start_matches('/');
        if rel.is_empty() || rel.contains("..") {
            continue;
        }
        let path = root.join(rel);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Runs a program of the unpacked tree with the tree's own loader and libraries (the build
/// machine is x86-64 Linux too), e.g. `fc-cache`.
fn run_in_tree(root: &Path, program: &str, args: &[&str]) -> Result<(), BuildError> {
    let loader = root.join("lib64/ld-linux-x86-64.so.2");
    let libs: Vec<String> =
        LIBRARY_DIRS.iter().map(|d| root.join(d).display().to_string()).collect();
    run_tool(
        Command::new(&loader)
            .arg("--library-path")
            .arg(libs.join(":"))
            .arg(root.join(program))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin"),
        program,
        "",
    )?;
    Ok(())
}

/// fontconfig's cache for the image's fonts, made by the image's own `fc-cache`: without it
/// every program scans the fonts when it starts, which is slow on an emulated CPU.
fn font_cache(root: &Path) -> Result<(), BuildError> {
    let sysroot = root.display().to_string();
    run_in_tree(root, "usr/bin/fc-cache", &["--sysroot", &sysroot, "--system-only", "--force"])?;
    let cache = root.join("var/cache/fontconfig");
    let made = std::fs::read_dir(&cache)
        .map_err(io_err(&cache))?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".cache-8"));
    if !made {
        return Err(BuildError::Tool {
            what: "fc-cache".into(),
            message: format!("no font cache in {}", cache.display()),
        });
    }
    Ok(())
}

/// Resolves `rel` (a path inside the tree) through symbolic links, staying inside the tree.
fn resolve_in_tree(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut rel = rel.to_path_buf();
    for _ in 0..32 {
        let p = root.join(&rel);
        let meta = std::fs::symlink_metadata(&p).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(p);
        }
        let target = std::fs::read_link(&p).ok()?;
        let joined = if target.is_absolute() {
            target
        } else {
            Path::new("/").join(rel.parent().unwrap_or(Path::new(""))).join(target)
        };
        let mut norm = PathBuf::new();
        for c in joined.components() {
            match c {
                std::path::Component::ParentDir => {
                    norm.pop();
                }
                std::path::Component::Normal(n) => norm.push(n),
                _ => {}
            }
        }
        rel = norm;
    }
    None
}

/// Checks that every program of the root, and the X modules it loads, find all their libraries
/// in the tree (as the loader would, without a cache). Names what is missing, and for whom.
pub fn check_libraries(root: &Path) -> Result<(), BuildError> {
    let mut queue: Vec<PathBuf> = Vec::new();
    for dir in PROGRAM_DIRS {
        let d = root.join(dir);
        for e in std::fs::read_dir(&d).map_err(io_err(&d))?.filter_map(Result::ok) {
            queue.push(Path::new(dir).join(e.file_name()));
        }
    }
    queue.extend(X_MODULES.iter().map(PathBuf::from));
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut missing: BTreeSet<String> = BTreeSet::new();
    while let Some(rel) = queue.pop() {
        let Some(path) = resolve_in_tree(root, &rel) else {
            if X_MODULES.iter().any(|m| Path::new(m) == rel) {
                missing.insert(format!("{} (not in the tree)", rel.display()));
            }
            continue;
        };
        if !seen.insert(path.clone()) || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        if !bytes.starts_with(b"\x7fELF") {
            continue;
        }
        let dynamic = elf::dynamic(&bytes).map_err(|e| BuildError::Tool {
            what: "reading programs".into(),
            message: format!("{}: {e}", path.display()),
        })?;
        let origin = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        for lib in &dynamic.needed {
            let dirs = dynamic
                .runpath
                .iter()
                .map(|r| {
                    PathBuf::from(
                        r.replace("$ORIGIN", &format!("/{}", origin.display()))
                            .trim_start_matches('/'),
                    )
                })
                .chain(LIBRARY_DIRS.iter().map(PathBuf::from));
            let found = dirs.map(|d| d.join(lib)).find(|c| resolve_in_tree(root, c).is_some());
            match found {
                Some(c) => queue.push(c),
                None => {
                    missing.insert(format!("{lib} (needed by /{})", rel.display()));
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.into_iter().collect();
    Err(BuildError::Package(format!(
        "programs of the desktop root would not start; missing: {} (is a package in EXCLUDED \
         needed after all?)",
        list.join(", ")
    )))
}

/// Bytes the tree's files take (rounded up to 4 KiB each), for sizing the root disk.
pub fn tree_bytes(root: &Path) -> Result<u64, BuildError> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let e = e.map_err(io_err(&d))?;
            let meta = std::fs::symlink_metadata(e.path()).map_err(io_err(&e.path()))?;
            total += meta.len().div_ceil(4096) * 4096 + 256;
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

/// The root disk: an ext4 file system with the tree's files, sized to them plus
/// [`ROOT_FREE_MIB`], without a journal (each VM's writes are its own and go with it).
/// Returns its size in MiB.
pub fn make_root_disk(root: &Path, out: &Path) -> Result<u64, BuildError> {
    let content_mib = tree_bytes(root)?.div_ceil(1 << 20);
    let size_mib = (content_mib + content_mib / 8 + 64 + ROOT_FREE_MIB).div_ceil(64) * 64;
    run_tool(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "atrium-root", "-m", "1"])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(root)
            .arg(out)
            .arg(format!("{size_mib}M")),
        "mke2fs -d",
        " (install e2fsprogs)",
    )?;
    Ok(size_mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("atrium-desktop-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn the_image_files_fit_together() {
        let file = |p: &str| ROOT_FILES.iter().find(|f| f.0 == p).expect(p).1;
        let inittab = file("etc/inittab");
        for path in
            ["/usr/lib/atrium/sysinit", "/usr/lib/atrium/xserver", "/sbin/atrium-guest-agent"]
        {
            assert!(inittab.contains(path), "inittab does not start {path}");
        }
        assert!(inittab.contains("--session-command /usr/lib/atrium/session"));
        assert!(inittab.contains("--x-authority /run/atrium/xauth"));
        assert!(file("usr/lib/atrium/xserver").contains("-auth /run/atrium/xauth"));
        // X's input devices are the links sysinit makes.
        let sysinit = file("usr/lib/atrium/sysinit");
        let xorg = file("etc/X11/xorg.conf");
        for link in ["/dev/input/atrium-keyboard", "/dev/input/atrium-pointer"] {
            assert!(xorg.contains(link));
            assert!(sysinit.contains(link.rsplit('/').next().expect("name")));
        }
        // The home disk is found by the serial the qemu runtime gives it.
        assert!(sysinit.contains("atrium-home"));
        assert!(INITRAMFS_FILES[0].1.contains("atrium-disk0"));
        assert!(INITRAMFS_FILES[0].1.contains("exec switch_root /newroot /sbin/init"));
        // The shell runs JWM on the configuration the agent writes from the template, as its
        // own system account; the menu's entries are names the session program knows.
        assert!(inittab.contains("--shell-command /usr/lib/atrium/shell"));
        assert!(inittab.contains("--panel-template /etc/atrium/jwmrc.in"));
        assert!(file("usr/lib/atrium/shell").contains("exec jwm -f \"$XDG_RUNTIME_DIR/jwmrc\""));
        assert!(file("etc/passwd").contains("\natrium-shell:x:901:901:"));
        assert!(file("etc/group").contains("\natrium-shell:x:901:"));
        assert!(file("etc/shadow").contains("\natrium-shell:!:"));
        let jwmrc = file("etc/atrium/jwmrc.in");
        assert!(jwmrc.contains("@NAME@") && !jwmrc.contains("StartupCommand"));
        let session = file("usr/lib/atrium/session");
        assert!(session.contains("start)") && session.contains("exec xterm -geometry 90x26"));
        let launches: Vec<&str> = jwmrc
            .split("atrium-guest-agent --launch ")
            .skip(1)
            .map(|r| r.split('<').next().unwrap_or(r))
            .collect();
        assert_eq!(launches, ["terminal", "files", "editor", "terminal"]);
        for name in launches {
            assert!(session.contains(&format!("\t{name}) exec ")), "session cannot run {name}");
        }
        // XML comments hold no "--".
        let comments: Vec<&str> = jwmrc
            .split("<!--")
            .skip(1)
            .map(|c| c.split_once("-->").expect("a comment ends").0)
            .collect();
        assert!(!comments.is_empty() && comments.iter().all(|c| !c.contains("--")), "{comments:?}");
        assert!(PRUNED.contains(&"etc/jwm"), "JWM's fallback configuration stays");
        for (name, why) in EXCLUDED {
            assert!(!ROOT_PACKAGES.contains(name), "{name} is wanted and excluded");
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn libraries_are_found_through_links_and_runpaths_or_reported() {
        let root = temp("libs");
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "lib/x86_64-linux-gnu", "opt/app/lib"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        // This test's own binary stands for a program: it needs libc and the loader.
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        let needed = elf::dynamic(&exe).expect("elf").needed;
        std::fs::write(root.join("usr/bin/prog"), &exe).expect("write");
        std::fs::write(root.join("bin/script"), "#!/bin/sh\n").expect("write");
        let err = check_libraries(&root).expect_err("no libraries in the tree yet");
        assert!(err.to_string().contains("needed by /usr/bin/prog"), "{err}");
        for lib in &needed {
            // Each library as a link to a file, as packages ship them (and not an ELF file, so
            // the check stops there).
            std::fs::write(root.join("opt/app/lib").join(lib), b"lib").expect("write");
            std::os::unix::fs::symlink(
                format!("../../opt/app/lib/{lib}"),
                root.join("lib/x86_64-linux-gnu").join(lib),
            )
            .expect("link");
        }
        let err = check_libraries(&root).expect_err("the X modules are missing");
        assert!(err.to_string().contains("modesetting_drv.so (not in the tree)"), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn links_resolve_inside_the_tree() {
        let root = temp("resolve");
        std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        std::fs::write(root.join("usr/lib/real"), b"x").expect("write");
        std::os::unix::fs::symlink("/usr/lib/real", root.join("usr/lib/abs")).expect("link");
        std::os::unix::fs::symlink("../lib/real", root.join("usr/lib/rel")).expect("link");
        std::os::unix::fs::symlink("/etc/passwd", root.join("usr/lib/host")).expect("link");
        std::os::unix::fs::symlink("loop", root.join("usr/lib/loop")).expect("link");
        assert_eq!(
            resolve_in_tree(&root, Path::new("usr/lib/abs")),
            Some(root.join("usr/lib/real"))
        );
        assert_eq!(
            resolve_in_tree(&root, Path::new("usr/lib/rel")),
            Some(root.join("usr/lib/real"))
        );
        assert_eq!(resolve_in_tree(&root, Path::new("usr/lib/host")), None, "left the tree");
        assert_eq!(resolve_in_tree(&root, Path::new("usr/lib/loop")), None);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
