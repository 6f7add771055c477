//! The main thread's part once a VM runs ([`MainLoop`]): it answers the control socket's
//! requests (status, metrics, pause, resume, the power button, stop, and snapshots, for which
//! it parks and reads the vCPUs and writes the files) and waits for a reason to stop.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use tracing::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmmConfig;
use crate::control::{ControlRequest, ControlResponse, VmState};
use crate::devices::bus::lock;
use crate::devices::framebuffer::Framebuffer;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::SnapshotTransport;
use crate::kvm_kind::KvmKind;
use crate::memory::GuestRam;
use crate::metrics::Metrics;
use crate::snapshot::{self, Shape, SnapshotFiles, VcpuState, VmSnapshot};
use crate::vcpu::{VcpuCommand, VcpuHandle, VcpuReport};
use crate::{ExitReason, VmmMessage};

/// What a snapshot reads: the VM, its memory, screen and devices, and where it writes.
pub struct SnapshotParts<'a> {
    pub files: &'a SnapshotFiles,
    pub host_cpu: u64,
    pub vm: &'a VmFd,
    pub ram: &'a GuestRam,
    pub framebuffer: Option<&'a Framebuffer>,
    pub transports: &'a [Arc<Mutex<dyn SnapshotTransport>>],
    pub serial: Option<&'a Mutex<SerialDevice>>,
}

/// Longest wait for the vCPUs' states.
const SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The main thread's view of a running VM.
pub struct MainLoop<'a> {
    pub config: &'a VmmConfig,
    pub kind: KvmKind,
    pub started: Instant,
    pub rx: &'a Receiver<VmmMessage>,
    pub vcpus: &'a [VcpuHandle],
    pub metrics: &'a Metrics,
    pub power_button: &'a EventFd,
    pub snapshot: Option<SnapshotParts<'a>>,
    /// A vCPU that reported the guest's end while a snapshot waited for it.
    pub pending_exit: std::cell::RefCell<Option<ExitReason>>,
    /// The last snapshot's tag (its vCPUs' answers carry it).
    pub snapshot_tag: std::cell::Cell<u64>,
}

impl MainLoop<'_> {
    /// Pauses the vCPUs, writes a snapshot, and lets them run again if they were running.
    /// Returns the bytes of memory written.
    fn take_snapshot(&self, state: VmState) -> Result<u64, String> {
        let Some(parts) = &self.snapshot else {
            return Err("this VM was started without a snapshot_dir".into());
        };
        if parts.files.is_written() {
            return Err("this VM's snapshot is written, and VMs may run from it: a VM writes \
                        one snapshot (start it again for another)"
                .into());
        }
        let deadline = Instant::now() + SAVE_TIMEOUT;
        let tag = self.snapshot_tag.get() + 1;
        self.snapshot_tag.set(tag);
        let result = self.park_all(tag, deadline).and_then(|()| {
            self.vcpus.iter().for_each(|h| h.send(VcpuCommand::Save(tag)));
            self.collect_and_write(parts, tag, deadline)
        });
        if state == VmState::Running {
            self.vcpus.iter().for_each(|h| h.send(VcpuCommand::Resume));
        }
        result
    }

    /// The next vCPU report while a snapshot is taken; the guest stopping ends the snapshot
    /// (and the VM after it). The control thread waits for the snapshot's answer before it
    /// reads another request, so none comes meanwhile; one that did would be told to ask again.
    fn next_report(&self, deadline: Instant) -> Result<VcpuReport, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(VmmMessage::Vcpu(VcpuReport::Exited(_, reason))) => {
                    *self.pending_exit.borrow_mut() = Some(reason);
                    return Err("the guest stopped during the snapshot".into());
                }
                Ok(VmmMessage::Vcpu(report)) => return Ok(report),
                Ok(VmmMessage::Control(_, reply)) => {
                    let busy = "a snapshot is being taken; ask again".to_owned();
                    let _ = reply.send(ControlResponse::Error { message: busy });
                }
                Err(_) => return Err("the vCPUs did not answer in time".into()),
            }
        }
    }

    /// Parks every vCPU and waits until each says it is out of `KVM_RUN` (answers carry this
    /// snapshot's tag, so an older report cannot stand in for one): a vCPU is read only once
    /// no other can still send it an interrupt.
    fn park_all(&self, tag: u64, deadline: Instant) -> Result<(), String> {
        self.vcpus.iter().for_each(|h| h.send(VcpuCommand::Park(tag)));
        let mut parked = vec![false; self.vcpus.len()];
        while parked.contains(&false) {
            if let VcpuReport::Parked(id, t) = self.next_report(deadline)?
                && t == tag
                && let Some(p) = parked.get_mut(usize::from(id))
            {
                *p = true;
            }
        }
        Ok(())
    }

    fn collect_and_write(
        &self,
        parts: &SnapshotParts<'_>,
        tag: u64,
        deadline: Instant,
    ) -> Result<u64, String> {
        let mut states: Vec<Option<Result<Box<VcpuState>, String>>> =
            (0..self.vcpus.len()).map(|_| None).collect();
        while states.iter().any(Option::is_none) {
            if let VcpuReport::Saved(id, t, saved) = self.next_report(deadline)?
                && t == tag
                && let Some(slot) = states.get_mut(usize::from(id))
            {
                *slot = Some(saved);
            }
        }
        let mut vcpus = Vec::with_capacity(states.len());
        for (id, s) in states.into_iter().enumerate() {
            match s {
                Some(Ok(s)) => vcpus.push(*s),
                Some(Err(e)) => return Err(format!("vCPU {id}: {e}")),
                None => return Err(format!("vCPU {id} did not answer")),
            }
        }
        // The devices are held still while the state is read and the memory written: the
        // event loop waits on their locks, so no queue moves under the copy.
        let serial = parts.serial.map(lock);
        let transports: Vec<_> = parts.transports.iter().map(|t| lock(t)).collect();
        let state = VmSnapshot {
            format: snapshot::FORMAT,
            kvm: self.kind,
            host_cpu: parts.host_cpu,
            shape: Shape::of(self.config),
            vm: snapshot::save_vm(parts.vm).map_err(|e| e.to_string())?,
            vcpus,
            serial: serial.as_ref().map(|s| s.state()).unwrap_or_default(),
            virtio: transports.iter().map(|t| t.save()).collect(),
        };
        let written = parts
            .files
            .write(&state, parts.ram, parts.framebuffer.map(|f| &f.memfd))
            .map_err(|e| e.to_string())?;
        drop(transports);
        drop(serial);
        Ok(written)
    }

    /// Answers control requests and waits for a reason to stop.
    pub fn wait(&self, mut state: VmState) -> ExitReason {
        loop {
            if let Some(reason) = self.pending_exit.borrow_mut().take() {
                return reason;
            }
            let Ok(msg) = self.rx.recv() else { return ExitReason::Stopped };
            match msg {
                VmmMessage::Vcpu(VcpuReport::Exited(_, reason)) => return reason,
                VmmMessage::Vcpu(
                    VcpuReport::Paused(_) | VcpuReport::Parked(..) | VcpuReport::Saved(..),
                ) => {}
                VmmMessage::Control(req, reply) => {
                    let answer = match req {
                        ControlRequest::Status => ControlResponse::Status {
                            vm_id: self.config.vm_id.clone(),
                            state,
                            kvm: self.kind,
                            uptime_ms: u64::try_from(self.started.elapsed().as_millis())
                                .unwrap_or(u64::MAX),
                        },
                        ControlRequest::Metrics => {
                            ControlResponse::Metrics { metrics: self.metrics.to_json() }
                        }
                        ControlRequest::Pause => {
                            self.vcpus.iter().for_each(|h| h.send(VcpuCommand::Pause));
                            state = VmState::Paused;
                            ControlResponse::Ok
                        }
                        ControlRequest::Resume => {
                            self.vcpus.iter().for_each(|h| h.send(VcpuCommand::Resume));
                            state = VmState::Running;
                            ControlResponse::Ok
                        }
                        ControlRequest::PowerButton => match self.power_button.write(1) {
                            Ok(()) => ControlResponse::Ok,
                            Err(e) => {
                                ControlResponse::Error { message: format!("power button: {e}") }
                            }
                        },
                        ControlRequest::Snapshot => {
                            let t0 = Instant::now();
                            match self.take_snapshot(state) {
                                Ok(memory_bytes) => {
                                    let ms =
                                        u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                                    info!(vm = %self.config.vm_id, memory_bytes, ms, "snapshot written");
                                    ControlResponse::Snapshot { memory_bytes, ms }
                                }
                                Err(message) => {
                                    warn!(vm = %self.config.vm_id, error = %message, "snapshot failed");
                                    ControlResponse::Error {
                                        message: format!("snapshot: {message}"),
                                    }
                                }
                            }
                        }
                        ControlRequest::Stop => {
                            let _ = reply.send(ControlResponse::Ok);
                            return ExitReason::Stopped;
                        }
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }
}
