//! COM1's counters.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct SerialMetrics {
    pub bytes_written: AtomicU64,
    pub bytes_dropped: AtomicU64,
    /// Nanoseconds from VMM start to the first byte (0 until then); the benchmark reads it.
    pub first_byte_ns: AtomicU64,
}
