//! From a desktop's pixels to the messages a viewer is sent, in one direction:
//!
//! - [`capture`] compares the source's framebuffer with the last [`frame`] (tiles, scrolls)
//!   and makes the next one (plain data);
//! - [`analyse`] tells what a rectangle's pixels look like (one colour, a palette, many);
//! - [`plan`] decides what one viewer needs to get from the frame it has to the newest (a copy,
//!   then rectangles, each a fill, lossless or lossy, merged with their neighbours);
//! - [`encode`] writes a plan's rectangles as wire messages;
//! - [`publish`] hands a frame to a desktop's viewers with the messages made of it (each made
//!   once, shared) and the update of viewers in step ready.
//!
//! Each stage uses only those before it. The bounded [`pool`] is where the larger jobs of
//! capturing, planning and encoding run (the desktop's and the viewers' loops hand them to it).

pub mod analyse;
pub mod capture;
pub mod encode;
pub mod frame;
pub mod plan;
pub mod pool;
pub mod publish;
