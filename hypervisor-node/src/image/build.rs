//! `atrium-node image build`: makes an image directory from Debian packages.
//!
//! The `console` kind: Debian's current `linux-image-*-amd64` kernel, `busybox-static`, the
//! kernel modules the console needs (loaded in dependency order), the guest agent, and an empty
//! ext4 home disk. Its screen is the framebuffer console (QEMU's VGA + the `bochs` DRM driver)
//! with a shell for an unprivileged user. The `desktop` kind ([`super::desktop`]): the same
//! kernel and initramfs, which mount a graphical root file system made from a whole dependency
//! closure of Debian packages. Packages come only through apt (`apt-get download`, checked
//! against the archive's SHA-256, cached) and are unpacked with `dpkg -x`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::cpio::{CpioWriter, Meta};
use super::debs::{self, DebError, Package};
use super::modules::{ModuleError, ModuleTree};
use super::{
    AgentRecord, Boot, BootSpec, DiskFormat, DiskSpec, FileRecord, HomeDiskSpec, Image, ImageError,
    MANIFEST_FILE, MANIFEST_FORMAT, Manifest, PackageRecord, desktop, elf,
};

/// Bump when the builder makes different images from the same inputs.
pub const BUILDER_VERSION: u32 = 2;

/// The console's kernel command line: fbcon on tty1 for the screen, the serial port for the
/// node's console log (and `/dev/console`), and a VM that stops rather than reboots on panic.
pub const CONSOLE_CMDLINE: &str = "console=tty1 console=ttyS0,115200 quiet loglevel=3 panic=-1";

/// Modules the guests need (console and desktop); their dependencies are found by the builder.
const CONSOLE_MODULES: &[&str] = &[
    "bochs",          // QEMU VGA -> DRM -> fbdev -> fbcon at the VM's display size
    "virtio_pci",     // virtio devices on PCI
    "virtio_mmio",    // virtio devices of the builtin VMM (described in its ACPI tables)
    "virtio_console", // the agent's virtio-serial port
    "virtio_blk",     // the home disk
    "virtio_input",   // the absolute pointer (virtio tablet)
    "evdev",          // input events (acpid reads the power button)
    "button",         // ACPI power button: graceful stop
    "crc32c_generic", // ext4 metadata checksums (a softdep the builder cannot resolve by name)
    "ext4",
];

/// The modules an image of this kind loads.
fn modules(kind: ImageKind) -> Vec<&'static str> {
    let mut m = CONSOLE_MODULES.to_vec();
    if kind == ImageKind::Desktop {
        m.extend(desktop::MODULES);
    }
    m
}

const CONSOLE_FILES: &[(&str, &str, u32)] = &[
    ("init", include_str!("console/init"), 0o755),
    ("sbin/console-shell", include_str!("console/console-shell"), 0o755),
    ("etc/inittab", include_str!("console/inittab"), 0o644),
    ("etc/profile", include_str!("console/profile"), 0o644),
    ("etc/motd", include_str!("console/motd"), 0o644),
    ("etc/passwd", include_str!("console/passwd"), 0o644),
    ("etc/group", include_str!("console/group"), 0o644),
    ("etc/shadow", include_str!("console/shadow"), 0o600),
    ("etc/acpi/PWRF/00000080", include_str!("console/acpi-power"), 0o755),
    ("etc/hostname", "atrium\n", 0o644),
];

const CONSOLE_DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("etc/acpi", 0o755),
    ("etc/acpi/PWRF", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("lib", 0o755),
    ("lib/modules", 0o755),
    ("var", 0o755),
    ("var/log", 0o755),
    ("mnt", 0o755),
];

/// The console user (see `console/passwd`).
const USER_UID: u32 = 1000;
const HOME_DISK_MIB: u64 = 64;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the guest agent {path}: {message}")]
    Agent { path: PathBuf, message: String },
    #[error("{0}")]
    Package(String),
    #[error("{what} failed: {message}")]
    Tool { what: String, message: String },
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_path_buf(), source }
}

/// Kinds of image this builder makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageKind {
    /// Kernel, busybox and the guest agent: a framebuffer console with a shell (for tests).
    Console,
    /// A graphical desktop (X, a panel, a terminal, a file manager, an editor) with single
    /// sign-on: the guest agent starts the session as the signed-in user.
    Desktop,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Desktop => "desktop",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub kind: ImageKind,
    /// Image name (default: the kind).
    pub name: Option<String>,
    /// Image version (default: `YYYYMMDD-<content key>`).
    pub version: Option<String>,
    pub out: PathBuf,
    pub agent: PathBuf,
    /// Where downloaded `.deb` files are kept (`~/.cache/atrium/debs`).
    pub cache_dir: PathBuf,
    pub force: bool,
}

/// Everything an image is made from, resolved but not yet fetched.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: ImageKind,
    pub kernel: Package,
    /// The kernel and busybox-static (the initramfs), then the root's packages.
    pub packages: Vec<Package>,
    /// The desktop's root file system (empty for the console).
    pub root: Vec<Package>,
    pub agent: Vec<u8>,
    pub agent_sha256: String,
    pub agent_static: bool,
    /// Hash of all of the above and of the builder itself.
    pub key: String,
}

/// Resolves the packages with apt (running `apt-get update` first when the lists are missing).
pub fn plan(kind: ImageKind, agent_path: &Path) -> Result<Plan, BuildError> {
    let agent = std::fs::read(agent_path).map_err(|e| BuildError::Agent {
        path: agent_path.into(),
        message: format!(
            "{e} (build it with scripts/lib/images.sh or `cargo build -p atrium-guest-agent`)"
        ),
    })?;
    let agent_static = !elf::has_interpreter(&agent)
        .map_err(|e| BuildError::Agent { path: agent_path.into(), message: e.to_string() })?;
    let agent_sha256 = debs::hex(&Sha256::digest(&agent));

    debs::ensure_lists(Path::new("/var/lib/apt/lists"))?;
    let meta = debs::resolve("linux-image-amd64")?;
    let kernel = debs::resolve(&debs::kernel_package_of(&meta)?)?;
    let mut packages = vec![kernel.clone(), debs::resolve("busybox-static")?];
    let root = match kind {
        ImageKind::Console => {
            if !agent_static {
                // A dynamically linked agent brings Debian's C library and unwinder with it.
                packages.push(debs::resolve("libc6")?);
                packages.push(debs::resolve("libgcc-s1")?);
            }
            Vec::new()
        }
        // The root has Debian's C library, for a dynamically linked agent too.
        ImageKind::Desktop => desktop::root_packages()?,
    };

    let mut h = Sha256::new();
    h.update(format!("atrium-image-builder {BUILDER_VERSION}\nkind {}\n", kind.as_str()));
    h.update(format!("agent {agent_sha256}\n"));
    for p in packages.iter().chain(&root) {
        h.update(format!("package {} {} {}\n", p.name, p.version, p.sha256));
    }
    for m in modules(kind) {
        h.update(format!("module {m}\n"));
    }
    match kind {
        ImageKind::Console => {
            h.update(format!("cmdline {CONSOLE_CMDLINE}\nhome {HOME_DISK_MIB}\n"));
            for (path, body, mode) in CONSOLE_FILES {
                h.update(format!("file {path} {mode:o} {}\n", body.len()));
                h.update(body.as_bytes());
            }
        }
        ImageKind::Desktop => h.update(desktop::key_material()),
    }
    let key = debs::hex(&h.finalize())[..16].to_owned();
    Ok(Plan { kind, kernel, packages, root, agent, agent_sha256, agent_static, key })
}

/// Builds the image into `opts.out` (written beside it first, then renamed into place).
pub fn build(opts: &BuildOptions, progress: &ProgressBar) -> Result<Image, BuildError> {
    let step = |msg: String| report(progress, msg);
    if opts.out.exists() && !opts.force {
        return Err(BuildError::Exists(opts.out.clone()));
    }
    if opts.kind == ImageKind::Desktop {
        desktop::check_privileges()?;
    }
    step("resolving packages with apt".into());
    let plan = plan(opts.kind, &opts.agent)?;
    // Steps: plan, each download, each unpack, modules, initramfs, root, disk, manifest.
    let packages = plan.packages.len() + plan.root.len();
    progress.set_length(u64::try_from(5 + 2 * packages).expect("few steps"));
    progress.inc(1);

    let name = opts.name.clone().unwrap_or_else(|| opts.kind.as_str().to_owned());
    let version = opts.version.clone().unwrap_or_else(|| format!("{}-{}", today(), &plan.key[..8]));
    for (field, v) in [("name", &name), ("version", &version)] {
        atrium_protocol::node::validate_name(field, v, 64)
            .map_err(|e| BuildError::Invalid(format!("image {e}")))?;
    }

    let parent = opts.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let file_name = opts.out.file_name().ok_or_else(|| {
        BuildError::Invalid(format!("--out {} has no folder name", opts.out.display()))
    })?;
    let staging =
        parent.join(format!(".{}.partial-{}", file_name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = build_in(opts, &plan, &name, &version, &staging, progress);
    let unpack = staging.join("unpack");
    let _ = std::fs::remove_dir_all(&unpack);
    match result {
        Ok(()) => {
            if opts.out.exists() {
                std::fs::remove_dir_all(&opts.out).map_err(io_err(&opts.out))?;
            }
            std::fs::rename(&staging, &opts.out).map_err(io_err(&opts.out))?;
            progress.inc(1);
            Ok(Image::load(&opts.out, false)?)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn build_in(
    opts: &BuildOptions,
    plan: &Plan,
    name: &str,
    version: &str,
    out: &Path,
    progress: &ProgressBar,
) -> Result<(), BuildError> {
    let step = |msg: String| report(progress, msg);
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let unpack = out.join("unpack");
    let mut debs = Vec::new();
    for p in plan.packages.iter().chain(&plan.root) {
        step(format!("downloading {} {}", p.name, p.version));
        debs.push(debs::download(p, &opts.cache_dir)?);
        progress.inc(1);
    }
    for (p, deb) in plan.packages.iter().zip(&debs) {
        step(format!("unpacking {}", p.name));
        debs::unpack(deb, &unpack.join(&p.name))?;
        progress.inc(1);
    }
    // The desktop's root: every package into one tree.
    let root_tree = unpack.join("root");
    for (p, deb) in plan.root.iter().zip(&debs[plan.packages.len()..]) {
        step(format!("unpacking {} into the root", p.name));
        debs::unpack(deb, &root_tree)?;
        progress.inc(1);
    }

    step("resolving kernel modules".into());
    let kernel_root = unpack.join(&plan.kernel.name);
    let vmlinuz = single_entry(&kernel_root.join("boot"), "vmlinuz-")?;
    let modules_dir = single_entry(&kernel_root.join("lib/modules"), "")?;
    let tree = ModuleTree::scan(&modules_dir)?;
    let order = tree.load_order(&modules(plan.kind))?;
    progress.inc(1);

    step(format!("writing the initramfs ({} modules)", order.len()));
    let initrd_path = out.join("initrd.img");
    let busybox_root = unpack.join("busybox-static");
    let image_id = format!("name={name}\nversion={version}\ncontent_key={}\n", plan.key);
    let contents = match plan.kind {
        ImageKind::Console => console_initramfs(plan, &unpack)?,
        ImageKind::Desktop => Initramfs {
            dirs: desktop::INITRAMFS_DIRS,
            files: desktop::INITRAMFS_FILES
                .iter()
                .map(|(p, body, mode)| ((*p).to_owned(), body.as_bytes().to_vec(), *mode))
                .collect(),
            links: vec![("bin/sh".to_owned(), "busybox".to_owned())],
            home_user: false,
        },
    };
    write_initramfs(&initrd_path, contents, &busybox_root, &order, &image_id)?;
    progress.inc(1);

    let (disk, home_disk, min_memory_mib, disk_file) = match plan.kind {
        ImageKind::Console => {
            step("making the home disk".into());
            let disk_path = out.join("home.raw");
            make_home_disk(&disk_path)?;
            progress.inc(1);
            let disk = DiskSpec {
                file: "home.raw".into(),
                format: DiskFormat::Raw,
                size_mib: HOME_DISK_MIB,
                purpose: "home".into(),
            };
            (disk, None, 192, "home.raw")
        }
        ImageKind::Desktop => {
            step("preparing the root file system".into());
            desktop::finish_root(&root_tree, &plan.agent, &image_id)?;
            progress.inc(1);
            step("making the root disk".into());
            let size_mib = desktop::make_root_disk(&root_tree, &out.join("root.img"))?;
            let disk = DiskSpec {
                file: "root.img".into(),
                format: DiskFormat::Raw,
                size_mib,
                purpose: "root".into(),
            };
            let home = HomeDiskSpec { size_mib: desktop::HOME_DISK_MIB };
            (disk, Some(home), desktop::MIN_MEMORY_MIB, "root.img")
        }
    };
    std::fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(io_err(&vmlinuz))?;
    std::fs::remove_dir_all(&unpack).map_err(io_err(&unpack))?;

    step("writing the manifest".into());
    let mut files = Vec::new();
    for f in ["vmlinuz", "initrd.img", disk_file] {
        let p = out.join(f);
        let size = std::fs::metadata(&p).map_err(io_err(&p))?.len();
        files.push(FileRecord { path: f.into(), size, sha256: debs::sha256_file(&p)? });
    }
    let cmdline = match plan.kind {
        ImageKind::Console => CONSOLE_CMDLINE,
        ImageKind::Desktop => desktop::CMDLINE,
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: name.into(),
        kind: plan.kind.as_str().into(),
        version: version.into(),
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        builder: format!("atrium-node {}, builder {BUILDER_VERSION}", env!("CARGO_PKG_VERSION")),
        content_key: plan.key.clone(),
        boot: Boot::Kernel(BootSpec {
            kernel: "vmlinuz".into(),
            initrd: Some("initrd.img".into()),
            cmdline: cmdline.into(),
        }),
        disk: Some(disk),
        home_disk,
        min_memory_mib,
        agent: Some(AgentRecord {
            sha256: plan.agent_sha256.clone(),
            linking: if plan.agent_static { "static" } else { "dynamic" }.into(),
        }),
        imported: None,
        modules: order.iter().map(|(n, _)| n.clone()).collect(),
        packages: {
            // busybox-static is in both the initramfs and the desktop's root: listed once.
            let mut seen = std::collections::HashSet::new();
            plan.packages
                .iter()
                .chain(&plan.root)
                .filter(|p| seen.insert((p.name.clone(), p.version.clone())))
                .map(|p| PackageRecord {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    sha256: p.sha256.clone(),
                })
                .collect()
        },
        files,
    };
    manifest.validate().map_err(BuildError::Invalid)?;
    let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
    let mpath = out.join(MANIFEST_FILE);
    std::fs::write(&mpath, json).map_err(io_err(&mpath))?;
    progress.inc(1);
    Ok(())
}

/// A step: on the progress bar when it is drawn (a terminal), else in the log.
fn report(progress: &ProgressBar, msg: String) {
    if progress.is_hidden() {
        tracing::info!("{msg}");
    }
    progress.set_message(msg);
}

/// The one entry of `dir` whose name starts with `prefix`.
fn single_entry(dir: &Path, prefix: &str) -> Result<PathBuf, BuildError> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(BuildError::Package(format!(
            "expected one {prefix}* in {}, found {}",
            dir.display(),
            found.len()
        ))),
    }
}

/// Reads `rel` inside an unpacked package, following symbolic links only within `root`
/// (packages use absolute links, which must not lead to the host's own files).
fn read_in_tree(root: &Path, rel: &str) -> Result<Vec<u8>, BuildError> {
    let mut rel = PathBuf::from(rel.trim_start_matches('/'));
    for _ in 0..16 {
        let p = root.join(&rel);
        let meta = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
        if !meta.file_type().is_symlink() {
            return std::fs::read(&p).map_err(io_err(&p));
        }
        let target = std::fs::read_link(&p).map_err(io_err(&p))?;
        rel = if target.is_absolute() {
            target.strip_prefix("/").expect("absolute").to_path_buf()
        } else {
            rel.parent().unwrap_or(Path::new("")).join(target)
        };
        if rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            let normal: PathBuf = normalize(&rel);
            rel = normal;
        }
    }
    Err(BuildError::Package(format!("too many symbolic links at {}", root.join(rel).display())))
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// What goes into an initramfs besides busybox, the modules and `/etc/atrium-image`.
struct Initramfs {
    dirs: &'static [(&'static str, u32)],
    files: Vec<(String, Vec<u8>, u32)>,
    links: Vec<(String, String)>,
    /// The console's `/home/user`, owned by its user.
    home_user: bool,
}

/// The console's initramfs: the whole guest (busybox init, the shell, the agent).
fn console_initramfs(plan: &Plan, unpack: &Path) -> Result<Initramfs, BuildError> {
    let mut files: Vec<(String, Vec<u8>, u32)> =
        vec![("sbin/atrium-guest-agent".into(), plan.agent.clone(), 0o755)];
    for (p, body, mode) in CONSOLE_FILES {
        files.push(((*p).into(), body.as_bytes().to_vec(), *mode));
    }
    let mut links = vec![("bin/sh".to_owned(), "busybox".to_owned())];
    if !plan.agent_static {
        let libc = unpack.join("libc6");
        let libgcc = unpack.join("libgcc-s1");
        for lib in ["libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2"] {
            let rel = format!("lib/x86_64-linux-gnu/{lib}");
            files.push((rel.clone(), read_in_tree(&libc, &rel)?, 0o755));
        }
        let rel = "lib/x86_64-linux-gnu/libgcc_s.so.1".to_owned();
        files.push((rel.clone(), read_in_tree(&libgcc, &rel)?, 0o644));
        links.push((
            "lib64/ld-linux-x86-64.so.2".into(),
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
        ));
    }
    Ok(Initramfs { dirs: CONSOLE_DIRS, files, links, home_user: true })
}

fn write_initramfs(
    path: &Path,
    contents: Initramfs,
    busybox_root: &Path,
    modules: &[(String, PathBuf)],
    image_id: &str,
) -> Result<(), BuildError> {
    let Initramfs { dirs, mut files, links, home_user } = contents;
    let busybox = read_in_tree(busybox_root, "bin/busybox")?;
    files.insert(0, ("bin/busybox".into(), busybox, 0o755));
    let load: String = modules.iter().map(|(n, _)| format!("{n}\n")).collect();
    files.push(("etc/modules.load".into(), load.into_bytes(), 0o644));
    files.push(("etc/atrium-image".into(), image_id.as_bytes().to_vec(), 0o644));
    for (n, p) in modules {
        files.push((format!("lib/modules/{n}.ko"), std::fs::read(p).map_err(io_err(p))?, 0o644));
    }
    // Folders for the files (library folders of a dynamic agent), after the fixed ones.
    let mut extra_dirs: Vec<String> = Vec::new();
    for p in files.iter().map(|f| &f.0).chain(links.iter().map(|l| &l.0)) {
        let mut d = Path::new(p).parent();
        let mut chain = Vec::new();
        while let Some(dir) = d.filter(|d| !d.as_os_str().is_empty()) {
            chain.push(dir.display().to_string());
            d = dir.parent();
        }
        for dir in chain.into_iter().rev() {
            if !dirs.iter().any(|(known, _)| *known == dir) && !extra_dirs.contains(&dir) {
                extra_dirs.push(dir);
            }
        }
    }

    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = CpioWriter::new(std::io::BufWriter::new(file));
    let mut go = || -> std::io::Result<()> {
        for (dir, mode) in dirs {
            w.dir(dir, Meta::root(*mode))?;
        }
        for dir in &extra_dirs {
            w.dir(dir, Meta::root(0o755))?;
        }
        if home_user {
            w.dir("home/user", Meta { mode: 0o755, uid: USER_UID, gid: USER_UID })?;
        }
        w.char_device("dev/console", Meta::root(0o600), 5, 1)?;
        for (p, body, mode) in &files {
            w.file(p, Meta::root(*mode), body)?;
        }
        for (p, target) in &links {
            w.symlink(p, target)?;
        }
        Ok(())
    };
    go().map_err(io_err(path))?;
    use std::io::Write;
    let mut out = w.finish().map_err(io_err(path))?;
    out.flush().map_err(io_err(path))
}

/// An empty ext4 file system whose root (the user's home) belongs to the console user.
fn make_home_disk(path: &Path) -> Result<(), BuildError> {
    run_tool(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "atrium-home", "-E"])
            .arg(format!("root_owner={USER_UID}:{USER_UID}"))
            .arg(path)
            .arg(format!("{HOME_DISK_MIB}M")),
        "mke2fs",
        " (install e2fsprogs)",
    )?;
    Ok(())
}

/// Runs a build tool to its end; its standard output, or an error naming it as `what` with
/// its standard error (`hint` follows the error when it cannot be started at all).
pub(super) fn run_tool(cmd: &mut Command, what: &str, hint: &str) -> Result<Vec<u8>, BuildError> {
    let out = cmd
        .output()
        .map_err(|e| BuildError::Tool { what: what.into(), message: format!("{e}{hint}") })?;
    if !out.status.success() {
        return Err(BuildError::Tool {
            what: what.into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// Today's date as `YYYYMMDD` (UTC).
fn today() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, d) = atrium_protocol::calendar::civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(today().len(), 8);
    }

    #[test]
    fn links_in_packages_stay_inside_the_package() {
        let root = std::env::temp_dir().join(format!("atrium-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("lib/x")).expect("mkdir");
        std::fs::create_dir_all(root.join("lib64")).expect("mkdir");
        std::fs::write(root.join("lib/x/ld.so"), b"loader").expect("w");
        std::os::unix::fs::symlink("/lib/x/ld.so", root.join("lib64/ld.so")).expect("ln");
        std::os::unix::fs::symlink("../lib/x/ld.so", root.join("lib64/rel.so")).expect("ln");
        std::os::unix::fs::symlink("/etc/hostname", root.join("lib64/host")).expect("ln");
        assert_eq!(read_in_tree(&root, "lib64/ld.so").expect("abs"), b"loader");
        assert_eq!(read_in_tree(&root, "/lib64/rel.so").expect("rel"), b"loader");
        // Resolves to <root>/etc/hostname, which does not exist: never the host's file.
        assert!(read_in_tree(&root, "lib64/host").is_err());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn the_console_init_loads_modules_and_starts_busybox_init() {
        let init = CONSOLE_FILES.iter().find(|f| f.0 == "init").expect("init").1;
        assert!(init.starts_with("#!/bin/sh\n"));
        assert!(init.contains("/etc/modules.load"));
        assert!(init.contains("exec /bin/busybox init"));
        let inittab = CONSOLE_FILES.iter().find(|f| f.0 == "etc/inittab").expect("inittab").1;
        assert!(inittab.contains("tty1::respawn:/sbin/console-shell"));
        assert!(inittab.contains("--clipboard-file /home/user/clipboard.txt --user 1000:1000"));
    }
}
