//! The linear framebuffer (a memfd in its own KVM slot with dirty logging) and its event-loop
//! hook, the display channel.

mod device;
pub mod event_handler;
mod metrics;

pub use device::{Framebuffer, PAGE_SIZE};
pub use metrics::FramebufferMetrics;
