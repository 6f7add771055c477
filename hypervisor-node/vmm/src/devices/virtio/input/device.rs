//! virtio-input: a keyboard and an absolute tablet. The display channel injects evdev events;
//! the device delivers them into the buffers the driver posts on its event queue. Events wait in
//! a bounded queue while the driver has no buffers; when that is full, input is refused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::InputMetrics;

use crate::devices::virtio::mmio::VirtioDevice;
use crate::devices::virtio::{
    DeviceError, DeviceState, QueueContext, TYPE_INPUT, VIRTIO_F_VERSION_1,
};

pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const SYN_REPORT: u16 = 0;
pub const REL_WHEEL: u16 = 0x08;
pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
/// Highest key code the keyboard reports.
pub const MAX_KEY: u16 = 255;
/// Events held while the driver has no buffers.
pub const MAX_PENDING: usize = 1024;

const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;
const EVENTQ: u16 = 0;
const STATUSQ: u16 = 1;
const QUEUE_SIZES: [u16; 2] = [64, 64];

/// One evdev event as virtio-input carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl InputEvent {
    pub const fn new(kind: u16, code: u16, value: u32) -> Self {
        Self { kind, code, value }
    }
    const SYN: Self = Self::new(EV_SYN, SYN_REPORT, 0);

    fn bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Keyboard,
    /// Absolute coordinates in framebuffer pixels.
    Tablet {
        width: u32,
        height: u32,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    #[error("the guest is not reading input (queue full)")]
    Full,
    #[error("key code {0} is out of range")]
    BadKey(u16),
    #[error("pointer position {x},{y} is outside the {width}x{height} screen")]
    BadPosition { x: u32, y: u32, width: u32, height: u32 },
    #[error("this device does not take that kind of input")]
    WrongDevice,
}

/// An input device in a snapshot: the configuration selector and the events not yet delivered
/// (`[type, code, value]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputState {
    pub keyboard: bool,
    pub select: u8,
    pub subsel: u8,
    pub pending: Vec<(u16, u16, u32)>,
    pub buttons: u8,
}

#[derive(Debug)]
pub struct Input {
    kind: InputKind,
    select: u8,
    subsel: u8,
    pending: VecDeque<InputEvent>,
    buttons: u8,
    pub metrics: Arc<InputMetrics>,
}

fn bitmap(bits: &[u16]) -> Vec<u8> {
    let len = bits.iter().map(|&b| usize::from(b) / 8 + 1).max().unwrap_or(0);
    let mut v = vec![0u8; len];
    for &b in bits {
        v[usize::from(b) / 8] |= 1 << (b % 8);
    }
    v
}

impl Input {
    pub fn new(kind: InputKind) -> Self {
        Self {
            kind,
            select: 0,
            subsel: 0,
            pending: VecDeque::new(),
            buttons: 0,
            metrics: Arc::default(),
        }
    }

    fn enqueue(&mut self, events: &[InputEvent]) -> Result<(), InputError> {
        if self.pending.len() + events.len() > MAX_PENDING {
            self.metrics.events_refused.fetch_add(events.len() as u64, Ordering::Relaxed);
            return Err(InputError::Full);
        }
        self.pending.extend(events.iter().copied());
        self.metrics.events_injected.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A key press or release (evdev code). Deliver with `MmioTransport::process(None)`.
    pub fn key(&mut self, code: u16, down: bool) -> Result<(), InputError> {
        if self.kind != InputKind::Keyboard {
            return Err(InputError::WrongDevice);
        }
        if code == 0 || code > MAX_KEY {
            return Err(InputError::BadKey(code));
        }
        self.enqueue(&[InputEvent::new(EV_KEY, code, u32::from(down)), InputEvent::SYN])
    }

    /// An absolute pointer position with the buttons held (bit 0 left, 1 middle, 2 right) and
    /// a wheel step.
    pub fn pointer(&mut self, x: u32, y: u32, buttons: u8, wheel: i8) -> Result<(), InputError> {
        let InputKind::Tablet { width, height } = self.kind else {
            return Err(InputError::WrongDevice);
        };
        if x >= width || y >= height {
            return Err(InputError::BadPosition { x, y, width, height });
        }
        let mut ev = vec![InputEvent::new(EV_ABS, ABS_X, x), InputEvent::new(EV_ABS, ABS_Y, y)];
        let changed = buttons ^ self.buttons;
        for (bit, code) in [(1u8, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)] {
            if changed & bit != 0 {
                ev.push(InputEvent::new(EV_KEY, code, u32::from(buttons & bit != 0)));
            }
        }
        if wheel != 0 {
            ev.push(InputEvent::new(EV_REL, REL_WHEEL, i32::from(wheel).cast_unsigned()));
        }
        ev.push(InputEvent::SYN);
        self.enqueue(&ev)?;
        self.buttons = buttons;
        Ok(())
    }

    fn name(&self) -> &'static [u8] {
        match self.kind {
            InputKind::Keyboard => b"atrium-keyboard",
            InputKind::Tablet { .. } => b"atrium-tablet",
        }
    }

    /// The union part of the configuration space for the current selection.
    fn config_data(&self) -> Vec<u8> {
        match (self.select, self.kind) {
            (CFG_ID_NAME, _) => self.name().to_vec(),
            (CFG_ID_SERIAL, _) => b"atrium-0".to_vec(),
            (CFG_ID_DEVIDS, kind) => {
                let product: u16 = if kind == InputKind::Keyboard { 1 } else { 2 };
                let mut v = Vec::with_capacity(8);
                for x in [0x06u16 /* BUS_VIRTUAL */, 0x0627, product, 1] {
                    v.extend_from_slice(&x.to_le_bytes());
                }
                v
            }
            (CFG_PROP_BITS, _) => Vec::new(),
            (CFG_EV_BITS, InputKind::Keyboard) if u16::from(self.subsel) == EV_KEY => {
                bitmap(&(1..=MAX_KEY).collect::<Vec<_>>())
            }
            (CFG_EV_BITS, InputKind::Tablet { .. }) => match u16::from(self.subsel) {
                EV_KEY => bitmap(&[BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
                EV_ABS => bitmap(&[ABS_X, ABS_Y]),
                EV_REL => bitmap(&[REL_WHEEL]),
                _ => Vec::new(),
            },
            (CFG_ABS_INFO, InputKind::Tablet { width, height }) => {
                let max = match u16::from(self.subsel) {
                    ABS_X => width - 1,
                    ABS_Y => height - 1,
                    _ => return Vec::new(),
                };
                let mut v = Vec::with_capacity(20);
                for x in [0u32, max, 0, 0, 0] {
                    v.extend_from_slice(&x.to_le_bytes());
                }
                v
            }
            _ => Vec::new(),
        }
    }

    fn deliver(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), DeviceError> {
        while let Some(&event) = self.pending.front() {
            let Some(chain) = ctx.pop(EVENTQ)? else { break };
            if chain.writable_len() < 8 {
                return Err(DeviceError::Malformed("input buffer shorter than an event".into()));
            }
            let n = chain.write_all(ctx.mem, &event.bytes())?;
            ctx.add_used(EVENTQ, chain.head, u32::try_from(n).unwrap_or(8))?;
            self.pending.pop_front();
            self.metrics.events_delivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl VirtioDevice for Input {
    fn device_type(&self) -> u32 {
        TYPE_INPUT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 136];
        let payload = self.config_data();
        let n = payload.len().min(128);
        cfg[0] = self.select;
        cfg[1] = self.subsel;
        cfg[2] = u8::try_from(n).unwrap_or(128);
        cfg[8..8 + n].copy_from_slice(&payload[..n]);
        crate::devices::virtio::read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = b,
                Some(1) => self.subsel = b,
                _ => {}
            }
        }
    }

    fn process(
        &mut self,
        ctx: &mut QueueContext<'_>,
        queue: Option<u16>,
    ) -> Result<(), DeviceError> {
        if queue == Some(STATUSQ) {
            // LED and similar feedback: taken and ignored.
            while let Some(chain) = ctx.pop(STATUSQ)? {
                ctx.add_used(STATUSQ, chain.head, 0)?;
            }
        }
        self.deliver(ctx)
    }

    fn reset(&mut self) {
        self.select = 0;
        self.subsel = 0;
        self.pending.clear();
        self.buttons = 0;
    }

    fn save(&self) -> DeviceState {
        DeviceState::Input(InputState {
            keyboard: self.kind == InputKind::Keyboard,
            select: self.select,
            subsel: self.subsel,
            pending: self.pending.iter().map(|e| (e.kind, e.code, e.value)).collect(),
            buttons: self.buttons,
        })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        let DeviceState::Input(s) = state else {
            return Err("the snapshot has another device here, not an input device".into());
        };
        if s.keyboard != (self.kind == InputKind::Keyboard) {
            return Err("the snapshot's input device is of the other kind".into());
        }
        if s.pending.len() > MAX_PENDING {
            return Err(format!("{} pending input events, at most {MAX_PENDING}", s.pending.len()));
        }
        self.select = s.select;
        self.subsel = s.subsel;
        self.pending = s.pending.iter().map(|&(k, c, v)| InputEvent::new(k, c, v)).collect();
        self.buttons = s.buttons;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::queue::testing::*;
    use crate::memory::GuestMemory;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("test memory")
    }

    fn run(
        dev: &mut Input,
        m: &GuestMemory,
        q: &mut [crate::devices::virtio::Queue],
    ) -> Result<bool, DeviceError> {
        let mut ctx = QueueContext { mem: m, queues: q, used: false };
        dev.process(&mut ctx, Some(EVENTQ))?;
        Ok(ctx.used)
    }

    #[test]
    fn keys_are_delivered_into_posted_buffers() {
        let m = mem();
        let mut d = TestDriver::new(&m, 0x1000, 8);
        for i in 0..4u16 {
            d.set_desc(&m, i, 0x8000 + 8 * u64::from(i), 8, WRITE, 0);
            d.push_head(&m, i);
        }
        let mut dev = Input::new(InputKind::Keyboard);
        dev.key(30, true).expect("valid key");
        let mut queues = [d.queue.clone(), crate::devices::virtio::Queue::new(8)];
        assert!(run(&mut dev, &m, &mut queues).expect("ok"));
        let ev: [u8; 8] = m.read_obj(GuestAddress(0x8000)).expect("mem");
        assert_eq!(ev, InputEvent::new(EV_KEY, 30, 1).bytes());
        let syn: [u8; 8] = m.read_obj(GuestAddress(0x8008)).expect("mem");
        assert_eq!(syn, [0; 8]);
        assert_eq!(d.used_idx(&m), 2);
    }

    #[test]
    fn bad_input_is_refused_and_the_queue_is_bounded() {
        let mut kbd = Input::new(InputKind::Keyboard);
        assert_eq!(kbd.key(0, true), Err(InputError::BadKey(0)));
        assert_eq!(kbd.key(MAX_KEY + 1, true), Err(InputError::BadKey(MAX_KEY + 1)));
        assert_eq!(kbd.pointer(1, 1, 0, 0), Err(InputError::WrongDevice));
        for _ in 0..MAX_PENDING / 2 {
            kbd.key(30, true).expect("room");
        }
        assert_eq!(kbd.key(30, true), Err(InputError::Full));
        let mut tab = Input::new(InputKind::Tablet { width: 640, height: 480 });
        assert!(matches!(tab.pointer(640, 0, 0, 0), Err(InputError::BadPosition { .. })));
        assert!(matches!(tab.pointer(0, u32::MAX, 0, 0), Err(InputError::BadPosition { .. })));
        tab.pointer(10, 20, 1, -1).expect("valid");
        let got: Vec<_> = tab.pending.iter().copied().collect();
        assert_eq!(
            got,
            vec![
                InputEvent::new(EV_ABS, ABS_X, 10),
                InputEvent::new(EV_ABS, ABS_Y, 20),
                InputEvent::new(EV_KEY, BTN_LEFT, 1),
                InputEvent::new(EV_REL, REL_WHEEL, u32::MAX),
                InputEvent::SYN,
            ]
        );
    }

    #[test]
    fn a_buffer_too_small_for_an_event_stops_the_device() {
        let m = mem();
        let mut d = TestDriver::new(&m, 0x1000, 8);
        d.set_desc(&m, 0, 0x8000, 4, WRITE, 0);
        d.push_head(&m, 0);
        let mut dev = Input::new(InputKind::Keyboard);
        dev.key(30, true).expect("valid");
        let mut queues = [d.queue.clone(), crate::devices::virtio::Queue::new(8)];
        assert!(matches!(run(&mut dev, &m, &mut queues), Err(DeviceError::Malformed(_))));
        // A read-only buffer is just as bad.
        let mut d = TestDriver::new(&m, 0x1000, 8);
        d.set_desc(&m, 0, 0x8000, 8, 0, 0);
        d.push_head(&m, 0);
        let mut queues = [d.queue.clone(), crate::devices::virtio::Queue::new(8)];
        assert!(run(&mut dev, &m, &mut queues).is_err());
    }

    #[test]
    fn config_space_describes_the_device() {
        let mut tab = Input::new(InputKind::Tablet { width: 800, height: 600 });
        tab.write_config(0, &[CFG_ABS_INFO, 0]);
        let mut b = [0u8; 16];
        tab.read_config(0, &mut b);
        assert_eq!(b[2], 20);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().expect("4")), 799);
        tab.write_config(0, &[CFG_ID_NAME]);
        let mut name = [0u8; 13];
        tab.read_config(8, &mut name);
        assert_eq!(&name, b"atrium-tablet");
        // Reads past the end of the space return zeros instead of failing.
        let mut far = [0xffu8; 4];
        tab.read_config(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
    }
}
