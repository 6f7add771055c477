//! The display wire protocol between `atrium-display` and the browser: binary WebSocket
//! messages, little-endian, one message per WebSocket frame. `docs/display-protocol.md` is the
//! reference; the web client's `web-client/js/viewer/protocol.js` is the other end.
//!
//! Every message starts with a one-byte type. Server messages have types below 0x80, client
//! messages 0x80 and above.

mod client;
mod server;
mod wire;

pub use client::ClientMessage;
pub use server::ServerMessage;
pub use wire::DecodeError;

/// Protocol version carried in [`ServerMessage::Hello`].
pub const VERSION: u16 = 1;
/// Largest message a client may send, in bytes (a clipboard image and its header fit).
pub const MAX_CLIENT_MESSAGE: usize = MAX_CLIPBOARD_IMAGE + 16 * 1024;
/// Largest clipboard text, in bytes (UTF-8).
pub const MAX_CLIPBOARD: usize = crate::agent::MAX_CLIPBOARD;
/// Largest clipboard image (a PNG file), in bytes.
pub const MAX_CLIPBOARD_IMAGE: usize = crate::agent::MAX_CLIPBOARD_IMAGE;
/// Largest chunk of an upload in one [`ClientMessage::FileData`].
pub const MAX_FILE_CHUNK: usize = crate::agent::MAX_FILE_CHUNK;
/// Longest file name in a transfer, in bytes.
pub const MAX_FILE_NAME: usize = crate::agent::MAX_FILE_NAME;
/// Most bytes of an upload a viewer sends beyond the last [`ServerMessage::FileProgress`].
pub const FILE_WINDOW: u64 = 4 << 20;
/// Longest message in a [`ServerMessage::FileRefused`], in bytes.
pub const MAX_FILE_MESSAGE: usize = 1024;
/// Longest path in a [`ServerMessage::FileSaved`], in bytes.
pub const MAX_FILE_PATH: usize = 4096;

/// Longest DOM `code` string in a key event.
pub const MAX_CODE_LEN: usize = 32;

/// Image formats a server may send and a client can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ImageFormat {
    Png = 1,
    Jpeg = 2,
    /// Uncompressed RGBA, 4 bytes per pixel, row-major.
    Rgba = 3,
    /// A small palette and packed indices, uncompressed (tiny text-like areas, where a PNG's
    /// own overhead would dominate): `n u8` (2..=16), `n` RGB triples, then rows of indices at
    /// 1 (n = 2), 2 (n <= 4) or 4 bits per pixel, most significant bits first, each row
    /// starting on a byte.
    Indexed = 4,
}

impl ImageFormat {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Self::Png),
            2 => Ok(Self::Jpeg),
            3 => Ok(Self::Rgba),
            4 => Ok(Self::Indexed),
            _ => Err(DecodeError::BadValue("image format")),
        }
    }
}

/// Capability bits in [`ServerMessage::Hello`]: what this viewer may do.
pub mod caps {
    pub const VIEW_ONLY: u32 = 1;
    pub const CLIPBOARD_COPY_OUT: u32 = 2;
    pub const CLIPBOARD_PASTE_IN: u32 = 4;
    pub const FILE_UPLOAD: u32 = 8;
    pub const FILE_DOWNLOAD: u32 = 16;
    pub const SHADOW: u32 = 32;
    /// The desktop's sound may reach this viewer (it asks with [`super::ClientMessage::Audio`]).
    pub const AUDIO: u32 = 64;
    /// Moving areas may reach this viewer as VP8 video (it asks with
    /// [`super::ClientMessage::Video`] once its browser is known to decode it).
    pub const VIDEO: u32 = 128;
    /// This viewer's stream is recorded (the viewer tells its user so).
    pub const RECORDED: u32 = 256;
    /// ... and so are its keys and pointer.
    pub const RECORDED_INPUT: u32 = 512;
    /// Files may move over links the browser uses itself: the proxy takes
    /// [`super::ClientMessage::FilePut`] and [`super::ClientMessage::FileFetch`] (a proxy
    /// without this bit takes only the chunks over the connection).
    pub const FILE_LINKS: u32 = 1024;
    /// Images, not only text, may be pasted into the desktop
    /// ([`super::ClientMessage::ClipboardImage`]).
    pub const CLIPBOARD_IMAGES_IN: u32 = 2048;
    /// Images, not only text, may leave the desktop by the clipboard.
    pub const CLIPBOARD_IMAGES_OUT: u32 = 4096;
}

/// Largest VP8 frame the proxy sends (a key frame of a full 4K screen fits easily).
pub const MAX_VIDEO_FRAME: usize = 16 << 20;

/// Sound is Opus at this rate, in stereo.
pub const AUDIO_RATE: u32 = 48_000;
/// Samples (per channel) in one [`ServerMessage::Audio`] packet: 20 ms.
pub const AUDIO_FRAME: usize = 960;
/// Largest Opus packet the proxy sends.
pub const MAX_AUDIO_PACKET: usize = 4000;

/// A rectangle on the screen, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub w: u16,
    pub h: u16,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
