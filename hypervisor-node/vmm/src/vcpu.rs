//! One thread per vCPU, an explicit state machine driven by a channel (after Firecracker's
//! `vstate/vcpu.rs`): `Paused` until told to run, `Running` through `KVM_RUN` and its exits,
//! `Exited` once the guest stopped itself, until told to stop. A signal kicks the thread out of
//! `KVM_RUN` (through `immediate_exit`, so a kick that lands just before the ioctl is not lost).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use tracing::{debug, info, warn};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::ExitReason;
use crate::devices::bus::Bus;
use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, I8042_CMD_PORT, IDLE_PORT,
    POST_PORT,
};
use crate::memory::GuestMemory;
use crate::snapshot::VcpuState;

/// Commands from the VMM's main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuCommand {
    Resume,
    Pause,
    /// Pause (if running) and say so with this tag, whatever the state: a snapshot knows each
    /// vCPU is out of `KVM_RUN` by these answers, not by older reports.
    Park(u64),
    /// Report the vCPU's state with this tag (`crate::snapshot`); only a paused vCPU does.
    Save(u64),
    Stop,
}

/// Why a vCPU's state could not be saved.
enum SaveError {
    Failed(String),
    /// The guest stopped on this vCPU while its last exit was completed.
    Stopped(ExitReason),
}

/// What a vCPU thread reports to the main thread.
#[derive(Debug)]
pub enum VcpuReport {
    Paused(u8),
    /// The guest stopped on this vCPU (power-off, reset, fault).
    Exited(u8, ExitReason),
    /// The answer to [`VcpuCommand::Park`].
    Parked(u8, u64),
    /// The answer to [`VcpuCommand::Save`].
    Saved(u8, u64, Result<Box<VcpuState>, String>),
}

#[derive(Debug, Default)]
pub struct VcpuMetrics {
    pub exits: AtomicU64,
    pub io_exits: AtomicU64,
    pub mmio_exits: AtomicU64,
    pub int3_injected: AtomicU64,
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's mmap'd `kvm_run`, set by `Vcpu::run_thread`
        // before any kick can target it and cleared before the mapping goes away; a volatile
        // byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// The kick signal; the handler is installed once per process.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

/// How the run loop goes on after an exit.
enum Flow {
    Continue,
    /// `KVM_RUN` returned without running the guest (a kick, `immediate_exit`).
    Interrupted,
    Exit(ExitReason),
    InternalError,
}

/// What one `KVM_RUN` came to.
enum Step {
    /// The guest ran and its exit was served.
    Ran,
    /// Kicked out before the guest ran (any exit still pending was completed).
    Interrupted,
    /// The guest stopped.
    Stopped(ExitReason),
}

pub struct Vcpu {
    pub id: u8,
    fd: VcpuFd,
    pio: Bus,
    mmio: Bus,
    mem: GuestMemory,
    /// The MSRs a snapshot reads (KVM's list of those it saves and emulates).
    msr_indices: Arc<Vec<u32>>,
    commands: Receiver<VcpuCommand>,
    reports: Sender<crate::VmmMessage>,
    pub metrics: Arc<VcpuMetrics>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The main thread's end of a vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    pub id: u8,
    commands: Sender<VcpuCommand>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    pub fn send(&self, cmd: VcpuCommand) {
        // A thread that is gone has nothing left to stop.
        let _ = self.commands.send(cmd);
        self.kick();
    }

    fn kick(&self) {
        if let Some(t) = &self.thread
            && let Err(e) = t.kill(kick_signal())
        {
            debug!(vcpu = self.id, error = %e, "kick failed (thread already gone)");
        }
    }

    pub fn join(mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!(vcpu = self.id, "vCPU thread panicked");
        }
    }
}

impl Vcpu {
    pub fn new(
        id: u8,
        fd: VcpuFd,
        pio: Bus,
        mmio: Bus,
        mem: GuestMemory,
        msr_indices: Arc<Vec<u32>>,
        reports: Sender<crate::VmmMessage>,
    ) -> (Self, Sender<VcpuCommand>) {
        let (tx, commands) = std::sync::mpsc::channel();
        let vcpu = Self {
            id,
            fd,
            pio,
            mmio,
            mem,
            msr_indices,
            commands,
            reports,
            metrics: Arc::default(),
        };
        (vcpu, tx)
    }

    /// Starts the thread, paused.
    pub fn start(self, commands: Sender<VcpuCommand>) -> std::io::Result<VcpuHandle> {
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run_thread())?;
        Ok(VcpuHandle { id, commands, thread: Some(thread) })
    }

    fn report(&self, r: VcpuReport) {
        let _ = self.reports.send(crate::VmmMessage::Vcpu(r));
    }

    fn run_thread(mut self) {
        KVM_RUN.with(|c| c.set(std::ptr::from_mut(self.fd.get_kvm_run())));
        crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::Vcpu);
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum State {
            Paused,
            Running,
            Exited,
        }
        let mut state = State::Paused;
        loop {
            state = match state {
                State::Paused | State::Exited => match self.commands.recv() {
                    Ok(VcpuCommand::Resume) if state == State::Paused => State::Running,
                    Ok(VcpuCommand::Park(tag)) => {
                        self.report(VcpuReport::Parked(self.id, tag));
                        state
                    }
                    Ok(VcpuCommand::Save(tag)) if state == State::Exited => {
                        let why = "the guest stopped on this vCPU".to_owned();
                        self.report(VcpuReport::Saved(self.id, tag, Err(why)));
                        state
                    }
                    Ok(VcpuCommand::Save(tag)) => match self.save() {
                        Ok(saved) => {
                            self.report(VcpuReport::Saved(self.id, tag, Ok(Box::new(saved))));
                            state
                        }
                        Err(SaveError::Failed(why)) => {
                            self.report(VcpuReport::Saved(self.id, tag, Err(why)));
                            state
                        }
                        Err(SaveError::Stopped(reason)) => {
                            info!(vcpu = self.id, ?reason, "guest stopped");
                            let why = "the guest stopped on this vCPU".to_owned();
                            self.report(VcpuReport::Saved(self.id, tag, Err(why)));
                            self.report(VcpuReport::Exited(self.id, reason));
                            State::Exited
                        }
                    },
                    Ok(VcpuCommand::Resume | VcpuCommand::Pause) => state,
                    Ok(VcpuCommand::Stop) | Err(_) => break,
                },
                State::Running => match self.commands.try_recv() {
                    Ok(VcpuCommand::Pause) => {
                        self.report(VcpuReport::Paused(self.id));
                        State::Paused
                    }
                    Ok(VcpuCommand::Resume) => State::Running,
                    Ok(VcpuCommand::Park(tag)) => {
                        self.report(VcpuReport::Parked(self.id, tag));
                        State::Paused
                    }
                    Ok(VcpuCommand::Save(tag)) => {
                        let why = "a running vCPU is not saved".to_owned();
                        self.report(VcpuReport::Saved(self.id, tag, Err(why)));
                        State::Running
                    }
                    Ok(VcpuCommand::Stop) | Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => match self.run_once() {
                        Step::Ran | Step::Interrupted => State::Running,
                        Step::Stopped(reason) => {
                            info!(vcpu = self.id, ?reason, "guest stopped");
                            self.report(VcpuReport::Exited(self.id, reason));
                            State::Exited
                        }
                    },
                },
            };
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

    /// The vCPU's state for a snapshot. The last exit is completed first: an `in` whose value
    /// userspace filled in reaches the guest's register only on the next `KVM_RUN`, which
    /// `immediate_exit` ends before the guest runs again.
    ///
    /// Completing it may exit again (a string `in`/`out` with more to move, an access split
    /// in two): that exit is served as any other, and the vCPU entered again, until `KVM_RUN`
    /// comes back without one.
    fn save(&mut self) -> Result<VcpuState, SaveError> {
        const MAX_COMPLETIONS: usize = 4096;
        let mut completed = false;
        for _ in 0..MAX_COMPLETIONS {
            self.fd.set_kvm_immediate_exit(1);
            match self.run_once() {
                Step::Interrupted => {
                    completed = true;
                    break;
                }
                Step::Ran => {}
                Step::Stopped(reason) => return Err(SaveError::Stopped(reason)),
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        if !completed {
            return Err(SaveError::Failed("the last exit did not complete".to_owned()));
        }
        crate::snapshot::save_vcpu(&self.fd, &self.msr_indices)
            .map_err(|e| SaveError::Failed(e.to_string()))
    }

    /// One `KVM_RUN` and its exit.
    fn run_once(&mut self) -> Step {
        self.metrics.exits.fetch_add(1, Ordering::Relaxed);
        let flow = match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    self.metrics.io_exits.fetch_add(1, Ordering::Relaxed);
                    if !self.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    Flow::Continue
                }
                VcpuExit::IoOut(port, data) => {
                    self.metrics.io_exits.fetch_add(1, Ordering::Relaxed);
                    let v = data.first().copied().unwrap_or(0);
                    match port {
                        I8042_CMD_PORT if v == 0xfe => Flow::Exit(ExitReason::Reboot),
                        ACPI_RESET_PORT if v == ACPI_RESET_VALUE => Flow::Exit(ExitReason::Reboot),
                        // SLP_EN with any sleep type: the only state offered is S5.
                        ACPI_SLEEP_CONTROL_PORT if v & 0x20 != 0 => {
                            Flow::Exit(ExitReason::PowerOff)
                        }
                        IDLE_PORT => {
                            std::thread::sleep(Duration::from_micros(500));
                            Flow::Continue
                        }
                        POST_PORT => Flow::Continue,
                        _ => {
                            self.pio.write(u64::from(port), data);
                            Flow::Continue
                        }
                    }
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.metrics.mmio_exits.fetch_add(1, Ordering::Relaxed);
                    if !self.mmio.read(addr, data) {
                        data.fill(0);
                    }
                    Flow::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.metrics.mmio_exits.fetch_add(1, Ordering::Relaxed);
                    self.mmio.write(addr, data);
                    Flow::Continue
                }
                VcpuExit::Hlt => Flow::Exit(ExitReason::PowerOff),
                VcpuExit::Shutdown => Flow::Exit(ExitReason::TripleFault),
                VcpuExit::SystemEvent(kind, _) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => Flow::Exit(ExitReason::Reboot),
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Flow::Exit(ExitReason::PowerOff),
                    other => Flow::Exit(ExitReason::GuestFault(format!("system event {other}"))),
                },
                VcpuExit::InternalError => Flow::InternalError,
                VcpuExit::FailEntry(reason, cpu) => Flow::Exit(ExitReason::GuestFault(format!(
                    "VM entry failed on cpu {cpu}: hardware reason 0x{reason:x}"
                ))),
                VcpuExit::Intr => Flow::Continue,
                other => Flow::Exit(ExitReason::GuestFault(format!("unhandled exit: {other:?}"))),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                Flow::Interrupted
            }
            Err(e) => Flow::Exit(ExitReason::GuestFault(format!("KVM_RUN: {e}"))),
        };
        match flow {
            Flow::Continue => Step::Ran,
            Flow::Interrupted => Step::Interrupted,
            Flow::Exit(r) => Step::Stopped(r),
            Flow::InternalError => self.internal_error().map_or(Step::Ran, Step::Stopped),
        }
    }

    /// An emulation failure. Under PVM the instruction emulator runs the guest kernel and lacks
    /// `int3`; Linux uses it for static-key patching, so a `0xcc` at RIP is delivered as #BP.
    fn internal_error(&mut self) -> Option<ExitReason> {
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the valid member.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let regs = match self.fd.get_regs() {
            Ok(r) => r,
            Err(e) => {
                return Some(ExitReason::GuestFault(format!("internal error; KVM_GET_REGS: {e}")));
            }
        };
        let byte = self
            .fd
            .translate_gva(regs.rip)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| self.mem.read_obj::<u8>(GuestAddress(t.physical_address)).ok());
        if byte == Some(0xcc) && self.inject_breakpoint(regs).is_ok() {
            self.metrics.int3_injected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let n = usize::try_from(internal.ndata).unwrap_or(0).min(internal.data.len());
        Some(ExitReason::GuestFault(format!(
            "emulation failure (suberror {}) at rip 0x{:x}, byte {:02x?}, data {:x?}",
            internal.suberror,
            regs.rip,
            byte,
            &internal.data[..n]
        )))
    }

    fn inject_breakpoint(
        &mut self,
        mut regs: kvm_bindings::kvm_regs,
    ) -> Result<(), kvm_ioctls::Error> {
        regs.rip += 1; // #BP is a trap: it reports the address after the int3.
        self.fd.set_regs(&regs)?;
        let mut events = self.fd.get_vcpu_events()?;
        events.exception.injected = 1;
        events.exception.nr = 3;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        self.fd.set_vcpu_events(&events)
    }
}
