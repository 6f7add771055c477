//! Atrium's display proxy: turns a VM's screen into a stream a browser draws, and carries
//! keyboard and pointer back.
//!
//! - [`source`]: where pixels come from (RFB, the builtin VMM's shared memory) into a
//!   [`framebuffer`], and opening a VM's display where the node agent says it is;
//! - [`pipeline`]: from pixels to messages (capture, analyse, plan, encode, publish), in one
//!   direction;
//! - [`video`]: areas that keep moving, sent to a viewer as VP8 video (libvpx);
//! - [`watermark`]: text naming who looks, drawn into a desktop's pixels before they are
//!   compared, when a viewer's ticket asks for it;
//! - [`sound`]: the desktop's sound (QEMU's VNC audio), encoded once with Opus for every
//!   viewer that listens;
//! - [`desktop`]: one source shared by all viewers of a desktop, kept running while watched;
//! - [`recording`]: a viewer's stream recorded as sent, with key frames, on its way to the
//!   broker through the node agent, when the ticket asks for it;
//! - [`viewer`]: one WebSocket (sending with flow control, receiving under the ticket's
//!   rights) and the desktop sessions the broker can end;
//! - [`ticket`]: display tickets checked against the broker's JWKS;
//! - [`http`]: the HTTP edge, one module per resource (served by [`atrium_door`]: the accept
//!   loop and its limits), with [`error`] (a refusal) and [`auth`] (what a viewer must show),
//!   shared with the gateway; [`config`]: the service's settings; [`metrics`]: its counters;
//! - [`gateway`]: `atrium-display gateway`, the public door that checks tickets and relays
//!   viewers to the display proxy on their desktop's node.
//!
//! Its benchmark (Atrium against noVNC on the same desktop) is `tests/src/bin/bench-display`;
//! what its tests and benchmarks use in place of a broker and a guest (a ticket issuer, a
//! generated desktop) is `atrium-display-testkit` (`display-proxy/testkit`).

pub mod auth;
pub mod config;
pub mod desktop;
pub mod error;
pub mod files;
pub mod framebuffer;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod recording;
pub mod sound;
pub mod source;
pub mod ticket;
pub mod video;
pub mod viewer;
pub mod watermark;
