//! Atrium's display proxy: turns a VM's screen into a stream a browser draws, and carries
//! keyboard and pointer back.
//!
//! - [`source`]: where pixels come from (RFB, the builtin VMM's shared memory, synthetic);
//! - [`capture`] and [`frame`]: change detection against the last frame, tiles, scrolls (a
//!   frame is plain data);
//! - [`analyse`], [`plan`] and [`encode`]: per-viewer updates (fills, copies, PNG, JPEG) on a
//!   bounded [`pool`], in that order, none calling back;
//! - [`publish`]: a frame as a desktop's viewers get it, with the messages made of it and the
//!   update of viewers in step;
//! - [`desktop`]: one source shared by all viewers of a desktop;
//! - [`viewer`]: one WebSocket with flow control and the ticket's rights;
//! - [`ticket`]: display tickets checked against the broker's JWKS;
//! - [`server`]: the HTTP routes (served by [`atrium_door`]: the accept loop and its limits);
//!   [`config`]: the service's settings;
//! - [`gateway`]: `atrium-display gateway`, the public door that checks tickets and relays
//!   viewers to the display proxy on their desktop's node.
//!
//! Its benchmark (Atrium against noVNC on the same desktop) is `tests/src/bin/bench-display`.

pub mod analyse;
pub mod capture;
pub mod config;
pub mod desktop;
pub mod encode;
pub mod frame;
pub mod framebuffer;
pub mod gateway;
pub mod issuer;
pub mod metrics;
pub mod node;
pub mod plan;
pub mod pool;
pub mod publish;
pub mod server;
pub mod source;
pub mod ticket;
pub mod viewer;
