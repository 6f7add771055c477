//! VM runtimes behind one trait: `qemu` ([`qemu`]: one `qemu-system-x86_64` per VM) and, later,
//! `builtin` (Atrium's rust-vmm monitor, one `atrium-node vmm` process per VM).
//!
//! The trait is runtime-neutral: a [`LaunchConfig`] says what to boot (kernel and initramfs, or
//! firmware; disk, size, display) and where the VM's folder is; a [`VmHandle`] gives the VM's channels
//! ([`Endpoints`]: display, guest agent, serial console, all unix sockets the node connects to)
//! and its controls (resume, screenshot, graceful shutdown, kill, exit). The node does the rest
//! (agent protocol, console log, states, cgroups, API) the same way for every runtime.

pub mod builtin;
pub mod qemu;
pub mod qmp;
pub mod template;

pub use template::{GuestMemory, SealedMemory};

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use atrium_protocol::node::{Accel, DisplayEndpoint, DisplaySize, RuntimeKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;

use crate::cgroup::{CgroupError, VmCgroup};
use crate::image::{Boot, DiskFormat, FirmwareSpec, Image};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("runtime {0} is not available on this node")]
    Unavailable(RuntimeKind),
    #[error("{0}")]
    Start(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("VM control: {0}")]
    Control(String),
    /// A clone could not load its template's state (the template, not the VM, is at fault).
    #[error("restoring the template's state: {0}")]
    Restore(String),
    #[error("the VM is not running")]
    NotRunning,
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl RuntimeError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// A disk: the image's read-only base and the VM's own writable layer over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub base: PathBuf,
    pub base_format: DiskFormat,
    /// Made over `base` when missing (a persistent disk that exists is attached as it is).
    pub layer: PathBuf,
    /// Keep the layer when the VM is removed (a persistent disk).
    pub keep: bool,
}

/// A user's home disk (images that have one; see `Manifest::home_disk`): a disk of its own, no
/// backing file, made empty when missing (the guest formats it on first use) and always kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeDiskConfig {
    pub path: PathBuf,
    pub size_mib: u64,
}

/// How a VM starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchBoot {
    /// A Linux kernel loaded directly, with its initramfs and command line.
    Kernel { kernel: PathBuf, initrd: Option<PathBuf>, cmdline: String },
    /// The firmware boots the VM's disk.
    Firmware(FirmwareSpec),
}

impl LaunchBoot {
    /// How `image` boots, its files in its folder.
    pub fn of(image: &Image) -> Self {
        match &image.manifest.boot {
            Boot::Kernel(k) => Self::Kernel {
                kernel: image.file(&k.kernel),
                initrd: k.initrd.as_ref().map(|i| image.file(i)),
                cmdline: k.cmdline.clone(),
            },
            Boot::Firmware(f) => Self::Firmware(*f),
        }
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The VM id (`vm-` and 16 hex digits).
    pub id: String,
    /// The VM's folder (owned by the node; the runtime puts its sockets here).
    pub dir: PathBuf,
    pub boot: LaunchBoot,
    /// The folder of what the firmware of a disk booted by firmware keeps (its UEFI variables,
    /// its virtual TPM's state): kept with a dedicated desktop's disk, else the VM's own.
    pub firmware_state: Option<PathBuf>,
    pub disk: Option<DiskConfig>,
    /// The user's home disk, attached after `disk` (dedicated desktops of images with one).
    pub home: Option<HomeDiskConfig>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub display: DisplaySize,
    /// The guest has a sound driver (its image loads one): give it a sound card whose output
    /// the display reads.
    pub sound: bool,
    /// The group the VM process must join before it runs.
    pub cgroup: Option<VmCgroup>,
    /// Where its memory comes from: its own (a boot), a template's file, or a template's
    /// sealed copy (a clone).
    pub memory: GuestMemory,
}

/// Where the node reaches a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub display: DisplayEndpoint,
    /// A unix socket speaking the guest-agent protocol (`atrium_protocol::agent`).
    pub agent: PathBuf,
    /// A unix socket carrying the guest's serial console, when the runtime has one.
    pub serial: Option<PathBuf>,
    /// A unix socket carrying what the firmware writes to its debug port (SeaBIOS's messages,
    /// among them that it found nothing to boot), when the VM has one: it is in the same log
    /// as the serial console. Followed only when it exists.
    pub firmware_log: Option<PathBuf>,
}

/// What a node needs to take a running VM's process back after the node itself restarted (a
/// crash, `kill -9`, an upgrade): kept in the VM's folder while the VM runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoptable {
    pub pid: u32,
    /// When the process started (clock ticks after boot, `/proc/PID/stat`): a pid the kernel
    /// has since given to another process does not match, and is not taken for the VM.
    pub started: u64,
    /// The disk layer to delete when the VM goes (not a persistent disk).
    pub layer: Option<PathBuf>,
    /// The VM's own uid (`qemu.run_as = "per-vm"`), leased again.
    pub uid: Option<u32>,
}

impl Adoptable {
    /// The record of running process `pid` (none if it has no pid or is gone).
    pub(crate) fn of(pid: Option<u32>, layer: Option<&PathBuf>, uid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        Some(Self { pid, started: process_started(pid)?, layer: layer.cloned(), uid })
    }
}

/// When process `pid` started (field 22 of `/proc/PID/stat`), or `None` if there is none.
pub(crate) fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process that is not the node's child (a VM taken back): its pidfd, which names that
/// process and no later one with the same pid.
#[derive(Debug)]
pub(crate) struct Foreign {
    pidfd: std::os::fd::OwnedFd,
}

impl Foreign {
    /// Opens process `pid` if it is the one that started at `started`.
    pub(crate) fn open(pid: u32, started: u64) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        let raw_pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
        let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // Checked after the pidfd is open: it names the process that had the pid then.
        if process_started(pid) != Some(started) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("process {pid} is not the VM's any more"),
            ));
        }
        Ok(Self { pidfd })
    }

    /// Sends `signal` to the process (never to a later one with its pid).
    pub(crate) fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal takes the pidfd, a signal number and a null siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    /// A watch that carries `ExitInfo` once the process has ended. Its exit status went to
    /// whoever reaps it, not to this node.
    pub(crate) fn exit_watch(
        &self,
        label: &'static str,
    ) -> std::io::Result<watch::Receiver<Option<ExitInfo>>> {
        use tokio::io::Interest;
        let pidfd = self.pidfd.try_clone()?;
        // SAFETY: `pidfd` is an OwnedFd moved into the AsyncFd, which owns it from here on: the
        // descriptor stays open and the same for the AsyncFd's whole life.
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            // A pidfd is readable once its process has ended.
            let _ = fd.readable().await;
            let description = format!(
                "{label} ended (taken back after a node restart: its exit status is unknown)"
            );
            let _ = tx.send(Some(ExitInfo { clean: false, description }));
        });
        Ok(rx)
    }
}

/// How a VM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exited with status 0 (a guest that powered off).
    pub clean: bool,
    /// "exited with status 1: <last lines of the runtime's error output>", "killed by signal 9".
    pub description: String,
}

/// A screen image, 8-bit RGB, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Frame {
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            let mut w = enc.write_header().expect("PNG header of a valid size");
            w.write_image_data(&self.rgb).expect("frame data matches its size");
        }
        out
    }
}

/// One running VM.
pub trait VmHandle: Send + Sync + Debug {
    fn endpoints(&self) -> &Endpoints;
    fn accel(&self) -> Option<Accel>;
    /// The VM's main process.
    fn pid(&self) -> Option<u32>;
    /// Starts the guest (VMs are launched paused, so no output is missed).
    fn resume(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;
    fn screenshot(&self) -> BoxFuture<'_, Result<Frame, RuntimeError>>;
    /// Asks the guest to power off (ACPI power button).
    fn request_shutdown(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Ends the VM now and waits until its process is gone.
    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// `Some` once the VM process has exited.
    fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>>;
    /// Removes the files the runtime made for this VM (sockets, a layer that is not kept).
    /// Called after the process is gone.
    fn cleanup(&self) -> Result<(), RuntimeError>;
    /// What a restarted node needs to take this VM back; `None`: it cannot be (the VM ends
    /// with the node).
    fn adoptable(&self) -> Option<Adoptable> {
        None
    }
    /// Pauses a VM launched as a template ([`GuestMemory::Template`]) and saves its device
    /// state (not its RAM, which is in the template's file) to `state`, for clones to load.
    /// The VM stays paused; the caller ends it. Let go of the guest agent's socket first: a
    /// clone's host then connects anew, and the agent greets it.
    fn save_template(&self, state: &Path) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let _ = state;
        Box::pin(async { Err(RuntimeError::Control("this runtime cannot save templates".into())) })
    }
}

/// The runtimes this build has, set up for this host. (The builtin runtime joins here.)
pub fn available(
    config: &crate::config::NodeConfig,
    kvm: atrium_protocol::node::KvmKind,
) -> Vec<Arc<dyn Runtime>> {
    let display_group =
        config.node.local_socket_group.as_deref().and_then(crate::accounts::group_id);
    let mut runtimes: Vec<Arc<dyn Runtime>> = vec![Arc::new(
        qemu::QemuRuntime::new(config.qemu.clone(), kvm).with_display_group(display_group),
    )];
    // The builtin VMM needs /dev/kvm (of any kind; it is the default only on hardware KVM).
    if kvm != atrium_protocol::node::KvmKind::Absent {
        match builtin::BuiltinRuntime::new(kvm) {
            Ok(b) => runtimes.push(Arc::new(b.with_display_group(display_group))),
            Err(e) => tracing::warn!(error = %e, "the builtin runtime is not available"),
        }
    }
    runtimes
}

/// A way to run VMs.
pub trait Runtime: Send + Sync + Debug {
    fn kind(&self) -> RuntimeKind;
    /// The accelerator VMs get, when fixed for the runtime.
    fn accel(&self) -> Option<Accel>;
    /// Why that accelerator (for the log and `/healthz`).
    fn accel_reason(&self) -> String;
    /// Starts a VM, paused.
    fn launch(&self, cfg: LaunchConfig) -> BoxFuture<'_, Result<Arc<dyn VmHandle>, RuntimeError>>;
    /// Takes back the running VM in folder `dir` that an earlier run of the node started.
    fn adopt<'a>(
        &'a self,
        dir: &'a Path,
        a: &'a Adoptable,
    ) -> BoxFuture<'a, Result<Arc<dyn VmHandle>, RuntimeError>> {
        let _ = (dir, a);
        Box::pin(async move {
            Err(RuntimeError::Start(format!(
                "the {} runtime cannot take running VMs back",
                self.kind()
            )))
        })
    }
}

/// Starts a VM's process (QEMU, or `atrium-node vmm`) the way every runtime does: in its own
/// process group, in the VM's cgroup (joined between fork and exec), its stderr logged under
/// `label` with a bounded tail kept. With `outlives_node`, the process goes on if the node
/// dies (a restarted node takes it back); otherwise it dies with the node. Returns its pid and
/// a watch that carries `exit_info(status, stderr tail)` once it ends.
pub(crate) fn spawn_vm_process(
    mut cmd: tokio::process::Command,
    cfg: &LaunchConfig,
    label: &'static str,
    outlives_node: bool,
    exit_info: fn(std::io::Result<std::process::ExitStatus>, &str) -> ExitInfo,
) -> Result<(Option<u32>, watch::Receiver<Option<ExitInfo>>), RuntimeError> {
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;
    cmd.current_dir(&cfg.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        // A VM that outlives the node must outlive the node's exit too.
        .kill_on_drop(!outlives_node)
        .process_group(0);
    let procs = match &cfg.cgroup {
        Some(g) => g.open_procs()?,
        None => Vec::new(),
    };
    let fds: Vec<i32> = procs.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the child between fork and exec, and only makes
    // async-signal-safe system calls (prctl, write) on file descriptors that `procs` keeps
    // open in the parent until after spawn returns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the node, unless a restarted node can take the VM back. The node
            // spawns from its async worker threads, which live as long as the node.
            if !outlives_node && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(RuntimeError::io(format!("starting {label}")))?;
    drop(procs);
    let pid = child.id();
    let tail = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    if let Some(mut err) = child.stderr.take() {
        let tail = Arc::clone(&tail);
        let id = cfg.id.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    tracing::warn!(vm = %id, "{label}: {line}");
                }
                let mut t = tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(2048);
                t.drain(..excess);
            }
        });
    }
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = child.wait().await;
        // Let the stderr reader take the last lines.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let err_text = {
            let t = tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            String::from_utf8_lossy(&t).trim().to_owned()
        };
        let _ = exit_tx.send(Some(exit_info(status, &err_text)));
    });
    Ok((pid, exit_rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_as_png() {
        let f = Frame { width: 2, height: 1, rgb: vec![255, 0, 0, 0, 0, 255] };
        let png_bytes = f.to_png();
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().expect("valid png");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&buf[..6], &[255, 0, 0, 0, 0, 255]);
    }
}
