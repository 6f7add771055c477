//! COM1: a `vm-superio` 16550A in a newtype, writing into a bounded log.

mod device;
mod metrics;

pub use device::{BoundedLog, SerialDevice, SerialState};
pub use metrics::SerialMetrics;
