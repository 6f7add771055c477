//! Address decoding for port I/O and MMIO exits: each device owns a range and sees offsets
//! into it.

use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

/// A device reached through a bus. Calls come from vCPU threads.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range 0x{base:x}+0x{len:x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("empty or wrapping range 0x{base:x}+0x{len:x}")]
    BadRange { base: u64, len: u64 },
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A device lock that survives a poisoned mutex: devices never panic by design, and if one did,
/// its state is still the best there is.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Clone, Default)]
pub struct Bus {
    entries: Vec<(u64, u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> =
            self.entries.iter().map(|(b, l, _)| format!("0x{b:x}+0x{l:x}")).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end =
            base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base, len })?;
        if self.entries.iter().any(|&(b, l, _)| base < b + l && b < end) {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.push((base, len, device));
        self.entries.sort_by_key(|e| e.0);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let i = self.entries.partition_point(|e| e.0 <= addr).checked_sub(1)?;
        let (base, len, dev) = &self.entries[i];
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= *len).then_some((offset, dev))
    }

    /// Reads from the device at `addr`; `false` when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; `false` when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0xff));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn ranges_decode_and_do_not_overlap() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x100, 0x10, dev.clone()).expect("free");
        assert!(bus.insert(0x108, 0x10, dev.clone()).is_err());
        assert!(bus.insert(0xf8, 0x10, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        assert!(bus.insert(0, 0, dev.clone()).is_err());
        let mut b = [0u8; 2];
        assert!(bus.read(0x104, &mut b));
        assert_eq!(b, [4, 4]);
        assert!(!bus.read(0x10f, &mut b), "crosses the end");
        assert!(!bus.read(0xff, &mut [0u8; 1]));
        assert!(!bus.read(u64::MAX, &mut [0u8; 4]));
        assert!(bus.write(0x10f, &[1]));
        assert_eq!(lock(&dev).0, vec![(0xf, vec![1])]);
    }
}
