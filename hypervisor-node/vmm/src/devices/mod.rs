//! Devices, one folder each (`device.rs`, `metrics.rs`, and `event_handler.rs` where the
//! device has an event-loop hook of its own), and the buses that reach them.

pub mod bus;
pub mod framebuffer;
pub mod serial;
pub mod virtio;
