//! virtio-blk over a raw host file, read-only or writable (notified through the event loop's
//! ioeventfd).

mod device;
mod metrics;

pub use device::*;
pub use metrics::BlockMetrics;
