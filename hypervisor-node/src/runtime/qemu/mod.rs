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
//! - templates and clones ([`super::template`]): a template's RAM is a file, shared; its
//!   devices are saved without it (`x-ignore-shared`, through a socket in the VM's own folder:
//!   the sandbox forbids `exec:`); a clone maps the template's sealed copy privately and loads
//!   those devices (`-incoming defer`) instead of booting; both have a `vmgenid` device, so
//!   each clone's kernel reseeds its random numbers;
//! - the process joins its cgroup before `exec`, and outlives the node: a node that crashes or
//!   is killed leaves its QEMUs running, and takes them back when it starts again
//!   ([`QemuRuntime::adopt`]: the process checked by its start time, QMP reconnected, the VM's
//!   own uid leased again).

mod clones;
mod tpm;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atrium_protocol::agent::PORT_NAME;
use atrium_protocol::node::{Accel, DisplayEndpoint, KvmKind, RuntimeKind};
use serde_json::json;
use tokio::process::Command;
use tokio::sync::{Mutex, watch};

use self::clones::{give_layer, prepare_memory};
use super::qmp::Qmp;
use super::{
    Adoptable, BoxFuture, Endpoints, ExitInfo, Foreign, Frame, GuestMemory, LaunchBoot,
    LaunchConfig, Runtime, RuntimeError, VmHandle,
};
use crate::accounts::{RunAs, UidLease, UidPool, lookup_user};
use crate::config::{Pointer, QemuSection};
use crate::image::{Firmware, FirmwareSpec};
use crate::kvm;

/// A UEFI VM's own variables, in its firmware's state folder.
const EFIVARS: &str = "efivars.fd";
/// The id of a template's or a clone's memory backend.
const MEMORY_BACKEND: &str = "mem0";
/// The files of a VM's folder this runtime uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub qmp: PathBuf,
    pub vnc: PathBuf,
    pub agent: PathBuf,
    pub serial: PathBuf,
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
        }
    }

    pub fn in_dir(dir: &Path) -> Self {
        Self {
            qmp: dir.join("qmp.sock"),
            vnc: dir.join("vnc.sock"),
            agent: dir.join("agent.sock"),
            serial: dir.join("serial.sock"),
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

    /// QEMU's command line for a VM that drops to `user`.
    /// OVMF's code and the template of its variables (Debian's `ovmf`, 4 MiB flash): with
    /// Secure Boot, the build that enforces it and variables with Microsoft's keys enrolled.
    pub fn ovmf(&self, secure_boot: bool) -> (PathBuf, PathBuf) {
        let dir = &self.cfg.ovmf_dir;
        if secure_boot {
            (dir.join("OVMF_CODE_4M.secboot.fd"), dir.join("OVMF_VARS_4M.ms.fd"))
        } else {
            (dir.join("OVMF_CODE_4M.fd"), dir.join("OVMF_VARS_4M.fd"))
        }
    }

    /// The firmware's state folder of a VM booted by firmware, made when new; a UEFI VM's own
    /// variables in it, copied from OVMF's template the first time (a dedicated desktop keeps
    /// its boot entries and Secure Boot updates).
    pub fn prepare_firmware(&self, cfg: &LaunchConfig) -> Result<(), RuntimeError> {
        let LaunchBoot::Firmware(f) = &cfg.boot else { return Ok(()) };
        let Some(state) = &cfg.firmware_state else {
            return Err(RuntimeError::Start("a VM booted by firmware has no state folder".into()));
        };
        let io = |what: &str, e: std::io::Error| RuntimeError::Start(format!("{what}: {e}"));
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state)
                .map_err(|e| io(&state.display().to_string(), e))?;
            std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io(&state.display().to_string(), e))?;
        }
        if f.firmware != Firmware::Uefi {
            return Ok(());
        }
        let (code, vars) = self.ovmf(f.secure_boot);
        if !code.is_file() {
            return Err(RuntimeError::Start(format!(
                "UEFI firmware {} is missing (install Debian's ovmf, or set [qemu] ovmf_dir)",
                code.display()
            )));
        }
        let own = state.join(EFIVARS);
        if !own.exists() {
            let part = state.join(format!("{EFIVARS}.part"));
            std::fs::copy(&vars, &part)
                .and_then(|_| std::fs::rename(&part, &own))
                .map_err(|e| io(&format!("copying UEFI variables {}", vars.display()), e))?;
        }
        Ok(())
    }

    pub fn args(&self, cfg: &LaunchConfig, paths: &Paths, user: Option<&RunAs>) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| a.push(s.into());
        push("-name".into());
        push(format!("guest=atrium-{},debug-threads=on", cfg.id));
        let firmware = match &cfg.boot {
            LaunchBoot::Firmware(f) => Some(*f),
            LaunchBoot::Kernel { .. } => None,
        };
        for s in ["-nodefaults", "-no-user-config", "-S", "-display", "none"] {
            push(s.into());
        }
        // A guest booted from its kernel never reboots (it powers off); a disk booted by
        // firmware restarts as a PC does (an OS's updates, a user's restart).
        if firmware.is_none() {
            push("-no-reboot".into());
        }
        push("-machine".into());
        // A template's or a clone's RAM is a memory backend of its own (template.rs). Secure
        // Boot keeps its variables in flash that only SMM code may write.
        let smm = if firmware.is_some_and(|f| f.secure_boot) { ",smm=on" } else { "" };
        push(if matches!(cfg.memory, GuestMemory::Private) {
            format!("q35{smm}")
        } else {
            format!("q35{smm},memory-backend={MEMORY_BACKEND}")
        });
        match self.accel {
            Accel::Kvm => {
                push("-accel".into());
                push("kvm".into());
                push("-cpu".into());
                push("host".into());
            }
            Accel::Tcg => {
                push("-accel".into());
                push(format!("tcg,tb-size={}", self.cfg.tcg_tb_size_mib));
                push("-cpu".into());
                push("max".into());
            }
        }
        push("-smp".into());
        push(cfg.vcpus.to_string());
        push("-m".into());
        push(format!("{}M", cfg.memory_mib));
        let backed = match &cfg.memory {
            GuestMemory::Private => None,
            GuestMemory::Template { file } => Some((file.clone(), "on")),
            GuestMemory::Clone { memory, .. } => Some((memory.path(), "off")),
        };
        if let Some((file, share)) = backed {
            push("-object".into());
            push(format!(
                "memory-backend-file,id={MEMORY_BACKEND},size={}M,mem-path={},share={share}",
                cfg.memory_mib,
                file.display()
            ));
            // A new generation id at each clone: the guest kernel reseeds its random numbers.
            push("-device".into());
            push("vmgenid,guid=auto".into());
        }
        if matches!(cfg.memory, GuestMemory::Clone { .. }) {
            push("-incoming".into());
            push("defer".into());
        }
        push("-qmp".into());
        push(format!("unix:{},server=on,wait=off", paths.qmp.display()));
        if cfg.sound {
            // A 10 ms audio timer: the mix reaches the VNC client in small, timely pieces; at
            // the rate and format the display proxy asks for, so nothing is resampled twice.
            push("-audiodev".into());
            push(format!(
                "none,id={AUDIODEV},timer-period=10000,out.frequency=48000,out.channels=2,out.format=s16"
            ));
        }
        push("-vnc".into());
        let audio = if cfg.sound { format!(",audiodev={AUDIODEV}") } else { String::new() };
        push(format!("unix:{},share=force-shared{audio}", paths.vnc.display()));
        push("-device".into());
        push(format!(
            "VGA,edid=on,xres={},yres={},vgamem_mb={}",
            cfg.display.width,
            cfg.display.height,
            vgamem_mb(cfg.display.width, cfg.display.height)
        ));
        push("-chardev".into());
        push(format!("socket,id=serial0,path={},server=on,wait=off", paths.serial.display()));
        push("-serial".into());
        push("chardev:serial0".into());
        push("-device".into());
        push("virtio-serial-pci,id=vser0".into());
        push("-chardev".into());
        push(format!("socket,id=agent0,path={},server=on,wait=off", paths.agent.display()));
        push("-device".into());
        push(format!("virtserialport,bus=vser0.0,chardev=agent0,name={PORT_NAME}"));
        if cfg.sound {
            push("-device".into());
            push("ich9-intel-hda,id=hda0".into());
            push("-device".into());
            push(format!("hda-output,bus=hda0.0,audiodev={AUDIODEV}"));
        }
        match self.cfg.pointer {
            Pointer::VirtioTablet => {
                push("-device".into());
                push("virtio-tablet-pci".into());
            }
            Pointer::UsbTablet => {
                push("-device".into());
                push("qemu-xhci,id=xhci0".into());
                push("-device".into());
                push("usb-tablet,bus=xhci0.0".into());
            }
        }
        if let Some(d) = &cfg.disk {
            push("-drive".into());
            push(format!(
                "file={},format=qcow2,if=none,id=disk0,discard=unmap,cache=writeback",
                d.layer.display()
            ));
            push("-device".into());
            // The firmware boots this disk first.
            let boot = if firmware.is_some() { ",bootindex=0" } else { "" };
            push(format!("virtio-blk-pci,drive=disk0,serial=atrium-disk0{boot}"));
        }
        if let Some(h) = &cfg.home {
            // The guest finds its home disk by this serial (desktop image, `sysinit`).
            push("-drive".into());
            push(format!(
                "file={},format=qcow2,if=none,id=home0,discard=unmap,cache=writeback",
                h.path.display()
            ));
            push("-device".into());
            push("virtio-blk-pci,drive=home0,serial=atrium-home".into());
        }
        if firmware.is_some_and(|f| f.tpm) {
            // The VM's swtpm (tpm.rs); CRB as UEFI and Windows expect, TIS for SeaBIOS.
            push("-chardev".into());
            push(format!("socket,id=tpmchr0,path={}", paths.tpm.display()));
            push("-tpmdev".into());
            push("emulator,id=tpm0,chardev=tpmchr0".into());
            push("-device".into());
            let bios = matches!(firmware, Some(FirmwareSpec { firmware: Firmware::Bios, .. }));
            push(if bios { "tpm-tis,tpmdev=tpm0" } else { "tpm-crb,tpmdev=tpm0" }.into());
        }
        push("-nic".into());
        push("none".into());
        match &cfg.boot {
            LaunchBoot::Kernel { kernel, initrd, cmdline } => {
                a.push("-kernel".into());
                a.push(kernel.clone().into_os_string());
                if let Some(i) = initrd {
                    a.push("-initrd".into());
                    a.push(i.clone().into_os_string());
                }
                a.push("-append".into());
                a.push(cmdline.clone().into());
            }
            // SeaBIOS is QEMU's own: nothing to add.
            LaunchBoot::Firmware(FirmwareSpec { firmware: Firmware::Bios, .. }) => {}
            LaunchBoot::Firmware(f @ FirmwareSpec { firmware: Firmware::Uefi, .. }) => {
                let (code, _) = self.ovmf(f.secure_boot);
                a.push("-drive".into());
                let mut code_drive =
                    OsString::from("if=pflash,format=raw,unit=0,readonly=on,file=");
                code_drive.push(code);
                a.push(code_drive);
                a.push("-drive".into());
                let mut vars_drive = OsString::from("if=pflash,format=raw,unit=1,file=");
                vars_drive.push(cfg.firmware_state.as_deref().unwrap_or(&cfg.dir).join(EFIVARS));
                a.push(vars_drive);
                if f.secure_boot {
                    a.push("-global".into());
                    a.push("driver=cfi.pflash01,property=secure,value=on".into());
                }
            }
        }
        // QEMU's own seccomp filter: no spawning, no privilege changes. With `-runas` QEMU drops
        // to an unprivileged user itself (after opening its files), which needs the set*id calls
        // once; an unprivileged process cannot raise its privileges again anyway.
        match user {
            Some(user) => {
                a.push("-runas".into());
                a.push(user.name.clone().into());
                a.push("-sandbox".into());
                a.push(
                    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
                        .into(),
                );
            }
            None => {
                a.push("-sandbox".into());
                a.push(
                    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
                        .into(),
                );
            }
        }
        a
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

/// The id of a VM's audio backend (what its sound card plays into, and its VNC server reads).
const AUDIODEV: &str = "snd0";

/// VGA memory for a display: room for two frames at 32 bits per pixel, a power of two.
pub fn vgamem_mb(width: u32, height: u32) -> u32 {
    let need = (u64::from(width) * u64::from(height) * 4 * 2).div_ceil(1 << 20);
    let mut mb = 16u64;
    while mb < need && mb < 256 {
        mb *= 2;
    }
    u32::try_from(mb).expect("at most 256")
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
    use crate::image::DiskFormat;
    use crate::runtime::DiskConfig;
    use atrium_protocol::node::DisplaySize;

    fn launch_config() -> LaunchConfig {
        LaunchConfig {
            id: "vm-0123456789abcdef".into(),
            dir: PathBuf::from("/state/vms/vm-0123456789abcdef"),
            boot: LaunchBoot::Kernel {
                kernel: PathBuf::from("/img/vmlinuz"),
                initrd: Some(PathBuf::from("/img/initrd.img")),
                cmdline: "console=ttyS0 quiet".into(),
            },
            firmware_state: None,
            disk: Some(DiskConfig {
                base: "/img/home.raw".into(),
                base_format: DiskFormat::Raw,
                layer: "/state/vms/vm-0123456789abcdef/disk.qcow2".into(),
                keep: false,
            }),
            home: None,
            vcpus: 2,
            memory_mib: 512,
            display: DisplaySize::new(1280, 800),
            sound: false,
            cgroup: None,
            memory: Default::default(),
        }
    }

    fn args_of(rt: &QemuRuntime) -> Vec<String> {
        let cfg = launch_config();
        rt.args(&cfg, &Paths::in_dir(&cfg.dir), None)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    /// `run_as = "per-vm"`: each VM its own ids, the lowest free one, given back when the VM
    /// goes; QEMU is told the numbers.
    #[test]
    fn each_vm_gets_its_own_ids_back_when_it_goes() {
        let pool =
            Arc::new(UidPool { range: 200_000..=200_002, used: std::sync::Mutex::default() });
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_eq!((a.uid, b.uid), (200_000, 200_001));
        let c = pool.lease().unwrap();
        assert!(pool.lease().is_none(), "the range is used up");
        drop(b);
        assert_eq!(pool.lease().unwrap().uid, 200_001);
        drop((a, c));
        let rt = QemuRuntime::new(QemuSection::default(), KvmKind::Pvm);
        assert!(rt.vm_uids.is_some(), "per-vm is the default");
        let cfg = launch_config();
        let user = RunAs { name: "200123:200123".into(), uid: 200_123, gid: 200_123 };
        let args: Vec<String> = rt
            .args(&cfg, &Paths::in_dir(&cfg.dir), Some(&user))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(after(&args, "-runas"), ["200123:200123"]);
        assert!(after(&args, "-sandbox")[0].contains("spawn=deny"));
        // A bad range is refused when the configuration is read.
        for bad in ["", "5-9", "300000-200000", "x-y"] {
            let q = QemuSection { vm_uids: bad.into(), ..QemuSection::default() };
            assert!(q.run_as_choice().is_err(), "{bad:?}");
        }
    }

    /// A template's RAM is its file, shared; a clone's the template's sealed copy, private, and
    /// it waits for its devices; both have a generation id; a boot has none of this.
    #[test]
    fn templates_and_clones_have_their_memory_from_a_file() {
        let rt = QemuRuntime::new(QemuSection::default(), KvmKind::Pvm);
        let strings = |cfg: &LaunchConfig| -> Vec<String> {
            rt.args(cfg, &Paths::in_dir(&cfg.dir), None)
                .into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        };
        let boot = strings(&launch_config());
        assert_eq!(after(&boot, "-machine"), ["q35"]);
        assert!(after(&boot, "-object").is_empty() && after(&boot, "-incoming").is_empty());
        assert!(!after(&boot, "-device").contains(&"vmgenid,guid=auto"));

        let mut cfg = launch_config();
        cfg.memory = GuestMemory::Template { file: "/state/templates/t1/memory".into() };
        let template = strings(&cfg);
        assert_eq!(after(&template, "-machine"), ["q35,memory-backend=mem0"]);
        assert_eq!(
            after(&template, "-object"),
            ["memory-backend-file,id=mem0,size=512M,mem-path=/state/templates/t1/memory,share=on"]
        );
        assert!(after(&template, "-device").contains(&"vmgenid,guid=auto"));
        assert!(after(&template, "-incoming").is_empty());

        let file = std::env::temp_dir().join(format!("atrium-qemu-tpl-{}", std::process::id()));
        std::fs::write(&file, [0u8; 4096]).unwrap();
        let memory = Arc::new(super::super::SealedMemory::from_file(&file).unwrap());
        std::fs::remove_file(&file).unwrap();
        cfg.memory = GuestMemory::Clone { memory: Arc::clone(&memory), state: "/s".into() };
        let clone = strings(&cfg);
        let object = format!(
            "memory-backend-file,id=mem0,size=512M,mem-path={},share=off",
            memory.path().display()
        );
        assert_eq!(after(&clone, "-object"), [object.as_str()]);
        assert_eq!(after(&clone, "-incoming"), ["defer"]);
        assert!(after(&clone, "-device").contains(&"vmgenid,guid=auto"));
    }

    #[test]
    fn command_line_for_tcg() {
        let rt = QemuRuntime::new(QemuSection::default(), KvmKind::Pvm);
        assert_eq!(rt.accel, Accel::Tcg);
        let a = args_of(&rt);
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=64"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        assert_eq!(after(&a, "-m"), ["512M"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert!(a.contains(&"-S".to_owned()), "VMs start paused");
        assert_eq!(
            after(&a, "-vnc"),
            ["unix:/state/vms/vm-0123456789abcdef/vnc.sock,share=force-shared"]
        );
        assert_eq!(
            after(&a, "-qmp"),
            ["unix:/state/vms/vm-0123456789abcdef/qmp.sock,server=on,wait=off"]
        );
        let devices = after(&a, "-device");
        assert!(devices.contains(&"VGA,edid=on,xres=1280,yres=800,vgamem_mb=16"));
        assert!(
            devices.contains(&"virtserialport,bus=vser0.0,chardev=agent0,name=org.atrium.agent.0")
        );
        assert!(devices.contains(&"virtio-tablet-pci"));
        assert!(
            after(&a, "-drive")[0]
                .starts_with("file=/state/vms/vm-0123456789abcdef/disk.qcow2,format=qcow2")
        );
        assert_eq!(after(&a, "-append"), ["console=ttyS0 quiet"]);
        assert_eq!(after(&a, "-initrd"), ["/img/initrd.img"]);
        assert_eq!(after(&a, "-drive").len(), 1, "no home disk was asked for");
        assert!(after(&a, "-audiodev").is_empty(), "no sound was asked for");
        assert!(!devices.iter().any(|d| d.contains("hda")), "{devices:?}");
        assert!(a.contains(&"-no-reboot".to_owned()), "a kernel-booted guest powers off");
    }

    #[test]
    fn a_disk_booted_by_firmware_gets_its_firmware_and_no_kernel() {
        let cfg = QemuSection { ovmf_dir: "/fw".into(), ..QemuSection::default() };
        let rt = QemuRuntime::new(cfg, KvmKind::Pvm);
        let args = |firmware, secure_boot| -> Vec<String> {
            let mut cfg = launch_config();
            cfg.boot = LaunchBoot::Firmware(FirmwareSpec { firmware, secure_boot, tpm: false });
            rt.args(&cfg, &Paths::in_dir(&cfg.dir), None)
                .into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        };
        let uefi = args(Firmware::Uefi, false);
        assert!(after(&uefi, "-tpmdev").is_empty(), "a TPM nobody asked for");
        assert!(after(&uefi, "-kernel").is_empty() && after(&uefi, "-append").is_empty());
        assert!(!uefi.contains(&"-no-reboot".to_owned()), "an OS on a disk may restart");
        assert_eq!(after(&uefi, "-machine"), ["q35"]);
        let drives = after(&uefi, "-drive");
        assert_eq!(drives[1], "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE_4M.fd");
        assert_eq!(
            drives[2],
            "if=pflash,format=raw,unit=1,file=/state/vms/vm-0123456789abcdef/efivars.fd"
        );
        assert!(
            after(&uefi, "-device")
                .contains(&"virtio-blk-pci,drive=disk0,serial=atrium-disk0,bootindex=0")
        );
        assert!(after(&uefi, "-global").is_empty());

        let secure = args(Firmware::Uefi, true);
        assert_eq!(after(&secure, "-machine"), ["q35,smm=on"]);
        assert!(after(&secure, "-drive")[1].ends_with("file=/fw/OVMF_CODE_4M.secboot.fd"));
        assert_eq!(after(&secure, "-global"), ["driver=cfi.pflash01,property=secure,value=on"]);
        assert_eq!(rt.ovmf(true).1, PathBuf::from("/fw/OVMF_VARS_4M.ms.fd"));

        let bios = args(Firmware::Bios, false);
        assert_eq!(after(&bios, "-drive").len(), 1, "SeaBIOS needs no flash: {bios:?}");
        assert!(after(&bios, "-kernel").is_empty());

        // A TPM: the VM's swtpm, reached through a link in the VM's folder; the variables in
        // the firmware's state folder.
        let mut cfg = launch_config();
        cfg.boot = LaunchBoot::Firmware(FirmwareSpec {
            firmware: Firmware::Uefi,
            secure_boot: false,
            tpm: true,
        });
        cfg.firmware_state = Some("/state/firmware/disk-alice".into());
        let a: Vec<String> = rt
            .args(&cfg, &Paths::in_dir(&cfg.dir), None)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert!(
            after(&a, "-chardev")
                .contains(&"socket,id=tpmchr0,path=/state/vms/vm-0123456789abcdef/tpm.sock")
        );
        assert_eq!(after(&a, "-tpmdev"), ["emulator,id=tpm0,chardev=tpmchr0"]);
        assert!(after(&a, "-drive")[2].ends_with("file=/state/firmware/disk-alice/efivars.fd"));
        assert!(after(&a, "-device").contains(&"tpm-crb,tpmdev=tpm0"));
    }

    #[test]
    fn a_guest_with_a_sound_driver_gets_a_sound_card_the_vnc_server_hears() {
        let rt = QemuRuntime::new(QemuSection::default(), KvmKind::Pvm);
        let mut cfg = launch_config();
        cfg.sound = true;
        let a: Vec<String> = rt
            .args(&cfg, &Paths::in_dir(&cfg.dir), None)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            after(&a, "-audiodev"),
            ["none,id=snd0,timer-period=10000,out.frequency=48000,out.channels=2,out.format=s16"]
        );
        let devices = after(&a, "-device");
        assert!(devices.contains(&"ich9-intel-hda,id=hda0"));
        assert!(devices.contains(&"hda-output,bus=hda0.0,audiodev=snd0"));
        assert_eq!(
            after(&a, "-vnc"),
            ["unix:/state/vms/vm-0123456789abcdef/vnc.sock,share=force-shared,audiodev=snd0"]
        );
    }

    #[test]
    fn a_home_disk_is_a_second_drive_with_its_own_serial() {
        let rt = QemuRuntime::new(QemuSection::default(), KvmKind::Pvm);
        let mut cfg = launch_config();
        cfg.home = Some(crate::runtime::HomeDiskConfig {
            path: "/state/disks/alice.qcow2".into(),
            size_mib: 2048,
        });
        let a: Vec<String> = rt
            .args(&cfg, &Paths::in_dir(&cfg.dir), None)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let drives = after(&a, "-drive");
        assert_eq!(drives.len(), 2);
        assert!(drives[0].contains("id=disk0"), "the root layer comes first: {drives:?}");
        assert!(drives[1].starts_with("file=/state/disks/alice.qcow2,format=qcow2"));
        assert!(after(&a, "-device").contains(&"virtio-blk-pci,drive=home0,serial=atrium-home"));
    }

    #[test]
    fn command_line_for_kvm_and_a_usb_tablet() {
        let cfg = QemuSection { pointer: Pointer::UsbTablet, ..QemuSection::default() };
        let rt = QemuRuntime::new(cfg, KvmKind::Vmx);
        let a = args_of(&rt);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert!(after(&a, "-device").contains(&"usb-tablet,bus=xhci0.0"));
    }

    #[test]
    fn vga_memory_fits_two_frames() {
        assert_eq!(vgamem_mb(1024, 768), 16);
        assert_eq!(vgamem_mb(1920, 1080), 16);
        assert_eq!(vgamem_mb(2560, 1600), 32);
        assert_eq!(vgamem_mb(3840, 2160), 64);
        assert_eq!(vgamem_mb(7680, 4320), 256);
    }

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
