//! virtio over MMIO (virtio 1.x, transport version 2): the transport, the split queue, and the
//! devices (input, block, console).

pub mod block;
pub mod console;
pub mod input;
pub mod mmio;
pub mod queue;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use mmio::{MmioTransport, SnapshotTransport, TransportState, VirtioDevice};
pub use queue::{DescriptorChain, Queue, QueueError};

use crate::memory::GuestMemory;

/// `VIRTIO_F_VERSION_1`: the only feature every device offers and every driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type ids.
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_CONSOLE: u32 = 3;
pub const TYPE_INPUT: u32 = 18;

/// Copies `data.len()` bytes of a configuration space from `offset`; bytes past its end (or
/// offsets that would overflow) read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// A device's own state in a snapshot (its transport's is [`TransportState`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "device", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceState {
    /// A disk keeps nothing between requests: its contents are the disk file's.
    Block,
    Console(console::ConsoleState),
    Input(input::InputState),
}

/// Why a device stopped: the driver (the guest) did something the device refuses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("queue {0} does not exist")]
    NoSuchQueue(u16),
}

/// What a device gets when it runs: guest memory and its queues. Setting `used` asks the
/// transport to raise the device's interrupt.
#[derive(Debug)]
pub struct QueueContext<'a> {
    pub mem: &'a GuestMemory,
    pub queues: &'a mut [Queue],
    pub used: bool,
}

impl QueueContext<'_> {
    pub fn queue(&mut self, index: u16) -> Result<&mut Queue, DeviceError> {
        self.queues.get_mut(usize::from(index)).ok_or(DeviceError::NoSuchQueue(index))
    }

    /// Pops the next chain of queue `index`, if the queue is ready.
    pub fn pop(&mut self, index: u16) -> Result<Option<DescriptorChain>, DeviceError> {
        let mem = self.mem;
        let q = self.queue(index)?;
        if !q.ready {
            return Ok(None);
        }
        Ok(q.pop(mem)?)
    }

    pub fn add_used(&mut self, index: u16, head: u16, len: u32) -> Result<(), DeviceError> {
        let mem = self.mem;
        self.queue(index)?.add_used(mem, head, len)?;
        self.used = true;
        Ok(())
    }
}
