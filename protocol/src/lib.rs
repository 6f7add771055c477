//! Types that cross a process boundary in Atrium.
//!
//! One definition, used by both ends:
//! - [`ticket`]: the display ticket the broker mints and the display proxy checks;
//! - `node`: the node agent's HTTP API and the broker's node registration;
//! - [`agent`]: the guest-agent protocol between a node and the agent inside a desktop;
//! - [`b64`]: bytes carried in JSON as base64 (clipboard images);
//! - [`display`]: the binary WebSocket protocol between the display proxy and the browser;
//! - [`vmm_channel`]: the builtin VMM's display channel (framebuffer memfd, dirty bitmap, input);
//! - [`keymap`]: DOM `KeyboardEvent.code` to Linux evdev codes and PC scancodes;
//! - `config`: how every service reads its TOML file and environment overrides;
//! - `secret`: credentials that never print, compared in constant time;
//! - [`net`]: trusted proxy networks and the client address behind them;
//! - [`recording`]: session recordings, as the display proxy writes them and the broker chains
//!   and serves them;
//! - `signed`: requests between services signed by who sent them (node keys, the broker's);
//! - [`text`]: text from outside made safe to log and store.
//!
//! `config`, `node`, `secret` and `signed` are the `services` feature: every service enables
//! it; the guest agent, which needs only [`agent`], does not.

pub mod agent;
pub mod b64;
pub mod calendar;
#[cfg(feature = "services")]
pub mod config;
pub mod display;
pub mod filetype;
pub mod keymap;
pub mod net;
#[cfg(feature = "services")]
pub mod node;
pub mod recording;
#[cfg(feature = "services")]
pub mod secret;
#[cfg(feature = "services")]
pub mod session;
#[cfg(feature = "services")]
pub mod signed;
pub mod text;
pub mod ticket;
pub mod vmm_channel;
#[cfg(feature = "services")]
pub mod volume;
