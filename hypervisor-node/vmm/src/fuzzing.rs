//! Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`, which
//! `cargo fuzz` sets): a hostile guest driving the virtio devices through their MMIO registers
//! and its own memory, as a vCPU would; and a snapshot's device states, as a restore reads
//! them.
//!
//! Every value a guest controls is in play: the register offsets, widths and values it writes,
//! the descriptor tables, rings and buffers it lays out in memory, and when it notifies. After
//! every step the transport's invariants are checked: a device the driver broke says so in its
//! status, and used-ring indices only move when the device is running.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::input::{Input, InputKind};
use crate::devices::virtio::mmio::{STATUS_NEEDS_RESET, reg};
use crate::devices::virtio::{MmioTransport, SnapshotTransport, TransportState, VirtioDevice};
use crate::memory::GuestMemory;

/// Guest memory the fuzzed driver has: small, so that random addresses often land in it.
const MEM_SIZE: usize = 64 * 1024;
/// The block device's disk.
const DISK_SIZE: usize = 16 * 1024;

/// Reads bytes off the front of the fuzz input.
struct Input8<'a>(&'a [u8]);

impl Input8<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// A device state from a snapshot's `state.json` (the input's JSON after a first byte that
/// picks the device: block, console, keyboard, tablet), restored into a fresh transport: a
/// state refused leaves the transport as it was; one taken is served and saved again without
/// a panic.
pub fn snapshot_state(data: &[u8]) {
    let Some((&which, json)) = data.split_first() else { return };
    let Ok(state) = serde_json::from_slice::<TransportState>(json) else { return };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("guest memory for the restored device");
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    fn check(mut t: impl SnapshotTransport, state: &TransportState) {
        let before = t.save();
        if t.restore(state).is_err() {
            assert_eq!(t.save(), before, "a refused state changed the transport");
            return;
        }
        t.resume();
        let _ = t.save();
    }
    match which % 4 {
        0 => {
            let mut disk = tempfile_disk();
            let path = disk.path.clone();
            disk.file.write_all(&[0x5a; DISK_SIZE]).expect("disk contents");
            let block = Block::open(&path, which & 0x80 != 0, "fuzz").expect("open the disk");
            check(MmioTransport::new(block, mem, irq), &state);
        }
        1 => check(MmioTransport::new(Console::new("atrium.agent"), mem, irq), &state),
        2 => check(MmioTransport::new(Input::new(InputKind::Keyboard), mem, irq), &state),
        _ => {
            let tablet = Input::new(InputKind::Tablet { width: 640, height: 480 });
            check(MmioTransport::new(tablet, mem, irq), &state);
        }
    }
}

/// Runs one fuzz input: its first byte picks the device (block, console, keyboard, tablet),
/// the rest is a program of guest actions.
pub fn virtio_guest(data: &[u8]) {
    let mut input = Input8(data);
    let Some(which) = input.u8() else { return };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("guest memory for the fuzzed device");
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    match which % 4 {
        0 => {
            let mut disk = tempfile_disk();
            let path = disk.path.clone();
            disk.file.write_all(&[0x5a; DISK_SIZE]).expect("disk contents");
            let read_only = which & 0x80 != 0;
            let block = Block::open(&path, read_only, "fuzz").expect("open the disk");
            run(MmioTransport::new(block, mem.clone(), irq), &mem, input, |_, _| {});
        }
        1 => run(
            MmioTransport::new(Console::new("atrium.agent"), mem.clone(), irq),
            &mem,
            input,
            |t, arg| {
                let c = t.device_mut();
                match arg % 4 {
                    0 => c.set_host_connected(true),
                    1 => c.set_host_connected(false),
                    2 => {
                        c.send_to_guest(&[arg; 100]);
                    }
                    _ => {
                        c.take_from_guest();
                    }
                }
            },
        ),
        2 => run(
            MmioTransport::new(Input::new(InputKind::Keyboard), mem.clone(), irq),
            &mem,
            input,
            |t, arg| {
                let _ = t.device_mut().key(u16::from(arg), arg & 1 == 0);
            },
        ),
        _ => {
            let tablet = Input::new(InputKind::Tablet { width: 1024, height: 768 });
            run(MmioTransport::new(tablet, mem.clone(), irq), &mem, input, |t, arg| {
                let _ = t.device_mut().pointer(u32::from(arg) * 4, u32::from(arg) * 3, arg, 1);
            });
        }
    }
}

/// Plays the guest's program against `t`; `backend` is the host side's own work (input
/// events, console bytes), run as one of the steps.
fn run<D: VirtioDevice>(
    mut t: MmioTransport<D>,
    mem: &GuestMemory,
    mut input: Input8<'_>,
    backend: impl Fn(&mut MmioTransport<D>, u8),
) {
    while let Some(op) = input.u8() {
        match op % 6 {
            // A register write of 1, 2 or 4 bytes (the transport takes only aligned 32-bit
            // writes; the others must be ignored) anywhere in the device's window.
            0 => {
                let (Some(offset), Some(v)) = (input.u16(), input.u32()) else { return };
                let width = [4usize, 4, 2, 1][usize::from(op >> 6)];
                t.write(u64::from(offset & 0x1ff), &v.to_le_bytes()[..width]);
            }
            // A register read.
            1 => {
                let Some(offset) = input.u16() else { return };
                let mut b = [0u8; 4];
                let width = [4usize, 4, 2, 1][usize::from(op >> 6)];
                t.read(u64::from(offset & 0x1ff), &mut b[..width]);
            }
            // The guest writes its memory: descriptors, rings, buffers.
            2 => {
                let (Some(addr), Some(len)) = (input.u16(), input.u8()) else { return };
                let bytes = input.bytes(usize::from(len));
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(addr)));
            }
            // A queue notification, as the event loop delivers it.
            3 => {
                let Some(q) = input.u8() else { return };
                t.process(Some(u16::from(q % 8)));
            }
            // The backend has work (input events to deliver, console bytes to send).
            4 => t.process(None),
            _ => {
                let Some(arg) = input.u8() else { return };
                backend(&mut t, arg);
            }
        }
        check(&mut t);
    }
}

/// What must hold after any step, whatever the guest did.
fn check<D: VirtioDevice>(t: &mut MmioTransport<D>) {
    let mut b = [0u8; 4];
    t.read(reg::STATUS, &mut b);
    let status = u32::from_le_bytes(b);
    assert_eq!(status, t.status(), "the status register reads what the transport holds");
    if t.broken().is_some() {
        assert!(status & STATUS_NEEDS_RESET != 0, "a broken device tells the driver");
        assert!(!t.is_active(), "a broken device runs no requests");
    }
    t.read(reg::MAGIC, &mut b);
    assert_eq!(&b, b"virt");
}

/// A disk in a temporary file, removed when dropped.
struct TempDisk {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn tempfile_disk() -> TempDisk {
    let path = std::env::temp_dir().join(format!(
        "atrium-fuzz-disk-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&path).expect("create the fuzzed disk");
    TempDisk { path, file }
}
