//! QEMU's command line for a VM ([`QemuRuntime::args`]): machine and accelerator, memory (a
//! template's or a clone's from a file), QMP, the display, the serial console, the agent's port,
//! sound, the pointer, disks, and how it boots (a kernel; or OVMF or SeaBIOS, with the firmware's
//! state folder and a TPM), and what the firmware needs before QEMU starts
//! ([`QemuRuntime::prepare_firmware`]).

use std::ffi::OsString;
use std::path::PathBuf;

use atrium_protocol::agent::PORT_NAME;
use atrium_protocol::node::Accel;

use super::{Paths, QemuRuntime};
use crate::accounts::RunAs;
use crate::config::Pointer;
use crate::image::{Firmware, FirmwareSpec};
use crate::runtime::{GuestMemory, LaunchBoot, LaunchConfig, RuntimeError};

/// A UEFI VM's own variables, in its firmware's state folder.
const EFIVARS: &str = "efivars.fd";
/// The id of a template's or a clone's memory backend.
const MEMORY_BACKEND: &str = "mem0";

impl QemuRuntime {
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

    /// QEMU's command line for a VM that drops to `user`.
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
            // SeaBIOS is QEMU's own. It says what it does (and that it found nothing to boot)
            // on its debug port only, beside the screen: the node reads that with the console.
            LaunchBoot::Firmware(FirmwareSpec { firmware: Firmware::Bios, .. }) => {
                a.push("-chardev".into());
                a.push(
                    format!(
                        "socket,id=debugcon0,path={},server=on,wait=off",
                        paths.debugcon.display()
                    )
                    .into(),
                );
                a.push("-device".into());
                a.push("isa-debugcon,iobase=0x402,chardev=debugcon0".into());
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use atrium_protocol::node::{DisplaySize, KvmKind};

    use super::*;
    use crate::accounts::UidPool;
    use crate::config::QemuSection;
    use crate::image::DiskFormat;
    use crate::runtime::DiskConfig;

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
        let memory = Arc::new(crate::runtime::SealedMemory::from_file(&file).unwrap());
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
        // SeaBIOS's debug port, where it says it found nothing to boot; not for UEFI.
        assert!(after(&bios, "-device").contains(&"isa-debugcon,iobase=0x402,chardev=debugcon0"));
        assert!(
            after(&bios, "-chardev").iter().any(|c| c.starts_with("socket,id=debugcon0,path=")
                && c.ends_with("/debugcon.sock,server=on,wait=off"))
        );
        assert!(!uefi.iter().any(|a| a.contains("debugcon")), "{uefi:?}");

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
}
