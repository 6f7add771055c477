//! The virtio-mmio transport (version 2). Register accesses come from vCPU threads, queue
//! notifications from the event loop (through an ioeventfd) or, when KVM has none, from the
//! vCPU thread itself. A driver that breaks the rules gets the device marked
//! `DEVICE_NEEDS_RESET` and ignored until it resets it; the VM goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use serde::{Deserialize, Serialize};

use super::queue::{Queue, QueueState};
use super::{DeviceError, DeviceState, QueueContext, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::memory::GuestMemory;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4d52_5441; // "ATRM"

pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;

pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// The device behind the transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (must include [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set `DRIVER_OK` with these features.
    fn activate(&mut self, _features: u64) {}
    /// Queue `queue` was notified, or (`None`) the backend has work for the device.
    fn process(
        &mut self,
        ctx: &mut QueueContext<'_>,
        queue: Option<u16>,
    ) -> Result<(), DeviceError>;
    /// The driver reset the device.
    fn reset(&mut self);
    /// The device's state for a snapshot.
    fn save(&self) -> DeviceState;
    /// Takes a snapshot's state; a state of another kind of device, or one out of bounds, is
    /// refused and changes nothing.
    fn restore(&mut self, state: &DeviceState) -> Result<(), String>;
}

/// A transport in a snapshot: the registers the driver set, its queues, and its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportState {
    pub queue_sel: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub broken: Option<String>,
    pub queues: Vec<QueueState>,
    pub device: DeviceState,
}

/// A transport as a snapshot sees it, whatever its device.
pub trait SnapshotTransport: Send {
    /// The transport and its device (taken while the vCPUs are paused).
    fn save(&self) -> TransportState;
    /// Takes a snapshot's state; on error nothing has changed. Nothing reaches the guest
    /// until [`Self::resume`].
    fn restore(&mut self, state: &TransportState) -> Result<(), String>;
    /// Once the restored vCPUs exist (an interrupt raised before is lost): raises the
    /// interrupt still pending at the snapshot, and serves every ready queue once (a
    /// notification the guest made just before the snapshot may never have reached the device).
    fn resume(&mut self);
}

impl<D: VirtioDevice> SnapshotTransport for MmioTransport<D> {
    /// The transport and its device for a snapshot (taken while the vCPUs are paused).
    fn save(&self) -> TransportState {
        TransportState {
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            broken: self.broken.clone(),
            queues: self.queues.iter().map(Queue::state).collect(),
            device: self.device.save(),
        }
    }

    /// Takes a snapshot's state, checked as a driver's writes are (features offered, queues
    /// within guest memory, the device's own bounds). On error nothing has changed.
    fn restore(&mut self, s: &TransportState) -> Result<(), String> {
        if s.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues in the snapshot, the device has {}",
                s.queues.len(),
                self.queues.len()
            ));
        }
        if s.driver_features & !self.device.features() != 0 {
            return Err(format!("driver features {:#x} were never offered", s.driver_features));
        }
        let mut queues = self.queues.clone();
        for (i, (q, qs)) in queues.iter_mut().zip(&s.queues).enumerate() {
            q.restore(qs, &self.mem).map_err(|e| format!("queue {i}: {e}"))?;
        }
        self.device.restore(&s.device)?;
        self.queues = queues;
        self.queue_sel = s.queue_sel;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.interrupt_status = s.interrupt_status;
        self.config_generation = s.config_generation;
        self.broken = s.broken.clone();
        Ok(())
    }

    fn resume(&mut self) {
        if self.interrupt_status != 0
            && let Err(e) = self.irq.write(1)
        {
            warn!(error = %e, "virtio: cannot signal the interrupt");
        }
        for i in 0..self.queues.len() {
            if self.queues[i].ready
                && let Ok(q) = u16::try_from(i)
            {
                self.process(Some(q));
            }
        }
    }
}

/// Counters of one virtio device, read through the control socket.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    pub notifications: AtomicU64,
    pub interrupts: AtomicU64,
    pub driver_errors: AtomicU64,
    pub resets: AtomicU64,
}

#[derive(Debug)]
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    irq: EventFd,
    /// Where a `QUEUE_NOTIFY` write goes when KVM has no ioeventfd for it: the event loop.
    notify_evt: Option<EventFd>,
    broken: Option<String>,
    pub metrics: Arc<TransportMetrics>,
}

fn read_u32(data: &[u8]) -> Option<u32> {
    data.try_into().ok().map(u32::from_le_bytes)
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: GuestMemory, irq: EventFd) -> Self {
        let queues = device.queue_max_sizes().iter().map(|&n| Queue::new(n)).collect();
        Self {
            device,
            mem,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            irq,
            notify_evt: None,
            broken: None,
            metrics: Arc::default(),
        }
    }

    /// Sends `QUEUE_NOTIFY` writes that reach the vCPU thread to this event (the event loop's)
    /// instead of running the device on the vCPU thread.
    pub fn set_notify_event(&mut self, evt: EventFd) {
        self.notify_evt = Some(evt);
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    #[cfg(any(test, fuzzing))]
    pub fn status(&self) -> u32 {
        self.status
    }

    #[cfg(any(test, fuzzing))]
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The driver finished set-up and the device is not stopped.
    pub fn is_active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.broken.is_none()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::try_from(self.queue_sel).ok()?)
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        self.metrics.interrupts.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.irq.write(1) {
            warn!(error = %e, "virtio: cannot signal the interrupt");
        }
    }

    /// Stops the device until the driver resets it.
    fn stop(&mut self, why: String) {
        warn!(device = self.device.device_type(), reason = %why, "virtio: device stopped by a driver error");
        self.metrics.driver_errors.fetch_add(1, Ordering::Relaxed);
        self.broken = Some(why);
        self.status |= STATUS_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.raise(INT_CONFIG);
        }
    }

    fn reset(&mut self) {
        self.metrics.resets.fetch_add(1, Ordering::Relaxed);
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.broken = None;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added until a reset; anything else is ignored.
        if value & self.status != self.status {
            return;
        }
        let new = value & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        if new & STATUS_DRIVER_OK != 0 {
            if value & STATUS_FEATURES_OK == 0 {
                self.stop("DRIVER_OK before FEATURES_OK".to_owned());
                return;
            }
            for (i, q) in self.queues.iter().enumerate() {
                if q.ready
                    && let Err(e) = q.validate(&self.mem)
                {
                    let why = format!("queue {i}: {e}");
                    self.status = value;
                    self.stop(why);
                    return;
                }
            }
            self.status = value;
            self.device.activate(self.driver_features);
            return;
        }
        self.status = value;
    }

    /// Runs the device for a notification of `queue` (or backend work with `None`).
    pub fn process(&mut self, queue: Option<u16>) {
        if queue.is_some() {
            self.metrics.notifications.fetch_add(1, Ordering::Relaxed);
        }
        if !self.is_active() {
            return;
        }
        let mut ctx = QueueContext { mem: &self.mem, queues: &mut self.queues, used: false };
        let result = self.device.process(&mut ctx, queue);
        let used = ctx.used;
        if used {
            self.raise(INT_USED_RING);
        }
        if let Err(e) = result {
            self.stop(e.to_string());
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let setting_up = self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if setting_up => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM | reg::QUEUE_READY | reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH => {
                self.write_queue_register(offset, v);
            }
            reg::QUEUE_NOTIFY => match (u16::try_from(v), &self.notify_evt) {
                (Ok(_), Some(evt)) => {
                    if let Err(e) = evt.write(1) {
                        warn!(error = %e, "virtio: cannot signal the event loop");
                    }
                }
                (Ok(q), None) => self.process(Some(q)),
                (Err(_), _) => self.stop(format!("notify of queue {v}")),
            },
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.set_status(v),
            _ => {}
        }
    }

    fn write_queue_register(&mut self, offset: u64, v: u32) {
        if self.status & STATUS_DRIVER_OK != 0 && offset != reg::QUEUE_READY {
            return; // A live queue's layout cannot change.
        }
        let mem = self.mem.clone();
        let Some(q) = self.selected_queue() else { return };
        let set_low = |a: GuestAddress| GuestAddress((a.0 & !0xffff_ffff) | u64::from(v));
        let set_high = |a: GuestAddress| GuestAddress((a.0 & 0xffff_ffff) | (u64::from(v) << 32));
        if q.ready && offset != reg::QUEUE_READY {
            return;
        }
        match offset {
            reg::QUEUE_NUM => q.size = u16::try_from(v).unwrap_or(0),
            reg::QUEUE_DESC_LOW => q.desc_table = set_low(q.desc_table),
            reg::QUEUE_DESC_HIGH => q.desc_table = set_high(q.desc_table),
            reg::QUEUE_DRIVER_LOW => q.avail_ring = set_low(q.avail_ring),
            reg::QUEUE_DRIVER_HIGH => q.avail_ring = set_high(q.avail_ring),
            reg::QUEUE_DEVICE_LOW => q.used_ring = set_low(q.used_ring),
            reg::QUEUE_DEVICE_HIGH => q.used_ring = set_high(q.used_ring),
            reg::QUEUE_READY => {
                if v == 1 && !q.ready {
                    if let Err(e) = q.validate(&mem) {
                        let why = format!("queue {}: {e}", self.queue_sel);
                        self.stop(why);
                        return;
                    }
                    q.ready = true;
                } else if v == 0 {
                    q.ready = false;
                }
            }
            _ => {}
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => (self.device.features() & 0xffff_ffff) as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        let v = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        match read_u32(data) {
            Some(v) if offset.is_multiple_of(4) => self.write_register(offset, v),
            _ => {} // Registers are 32-bit; other widths are ignored.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::input::{Input, InputKind};
    use super::super::queue::testing::TestDriver;
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("test memory")
    }

    fn transport() -> MmioTransport<Input> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        MmioTransport::new(Input::new(InputKind::Keyboard), mem(), irq)
    }

    fn w(t: &mut MmioTransport<Input>, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport<Input>, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Negotiates VERSION_1 and sets up queue 0 at `base` as a driver would.
    fn set_up(t: &mut MmioTransport<Input>, base: u64) {
        w(t, reg::STATUS, 1);
        w(t, reg::STATUS, 1 | STATUS_DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1);
        w(t, reg::STATUS, 1 | STATUS_DRIVER | STATUS_FEATURES_OK);
        let d = TestDriver::new(&mem(), base, 8);
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, 8);
        w(t, reg::QUEUE_DESC_LOW, u32::try_from(d.queue.desc_table.0).expect("low"));
        w(t, reg::QUEUE_DRIVER_LOW, u32::try_from(d.queue.avail_ring.0).expect("low"));
        w(t, reg::QUEUE_DEVICE_LOW, u32::try_from(d.queue.used_ring.0).expect("low"));
        w(t, reg::QUEUE_READY, 1);
    }

    #[test]
    fn a_saved_transport_restores_and_bad_states_change_nothing() {
        let mut t = transport();
        set_up(&mut t, 0x1000);
        w(&mut t, reg::STATUS, 1 | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        t.device_mut().key(30, true).expect("room");
        let saved = t.save();
        assert!(saved.queues[0].ready);
        let json = serde_json::to_string(&saved).expect("json");
        let back: TransportState = serde_json::from_str(&json).expect("parse");
        let mut fresh = transport();
        fresh.restore(&back).expect("restore");
        assert_eq!(fresh.save(), saved, "a restored transport saves the same state");
        assert!(fresh.is_active());

        // Each of these is refused, and the transport is as it was.
        let mut bad_queue = saved.clone();
        bad_queue.queues[0].desc_table = 1 << 40;
        let mut bad_size = saved.clone();
        bad_size.queues[0].size = 3;
        let mut bad_features = saved.clone();
        bad_features.driver_features |= 1 << 20;
        let mut fewer_queues = saved.clone();
        fewer_queues.queues.pop();
        let mut other_device = saved.clone();
        other_device.device = DeviceState::Block;
        let mut flood = saved.clone();
        if let DeviceState::Input(i) = &mut flood.device {
            i.pending = vec![(1, 30, 1); super::super::input::MAX_PENDING + 1];
        }
        for (what, bad) in [
            ("queue outside memory", bad_queue),
            ("queue size", bad_size),
            ("features", bad_features),
            ("queue count", fewer_queues),
            ("device kind", other_device),
            ("pending events", flood),
        ] {
            let mut target = transport();
            let before = target.save();
            assert!(target.restore(&bad).is_err(), "{what} accepted");
            assert_eq!(target.save(), before, "{what}: a refused state changed the transport");
        }
    }

    #[test]
    fn identity_and_negotiation() {
        let mut t = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 18);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1");
        set_up(&mut t, 0x1000);
        assert_ne!(t.status() & STATUS_FEATURES_OK, 0);
        w(&mut t, reg::STATUS, 1 | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(t.is_active());
        // Reset clears everything.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), 0);
        assert!(!t.is_active());
    }

    #[test]
    fn features_not_offered_or_without_version_1_are_refused() {
        let mut t = transport();
        w(&mut t, reg::STATUS, 1 | STATUS_DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, reg::DRIVER_FEATURES, 1 << 28); // not offered
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(&mut t, reg::STATUS, 1 | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
        let mut t = transport();
        w(&mut t, reg::STATUS, 1 | STATUS_DRIVER);
        w(&mut t, reg::STATUS, 1 | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0, "legacy drivers are refused");
    }

    #[test]
    fn hostile_register_writes_stop_the_device_not_the_vmm() {
        // DRIVER_OK without FEATURES_OK.
        let mut t = transport();
        w(&mut t, reg::STATUS, 1 | STATUS_DRIVER | STATUS_DRIVER_OK);
        assert!(t.broken().is_some());
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
        // A queue outside guest memory, a size that is not a power of two, a huge size.
        for (num, desc) in [(8u32, 0xffff_f000u32), (12, 0x1000), (0x10000, 0x1000), (0, 0x1000)] {
            let mut t = transport();
            w(&mut t, reg::QUEUE_SEL, 0);
            w(&mut t, reg::QUEUE_NUM, num);
            w(&mut t, reg::QUEUE_DESC_LOW, desc);
            w(&mut t, reg::QUEUE_READY, 1);
            assert!(t.broken().is_some(), "num {num} desc {desc:x}");
            assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        }
        // Selecting a queue that does not exist reads as absent and ignores writes.
        let mut t = transport();
        w(&mut t, reg::QUEUE_SEL, 99);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        w(&mut t, reg::QUEUE_READY, 1);
        assert!(t.broken().is_none());
        // Odd widths and offsets are ignored; config reads past the end are zero.
        t.write(reg::STATUS + 1, &[0xff]);
        t.write(reg::STATUS, &[0xff, 0xff]);
        assert_eq!(t.status(), 0);
        let mut b = [0xaa; 2];
        t.read(reg::MAGIC + 2, &mut b);
        assert_eq!(b, [0, 0]);
        // Bits can only be added until a reset.
        set_up(&mut t, 0x1000);
        w(&mut t, reg::STATUS, STATUS_DRIVER);
        assert_ne!(t.status() & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn a_live_queue_cannot_be_moved_and_bad_rings_stop_the_device() {
        let m = mem();
        let mut t = transport();
        set_up(&mut t, 0x1000);
        w(&mut t, reg::STATUS, 1 | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        w(&mut t, reg::QUEUE_DESC_LOW, 0x8000);
        assert_eq!(t.queues[0].desc_table, GuestAddress(0x1000));
        // The driver publishes an available index far ahead of the ring: the device stops.
        let mut d = TestDriver::new(&m, 0x1000, 8);
        d.set_avail_idx(&t.mem, 200);
        t.device_mut().key(30, true).expect("room");
        t.process(Some(0));
        assert!(t.broken().is_some());
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
        // Ignored until reset, then usable again.
        t.process(Some(0));
        w(&mut t, reg::STATUS, 0);
        assert!(t.broken().is_none());
    }
}
