//! The recipe that turns a [`VmmConfig`] into a running VM, one small step at a time (after
//! Firecracker's `build_microvm_for_boot`); the main thread then waits for it to stop in
//! [`crate::main_loop`].

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use tracing::{debug, info, warn};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{MmioDevice, create_acpi_tables};
use crate::arch::{self, StartMode};
use crate::boot::{ScreenInfo, load_firmware, load_linux};
use crate::config::{BootSource, VmmConfig};
use crate::control::{ControlThread, VmState};
use crate::devices::bus::{Bus, lock};
use crate::devices::framebuffer::Framebuffer;
use crate::devices::framebuffer::event_handler::DisplayChannel;
use crate::devices::serial::{BoundedLog, SerialDevice, SerialState};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::console::event_handler::AgentChannel;
use crate::devices::virtio::input::{Input, InputKind};
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::{MmioTransport, SnapshotTransport, VirtioDevice};
use crate::event_loop::{EventLoop, Notify};
use crate::firmware::BootInfo;
use crate::kvm_kind::{self, KvmKind};
use crate::layout::{
    COM1_IRQ, COM1_PORT, FRAMEBUFFER_START, GED_IRQ, KVM_TSS_ADDR, VIRTIO_FIRST_IRQ,
    VIRTIO_MMIO_START, VIRTIO_MMIO_STRIDE,
};
use crate::main_loop::{MainLoop, SnapshotParts};
use crate::memory::{GuestRam, create_guest_ram, map_snapshot_ram};
use crate::metrics::{DeviceMetrics, Metrics};
use crate::snapshot::{self, LoadedSnapshot, SnapshotFiles, VcpuState};
use crate::vcpu::{Vcpu, VcpuCommand, VcpuHandle, install_kick_handler};
use crate::{ExitReason, VmmError, VmmMessage};

/// The first KVM slot number of the framebuffer (RAM takes 0 and maybe 1).
const FB_SLOT: u32 = 8;

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmmError {
    move |e| VmmError::Kvm(what, e)
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = what.into();
    move |e| VmmError::Io(what, e)
}

/// A VM built and not yet started.
struct Vmm {
    config: VmmConfig,
    kind: KvmKind,
    started: Instant,
    kvm: Kvm,
    vm: Arc<VmFd>,
    ram: GuestRam,
    framebuffer: Option<Arc<Framebuffer>>,
    pio: Bus,
    mmio: Bus,
    mmio_devices: Vec<MmioDevice>,
    /// Every virtio transport, in the order attached (the order of a snapshot's states).
    transports: Vec<Arc<Mutex<dyn SnapshotTransport>>>,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    event_loop: EventLoop,
    keyboard: Option<Arc<Mutex<MmioTransport<Input>>>>,
    tablet: Option<Arc<Mutex<MmioTransport<Input>>>>,
    console: Option<Arc<Mutex<MmioTransport<Console>>>>,
    metrics: Metrics,
    power_button: EventFd,
    tx: Sender<VmmMessage>,
    rx: Receiver<VmmMessage>,
}

/// Builds the VM described by `config` (booted, or restored from a snapshot), runs it until it
/// stops, and says why.
pub fn run(config: VmmConfig) -> Result<ExitReason, VmmError> {
    let started = Instant::now();
    config.validate()?;
    let kind = kvm_kind::detect();
    info!(vm = %config.vm_id, kvm = kvm_kind::name(kind), hardware = kind.is_hardware(), "building VM");
    let step = |name: &str| debug!(step = name, us = started.elapsed().as_micros(), "recipe");
    let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
    let host_cpu = match (&config.boot, &config.snapshot_dir) {
        (BootSource::Snapshot { .. }, _) | (_, Some(_)) => snapshot::host_cpu(&kvm, config.vcpus)?,
        _ => 0,
    };
    let restore = match &config.boot {
        BootSource::Snapshot { dir } => Some(snapshot::load(dir, &config, kind, host_cpu)?),
        _ => None,
    };
    let snapshot_files = match &config.snapshot_dir {
        Some(dir) => Some(SnapshotFiles::create(dir)?),
        None => None,
    };
    let mut vmm = create_vm(kvm, config, kind, started, restore.as_ref())?;
    step("create_vm");
    vmm.create_memory()?;
    step("create_memory");
    vmm.attach_serial(restore.as_ref().map(|r| &r.state.serial))?;
    vmm.attach_framebuffer()?;
    vmm.attach_input()?;
    vmm.attach_disks()?;
    vmm.attach_agent_console()?;
    step("attach_devices");
    let vcpus = match &restore {
        None => {
            let rsdp = create_acpi_tables(&vmm.ram.memory, vmm.config.vcpus, &vmm.mmio_devices)?;
            let mode = vmm.load_boot_payload(rsdp)?;
            step("load_boot_payload");
            vmm.create_vcpus(Start::Boot(mode))?
        }
        Some(r) => {
            vmm.restore_devices(r)?;
            step("restore_devices");
            let vcpus = vmm.create_vcpus(Start::Restore(&r.state.vcpus))?;
            vmm.resume_devices();
            vcpus
        }
    };
    step("create_vcpus");
    vmm.attach_channels()?;
    vmm.start_and_wait(vcpus, snapshot_files.map(|files| (files, host_cpu)))
}

/// How the vCPUs start.
enum Start<'a> {
    Boot(StartMode),
    Restore(&'a [VcpuState]),
}

fn create_vm(
    kvm: Kvm,
    config: VmmConfig,
    kind: KvmKind,
    started: Instant,
    restore: Option<&LoadedSnapshot>,
) -> Result<Vmm, VmmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(usize::try_from(KVM_TSS_ADDR).expect("below 4 GiB"))
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    let size = u64::from(config.memory_mib) << 20;
    let ram = match restore {
        Some(r) => {
            snapshot::restore_vm(&vm, &r.state.vm)?;
            map_snapshot_ram(&r.memory, size)?
        }
        None => create_guest_ram(size)?,
    };
    let power_button = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?;
    vm.register_irqfd(&power_button, GED_IRQ).map_err(kvm_err("KVM_IRQFD (power button)"))?;
    let (tx, rx) = channel();
    Ok(Vmm {
        config,
        kind,
        started,
        kvm,
        vm: Arc::new(vm),
        ram,
        framebuffer: None,
        pio: Bus::default(),
        mmio: Bus::default(),
        mmio_devices: Vec::new(),
        transports: Vec::new(),
        serial: None,
        event_loop: EventLoop::new().map_err(io_err("event loop"))?,
        keyboard: None,
        tablet: None,
        console: None,
        metrics: Metrics::default(),
        power_button,
        tx,
        rx,
    })
}

impl Vmm {
    /// Registers guest RAM with KVM, one slot per region.
    fn create_memory(&mut self) -> Result<(), VmmError> {
        for (slot, region) in (0u32..).zip(self.ram.memory.iter()) {
            let host = region.get_host_address(vm_memory::MemoryRegionAddress(0)).map_err(|e| {
                VmmError::Io("guest RAM".into(), std::io::Error::other(e.to_string()))
            })?;
            let mr = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes owned by
            // `self.ram`, which outlives the VM fd's use of it (both live in `Vmm` and the VM
            // is torn down before the memory is unmapped).
            unsafe { self.vm.set_user_memory_region(mr) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    fn attach_serial(&mut self, restore: Option<&SerialState>) -> Result<(), VmmError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        self.vm.register_irqfd(&irq, COM1_IRQ).map_err(kvm_err("KVM_IRQFD (COM1)"))?;
        let s = &self.config.serial;
        let log = BoundedLog::create(&s.log_path, s.max_bytes, self.started)
            .map_err(io_err(format!("serial log {}", s.log_path.display())))?;
        self.metrics.serial = Some(log.metrics());
        let dev = match restore {
            Some(state) => SerialDevice::from_state(irq, log, state)
                .map_err(|why| VmmError::Snapshot(snapshot::SnapshotError::Refused(why)))?,
            None => SerialDevice::new(irq, log),
        };
        let dev = Arc::new(Mutex::new(dev));
        self.pio.insert(u64::from(COM1_PORT), 8, dev.clone())?;
        self.serial = Some(dev);
        Ok(())
    }

    /// Puts a snapshot's device states and screen into the devices just attached.
    fn restore_devices(&mut self, r: &LoadedSnapshot) -> Result<(), VmmError> {
        let refused = |why: String| VmmError::Snapshot(snapshot::SnapshotError::Refused(why));
        if r.state.virtio.len() != self.transports.len() {
            return Err(refused(format!(
                "{} virtio devices in the snapshot, {} in this VM",
                r.state.virtio.len(),
                self.transports.len()
            )));
        }
        for (i, (t, s)) in self.transports.iter().zip(&r.state.virtio).enumerate() {
            lock(t).restore(s).map_err(|why| refused(format!("virtio device {i}: {why}")))?;
        }
        if let Some(fb) = &self.framebuffer {
            use std::os::unix::fs::FileExt;
            if r.framebuffer.len() as u64 != fb.size {
                return Err(refused(format!(
                    "the snapshot's screen is {} bytes, this VM's {}",
                    r.framebuffer.len(),
                    fb.size
                )));
            }
            fb.memfd.write_all_at(&r.framebuffer, 0).map_err(io_err("restoring the screen"))?;
        }
        Ok(())
    }

    /// Once every vCPU is restored: interrupts still pending at the snapshot, and queues the
    /// guest notified just before it.
    fn resume_devices(&self) {
        if let Some(serial) = &self.serial {
            lock(serial).resume();
        }
        for t in &self.transports {
            lock(t).resume();
        }
    }

    fn attach_framebuffer(&mut self) -> Result<(), VmmError> {
        let Some(cfg) = self.config.framebuffer else { return Ok(()) };
        let fb = Framebuffer::create(cfg, FRAMEBUFFER_START)?;
        let mr = kvm_userspace_memory_region {
            slot: FB_SLOT,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: FRAMEBUFFER_START,
            memory_size: fb.size,
            userspace_addr: fb.mapping.as_ptr() as u64,
        };
        // SAFETY: the mapping is `fb.size` bytes, owned by the framebuffer that the VMM keeps
        // (in an `Arc`) for as long as the VM fd exists.
        unsafe { self.vm.set_user_memory_region(mr) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (framebuffer)"))?;
        self.metrics.framebuffer = Some(Arc::clone(&fb.metrics));
        info!(width = fb.width, height = fb.height, bytes = fb.size, "framebuffer attached");
        self.framebuffer = Some(Arc::new(fb));
        Ok(())
    }

    /// Puts a virtio device on the MMIO bus with its interrupt (irqfd) and its queue
    /// notification (ioeventfd, or an event the transport signals when KVM has none).
    fn attach_virtio<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
        name: String,
        metrics: DeviceMetrics,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, VmmError> {
        let index = self.mmio_devices.len() as u64;
        let irq_num = VIRTIO_FIRST_IRQ + u32::try_from(index).expect("few devices");
        if irq_num >= GED_IRQ {
            return Err(VmmError::Io(name, std::io::Error::other("no interrupt line left")));
        }
        let base = VIRTIO_MMIO_START + index * VIRTIO_MMIO_STRIDE;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        self.vm.register_irqfd(&irq, irq_num).map_err(kvm_err("KVM_IRQFD (virtio)"))?;
        let mut transport = MmioTransport::new(device, self.ram.memory.clone(), irq);
        let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        let addr = IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY);
        if let Err(e) = self.vm.register_ioevent(&notify, &addr, NoDatamatch) {
            warn!(device = %name, error = %e, "no ioeventfd; queue notifications go through the vCPU thread");
            transport.set_notify_event(notify.try_clone().map_err(io_err("eventfd"))?);
        }
        self.metrics.virtio.push((name, Arc::clone(&transport.metrics), metrics));
        let shared = Arc::new(Mutex::new(transport));
        self.mmio.insert(base, VIRTIO_MMIO_STRIDE, shared.clone())?;
        let as_state: Arc<Mutex<dyn SnapshotTransport>> = shared.clone();
        self.transports.push(as_state);
        let as_notify: Arc<Mutex<dyn Notify>> = shared.clone();
        self.event_loop.add_virtio(notify, as_notify).map_err(io_err("event loop"))?;
        self.mmio_devices.push(MmioDevice { base, len: VIRTIO_MMIO_STRIDE, irq: irq_num });
        Ok(shared)
    }

    /// A keyboard and a tablet for every VM with a screen.
    fn attach_input(&mut self) -> Result<(), VmmError> {
        let Some(fb) = self.config.framebuffer else { return Ok(()) };
        let kbd = Input::new(InputKind::Keyboard);
        let m = DeviceMetrics::Input(Arc::clone(&kbd.metrics));
        self.keyboard = Some(self.attach_virtio(kbd, "keyboard".into(), m)?);
        let tab = Input::new(InputKind::Tablet { width: fb.width, height: fb.height });
        let m = DeviceMetrics::Input(Arc::clone(&tab.metrics));
        self.tablet = Some(self.attach_virtio(tab, "tablet".into(), m)?);
        Ok(())
    }

    fn attach_disks(&mut self) -> Result<(), VmmError> {
        for (i, d) in self.config.disks.clone().into_iter().enumerate() {
            let blk = Block::open(&d.path, d.read_only, &format!("atrium-disk{i}"))
                .map_err(io_err(format!("disk {}", d.path.display())))?;
            let m = DeviceMetrics::Block(Arc::clone(&blk.metrics));
            self.attach_virtio(blk, format!("disk{i}"), m)?;
        }
        Ok(())
    }

    fn attach_agent_console(&mut self) -> Result<(), VmmError> {
        if self.config.agent_socket.is_none() {
            return Ok(());
        }
        let console = Console::new(atrium_protocol::agent::PORT_NAME);
        let m = DeviceMetrics::Console(Arc::clone(&console.metrics));
        self.console = Some(self.attach_virtio(console, "agent".into(), m)?);
        Ok(())
    }

    fn load_boot_payload(&mut self, rsdp: u64) -> Result<StartMode, VmmError> {
        let mem = &self.ram.memory;
        match &self.config.boot {
            BootSource::Kernel { path, initramfs, cmdline } => {
                arch::write_boot_tables(mem, false)?;
                let screen = self.framebuffer.as_ref().map(|fb| ScreenInfo {
                    config: crate::config::FramebufferConfig { width: fb.width, height: fb.height },
                    size: fb.size,
                    efi: false,
                });
                Ok(load_linux(mem, path, initramfs.as_deref(), cmdline, rsdp, screen)?)
            }
            BootSource::Firmware { path } => {
                arch::write_boot_tables(mem, true)?;
                let mut info = BootInfo {
                    virtio_count: u32::try_from(self.mmio_devices.len()).expect("few devices"),
                    virtio_base: VIRTIO_MMIO_START,
                    virtio_stride: u32::try_from(VIRTIO_MMIO_STRIDE).expect("4 KiB"),
                    ..BootInfo::default()
                };
                if let Some(fb) = &self.framebuffer {
                    info.fb_addr = fb.guest_addr;
                    info.fb_width = fb.width;
                    info.fb_height = fb.height;
                    info.fb_stride = fb.stride;
                }
                Ok(load_firmware(mem, path, info)?)
            }
            BootSource::Snapshot { .. } => Err(VmmError::Snapshot(
                snapshot::SnapshotError::Refused("a snapshot has no boot payload".into()),
            )),
        }
    }

    fn create_vcpus(
        &mut self,
        start: Start<'_>,
    ) -> Result<Vec<(Vcpu, Sender<VcpuCommand>)>, VmmError> {
        let count = self.config.vcpus;
        let msr_indices = match self.kvm.get_msr_index_list() {
            Ok(list) => list.as_slice().to_vec(),
            Err(e) => {
                warn!(error = %e, "KVM_GET_MSR_INDEX_LIST failed; snapshots will hold no MSRs");
                Vec::new()
            }
        };
        let msr_indices = Arc::new(msr_indices);
        let mut out = Vec::new();
        for id in 0..count {
            let fd = self.vm.create_vcpu(u64::from(id)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            arch::setup_cpuid(&self.kvm, &fd, id, count)?;
            match start {
                Start::Boot(mode) => {
                    arch::setup_msrs(&fd)?;
                    arch::setup_fpu(&fd)?;
                    arch::setup_lapic(&fd)?;
                    if id == 0 {
                        arch::setup_sregs(&fd, mode)?;
                        arch::setup_regs(&fd, mode)?;
                    }
                }
                Start::Restore(states) => {
                    let state = states.get(usize::from(id)).ok_or_else(|| {
                        VmmError::Snapshot(snapshot::SnapshotError::Refused(format!(
                            "no state for vCPU {id}"
                        )))
                    })?;
                    snapshot::restore_vcpu(&self.kvm, &fd, state)?;
                }
            }
            let (vcpu, tx) = Vcpu::new(
                id,
                fd,
                self.pio.clone(),
                self.mmio.clone(),
                self.ram.memory.clone(),
                Arc::clone(&msr_indices),
                self.tx.clone(),
            );
            self.metrics.vcpus.push(Arc::clone(&vcpu.metrics));
            out.push((vcpu, tx));
        }
        Ok(out)
    }

    fn bind(path: &Path) -> Result<UnixListener, VmmError> {
        if path.exists() {
            std::fs::remove_file(path).map_err(io_err(format!("removing {}", path.display())))?;
        }
        UnixListener::bind(path).map_err(io_err(format!("binding {}", path.display())))
    }

    fn attach_channels(&mut self) -> Result<(), VmmError> {
        if let (Some(path), Some(fb), Some(kbd), Some(tab)) =
            (&self.config.display_socket, &self.framebuffer, &self.keyboard, &self.tablet)
        {
            let listener = Self::bind(path)?;
            let d = DisplayChannel::new(
                listener,
                Arc::clone(&self.vm),
                Arc::clone(fb),
                FB_SLOT,
                kbd.clone(),
                tab.clone(),
            );
            self.event_loop.set_display(d).map_err(io_err("display channel"))?;
        }
        if let (Some(path), Some(console)) = (&self.config.agent_socket, &self.console) {
            let listener = Self::bind(path)?;
            self.event_loop
                .set_agent(AgentChannel::new(listener, console.clone()))
                .map_err(io_err("agent channel"))?;
        }
        Ok(())
    }

    fn start_and_wait(
        self,
        vcpus: Vec<(Vcpu, Sender<VcpuCommand>)>,
        snapshot_files: Option<(SnapshotFiles, u64)>,
    ) -> Result<ExitReason, VmmError> {
        install_kick_handler().map_err(io_err("installing the vCPU kick handler"))?;
        let Vmm {
            config,
            kind,
            started,
            event_loop,
            metrics,
            tx,
            rx,
            vm,
            ram,
            framebuffer,
            power_button,
            transports,
            serial,
            ..
        } = self;
        let event_loop = event_loop.start().map_err(io_err("starting the event loop"))?;
        let control = match &config.control_socket {
            Some(p) => Some(
                ControlThread::start(p, tx.clone())
                    .map_err(io_err(format!("control socket {}", p.display())))?,
            ),
            None => None,
        };
        let mut handles: Vec<VcpuHandle> = Vec::new();
        let mut start_error = None;
        for (vcpu, cmd) in vcpus {
            match vcpu.start(cmd) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    start_error = Some(VmmError::Io("starting a vCPU thread".into(), e));
                    break;
                }
            }
        }
        let result = match start_error {
            Some(e) => Err(e),
            None => {
                let state = if config.start_paused {
                    info!(vm = %config.vm_id, ms = started.elapsed().as_millis(), "VM ready, paused");
                    VmState::Paused
                } else {
                    for h in &handles {
                        h.send(VcpuCommand::Resume);
                    }
                    info!(vm = %config.vm_id, kvm = kvm_kind::name(kind), ms = started.elapsed().as_millis(), "VM running");
                    VmState::Running
                };
                // Every thread of the VM has its filter from here on.
                crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::Main);
                let main = MainLoop {
                    config: &config,
                    kind,
                    started,
                    rx: &rx,
                    vcpus: &handles,
                    metrics: &metrics,
                    power_button: &power_button,
                    snapshot: snapshot_files.as_ref().map(|(files, host_cpu)| SnapshotParts {
                        files,
                        host_cpu: *host_cpu,
                        vm: &vm,
                        ram: &ram,
                        framebuffer: framebuffer.as_deref(),
                        transports: &transports,
                        serial: serial.as_deref(),
                    }),
                    pending_exit: std::cell::RefCell::new(None),
                    snapshot_tag: std::cell::Cell::new(0),
                };
                Ok(main.wait(state))
            }
        };
        for h in &handles {
            h.send(VcpuCommand::Stop);
        }
        for h in handles {
            h.join();
        }
        event_loop.stop();
        if let Some(c) = control {
            c.stop();
        }
        for p in [&config.display_socket, &config.agent_socket, &config.control_socket]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(p);
        }
        // The VM fd goes before the memory it maps (the devices hold the memory too).
        drop(transports);
        drop(vm);
        drop(framebuffer);
        drop(ram);
        if let Ok(reason) = &result {
            info!(vm = %config.vm_id, ?reason, "VM stopped");
        }
        result
    }
}
