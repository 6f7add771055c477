//! Counters of the device.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct ConsoleMetrics {
    pub bytes_to_guest: AtomicU64,
    pub bytes_from_guest: AtomicU64,
    pub bytes_dropped: AtomicU64,
}
