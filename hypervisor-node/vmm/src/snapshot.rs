//! Snapshots of a running VM, and VMs restored from them (after Firecracker's snapshots).
//!
//! A snapshot is a directory of three files:
//! - `memory`: guest RAM, all regions one after the other at the offsets the VM's memfd had;
//!   sparse (only the memfd's data ranges are written). A restored VM maps it privately
//!   (`MAP_PRIVATE`): pages are read from the page cache, shared by every VM restored from the
//!   same file, and copied only when that VM writes them.
//! - `framebuffer`: the screen's bytes, copied into the new VM's framebuffer memfd.
//! - `state.json`: the vCPUs (registers, FPU and extended state, MSRs, local APIC, pending
//!   events), the VM's interrupt controllers, timer and clock, COM1, and every virtio transport
//!   with its queues and device; written last, so that a directory without a whole
//!   `state.json` is no snapshot.
//!
//! The files are opened when the VM starts (the VMM's threads cannot open files once their
//! seccomp filters are on). A restore checks everything it reads: the format, the KVM kind, the
//! CPUID this host gives guests, the VM's shape against its configuration (vCPUs, memory,
//! screen, disks, agent), the files (regular files, their sizes), and every device state as a
//! driver's writes are checked. A restored VM cannot be
//! snapshotted in turn: its memory is the snapshot's file.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, Msrs, kvm_clock_data,
    kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::debug;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::config::{FramebufferConfig, VmmConfig};
use crate::devices::serial::SerialState;
use crate::devices::virtio::TransportState;
use crate::kvm_kind::KvmKind;
use crate::memory::GuestRam;

pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory";
pub const FRAMEBUFFER_FILE: &str = "framebuffer";
/// The layout of `state.json`; a snapshot of another format is refused.
pub const FORMAT: u32 = 2;
/// Largest `state.json` read back (a 32-vCPU VM's state is well under 2 MiB).
const MAX_STATE_BYTES: u64 = 16 << 20;
/// MSRs read or written per ioctl (KVM takes at most 256).
const MSR_BATCH: usize = 64;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the snapshot in {dir} cannot be restored: {why}")]
    Invalid { dir: String, why: String },
    #[error("{0}")]
    Refused(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.into();
    move |e| SnapshotError::Io(what, e)
}

/// Everything of a VM but its memory and screen.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    pub format: u32,
    /// A state saved under one kind of KVM (PVM, VMX, SVM) means nothing to another.
    pub kvm: KvmKind,
    /// The CPUID the guest was given, as a fingerprint ([`host_cpu`]).
    pub host_cpu: u64,
    pub shape: Shape,
    pub vm: VmKvmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialState,
    /// In the order the VM attached them (keyboard, tablet, disks, agent).
    pub virtio: Vec<TransportState>,
}

/// What a restoring configuration must have in common with the snapshot's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub framebuffer: Option<FramebufferConfig>,
    /// Each disk's `read_only`.
    pub disks: Vec<bool>,
    pub agent: bool,
}

impl Shape {
    pub fn of(config: &VmmConfig) -> Self {
        Self {
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            framebuffer: config.framebuffer,
            disks: config.disks.iter().map(|d| d.read_only).collect(),
            agent: config.agent_socket.is_some(),
        }
    }
}

/// The VM's in-kernel devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmKvmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// One vCPU.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

/// A fingerprint of the CPUID a VM of `vcpus` vCPUs is given on this host (FNV-1a over every
/// entry of its first vCPU's, [`crate::arch::guest_cpuid`]): a guest decides what to use by
/// it, so it goes on only where it is the same. Leaf 0x8000001e (AMD's per-CPU core and APIC
/// ids, which differ between the host CPUs a process runs on) is left out.
pub fn host_cpu(kvm: &kvm_ioctls::Kvm, vcpus: u8) -> Result<u64, SnapshotError> {
    let cpuid = crate::arch::guest_cpuid(kvm, 0, vcpus)
        .map_err(|e| SnapshotError::Refused(format!("this host's CPUID: {e}")))?;
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for e in cpuid.as_slice().iter().filter(|e| e.function != 0x8000_001e) {
        for word in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            for b in word.to_le_bytes() {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    Ok(hash)
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip { chip_id, ..Default::default() };
    vm.get_irqchip(&mut chip).map_err(|e| SnapshotError::Kvm("KVM_GET_IRQCHIP", e))?;
    Ok(chip)
}

/// Reads the VM's interrupt controllers, timer and clock (the vCPUs are paused).
pub fn save_vm(vm: &VmFd) -> Result<VmKvmState, SnapshotError> {
    Ok(VmKvmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(|e| SnapshotError::Kvm("KVM_GET_PIT2", e))?,
        clock: vm.get_clock().map_err(|e| SnapshotError::Kvm("KVM_GET_CLOCK", e))?,
    })
}

/// Puts a snapshot's in-kernel device state into a new VM (before its vCPUs are restored).
pub fn restore_vm(vm: &VmFd, s: &VmKvmState) -> Result<(), SnapshotError> {
    let chips = [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ];
    for (chip, id) in chips {
        if chip.chip_id != id {
            return Err(SnapshotError::Refused(format!(
                "interrupt controller {id} is mislabelled"
            )));
        }
    }
    vm.set_pit2(&s.pit).map_err(|e| SnapshotError::Kvm("KVM_SET_PIT2", e))?;
    // The flags KVM reports (TSC_STABLE, ...) are not flags it takes back.
    let clock = kvm_clock_data { flags: 0, ..s.clock };
    vm.set_clock(&clock).map_err(|e| SnapshotError::Kvm("KVM_SET_CLOCK", e))?;
    for (chip, _) in chips {
        vm.set_irqchip(chip).map_err(|e| SnapshotError::Kvm("KVM_SET_IRQCHIP", e))?;
    }
    Ok(())
}

/// Runs `op` over `items` in batches of at most [`MSR_BATCH`], as KVM's MSR ioctls take them:
/// `op` answers how many of its batch it handled, KVM stopping at the first it cannot; that one
/// is left out (its position returned) and the next batch starts after it.
fn in_batches<T, E>(
    items: &[T],
    mut op: impl FnMut(&[T]) -> Result<usize, E>,
) -> Result<Vec<usize>, E> {
    let mut skipped = Vec::new();
    let mut at = 0;
    while at < items.len() {
        let batch = &items[at..(at + MSR_BATCH).min(items.len())];
        let done = op(batch)?.min(batch.len());
        at += done;
        if done < batch.len() {
            skipped.push(at);
            at += 1;
        }
    }
    Ok(skipped)
}

/// Reads the MSRs of `indices` that this vCPU has; one KVM cannot read is left out.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out = Vec::with_capacity(indices.len());
    let skipped = in_batches(indices, |batch| {
        let entries: Vec<kvm_msr_entry> =
            batch.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| SnapshotError::Refused(format!("MSR list: {e:?}")))?;
        let read = fd.get_msrs(&mut msrs).map_err(|e| SnapshotError::Kvm("KVM_GET_MSRS", e))?;
        out.extend_from_slice(&msrs.as_slice()[..read.min(batch.len())]);
        Ok(read)
    })?;
    if !skipped.is_empty() {
        let left_out: Vec<String> = skipped.iter().map(|&i| format!("{:#x}", indices[i])).collect();
        debug!(?left_out, "MSRs not readable, left out");
    }
    Ok(out)
}

/// Reads a paused vCPU whose last exit has been completed (see `Vcpu::save`).
pub fn save_vcpu(fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, SnapshotError> {
    let k = |what| move |e| SnapshotError::Kvm(what, e);
    Ok(VcpuState {
        mp_state: fd.get_mp_state().map_err(k("KVM_GET_MP_STATE"))?,
        regs: fd.get_regs().map_err(k("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(k("KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(k("KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(k("KVM_GET_XCRS"))?,
        debugregs: fd.get_debug_regs().map_err(k("KVM_GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(k("KVM_GET_LAPIC"))?,
        msrs: read_msrs(fd, msr_indices)?,
        events: fd.get_vcpu_events().map_err(k("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Puts a snapshot's state into a new vCPU (its CPUID already set), in the order KVM needs:
/// the APIC before the MSRs that depend on it, pending events last.
pub fn restore_vcpu(
    kvm_fd: &kvm_ioctls::Kvm,
    fd: &VcpuFd,
    s: &VcpuState,
) -> Result<(), SnapshotError> {
    let k = |what| move |e| SnapshotError::Kvm(what, e);
    // KVM_SET_XSAVE reads `kvm_xsave`'s 4 KiB; a host whose extended state is larger (AMX)
    // would have it read past the end, so such a host is refused.
    let xsave_size = kvm_fd.check_extension_int(Cap::Xsave2);
    if usize::try_from(xsave_size).is_ok_and(|n| n > std::mem::size_of::<kvm_xsave>()) {
        return Err(SnapshotError::Refused(format!(
            "this host's extended state is {xsave_size} bytes; snapshots hold 4096"
        )));
    }
    fd.set_mp_state(s.mp_state).map_err(k("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(k("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(k("KVM_SET_SREGS"))?;
    // SAFETY: the struct is a whole `kvm_xsave` and the host's extended state fits in it
    // (checked above), so KVM reads nothing past its end.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(k("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(k("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debugregs).map_err(k("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(k("KVM_SET_LAPIC"))?;
    let refused = in_batches(&s.msrs, |batch| {
        let msrs = Msrs::from_entries(batch)
            .map_err(|e| SnapshotError::Refused(format!("MSR list: {e:?}")))?;
        fd.set_msrs(&msrs).map_err(k("KVM_SET_MSRS"))
    })?;
    if !refused.is_empty() {
        let refused: Vec<String> =
            refused.iter().map(|&i| format!("{:#x}", s.msrs[i].index)).collect();
        debug!(?refused, "MSRs KVM would not take back");
    }
    fd.set_vcpu_events(&s.events).map_err(k("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

/// The files of a snapshot, made when the VM starts. A VM writes one snapshot: VMs may be
/// running from it (mapping its memory file), so it is never written over.
#[derive(Debug)]
pub struct SnapshotFiles {
    state: File,
    memory: File,
    framebuffer: File,
    dir: String,
    written: std::cell::Cell<bool>,
}

/// Makes `dir/name` anew: an older file of that name is unlinked first (never truncated: VMs
/// started from an earlier snapshot there map it), and a symbolic link is not followed.
fn create_file(dir: &Path, name: &str) -> Result<File, SnapshotError> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Io(format!("removing {}", path.display()), e));
        }
        _ => {}
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(format!("creating {}", path.display())))
}

impl SnapshotFiles {
    /// Opens the three files in `dir` (which must exist).
    pub fn create(dir: &Path) -> Result<Self, SnapshotError> {
        Ok(Self {
            state: create_file(dir, STATE_FILE)?,
            memory: create_file(dir, MEMORY_FILE)?,
            framebuffer: create_file(dir, FRAMEBUFFER_FILE)?,
            dir: dir.display().to_string(),
            written: std::cell::Cell::new(false),
        })
    }

    /// Whether this VM's snapshot is written (a VM writes one).
    pub fn is_written(&self) -> bool {
        self.written.get()
    }

    /// Writes a snapshot: `state.json` is emptied first and written last. Returns the bytes of
    /// memory written.
    pub fn write(
        &self,
        state: &VmSnapshot,
        ram: &GuestRam,
        framebuffer: Option<&File>,
    ) -> Result<u64, SnapshotError> {
        if self.written.get() {
            return Err(SnapshotError::Refused(format!(
                "this VM's snapshot in {} is written, and VMs may run from it: a VM writes one \
                 snapshot (start it again for another)",
                self.dir
            )));
        }
        if ram.from_snapshot {
            return Err(SnapshotError::Refused(
                "a restored VM cannot be snapshotted: its memory is the snapshot's file".into(),
            ));
        }
        let at = |what: &str| format!("{what} in {}", self.dir);
        self.state.set_len(0).map_err(io(at(STATE_FILE)))?;
        self.memory.set_len(0).map_err(io(at(MEMORY_FILE)))?;
        let mut written = 0;
        let mut offset = 0u64;
        for region in ram.memory.iter() {
            let Some(fo) = region.file_offset() else {
                return Err(SnapshotError::Refused(
                    "guest memory is not a memfd (a restored VM cannot be snapshotted)".into(),
                ));
            };
            if fo.start() != offset {
                return Err(SnapshotError::Refused(
                    "guest memory regions are not contiguous".into(),
                ));
            }
            written += copy_data(fo.file(), &self.memory, offset, region.len())
                .map_err(io(at(MEMORY_FILE)))?;
            offset += region.len();
        }
        self.memory.set_len(offset).map_err(io(at(MEMORY_FILE)))?;
        self.memory.sync_data().map_err(io(at(MEMORY_FILE)))?;
        self.framebuffer.set_len(0).map_err(io(at(FRAMEBUFFER_FILE)))?;
        if let Some(fb) = framebuffer {
            let len = fb.metadata().map_err(io("framebuffer memfd"))?.len();
            copy_data(fb, &self.framebuffer, 0, len).map_err(io(at(FRAMEBUFFER_FILE)))?;
            self.framebuffer.set_len(len).map_err(io(at(FRAMEBUFFER_FILE)))?;
            self.framebuffer.sync_data().map_err(io(at(FRAMEBUFFER_FILE)))?;
        }
        let json = serde_json::to_vec(state)
            .map_err(|e| SnapshotError::Refused(format!("encoding the state: {e}")))?;
        // From here on a VM may start from these files (whatever comes of the writes below):
        // they are never written again.
        self.written.set(true);
        self.state.write_all_at(&json, 0).map_err(io(at(STATE_FILE)))?;
        self.state.sync_data().map_err(io(at(STATE_FILE)))?;
        Ok(written)
    }
}

/// Copies the data ranges of `from` in `[start, start + len)` to the same offsets of `to`,
/// skipping holes (`SEEK_DATA`/`SEEK_HOLE`); returns the bytes copied.
fn copy_data(from: &File, to: &File, start: u64, len: u64) -> std::io::Result<u64> {
    let end = start + len;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0;
    let mut pos = start;
    while pos < end {
        let Some(data) = seek(from, pos, libc::SEEK_DATA)? else { break };
        if data >= end {
            break;
        }
        let hole = seek(from, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let mut at = data;
        while at < hole {
            let n = usize::try_from(hole - at).unwrap_or(usize::MAX).min(buf.len());
            from.read_exact_at(&mut buf[..n], at)?;
            to.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        copied += hole - data;
        pos = hole;
    }
    Ok(copied)
}

/// `lseek(whence)` from `pos`; `None` when there is no more data (`ENXIO`).
fn seek(f: &File, pos: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let pos = libc::off_t::try_from(pos).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a file descriptor we own; it moves only that descriptor's offset,
    // which nothing else here uses (all reads and writes are positioned).
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(u64::try_from(r).map_err(std::io::Error::other)?))
}

/// A snapshot read back for a restore, checked against the restoring configuration.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub state: VmSnapshot,
    /// The memory file, opened read-only (mapped privately).
    pub memory: File,
    pub framebuffer: Vec<u8>,
}

/// Reads and checks the snapshot in `dir` for `config` on a host of KVM kind `kind` whose CPU
/// is `host_cpu`.
pub fn load(
    dir: &Path,
    config: &VmmConfig,
    kind: KvmKind,
    host_cpu: u64,
) -> Result<LoadedSnapshot, SnapshotError> {
    let invalid = |why: String| SnapshotError::Invalid { dir: dir.display().to_string(), why };
    // Not following links, and not waiting on a FIFO: only regular files are read.
    let open = |name: &str| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join(name))
            .map_err(|e| invalid(format!("{name}: {e}")))?;
        let meta = f.metadata().map_err(|e| invalid(format!("{name}: {e}")))?;
        if !meta.is_file() {
            return Err(invalid(format!("{name} is not a regular file")));
        }
        Ok((f, meta.len()))
    };
    let (mut state_file, state_len) = open(STATE_FILE)?;
    if state_len == 0 {
        return Err(invalid(format!("{STATE_FILE} is empty (the snapshot was not finished)")));
    }
    if state_len > MAX_STATE_BYTES {
        return Err(invalid(format!(
            "{STATE_FILE} is {state_len} bytes, at most {MAX_STATE_BYTES}"
        )));
    }
    let mut text = Vec::new();
    (&mut state_file)
        .take(MAX_STATE_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| invalid(format!("{STATE_FILE}: {e}")))?;
    let state: VmSnapshot =
        serde_json::from_slice(&text).map_err(|e| invalid(format!("{STATE_FILE}: {e}")))?;
    if state.format != FORMAT {
        return Err(invalid(format!("format {} (this VMM reads {FORMAT})", state.format)));
    }
    if state.kvm != kind {
        return Err(invalid(format!("taken under KVM {:?}, this host has {kind:?}", state.kvm)));
    }
    let shape = Shape::of(config);
    if state.shape != shape {
        return Err(invalid(format!(
            "the VM was {:?}, the configuration asks for {shape:?}",
            state.shape
        )));
    }
    if state.vcpus.len() != usize::from(shape.vcpus) {
        return Err(invalid(format!(
            "{} vCPU states for {} vCPUs",
            state.vcpus.len(),
            shape.vcpus
        )));
    }
    if state.host_cpu != host_cpu {
        return Err(invalid("taken on a host that gives guests another CPUID".into()));
    }
    let (memory, memory_len) = open(MEMORY_FILE)?;
    if memory_len != u64::from(shape.memory_mib) << 20 {
        return Err(invalid(format!(
            "{MEMORY_FILE} is {memory_len} bytes, the VM has {} MiB",
            shape.memory_mib
        )));
    }
    let mut framebuffer = Vec::new();
    if shape.framebuffer.is_some() {
        let (f, _) = open(FRAMEBUFFER_FILE)?;
        // Bounded by the largest screen the configuration allows (checked against the
        // framebuffer's own size when it is restored).
        let max = u64::from(crate::config::MAX_FB_WIDTH * crate::config::MAX_FB_HEIGHT * 4) + 65536;
        f.take(max)
            .read_to_end(&mut framebuffer)
            .map_err(|e| invalid(format!("{FRAMEBUFFER_FILE}: {e}")))?;
    }
    Ok(LoadedSnapshot { state, memory, framebuffer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootSource, SerialConfig};
    use crate::memory::create_guest_ram;
    use vm_memory::{Bytes, GuestAddress};

    fn config(memory_mib: u32) -> VmmConfig {
        VmmConfig {
            vm_id: "t".into(),
            boot: BootSource::Firmware { path: "/fw".into() },
            vcpus: 1,
            memory_mib,
            framebuffer: None,
            disks: Vec::new(),
            serial: SerialConfig { log_path: "/dev/null".into(), max_bytes: 1 },
            display_socket: None,
            agent_socket: None,
            control_socket: None,
            start_paused: false,
            snapshot_dir: None,
        }
    }

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("atrium-snap-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }

    #[test]
    fn msr_batches_leave_out_only_what_kvm_refused() {
        // KVM handles a batch up to the first item it cannot (here: multiples of 50).
        let items: Vec<u32> = (0..150).collect();
        let mut seen = Vec::new();
        let skipped = in_batches(&items, |batch| -> Result<usize, ()> {
            let n = batch.iter().position(|&i| i > 0 && i % 50 == 0).unwrap_or(batch.len());
            seen.extend_from_slice(&batch[..n]);
            Ok(n)
        })
        .expect("no error");
        assert_eq!(skipped, vec![50, 100]);
        let expected: Vec<u32> = items.iter().copied().filter(|i| *i == 0 || i % 50 != 0).collect();
        assert_eq!(seen, expected, "every item but the refused ones, whole batches included");
        // A whole batch handled leaves nothing out (64, 128 are kept).
        let mut count = 0;
        assert!(
            in_batches(&items, |b| -> Result<usize, ()> {
                count += b.len();
                Ok(b.len())
            })
            .expect("ok")
            .is_empty()
        );
        assert_eq!(count, 150);
        // An answer beyond the batch counts as the whole batch, never past the end.
        assert!(in_batches(&items, |_| -> Result<usize, ()> { Ok(1000) }).expect("ok").is_empty());
    }

    #[test]
    fn memory_is_written_sparse_at_its_offsets() {
        let ram = create_guest_ram(16 << 20).expect("ram");
        ram.memory.write_obj(0x1122_3344_u32, GuestAddress(0x3000)).expect("write");
        ram.memory.write_obj(0x5566_7788_u32, GuestAddress(9 << 20)).expect("write");
        let dir = tmpdir("sparse");
        let files = SnapshotFiles::create(&dir).expect("files");
        let state = VmSnapshot {
            format: FORMAT,
            kvm: KvmKind::Pvm,
            host_cpu: 7,
            shape: Shape::of(&config(16)),
            vm: VmKvmState {
                pic_master: kvm_irqchip::default(),
                pic_slave: kvm_irqchip::default(),
                ioapic: kvm_irqchip::default(),
                pit: kvm_pit_state2::default(),
                clock: kvm_clock_data::default(),
            },
            vcpus: Vec::new(),
            serial: SerialState::default(),
            virtio: Vec::new(),
        };
        let written = files.write(&state, &ram, None).expect("write");
        let again = files.write(&state, &ram, None).expect_err("a second snapshot");
        assert!(again.to_string().contains("writes one"), "{again}");
        // Two touched pages (or, with shmem huge pages, the two extents holding them).
        assert!((8192..=4 << 20).contains(&written), "{written} bytes written");
        let mem = std::fs::read(dir.join(MEMORY_FILE)).expect("memory");
        assert_eq!(mem.len(), 16 << 20);
        assert_eq!(&mem[0x3000..0x3004], &0x1122_3344_u32.to_le_bytes());
        assert_eq!(&mem[9 << 20..(9 << 20) + 4], &0x5566_7788_u32.to_le_bytes());

        // Read back: the shape must match the configuration; the vCPU count must match too.
        let kind = KvmKind::Pvm;
        let err = load(&dir, &config(32), kind, 7).expect_err("another memory size");
        assert!(err.to_string().contains("configuration asks"), "{err}");
        let err = load(&dir, &config(16), kind, 7).expect_err("no vCPU state");
        assert!(err.to_string().contains("0 vCPU states for 1"), "{err}");
        let err = load(&dir, &config(16), KvmKind::Vmx, 7).expect_err("another KVM");
        assert!(err.to_string().contains("this host has"), "{err}");

        // A state file cut short, or emptied, is no snapshot.
        let text = std::fs::read(dir.join(STATE_FILE)).expect("state");
        std::fs::write(dir.join(STATE_FILE), &text[..text.len() / 2]).expect("cut");
        assert!(
            load(&dir, &config(16), kind, 7).expect_err("cut").to_string().contains(STATE_FILE)
        );
        std::fs::write(dir.join(STATE_FILE), b"").expect("empty");
        let err = load(&dir, &config(16), kind, 7).expect_err("empty");
        assert!(err.to_string().contains("not finished"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
