//! The framebuffer's counters.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct FramebufferMetrics {
    pub dirty_requests: AtomicU64,
    pub dirty_pages_reported: AtomicU64,
}
