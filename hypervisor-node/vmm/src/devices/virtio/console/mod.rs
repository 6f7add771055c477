//! virtio-console with the agent port, and its event-loop hook: the agent channel's socket.

mod device;
pub mod event_handler;
mod metrics;

pub use device::*;
pub use metrics::ConsoleMetrics;
