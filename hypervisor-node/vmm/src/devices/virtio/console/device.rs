//! virtio-console with one named port (`VIRTIO_CONSOLE_F_MULTIPORT`), the agent channel: the
//! guest agent opens `/dev/virtio-ports/org.atrium.agent.0`, as it does under QEMU. Bytes are
//! bridged to the host side (`crate::agent_channel`) through two bounded buffers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::ConsoleMetrics;
use crate::devices::virtio::mmio::VirtioDevice;
use crate::devices::virtio::{
    DeviceError, DeviceState, QueueContext, TYPE_CONSOLE, VIRTIO_F_VERSION_1,
};

const F_MULTIPORT: u64 = 1 << 1;
const RXQ: u16 = 0;
const TXQ: u16 = 1;
const CTRL_RXQ: u16 = 2;
const CTRL_TXQ: u16 = 3;
const QUEUE_SIZES: [u16; 4] = [64, 64, 64, 64];

pub const DEVICE_READY: u16 = 0;
pub const DEVICE_ADD: u16 = 1;
pub const PORT_READY: u16 = 3;
pub const PORT_OPEN: u16 = 6;
pub const PORT_NAME: u16 = 7;

/// Bytes held in each direction; a guest writing past this while no host listens loses the
/// oldest bytes (counted), and the host side stops reading when the guest is not keeping up.
pub const BUFFER_LIMIT: usize = 256 * 1024;
/// Longest buffer the guest may hand over at once.
const MAX_CHAIN: usize = 1 << 20;
const MAX_CONTROL: usize = 4096;

/// The agent port in a snapshot: bytes not yet delivered either way, control messages not
/// yet delivered, and what each side had said about the port. Host-to-guest bytes are not
/// kept: the host side is a new connection after a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleState {
    pub to_host: Vec<u8>,
    pub control: Vec<Vec<u8>>,
    pub port_ready: bool,
    pub guest_open: bool,
    pub host_connected: bool,
}

/// Most control messages waiting for the driver.
const MAX_CONTROL_QUEUED: usize = 64;

#[derive(Debug)]
pub struct Console {
    port_name: String,
    to_guest: VecDeque<u8>,
    to_host: VecDeque<u8>,
    control: VecDeque<Vec<u8>>,
    port_ready: bool,
    guest_open: bool,
    host_connected: bool,
    pub metrics: Arc<ConsoleMetrics>,
}

fn control(id: u32, event: u16, value: u16, extra: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + extra.len());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&event.to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    v.extend_from_slice(extra);
    v
}

impl Console {
    pub fn new(port_name: &str) -> Self {
        Self {
            port_name: port_name.to_owned(),
            to_guest: VecDeque::new(),
            to_host: VecDeque::new(),
            control: VecDeque::new(),
            port_ready: false,
            guest_open: false,
            host_connected: false,
            metrics: Arc::default(),
        }
    }

    /// Room left for host-to-guest bytes.
    pub fn room(&self) -> usize {
        BUFFER_LIMIT.saturating_sub(self.to_guest.len())
    }

    /// Queues host bytes for the guest (at most [`Self::room`]); returns how many were taken.
    pub fn send_to_guest(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        self.to_guest.extend(&data[..n]);
        n
    }

    /// Takes the bytes the guest wrote.
    pub fn take_from_guest(&mut self) -> Vec<u8> {
        self.to_host.drain(..).collect()
    }

    /// The host side connected or went away: the guest port sees it as open or closed.
    pub fn set_host_connected(&mut self, connected: bool) {
        self.host_connected = connected;
        if self.port_ready {
            // Only the last word counts: a host that comes and goes while the guest reads no
            // control messages does not grow the queue.
            self.control.retain(|m| m.get(4..6) != Some(&PORT_OPEN.to_le_bytes()[..]));
            self.control.push_back(control(0, PORT_OPEN, u16::from(connected), &[]));
        }
        if !connected {
            self.to_guest.clear();
        }
    }

    fn on_control(&mut self, msg: &[u8]) -> Result<(), DeviceError> {
        let (Some(id), Some(event), Some(value)) = (
            msg.get(0..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))),
            msg.get(4..6).map(|b| u16::from_le_bytes([b[0], b[1]])),
            msg.get(6..8).map(|b| u16::from_le_bytes([b[0], b[1]])),
        ) else {
            return Err(DeviceError::Malformed("control message shorter than 8 bytes".into()));
        };
        match event {
            DEVICE_READY if value == 1 => self.control.push_back(control(0, DEVICE_ADD, 0, &[])),
            DEVICE_READY => debug!("console: the driver failed to set up"),
            PORT_READY if id == 0 && value == 1 => {
                self.port_ready = true;
                let name = self.port_name.clone();
                self.control.push_back(control(0, PORT_NAME, 1, name.as_bytes()));
                if self.host_connected {
                    self.control.push_back(control(0, PORT_OPEN, 1, &[]));
                }
            }
            PORT_OPEN if id == 0 => self.guest_open = value != 0,
            _ => debug!(id, event, value, "console: control message ignored"),
        }
        if self.control.len() > MAX_CONTROL_QUEUED {
            return Err(DeviceError::Malformed("control messages flood".into()));
        }
        Ok(())
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MULTIPORT
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (u16), max_nr_ports (u32), emerg_wr (u32).
        let mut cfg = [0u8; 12];
        cfg[4..8].copy_from_slice(&1u32.to_le_bytes());
        crate::devices::virtio::read_config_bytes(&cfg, offset, data);
    }

    fn process(
        &mut self,
        ctx: &mut QueueContext<'_>,
        _queue: Option<u16>,
    ) -> Result<(), DeviceError> {
        while let Some(chain) = ctx.pop(CTRL_TXQ)? {
            let msg = chain
                .read_all(ctx.mem, MAX_CONTROL)?
                .ok_or_else(|| DeviceError::Malformed("control message too long".into()))?;
            self.on_control(&msg)?;
            ctx.add_used(CTRL_TXQ, chain.head, 0)?;
        }
        while let Some(chain) = ctx.pop(TXQ)? {
            let data = chain
                .read_all(ctx.mem, MAX_CHAIN)?
                .ok_or_else(|| DeviceError::Malformed("port buffer too long".into()))?;
            self.metrics.bytes_from_guest.fetch_add(data.len() as u64, Ordering::Relaxed);
            self.to_host.extend(&data);
            let over = self.to_host.len().saturating_sub(BUFFER_LIMIT);
            if over > 0 {
                self.to_host.drain(..over);
                self.metrics.bytes_dropped.fetch_add(over as u64, Ordering::Relaxed);
            }
            ctx.add_used(TXQ, chain.head, 0)?;
        }
        while !self.control.is_empty() {
            let Some(chain) = ctx.pop(CTRL_RXQ)? else { break };
            let msg = self.control.pop_front().expect("checked non-empty");
            if chain.writable_len() < msg.len() as u64 {
                return Err(DeviceError::Malformed("control buffer too small".into()));
            }
            let n = chain.write_all(ctx.mem, &msg)?;
            ctx.add_used(CTRL_RXQ, chain.head, u32::try_from(n).unwrap_or(0))?;
        }
        while self.port_ready && !self.to_guest.is_empty() {
            let Some(chain) = ctx.pop(RXQ)? else { break };
            let room = usize::try_from(chain.writable_len()).unwrap_or(usize::MAX);
            let n = room.min(self.to_guest.len());
            let bytes: Vec<u8> = self.to_guest.drain(..n).collect();
            let written = chain.write_all(ctx.mem, &bytes)?;
            self.metrics.bytes_to_guest.fetch_add(written as u64, Ordering::Relaxed);
            ctx.add_used(RXQ, chain.head, u32::try_from(written).unwrap_or(0))?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.to_guest.clear();
        self.control.clear();
        self.port_ready = false;
        self.guest_open = false;
    }

    fn save(&self) -> DeviceState {
        DeviceState::Console(ConsoleState {
            to_host: self.to_host.iter().copied().collect(),
            control: self.control.iter().cloned().collect(),
            port_ready: self.port_ready,
            guest_open: self.guest_open,
            host_connected: self.host_connected,
        })
    }

    /// The restored port has no host yet: a guest that saw one connected is told it left.
    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        let DeviceState::Console(s) = state else {
            return Err("the snapshot has another device here, not the agent console".into());
        };
        // A live queue may go past the bound by the host's latest word and the port's name and
        // opening (pushed together before the flood is noticed).
        if s.to_host.len() > BUFFER_LIMIT
            || s.control.len() > MAX_CONTROL_QUEUED + 3
            || s.control.iter().any(|m| m.len() < 8 || m.len() > MAX_CONTROL)
        {
            return Err("the agent console's buffers in the snapshot are out of bounds".into());
        }
        self.to_guest.clear();
        self.to_host = s.to_host.iter().copied().collect();
        self.control = s.control.iter().cloned().collect();
        self.port_ready = s.port_ready;
        self.guest_open = s.guest_open;
        self.host_connected = s.host_connected;
        if s.host_connected {
            self.set_host_connected(false);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::Queue;
    use crate::devices::virtio::queue::testing::*;
    use crate::memory::GuestMemory;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("test memory")
    }

    struct Guest {
        drivers: Vec<TestDriver>,
    }

    impl Guest {
        fn new(m: &GuestMemory) -> Self {
            let drivers = (0..4u64).map(|i| TestDriver::new(m, 0x1000 + i * 0x1000, 8)).collect();
            Self { drivers }
        }
        fn queues(&self) -> Vec<Queue> {
            self.drivers.iter().map(|d| d.queue.clone()).collect()
        }
        fn run(
            &self,
            dev: &mut Console,
            m: &GuestMemory,
            queues: &mut [Queue],
        ) -> Result<(), DeviceError> {
            let mut ctx = QueueContext { mem: m, queues, used: false };
            dev.process(&mut ctx, None)
        }
    }

    #[test]
    fn the_port_is_announced_and_bytes_flow_both_ways() {
        let m = mem();
        let mut g = Guest::new(&m);
        let mut dev = Console::new("org.atrium.agent.0");
        // Control receive buffers and data receive buffers.
        for i in 0..2u16 {
            g.drivers[2].set_desc(&m, i, 0x10000 + u64::from(i) * 0x100, 0x100, WRITE, 0);
            g.drivers[2].push_head(&m, i);
        }
        g.drivers[0].set_desc(&m, 0, 0x20000, 0x100, WRITE, 0);
        g.drivers[0].push_head(&m, 0);
        // DEVICE_READY from the driver.
        m.write_slice(&control(0, DEVICE_READY, 1, &[]), GuestAddress(0x30000)).expect("mem");
        g.drivers[3].set_desc(&m, 0, 0x30000, 8, 0, 0);
        g.drivers[3].push_head(&m, 0);
        let mut queues = g.queues();
        g.run(&mut dev, &m, &mut queues).expect("ok");
        let mut add = [0u8; 8];
        m.read_slice(&mut add, GuestAddress(0x10000)).expect("mem");
        assert_eq!(add, control(0, DEVICE_ADD, 0, &[])[..]);
        // PORT_READY: the device names the port.
        m.write_slice(&control(0, PORT_READY, 1, &[]), GuestAddress(0x30100)).expect("mem");
        g.drivers[3].set_desc(&m, 1, 0x30100, 8, 0, 0);
        g.drivers[3].push_head(&m, 1);
        g.run(&mut dev, &m, &mut queues).expect("ok");
        let mut name = [0u8; 26];
        m.read_slice(&mut name, GuestAddress(0x10100)).expect("mem");
        assert_eq!(&name[8..], b"org.atrium.agent.0");
        // Guest to host.
        m.write_slice(b"{\"type\":\"ready\"}\n", GuestAddress(0x40000)).expect("mem");
        g.drivers[1].set_desc(&m, 0, 0x40000, 17, 0, 0);
        g.drivers[1].push_head(&m, 0);
        // Host to guest.
        assert_eq!(dev.send_to_guest(b"ping\n"), 5);
        g.run(&mut dev, &m, &mut queues).expect("ok");
        assert_eq!(dev.take_from_guest(), b"{\"type\":\"ready\"}\n");
        let mut got = [0u8; 5];
        m.read_slice(&mut got, GuestAddress(0x20000)).expect("mem");
        assert_eq!(&got, b"ping\n");
        assert_eq!(g.drivers[0].used_elem(&m, 0), (0, 5));
    }

    #[test]
    fn malformed_control_messages_stop_the_device() {
        let m = mem();
        let mut g = Guest::new(&m);
        let mut dev = Console::new("p");
        g.drivers[3].set_desc(&m, 0, 0x30000, 4, 0, 0);
        g.drivers[3].push_head(&m, 0);
        let mut queues = g.queues();
        assert!(matches!(g.run(&mut dev, &m, &mut queues), Err(DeviceError::Malformed(_))));
        // A flood of DEVICE_READY without receive buffers is bounded too.
        let mut g = Guest::new(&m);
        let mut dev = Console::new("p");
        m.write_slice(&control(0, DEVICE_READY, 1, &[]), GuestAddress(0x30000)).expect("mem");
        let mut queues = g.queues();
        let mut result = Ok(());
        for _ in 0..100 {
            g.drivers[3].set_desc(&m, 0, 0x30000, 8, 0, 0);
            g.drivers[3].push_head(&m, 0);
            result = g.run(&mut dev, &m, &mut queues);
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
    }

    #[test]
    fn host_bytes_are_bounded() {
        let mut dev = Console::new("p");
        let big = vec![b'x'; BUFFER_LIMIT + 10];
        assert_eq!(dev.send_to_guest(&big), BUFFER_LIMIT);
        assert_eq!(dev.room(), 0);
        assert_eq!(dev.send_to_guest(b"more"), 0);
    }
}
