//! virtio-input: a keyboard and an absolute tablet (input comes from the display channel,
//! `crate::devices::framebuffer::event_handler`).

mod device;
mod metrics;

pub use device::*;
pub use metrics::InputMetrics;
