//! Counters of the device.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct InputMetrics {
    pub events_injected: AtomicU64,
    pub events_delivered: AtomicU64,
    pub events_refused: AtomicU64,
}
