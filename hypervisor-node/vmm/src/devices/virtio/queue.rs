//! The split virtqueue, device side. Everything the driver wrote (indices, descriptors,
//! addresses, lengths) is checked before use: a bad value is a [`QueueError`] that stops the
//! device, never a panic and never an access outside guest RAM.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemory;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("queue size {0} is not a power of two within the device's maximum")]
    BadSize(u16),
    #[error("{what} at 0x{addr:x} is misaligned")]
    Misaligned { what: &'static str, addr: u64 },
    #[error("{what} at 0x{addr:x} (+{len}) is outside guest memory")]
    OutOfMemory { what: &'static str, addr: u64, len: u64 },
    #[error("available index {avail} is more than the queue size ahead of {next}")]
    AvailIndex { avail: u16, next: u16 },
    #[error("descriptor index {0} is out of range")]
    BadIndex(u16),
    #[error("descriptor chain is longer than the queue (a loop)")]
    ChainLoop,
    #[error("indirect descriptors were not negotiated")]
    Indirect,
    #[error("guest memory access failed: {0}")]
    Memory(String),
}

/// One descriptor of a chain, already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: GuestAddress,
    pub len: u32,
    pub writable: bool,
}

/// A chain popped from the available ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorChain {
    pub head: u16,
    pub descs: Vec<Descriptor>,
}

impl DescriptorChain {
    pub fn readable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descs.iter().filter(|d| !d.writable)
    }
    pub fn writable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descs.iter().filter(|d| d.writable)
    }
    pub fn writable_len(&self) -> u64 {
        self.writable().map(|d| u64::from(d.len)).sum()
    }

    /// Copies the readable part of the chain, up to `max` bytes; `None` when it is longer.
    pub fn read_all(&self, mem: &GuestMemory, max: usize) -> Result<Option<Vec<u8>>, QueueError> {
        let total: u64 = self.readable().map(|d| u64::from(d.len)).sum();
        if total > max as u64 {
            return Ok(None);
        }
        let mut out =
            vec![0u8; usize::try_from(total).map_err(|e| QueueError::Memory(e.to_string()))?];
        let mut at = 0usize;
        for d in self.readable() {
            let n = d.len as usize;
            mem.read_slice(&mut out[at..at + n], d.addr)
                .map_err(|e| QueueError::Memory(e.to_string()))?;
            at += n;
        }
        Ok(Some(out))
    }

    /// Copies `data` into the writable descriptors in order; returns how many bytes fit.
    pub fn write_all(&self, mem: &GuestMemory, data: &[u8]) -> Result<usize, QueueError> {
        let mut at = 0usize;
        for d in self.writable() {
            if at == data.len() {
                break;
            }
            let n = (d.len as usize).min(data.len() - at);
            mem.write_slice(&data[at..at + n], d.addr)
                .map_err(|e| QueueError::Memory(e.to_string()))?;
            at += n;
        }
        Ok(at)
    }
}

/// A queue in a snapshot: what the driver configured and where the device is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueState {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

/// The driver-visible state of one queue plus the device's position in it.
#[derive(Debug, Clone)]
pub struct Queue {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: GuestAddress,
    pub avail_ring: GuestAddress,
    pub used_ring: GuestAddress,
    next_avail: u16,
    next_used: u16,
}

impl Queue {
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: GuestAddress(0),
            avail_ring: GuestAddress(0),
            used_ring: GuestAddress(0),
            next_avail: 0,
            next_used: 0,
        }
    }

    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// What a snapshot keeps of the queue.
    pub fn state(&self) -> QueueState {
        QueueState {
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table.raw_value(),
            avail_ring: self.avail_ring.raw_value(),
            used_ring: self.used_ring.raw_value(),
            next_avail: self.next_avail,
            next_used: self.next_used,
        }
    }

    /// Takes a snapshot's state, checked as the driver's own values are: a ready queue must
    /// fit its size and guest memory. Nothing changes when it does not.
    pub fn restore(&mut self, state: &QueueState, mem: &GuestMemory) -> Result<(), QueueError> {
        let mut q = Self::new(self.max_size);
        q.size = state.size;
        q.ready = state.ready;
        q.desc_table = GuestAddress(state.desc_table);
        q.avail_ring = GuestAddress(state.avail_ring);
        q.used_ring = GuestAddress(state.used_ring);
        q.next_avail = state.next_avail;
        q.next_used = state.next_used;
        if q.ready {
            q.validate(mem)?;
        }
        *self = q;
        Ok(())
    }

    fn check_area(
        mem: &GuestMemory,
        what: &'static str,
        addr: GuestAddress,
        len: u64,
        align: u64,
    ) -> Result<(), QueueError> {
        if !addr.raw_value().is_multiple_of(align) {
            return Err(QueueError::Misaligned { what, addr: addr.raw_value() });
        }
        let ok = usize::try_from(len).is_ok_and(|l| mem.check_range(addr, l));
        if ok { Ok(()) } else { Err(QueueError::OutOfMemory { what, addr: addr.raw_value(), len }) }
    }

    /// Checks the size and the three areas the driver configured (when it marks the queue
    /// ready, and again when the device is activated).
    pub fn validate(&self, mem: &GuestMemory) -> Result<(), QueueError> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > self.max_size {
            return Err(QueueError::BadSize(self.size));
        }
        let n = u64::from(self.size);
        Self::check_area(mem, "descriptor table", self.desc_table, 16 * n, 16)?;
        Self::check_area(mem, "available ring", self.avail_ring, 6 + 2 * n, 2)?;
        Self::check_area(mem, "used ring", self.used_ring, 6 + 8 * n, 4)?;
        Ok(())
    }

    fn mem_err(e: impl std::fmt::Display) -> QueueError {
        QueueError::Memory(e.to_string())
    }

    fn read_descriptor(
        &self,
        mem: &GuestMemory,
        index: u16,
    ) -> Result<(u64, u32, u16, u16), QueueError> {
        let at = self.desc_table.unchecked_add(16 * u64::from(index));
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, at).map_err(Self::mem_err)?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        Ok((addr, len, flags, next))
    }

    /// The next available chain, if any.
    pub fn pop(&mut self, mem: &GuestMemory) -> Result<Option<DescriptorChain>, QueueError> {
        let avail_idx: u16 =
            mem.load(self.avail_ring.unchecked_add(2), Ordering::Acquire).map_err(Self::mem_err)?;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailIndex { avail: avail_idx, next: self.next_avail });
        }
        let slot = u64::from(self.next_avail % self.size);
        let head: u16 =
            mem.read_obj(self.avail_ring.unchecked_add(4 + 2 * slot)).map_err(Self::mem_err)?;
        let head = u16::from_le(head);
        if head >= self.size {
            return Err(QueueError::BadIndex(head));
        }
        let mut descs = Vec::new();
        let mut index = head;
        loop {
            if descs.len() >= usize::from(self.size) {
                return Err(QueueError::ChainLoop);
            }
            let (addr, len, flags, next) = self.read_descriptor(mem, index)?;
            if flags & DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect);
            }
            let addr = GuestAddress(addr);
            if len > 0 && !mem.check_range(addr, len as usize) {
                return Err(QueueError::OutOfMemory {
                    what: "buffer",
                    addr: addr.raw_value(),
                    len: u64::from(len),
                });
            }
            descs.push(Descriptor { addr, len, writable: flags & DESC_F_WRITE != 0 });
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            if next >= self.size {
                return Err(QueueError::BadIndex(next));
            }
            index = next;
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(DescriptorChain { head, descs }))
    }

    /// Gives a chain back to the driver with `len` bytes written into it.
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        if head >= self.size {
            return Err(QueueError::BadIndex(head));
        }
        let slot = u64::from(self.next_used % self.size);
        let at = self.used_ring.unchecked_add(4 + 8 * slot);
        let mut elem = [0u8; 8];
        elem[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..8].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, at).map_err(Self::mem_err)?;
        self.next_used = self.next_used.wrapping_add(1);
        mem.store(self.next_used.to_le(), self.used_ring.unchecked_add(2), Ordering::Release)
            .map_err(Self::mem_err)
    }
}

/// A driver's side of a queue, for tests: lays out a queue in guest memory and plays the
/// guest, including a hostile one.
#[cfg(test)]
pub mod testing {
    use super::*;

    pub struct TestDriver {
        pub queue: Queue,
        pub avail_idx: u16,
    }

    impl TestDriver {
        /// A queue of `size` at `base` (descriptors, then available, then used ring).
        pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Self {
            let mut queue = Queue::new(size);
            queue.size = size;
            queue.desc_table = GuestAddress(base);
            queue.avail_ring = GuestAddress(base + 16 * u64::from(size));
            queue.used_ring =
                GuestAddress((base + 16 * u64::from(size) + 6 + 2 * u64::from(size) + 3) & !3);
            queue.ready = true;
            queue.validate(mem).expect("test queue lies in memory");
            Self { queue, avail_idx: 0 }
        }

        pub fn set_desc(
            &self,
            mem: &GuestMemory,
            i: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            let at = self.queue.desc_table.unchecked_add(16 * u64::from(i));
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&raw, at).expect("desc table in memory");
        }

        pub fn push_head(&mut self, mem: &GuestMemory, head: u16) {
            let slot = u64::from(self.avail_idx % self.queue.size);
            mem.write_obj(head, self.queue.avail_ring.unchecked_add(4 + 2 * slot)).expect("ring");
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, self.queue.avail_ring.unchecked_add(2)).expect("ring");
        }

        pub fn set_avail_idx(&mut self, mem: &GuestMemory, idx: u16) {
            self.avail_idx = idx;
            mem.write_obj(idx, self.queue.avail_ring.unchecked_add(2)).expect("ring");
        }

        pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
            mem.read_obj(self.queue.used_ring.unchecked_add(2)).expect("ring")
        }

        pub fn used_elem(&self, mem: &GuestMemory, n: u16) -> (u32, u32) {
            let at = self.queue.used_ring.unchecked_add(4 + 8 * u64::from(n % self.queue.size));
            let id: u32 = mem.read_obj(at).expect("ring");
            let len: u32 = mem.read_obj(at.unchecked_add(4)).expect("ring");
            (id, len)
        }
    }

    pub const NEXT: u16 = DESC_F_NEXT;
    pub const WRITE: u16 = DESC_F_WRITE;
    pub const INDIRECT: u16 = DESC_F_INDIRECT;
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("test memory")
    }

    #[test]
    fn a_good_chain_is_popped_and_returned() {
        let m = mem();
        let mut d = TestDriver::new(&m, 0x1000, 8);
        d.set_desc(&m, 0, 0x8000, 16, NEXT, 3);
        d.set_desc(&m, 3, 0x9000, 512, WRITE, 0);
        d.push_head(&m, 0);
        let c = d.queue.pop(&m).expect("valid").expect("one chain");
        assert_eq!(c.head, 0);
        assert_eq!(c.descs.len(), 2);
        assert!(!c.descs[0].writable && c.descs[1].writable);
        assert_eq!(c.writable_len(), 512);
        assert_eq!(d.queue.pop(&m), Ok(None));
        d.queue.add_used(&m, c.head, 100).expect("used");
        assert_eq!(d.used_idx(&m), 1);
        assert_eq!(d.used_elem(&m, 0), (0, 100));
    }

    #[test]
    fn a_descriptor_loop_is_refused() {
        let m = mem();
        let mut d = TestDriver::new(&m, 0x1000, 4);
        d.set_desc(&m, 0, 0x8000, 8, NEXT, 1);
        d.set_desc(&m, 1, 0x8000, 8, NEXT, 0);
        d.push_head(&m, 0);
        assert_eq!(d.queue.pop(&m), Err(QueueError::ChainLoop));
    }

    #[test]
    fn out_of_range_indices_are_refused() {
        let m = mem();
        let mut d = TestDriver::new(&m, 0x1000, 4);
        d.push_head(&m, 9);
        assert_eq!(d.queue.pop(&m), Err(QueueError::BadIndex(9)));
        let mut d = TestDriver::new(&m, 0x1000, 4);
        d.set_desc(&m, 0, 0x8000, 8, NEXT, 200);
        d.push_head(&m, 0);
        assert_eq!(d.queue.pop(&m), Err(QueueError::BadIndex(200)));
        let mut d = TestDriver::new(&m, 0x1000, 4);
        d.set_avail_idx(&m, 100);
        assert!(matches!(d.queue.pop(&m), Err(QueueError::AvailIndex { .. })));
    }

    #[test]
    fn buffers_outside_memory_and_huge_lengths_are_refused() {
        let m = mem();
        for (addr, len) in
            [(0x10_0000u64, 1u32), (0xf_ff00, 0x200), (0, u32::MAX), (u64::MAX - 4, 16)]
        {
            let mut d = TestDriver::new(&m, 0x1000, 4);
            d.set_desc(&m, 0, addr, len, 0, 0);
            d.push_head(&m, 0);
            assert!(
                matches!(d.queue.pop(&m), Err(QueueError::OutOfMemory { .. })),
                "{addr:x}+{len}"
            );
        }
        let mut d = TestDriver::new(&m, 0x1000, 4);
        d.set_desc(&m, 0, 0x8000, 8, INDIRECT, 0);
        d.push_head(&m, 0);
        assert_eq!(d.queue.pop(&m), Err(QueueError::Indirect));
    }

    #[test]
    fn bad_queue_layouts_are_refused() {
        let m = mem();
        let mut q = Queue::new(16);
        q.size = 12;
        assert_eq!(q.validate(&m), Err(QueueError::BadSize(12)));
        q.size = 32;
        assert_eq!(q.validate(&m), Err(QueueError::BadSize(32)));
        q.size = 16;
        q.desc_table = GuestAddress(0x1001);
        assert!(matches!(q.validate(&m), Err(QueueError::Misaligned { .. })));
        q.desc_table = GuestAddress(0xf_fff0);
        assert!(matches!(q.validate(&m), Err(QueueError::OutOfMemory { .. })));
        q.desc_table = GuestAddress(0xffff_ffff_ffff_fff0);
        assert!(matches!(q.validate(&m), Err(QueueError::OutOfMemory { .. })));
    }

    #[test]
    fn read_and_write_respect_bounds() {
        let m = mem();
        let mut d = TestDriver::new(&m, 0x1000, 4);
        m.write_slice(b"hello", GuestAddress(0x8000)).expect("mem");
        d.set_desc(&m, 0, 0x8000, 5, NEXT, 1);
        d.set_desc(&m, 1, 0x9000, 3, WRITE, 0);
        d.push_head(&m, 0);
        let c = d.queue.pop(&m).expect("ok").expect("chain");
        assert_eq!(c.read_all(&m, 16).expect("ok"), Some(b"hello".to_vec()));
        assert_eq!(c.read_all(&m, 4).expect("ok"), None);
        assert_eq!(c.write_all(&m, b"abcdef").expect("ok"), 3);
        let mut b = [0u8; 3];
        m.read_slice(&mut b, GuestAddress(0x9000)).expect("mem");
        assert_eq!(&b, b"abc");
    }
}
