//! The `builtin` runtime: one `atrium-node vmm --config vmm.json` process per VM, Atrium's own
//! rust-vmm monitor (`atrium_vmm`).
//!
//! - accelerator: always `/dev/kvm`; a pool or spec asks for it by name, or the operator makes
//!   it the node's default ([`crate::kvm::default_runtime`]); on PVM it still runs, with the
//!   kernel command-line workarounds for PVM's instruction emulator, and slowly;
//! - control: `control.sock` (JSON lines: resume, power button, stop);
//! - display: the display channel on `display.sock` ([`DisplayEndpoint::Shm`]: the framebuffer
//!   memfd and KVM's dirty log, input injected through virtio-input);
//! - guest agent: the virtio-console port `org.atrium.agent.0` bridged to `agent.sock`;
//!   serial console: a bounded `serial.log` (no socket);
//! - disk: raw only. The VM's writable disk is a sparse (or reflinked) copy of the image's
//!   read-only base made at first launch, attached as `vda`;
//! - the process joins its cgroup before `exec`, and outlives the node: a restarted node takes
//!   it back ([`BuiltinRuntime`]'s `adopt`: the process checked by its start time, the control
//!   socket answering).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_protocol::node::{Accel, DisplayEndpoint, KvmKind, RuntimeKind};
use atrium_vmm::config::{BootSource, FramebufferConfig, SerialConfig, VmmConfig};
use atrium_vmm::control::{self, ControlRequest, ControlResponse};
use tokio::process::Command;
use tokio::sync::watch;

use super::{
    Adoptable, BoxFuture, Endpoints, ExitInfo, Foreign, Frame, LaunchBoot, LaunchConfig, Runtime,
    RuntimeError, VmHandle,
};
use crate::image::DiskFormat;

/// Kernel parameters that keep a stock kernel clear of what PVM's instruction emulator lacks
/// (XSAVE, CMPXCHG16B, POPCNT, SMAP's CLAC).
pub const PVM_CMDLINE: &str = "noxsave clearcpuid=141,151,154,308";
/// Bytes of guest console output kept in `serial.log`.
const SERIAL_LOG_BYTES: u64 = 4 << 20;

/// The files of a VM's folder this runtime uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub config: PathBuf,
    pub control: PathBuf,
    pub display: PathBuf,
    pub agent: PathBuf,
    pub serial_log: PathBuf,
}

impl Paths {
    /// Where the node reaches the VM (its serial console is a file, not a socket).
    fn endpoints(&self) -> Endpoints {
        Endpoints {
            display: DisplayEndpoint::Shm { path: self.display.display().to_string() },
            agent: self.agent.clone(),
            serial: None,
            firmware_log: None,
        }
    }

    pub fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join("vmm.json"),
            control: dir.join("control.sock"),
            display: dir.join("display.sock"),
            agent: dir.join("agent.sock"),
            serial_log: dir.join("serial.log"),
        }
    }
}

#[derive(Debug)]
pub struct BuiltinRuntime {
    kvm: KvmKind,
    /// This program: it runs each VM as `atrium-node vmm`.
    exe: PathBuf,
    /// The display proxy's group (`node.local_socket_group`): it may connect to display sockets.
    display_group: Option<u32>,
}

impl BuiltinRuntime {
    pub fn new(kvm: KvmKind) -> Result<Self, RuntimeError> {
        let exe = std::env::current_exe().map_err(RuntimeError::io("locating atrium-node"))?;
        Ok(Self::with_program(kvm, exe))
    }

    /// Runs VMs with `program vmm --config ...` (an `atrium-node` binary; tests use this).
    pub fn with_program(kvm: KvmKind, program: PathBuf) -> Self {
        Self { kvm, exe: program, display_group: None }
    }

    /// Gives VMs' display sockets to group `gid` (the display proxy's), and lets it pass
    /// through their folders.
    #[must_use]
    pub fn with_display_group(mut self, gid: Option<u32>) -> Self {
        self.display_group = gid;
        self
    }

    /// The VMM's configuration for a launch.
    pub fn vmm_config(&self, cfg: &LaunchConfig, paths: &Paths) -> Result<VmmConfig, RuntimeError> {
        let vcpus = u8::try_from(cfg.vcpus)
            .map_err(|_| RuntimeError::Start(format!("{} vCPUs is too many", cfg.vcpus)))?;
        let LaunchBoot::Kernel { kernel, initrd, cmdline } = &cfg.boot else {
            return Err(RuntimeError::Start(
                "the builtin runtime boots kernels only; images booted by firmware (imported \
                 images) run on the qemu runtime"
                    .into(),
            ));
        };
        let mut cmdline = cmdline.clone();
        if self.kvm == KvmKind::Pvm {
            cmdline = format!("{cmdline} {PVM_CMDLINE}");
        }
        if let Some(h) = &cfg.home {
            return Err(RuntimeError::Start(format!(
                "the builtin runtime does not attach home disks ({}); desktop images run on the \
                 qemu runtime",
                h.path.display()
            )));
        }
        let disks = match &cfg.disk {
            Some(d) if d.base_format != DiskFormat::Raw => {
                return Err(RuntimeError::Start(format!(
                    "the builtin runtime attaches raw disks only; {} is {}",
                    d.base.display(),
                    d.base_format.as_str()
                )));
            }
            Some(d) => {
                vec![atrium_vmm::config::DiskConfig { path: d.layer.clone(), read_only: false }]
            }
            None => Vec::new(),
        };
        let config = VmmConfig {
            vm_id: cfg.id.clone(),
            boot: BootSource::Kernel { path: kernel.clone(), initramfs: initrd.clone(), cmdline },
            vcpus,
            memory_mib: cfg.memory_mib,
            framebuffer: Some(FramebufferConfig {
                width: cfg.display.width,
                height: cfg.display.height,
            }),
            disks,
            serial: SerialConfig {
                log_path: paths.serial_log.clone(),
                max_bytes: SERIAL_LOG_BYTES,
            },
            display_socket: Some(paths.display.clone()),
            agent_socket: Some(paths.agent.clone()),
            control_socket: Some(paths.control.clone()),
            start_paused: true,
            snapshot_dir: None,
        };
        config.validate().map_err(|e| RuntimeError::Start(e.to_string()))?;
        Ok(config)
    }

    async fn launch_vmm(&self, cfg: LaunchConfig) -> Result<Arc<BuiltinVm>, RuntimeError> {
        let paths = Paths::in_dir(&cfg.dir);
        let config = self.vmm_config(&cfg, &paths)?;
        if let Some(d) = &cfg.disk
            && !d.layer.exists()
        {
            copy_sparse(&d.base, &d.layer).await?;
        }
        let json =
            serde_json::to_vec_pretty(&config).map_err(|e| RuntimeError::Start(e.to_string()))?;
        std::fs::write(&paths.config, json)
            .map_err(RuntimeError::io(format!("writing {}", paths.config.display())))?;

        let mut cmd = Command::new(&self.exe);
        cmd.arg("vmm").arg("--config").arg(&paths.config);
        let (pid, exit_rx) =
            super::spawn_vm_process(cmd, &cfg, "vmm", true, |status, err_text| {
                exit_info(status, err_text.lines().last().unwrap_or_default())
            })?;
        let vm = BuiltinVm {
            endpoints: paths.endpoints(),
            paths,
            pid,
            exit: exit_rx,
            layer: cfg.disk.as_ref().filter(|d| !d.keep).map(|d| d.layer.clone()),
            foreign: None,
        };
        let shared = vm.wait_ready().await.and_then(|()| self.open_display_to_group(&vm.paths));
        match shared {
            Ok(()) => Ok(Arc::new(vm)),
            Err(e) => {
                let _ = vm.kill_now().await;
                Err(e)
            }
        }
    }
}

impl BuiltinRuntime {
    /// With a display group: the socket 0660 in that group, and its folder (and the folder of
    /// all VMs) passable, not listable, by others.
    fn open_display_to_group(&self, paths: &Paths) -> Result<(), RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(gid) = self.display_group else { return Ok(()) };
        let what = format!("giving {} to the display group", paths.display.display());
        let dir = paths.display.parent().map(Path::to_path_buf).unwrap_or_default();
        for d in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
            let mode = std::fs::metadata(d).map_err(RuntimeError::io(&what))?.permissions().mode();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011))
                .map_err(RuntimeError::io(&what))?;
        }
        std::os::unix::fs::chown(&paths.display, None, Some(gid))
            .map_err(RuntimeError::io(&what))?;
        std::fs::set_permissions(&paths.display, std::fs::Permissions::from_mode(0o660))
            .map_err(RuntimeError::io(what))
    }
}

fn exit_info(status: std::io::Result<std::process::ExitStatus>, last: &str) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) if s.success() => ExitInfo {
            clean: true,
            description: "the VMM exited (the guest powered off or was stopped)".into(),
        },
        Ok(s) => {
            let what = match (s.code(), s.signal()) {
                (Some(3), _) => "the guest faulted".to_owned(),
                (Some(c), _) => format!("the VMM exited with status {c}"),
                (None, Some(sig)) => format!("the VMM was killed by signal {sig}"),
                _ => "the VMM ended".to_owned(),
            };
            let description = if last.is_empty() { what } else { format!("{what}: {last}") };
            ExitInfo { clean: false, description }
        }
        Err(e) => {
            ExitInfo { clean: false, description: format!("waiting for the VMM failed: {e}") }
        }
    }
}

/// Copies a raw disk keeping holes (and sharing blocks where the filesystem can reflink).
async fn copy_sparse(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    let out = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(RuntimeError::io("running cp"))?;
    if !out.status.success() {
        return Err(RuntimeError::Start(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Runtime for BuiltinRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Builtin
    }

    fn accel(&self) -> Option<Accel> {
        Some(Accel::Kvm)
    }

    fn accel_reason(&self) -> String {
        if self.kvm.is_hardware() {
            "the builtin VMM runs on /dev/kvm with hardware virtualization".into()
        } else {
            format!(
                "the builtin VMM runs on /dev/kvm, which is {:?} here: guest kernels run under \
                 KVM's instruction emulator, 1,000-2,000x slower",
                self.kvm
            )
        }
    }

    fn adopt<'a>(
        &'a self,
        dir: &'a Path,
        a: &'a Adoptable,
    ) -> BoxFuture<'a, Result<Arc<dyn VmHandle>, RuntimeError>> {
        Box::pin(async move {
            let foreign = Foreign::open(a.pid, a.started)
                .map_err(RuntimeError::io(format!("finding the VMM (pid {})", a.pid)))?;
            let exit =
                foreign.exit_watch("the VMM").map_err(RuntimeError::io("watching the VMM"))?;
            let paths = Paths::in_dir(dir);
            let vm = BuiltinVm {
                endpoints: paths.endpoints(),
                paths,
                pid: Some(a.pid),
                exit,
                layer: a.layer.clone(),
                foreign: Some(foreign),
            };
            vm.wait_ready().await?;
            Ok(Arc::new(vm) as Arc<dyn VmHandle>)
        })
    }

    fn launch(&self, cfg: LaunchConfig) -> BoxFuture<'_, Result<Arc<dyn VmHandle>, RuntimeError>> {
        Box::pin(async move {
            // Templates and clones are the qemu runtime's; the builtin VMM has no snapshots yet.
            if !matches!(cfg.memory, super::GuestMemory::Private) {
                return Err(RuntimeError::Start(
                    "the builtin VMM boots its own memory only (no templates or clones)".into(),
                ));
            }
            let handle = self.launch_vmm(cfg).await?;
            Ok(handle as Arc<dyn VmHandle>)
        })
    }
}

#[derive(Debug)]
pub struct BuiltinVm {
    endpoints: Endpoints,
    paths: Paths,
    pid: Option<u32>,
    exit: watch::Receiver<Option<ExitInfo>>,
    /// The disk layer to delete at cleanup (not a persistent disk).
    layer: Option<PathBuf>,
    /// A VMM taken back after a node restart (not the node's child): signalled through this.
    foreign: Option<Foreign>,
}

impl BuiltinVm {
    async fn control(&self, req: ControlRequest) -> Result<ControlResponse, RuntimeError> {
        if self.exit.borrow().is_some() {
            return Err(RuntimeError::NotRunning);
        }
        let path = self.paths.control.clone();
        let answer = tokio::task::spawn_blocking(move || control::request(&path, &req))
            .await
            .map_err(|e| RuntimeError::Control(e.to_string()))?
            .map_err(|e| RuntimeError::Control(format!("control socket: {e}")))?;
        match answer {
            ControlResponse::Error { message } => Err(RuntimeError::Control(message)),
            other => Ok(other),
        }
    }

    /// Waits until the VMM answers on its control socket (it binds it once the VM is built).
    async fn wait_ready(&self) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(info) = self.exit.borrow().clone() {
                return Err(RuntimeError::Start(info.description));
            }
            if self.paths.control.exists()
                && matches!(
                    self.control(ControlRequest::Status).await,
                    Ok(ControlResponse::Status { .. })
                )
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Start(
                    "the VMM did not open its control socket within 15 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.exit.clone();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await.is_ok()
    }

    async fn kill_now(&self) -> Result<(), RuntimeError> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.control(ControlRequest::Stop)).await;
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
            Err(RuntimeError::Control("the VMM did not end after SIGKILL".into()))
        }
    }
}

/// Reads the screen through the display channel: `Hello` brings the framebuffer memfd.
fn grab_frame(path: &Path) -> Result<Frame, String> {
    let (_stream, info, fb) =
        atrium_vmm::display_client::connect(path).map_err(|e| e.to_string())?;
    let len = u64::from(info.stride) * u64::from(info.height);
    let mut pixels = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
    fb.read_exact_at(&mut pixels, 0).map_err(|e| e.to_string())?;
    Ok(xrgb_to_frame(&pixels, info.width, info.height, info.stride))
}

/// XRGB8888 rows (bytes B, G, R, X) to an RGB frame.
pub fn xrgb_to_frame(pixels: &[u8], width: u32, height: u32, stride: u32) -> Frame {
    let (w, h, s) = (width as usize, height as usize, stride as usize);
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let p = &pixels[y * s + x * 4..y * s + x * 4 + 4];
            rgb.extend_from_slice(&[p[2], p[1], p[0]]);
        }
    }
    Frame { width, height, rgb }
}

impl VmHandle for BuiltinVm {
    fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    fn accel(&self) -> Option<Accel> {
        Some(Accel::Kvm)
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.control(ControlRequest::Resume).await.map(drop) })
    }

    fn screenshot(&self) -> BoxFuture<'_, Result<Frame, RuntimeError>> {
        Box::pin(async move {
            if self.exit.borrow().is_some() {
                return Err(RuntimeError::NotRunning);
            }
            let path = self.paths.display.clone();
            tokio::task::spawn_blocking(move || grab_frame(&path))
                .await
                .map_err(|e| RuntimeError::Control(e.to_string()))?
                .map_err(RuntimeError::Control)
        })
    }

    fn request_shutdown(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.control(ControlRequest::PowerButton).await.map(drop) })
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(self.kill_now())
    }

    fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.clone()
    }

    fn adoptable(&self) -> Option<Adoptable> {
        Adoptable::of(self.pid, self.layer.as_ref(), None)
    }

    fn cleanup(&self) -> Result<(), RuntimeError> {
        let p = &self.paths;
        let mut files = vec![&p.control, &p.display, &p.agent, &p.config];
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
    use crate::runtime::DiskConfig;
    use atrium_protocol::node::DisplaySize;

    fn launch(dir: &Path, disk: Option<DiskConfig>) -> LaunchConfig {
        LaunchConfig {
            id: "vm-0123456789abcdef".into(),
            dir: dir.to_path_buf(),
            boot: LaunchBoot::Kernel {
                kernel: dir.join("vmlinuz"),
                initrd: Some(dir.join("initrd.img")),
                cmdline: "console=ttyS0".into(),
            },
            firmware_state: None,
            disk,
            home: None,
            vcpus: 2,
            memory_mib: 512,
            display: DisplaySize::new(1024, 768),
            sound: false,
            cgroup: None,
            memory: Default::default(),
        }
    }

    #[test]
    fn the_vmm_config_follows_the_launch() {
        let dir = Path::new("/vms/vm-1");
        let rt = BuiltinRuntime::with_program(KvmKind::Vmx, "/x".into());
        let disk = DiskConfig {
            base: "/img/home.raw".into(),
            base_format: DiskFormat::Raw,
            layer: dir.join("home.raw"),
            keep: false,
        };
        let c =
            rt.vmm_config(&launch(dir, Some(disk.clone())), &Paths::in_dir(dir)).expect("valid");
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.framebuffer, Some(FramebufferConfig { width: 1024, height: 768 }));
        assert!(c.start_paused);
        assert_eq!(
            c.disks,
            vec![atrium_vmm::config::DiskConfig { path: dir.join("home.raw"), read_only: false }]
        );
        assert_eq!(c.control_socket, Some(dir.join("control.sock")));
        let BootSource::Kernel { cmdline, .. } = &c.boot else { panic!("kernel boot") };
        assert_eq!(cmdline, "console=ttyS0");
        // On PVM the emulator's gaps are worked around; qcow2 bases are refused.
        let pvm = BuiltinRuntime::with_program(KvmKind::Pvm, "/x".into());
        let c = pvm.vmm_config(&launch(dir, None), &Paths::in_dir(dir)).expect("valid");
        let BootSource::Kernel { cmdline, .. } = &c.boot else { panic!("kernel boot") };
        assert!(cmdline.ends_with(PVM_CMDLINE));
        let qcow = DiskConfig { base_format: DiskFormat::Qcow2, ..disk };
        assert!(rt.vmm_config(&launch(dir, Some(qcow)), &Paths::in_dir(dir)).is_err());
        let mut many = launch(dir, None);
        many.vcpus = 1000;
        assert!(rt.vmm_config(&many, &Paths::in_dir(dir)).is_err());
    }

    #[test]
    fn xrgb_becomes_rgb() {
        // Two pixels on a row padded to 12 bytes: red, then blue.
        let px = [0, 0, 0xff, 0, 0xff, 0, 0, 0, 9, 9, 9, 9];
        let f = xrgb_to_frame(&px, 2, 1, 12);
        assert_eq!(f.rgb, vec![0xff, 0, 0, 0, 0, 0xff]);
    }
}
