//! The `qemu` runtime: one `qemu-system-x86_64` process per VM.
//!
//! - accelerator: KVM where `/dev/kvm` has hardware virtualization, else TCG (see [`crate::kvm`]);
//! - control: QMP on `qmp.sock` (cont, screendump, system_powerdown, quit);
//! - display: QEMU's VNC server on `vnc.sock` (it offers the extended key event), shared by
//!   every client (the display proxy, a test, noVNC) at once;
//! - screen: a `VGA` device with an EDID at the VM's display size (the guest's `bochs` DRM
//!   driver picks that mode); input: the PS/2 keyboard and an absolute pointer (virtio or USB
//!   tablet);
//! - sound (images whose guest loads a sound driver): an Intel HD Audio controller with an
//!   output codec, played into QEMU's `none` audio backend, whose mix QEMU's VNC server hands
//!   to a client that asks (the display proxy) through its audio extension;
//! - guest agent: a virtio-serial port named `org.atrium.agent.0` on `agent.sock`; serial
//!   console on `serial.sock`;
//! - disk: a qcow2 layer whose backing file is the image's read-only base;
//! - boot: the image's kernel loaded directly, or (an imported image) its disk booted by
//!   firmware: OVMF with the VM's own variables, or SeaBIOS, and a virtual TPM ([`tpm`]) when
//!   the image has one; the command line is built in [`args`];
//! - templates and clones ([`super::template`]): a template's RAM is a file, shared; its
//!   devices are saved without it (`x-ignore-shared`, through a socket in the VM's own folder:
//!   the sandbox forbids `exec:`); a clone maps the template's sealed copy privately and loads
//!   those devices (`-incoming defer`) instead of booting; both have a `vmgenid` device, so
//!   each clone's kernel reseeds its random numbers;
//! - the process joins its cgroup before `exec`, and outlives the node: a node that crashes or
//!   is killed leaves its QEMUs running, and takes them back when it starts again
//!   ([`QemuRuntime::adopt`]: the process checked by its start time, QMP reconnected, the VM's
//!   own uid leased again).

mod args;
mod clones;
mod tpm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atrium_protocol::node::{Accel, DisplayEndpoint, KvmKind, RuntimeKind};
use serde_json::json;
use tokio::process::Command;
use tokio::sync::{Mutex, watch};

pub use self::args::vgamem_mb;
use self::clones::{give_layer, prepare_memory};
use super::qmp::Qmp;
use super::{
    Adoptable, BoxFuture, Endpoints, ExitInfo, Foreign, Frame, GuestMemory, LaunchBoot,
    LaunchConfig, Runtime, RuntimeError, VmHandle,
};
use crate::accounts::{RunAs, UidLease, UidPool, lookup_user};
use crate::config::QemuSection;
use crate::image::FirmwareSpec;
use crate::kvm;

/// The files of a VM's folder this runtime uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub qmp: PathBuf,
    pub vnc: PathBuf,
    pub agent: PathBuf,
    pub serial: PathBuf,
    /// SeaBIOS's debug port (a BIOS VM's only).
    pub debugcon: PathBuf,
    /// QEMU's way to the VM's TPM: a link to its socket in the firmware's state folder (whose
    /// path may be longer than a socket's may be).
    pub tpm: PathBuf,
}

impl Paths {
    /// Where the node reaches the VM.
    fn endpoints(&self) -> Endpoints {
        Endpoints {
            display: DisplayEndpoint::VncUnix { path: self.vnc.display().to_string() },
            agent: self.agent.clone(),
            serial: Some(self.serial.clone()),
            firmware_log: Some(self.debugcon.clone()),
        }
    }

    pub fn in_dir(dir: &Path) -> Self {
        Self {
            qmp: dir.join("qmp.sock"),
            vnc: dir.join("vnc.sock"),
            agent: dir.join("agent.sock"),
            serial: dir.join("serial.sock"),
            debugcon: dir.join("debugcon.sock"),
            tpm: dir.join("tpm.sock"),
        }
    }
}

#[derive(Debug)]
pub struct QemuRuntime {
    cfg: QemuSection,
    accel: Accel,
    reason: String,
    /// The user QEMU runs as after start-up (`-runas`), once resolved at the first launch.
    run_as: std::sync::OnceLock<Option<RunAs>>,
    /// With `run_as = "per-vm"`: the ids VMs run as now.
    vm_uids: Option<Arc<UidPool>>,
    /// The display proxy's group (`node.local_socket_group`): it may connect to VNC sockets.
    display_group: Option<u32>,
}

impl QemuRuntime {
    pub fn new(cfg: QemuSection, kvm_kind: KvmKind) -> Self {
        let (accel, reason) = kvm::choose_accel(kvm_kind, cfg.accel);
        let vm_uids = match cfg.run_as_choice() {
            Ok(crate::config::RunAsChoice::PerVm(range)) => {
                Some(Arc::new(UidPool { range, used: std::sync::Mutex::default() }))
            }
            _ => None,
        };
        Self {
            cfg,
            accel,
            reason,
            run_as: std::sync::OnceLock::new(),
            vm_uids,
            display_group: None,
        }
    }

    /// The user VMs drop to: `qemu.run_as`, created as a system user when missing, when the
    /// node runs as root; `None` when the node is not root or `run_as` is empty.
    async fn resolve_run_as(&self) -> Result<Option<RunAs>, RuntimeError> {
        if let Some(r) = self.run_as.get() {
            return Ok(r.clone());
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let name = self.cfg.run_as.trim();
        let resolved = if !root || name.is_empty() || self.vm_uids.is_some() {
            None
        } else {
            if lookup_user(name).is_none() {
                let out = Command::new("useradd")
                    .args([
                        "--system",
                        "--no-create-home",
                        "--home-dir",
                        "/nonexistent",
                        "--shell",
                        "/usr/sbin/nologin",
                        name,
                    ])
                    .output()
                    .await
                    .map_err(RuntimeError::io("running useradd"))?;
                if !out.status.success() && lookup_user(name).is_none() {
                    return Err(RuntimeError::Control(format!(
                        "cannot create the user {name:?} that VMs run as: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                tracing::info!(user = name, "created the system user VMs run as");
            }
            let user = lookup_user(name)
                .ok_or_else(|| RuntimeError::Control(format!("no user {name:?} to run VMs as")))?;
            Some(user)
        };
        Ok(self.run_as.get_or_init(|| resolved).clone())
    }

    /// `qemu-system-x86_64 --version`, to fail early when QEMU is missing.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let out = Command::new(&self.cfg.binary)
            .arg("--version")
            .output()
            .await
            .map_err(RuntimeError::io(format!("running {}", self.cfg.binary.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    /// Gives VMs' display sockets to group `gid` (the display proxy's).
    #[must_use]
    pub fn with_display_group(mut self, gid: Option<u32>) -> Self {
        self.display_group = gid;
        self
    }

    /// Who a new VM runs as: its own ids (`per-vm`), the shared user, or the node's user; with
    /// the lease that keeps its own ids its own.
    async fn user_for_vm(&self) -> Result<(Option<RunAs>, Option<UidLease>), RuntimeError> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        match &self.vm_uids {
            Some(pool) if root => {
                let lease = pool.lease().ok_or_else(|| {
                    RuntimeError::Control(format!(
                        "every id in qemu.vm_uids ({}-{}) is in use by a VM",
                        pool.range.start(),
                        pool.range.end()
                    ))
                })?;
                let user =
                    RunAs { name: format!("{0}:{0}", lease.uid), uid: lease.uid, gid: lease.uid };
                Ok((Some(user), Some(lease)))
            }
            Some(_) => Ok((None, None)),
            None => Ok((self.resolve_run_as().await?, None)),
        }
    }
}

/// How a QEMU process ended, for the VM's state and error.
fn qemu_exit_info(status: std::io::Result<std::process::ExitStatus>, err_text: &str) -> ExitInfo {
    match status {
        Ok(s) if s.success() => ExitInfo {
            clean: true,
            description: "QEMU exited normally (guest power-off or quit)".into(),
        },
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let what = match (s.code(), s.signal()) {
                (Some(c), _) => format!("QEMU exited with status {c}"),
                (None, Some(sig)) => format!("QEMU was killed by signal {sig}"),
                _ => "QEMU ended".to_owned(),
            };
            let last = err_text.lines().last().unwrap_or_default();
            let description = if last.is_empty() { what } else { format!("{what}: {last}") };
            ExitInfo { clean: false, description }
        }
        Err(e) => ExitInfo { clean: false, description: format!("waiting for QEMU failed: {e}") },
    }
}

impl Runtime for QemuRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Qemu
    }

    fn accel(&self) -> Option<Accel> {
        Some(self.accel)
    }

    fn accel_reason(&self) -> String {
        self.reason.clone()
    }

    fn adopt<'a>(
        &'a self,
        dir: &'a Path,
        a: &'a Adoptable,
    ) -> BoxFuture<'a, Result<Arc<dyn VmHandle>, RuntimeError>> {
        Box::pin(async move { Ok(self.adopt_qemu(dir, a).await? as Arc<dyn VmHandle>) })
    }

    fn launch(&self, cfg: LaunchConfig) -> BoxFuture<'_, Result<Arc<dyn VmHandle>, RuntimeError>> {
        Box::pin(async move {
            let handle = self.launch_qemu(cfg).await?;
            Ok(handle as Arc<dyn VmHandle>)
        })
    }
}

impl QemuRuntime {
    /// Takes back the QEMU of the VM in `dir` that an earlier run of the node started: the
    /// process (if it is still that one), its own uid, and its QMP socket.
    async fn adopt_qemu(&self, dir: &Path, a: &Adoptable) -> Result<Arc<QemuVm>, RuntimeError> {
        let foreign = Foreign::open(a.pid, a.started)
            .map_err(RuntimeError::io(format!("finding QEMU (pid {})", a.pid)))?;
        let uid = match (a.uid, &self.vm_uids) {
            (None, _) => None,
            (Some(uid), Some(pool)) => Some(pool.claim(uid).ok_or_else(|| {
                RuntimeError::Start(format!("uid {uid} is outside qemu.vm_uids or in use"))
            })?),
            (Some(uid), None) => {
                return Err(RuntimeError::Start(format!(
                    "the VM runs as its own uid {uid}, and qemu.run_as is no longer per-vm"
                )));
            }
        };
        let paths = Paths::in_dir(dir);
        // The user QEMU dropped to owns its screenshot folder (none: it kept the node's).
        let owner = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(dir.join("screens")).ok().map(|m| (m.uid(), m.gid()))
        };
        let screens = screens_for(dir, owner)?;
        let exit = foreign.exit_watch("qemu").map_err(RuntimeError::io("watching QEMU"))?;
        let vm = QemuVm {
            endpoints: paths.endpoints(),
            paths,
            screens,
            accel: self.accel,
            pid: Some(a.pid),
            qmp: Mutex::new(None),
            exit,
            layer: a.layer.clone(),
            shots: AtomicU64::new(0),
            uid,
            foreign: Some(foreign),
            template: false,
        };
        vm.connect_qmp().await?;
        Ok(Arc::new(vm))
    }

    async fn launch_qemu(&self, cfg: LaunchConfig) -> Result<Arc<QemuVm>, RuntimeError> {
        let paths = Paths::in_dir(&cfg.dir);
        let (user, uid_lease) = self.user_for_vm().await?;
        let screens = screens_for(&cfg.dir, user.as_ref().map(|u| (u.uid, u.gid)))?;
        if let Some(d) = &cfg.disk
            && !d.layer.exists()
        {
            self.create_layer(d).await?;
        }
        if let Some(h) = &cfg.home
            && !h.path.exists()
        {
            self.create_home(h).await?;
        }
        prepare_memory(&cfg, user.is_some() && uid_lease.is_none())?;
        give_layer(&cfg, user.as_ref().map(|u| (u.uid, u.gid)))?;
        self.prepare_firmware(&cfg)?;
        let mut swtpm = match (&cfg.boot, &cfg.firmware_state) {
            (LaunchBoot::Firmware(FirmwareSpec { tpm: true, .. }), Some(state)) => {
                let owner = user.as_ref().map(|u| (u.uid, u.gid));
                Some(tpm::start(&self.cfg.swtpm, &cfg, &state.join("tpm"), owner).await?)
            }
            _ => None,
        };
        // swtpm ends when QEMU lets go of it; a QEMU that never held it does not end it.
        let launched = self.spawn_qemu(cfg, paths, user, uid_lease, screens, swtpm.as_ref()).await;
        if launched.is_err()
            && let Some(t) = &mut swtpm
        {
            t.kill().await;
        }
        launched
    }

    /// QEMU's process for `launch_qemu`, up to its QMP (and, for a clone, its template's
    /// devices loaded).
    async fn spawn_qemu(
        &self,
        cfg: LaunchConfig,
        paths: Paths,
        user: Option<RunAs>,
        uid_lease: Option<UidLease>,
        screens: PathBuf,
        swtpm: Option<&tpm::Swtpm>,
    ) -> Result<Arc<QemuVm>, RuntimeError> {
        if let Some(t) = swtpm {
            let _ = std::fs::remove_file(&paths.tpm);
            std::os::unix::fs::symlink(&t.socket, &paths.tpm)
                .map_err(RuntimeError::io("linking the TPM's socket"))?;
        }
        let mut cmd = Command::new(&self.cfg.binary);
        cmd.args(self.args(&cfg, &paths, user.as_ref()));
        // A VM outlives the node (a restarted node takes it back); a template ends with the
        // node's exit (a node that crashed ends it at its next start: the parent-death signal
        // does not survive QEMU's change of user).
        let outlives_node = !matches!(cfg.memory, GuestMemory::Template { .. });
        let (pid, exit_rx) =
            super::spawn_vm_process(cmd, &cfg, "qemu", outlives_node, qemu_exit_info)?;

        let vm = QemuVm {
            endpoints: paths.endpoints(),
            paths,
            screens,
            accel: self.accel,
            pid,
            qmp: Mutex::new(None),
            exit: exit_rx,
            layer: cfg.disk.as_ref().filter(|d| !d.keep).map(|d| d.layer.clone()),
            shots: AtomicU64::new(0),
            uid: uid_lease,
            foreign: None,
            template: matches!(cfg.memory, GuestMemory::Template { .. }),
        };
        // QMP is up once QEMU has made its sockets (it starts paused, so nothing is missed).
        let ready = async {
            vm.connect_qmp().await?;
            self.open_display_to_group(&vm.paths)?;
            // A clone loads its template's devices (paused, as the template was saved).
            if let GuestMemory::Clone { state, .. } = &cfg.memory {
                vm.load_state(state).await.map_err(|e| RuntimeError::Restore(e.to_string()))?;
            }
            Ok::<(), RuntimeError>(())
        };
        match ready.await {
            Ok(()) => Ok(Arc::new(vm)),
            Err(e) => {
                let _ = vm.kill_now().await;
                Err(e)
            }
        }
    }

    async fn create_layer(&self, d: &super::DiskConfig) -> Result<(), RuntimeError> {
        let mut cmd = Command::new(&self.cfg.img_binary);
        cmd.args(["create", "-q", "-f", "qcow2", "-b"])
            .arg(&d.base)
            .args(["-F", d.base_format.as_str()])
            .arg(&d.layer);
        self.qemu_img_create(cmd, &d.layer).await
    }
}

impl QemuRuntime {
    /// An empty qcow2 disk of the home disk's size (no backing file).
    async fn create_home(&self, h: &super::HomeDiskConfig) -> Result<(), RuntimeError> {
        let mut cmd = Command::new(&self.cfg.img_binary);
        cmd.args(["create", "-q", "-f", "qcow2"]).arg(&h.path).arg(format!("{}M", h.size_mib));
        self.qemu_img_create(cmd, &h.path).await
    }

    /// Runs `qemu-img create` (as `cmd`) making `disk`.
    async fn qemu_img_create(&self, mut cmd: Command, disk: &Path) -> Result<(), RuntimeError> {
        let out = cmd
            .output()
            .await
            .map_err(RuntimeError::io(format!("running {}", self.cfg.img_binary.display())))?;
        if !out.status.success() {
            return Err(RuntimeError::Start(format!(
                "qemu-img create {}: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // Root's alone: QEMU opens it before it drops root, and no VM's user (whose folders
        // others may pass through) can read another VM's disk.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(disk, std::fs::Permissions::from_mode(0o600))
            .map_err(RuntimeError::io(format!("making {} private", disk.display())))?;
        Ok(())
    }

    /// Lets the display proxy's group connect to the VM's display socket (mode 0660), when the
    /// node has one (`node.local_socket_group`); otherwise only root can.
    fn open_display_to_group(&self, paths: &Paths) -> Result<(), RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(gid) = self.display_group else { return Ok(()) };
        let what = format!("giving {} to the display group", paths.vnc.display());
        std::os::unix::fs::chown(&paths.vnc, None, Some(gid)).map_err(RuntimeError::io(&what))?;
        std::fs::set_permissions(&paths.vnc, std::fs::Permissions::from_mode(0o660))
            .map_err(RuntimeError::io(what))
    }
}

/// Where QEMU writes screendumps. Once it dropped to its user (`owner`: uid, gid) that is a
/// folder of that user's in the VM's folder, which it reaches through folders it may pass but
/// not read (set again for a VM taken back: the node makes `vms/` private when it starts).
fn screens_for(dir: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let Some((uid, gid)) = owner else { return Ok(dir.to_owned()) };
    let screens = dir.join("screens");
    let io =
        |source| RuntimeError::Io { what: "preparing the VM's screenshot folder".into(), source };
    std::fs::create_dir_all(&screens).map_err(io)?;
    std::fs::set_permissions(&screens, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    std::os::unix::fs::chown(&screens, Some(uid), Some(gid)).map_err(io)?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let mode = std::fs::metadata(d).map_err(io)?.permissions().mode();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011)).map_err(io)?;
    }
    Ok(screens)
}

#[derive(Debug)]
pub struct QemuVm {
    endpoints: Endpoints,
    paths: Paths,
    /// Where QEMU writes screendumps.
    screens: PathBuf,
    accel: Accel,
    pid: Option<u32>,
    qmp: Mutex<Option<Qmp>>,
    exit: watch::Receiver<Option<ExitInfo>>,
    /// The disk layer to delete at cleanup (not a persistent disk).
    layer: Option<PathBuf>,
    shots: AtomicU64,
    /// Its own uid, while it exists (`run_as = "per-vm"`).
    uid: Option<UidLease>,
    /// A QEMU taken back after a node restart (not the node's child): signalled through this.
    foreign: Option<Foreign>,
    /// Launched as a template ([`GuestMemory::Template`]): it may save its state.
    template: bool,
}

impl QemuVm {
    async fn connect_qmp(&self) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(info) = self.exit.borrow().clone() {
                return Err(RuntimeError::Start(info.description));
            }
            if self.paths.qmp.exists() {
                match Qmp::connect(&self.paths.qmp).await {
                    Ok(q) => {
                        *self.qmp.lock().await = Some(q);
                        return Ok(());
                    }
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Start(
                    "QEMU did not open its control socket within 15 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn qmp(
        &self,
        command: &str,
        args: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RuntimeError> {
        if self.exit.borrow().is_some() {
            return Err(RuntimeError::NotRunning);
        }
        let guard = self.qmp.lock().await;
        let q = guard.as_ref().ok_or(RuntimeError::NotRunning)?;
        q.execute(command, args).await
    }

    async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.exit.clone();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await.is_ok()
    }

    async fn kill_now(&self) -> Result<(), RuntimeError> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        // Ask QEMU to quit; if it does not, end it.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp("quit", None)).await;
        if self.wait_exit(Duration::from_secs(3)).await {
            return Ok(());
        }
        if let Some(f) = &self.foreign {
            let _ = f.signal(libc::SIGKILL);
        } else if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill has no memory-safety preconditions. The pid is our child, which
            // has not been reaped (the exit watch is still empty), so it names no other process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if self.wait_exit(Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(RuntimeError::Control("QEMU did not end after SIGKILL".into()))
        }
    }
}

/// Parses a binary PPM (`P6`, maxval 255), as QEMU's `screendump` writes it.
pub fn parse_ppm(data: &[u8]) -> Result<Frame, String> {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < data.len() && data[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < data.len() && data[i] == b'#' {
            while i < data.len() && data[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < data.len() && !data[i].is_ascii_whitespace() {
            i += 1;
        }
        if start == i {
            return Err("truncated PPM header".into());
        }
        fields.push(std::str::from_utf8(&data[start..i]).map_err(|_| "bad PPM header")?.to_owned());
    }
    i += 1; // the single whitespace after maxval
    if fields[0] != "P6" || fields[3] != "255" {
        return Err(format!("unsupported PPM {} maxval {}", fields[0], fields[3]));
    }
    let width: u32 = fields[1].parse().map_err(|_| "bad PPM width")?;
    let height: u32 = fields[2].parse().map_err(|_| "bad PPM height")?;
    let len =
        usize::try_from(u64::from(width) * u64::from(height) * 3).map_err(|_| "PPM too large")?;
    let rgb = data.get(i..i + len).ok_or("truncated PPM data")?.to_vec();
    Ok(Frame { width, height, rgb })
}

impl VmHandle for QemuVm {
    fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    fn accel(&self) -> Option<Accel> {
        Some(self.accel)
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.qmp("cont", None).await?;
            let status = self.qmp("query-status", None).await?;
            match status.get("status").and_then(serde_json::Value::as_str) {
                Some("running") => Ok(()),
                other => Err(RuntimeError::Control(format!(
                    "after cont the VM is {other:?}, not running"
                ))),
            }
        })
    }

    fn screenshot(&self) -> BoxFuture<'_, Result<Frame, RuntimeError>> {
        Box::pin(async move {
            let n = self.shots.fetch_add(1, Ordering::Relaxed);
            let file = self.screens.join(format!("screen-{n}.ppm"));
            let r = self
                .qmp("screendump", Some(json!({ "filename": file.display().to_string() })))
                .await;
            let data = r.and_then(|_| {
                std::fs::read(&file).map_err(RuntimeError::io("reading the screendump"))
            });
            let _ = std::fs::remove_file(&file);
            parse_ppm(&data?).map_err(RuntimeError::Control)
        })
    }

    fn request_shutdown(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.qmp("system_powerdown", None).await.map(drop) })
    }

    fn save_template(&self, state: &Path) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let state = state.to_owned();
        Box::pin(async move { self.save_template_to(&state).await })
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(self.kill_now())
    }

    fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.clone()
    }

    fn adoptable(&self) -> Option<Adoptable> {
        Adoptable::of(self.pid, self.layer.as_ref(), self.uid.as_ref().map(|l| l.uid))
    }

    fn cleanup(&self) -> Result<(), RuntimeError> {
        let mut files =
            vec![&self.paths.qmp, &self.paths.vnc, &self.paths.agent, &self.paths.serial];
        files.extend(self.layer.as_ref());
        for f in files {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RuntimeError::Io {
                        what: format!("removing {}", f.display()),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ppm_and_refuses_bad_ones() {
        let mut ppm = b"P6\n# comment\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let f = parse_ppm(&ppm).expect("valid");
        assert_eq!((f.width, f.height, f.rgb.len()), (2, 1, 6));
        assert!(parse_ppm(&ppm[..ppm.len() - 1]).is_err());
        assert!(parse_ppm(b"P3\n1 1\n255\n").is_err());
        assert!(parse_ppm(b"P6\n1 1\n65535\n").is_err());
        assert!(parse_ppm(b"P6\n").is_err());
        assert!(parse_ppm(b"P6\n99999999 99999999\n255\n").is_err());
    }
}
