//! The display wire protocol between `atrium-display` and the browser: binary WebSocket
//! messages, little-endian, one message per WebSocket frame. `docs/display-protocol.md` is the
//! reference; the web client's `web-client/js/viewer/protocol.js` is the other end.
//!
//! Every message starts with a one-byte type. Server messages have types below 0x80, client
//! messages 0x80 and above.

use thiserror::Error;

/// Protocol version carried in [`ServerMessage::Hello`].
pub const VERSION: u16 = 1;
/// Largest message a client may send, in bytes.
pub const MAX_CLIENT_MESSAGE: usize = 300 * 1024;
/// Largest clipboard text, in bytes (UTF-8).
pub const MAX_CLIPBOARD: usize = crate::agent::MAX_CLIPBOARD;
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

/// Messages from the display proxy to the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// First message of a connection. `0x01`
    Hello {
        version: u16,
        width: u16,
        height: u16,
        caps: u32,
        max_frames_in_flight: u8,
        name: String,
    },
    /// The desktop changed size; the client clears its canvas. `0x02`
    Resize { width: u16, height: u16 },
    /// This viewer may ask the desktop for another size ([`ClientMessage::Resize`]), up to
    /// this one (the pool's display size). Sent after `Hello`, only to viewers that may. `0x03`
    Resizable { max_width: u16, max_height: u16 },
    /// Fill a rectangle with one colour (RGBA bytes). `0x10`
    Fill { rect: Rect, rgba: [u8; 4] },
    /// Draw an encoded image at a rectangle. `0x11`
    Image { rect: Rect, format: ImageFormat, data: Vec<u8> },
    /// Copy a rectangle from elsewhere on the canvas (scrolls, moves). `0x12`
    Copy { rect: Rect, src_x: u16, src_y: u16 },
    /// One VP8 frame of the moving area `rect` (the whole rectangle; its size is the
    /// stream's). A `key` frame starts a stream: the decoder is set up for that size; the
    /// frames after it are predicted from the one before. `0x13`
    Video { rect: Rect, key: bool, data: Vec<u8> },
    /// End of a frame: everything since the last `FrameEnd` forms one update. The client
    /// acknowledges it with [`ClientMessage::FrameAck`] once drawn. `0x1f`
    FrameEnd { frame: u32, input_seq: u32 },
    /// The pointer shape: a PNG (or empty to hide) with its hotspot. `0x20`
    Cursor { hot_x: u16, hot_y: u16, png: Vec<u8> },
    /// Guest clipboard text. `0x30`
    Clipboard { text: String },
    /// Answer to [`ClientMessage::Ping`]. `0x31`
    Pong { id: u32 },
    /// One Opus packet of the desktop's sound ([`AUDIO_FRAME`] samples at [`AUDIO_RATE`],
    /// stereo, at most [`MAX_AUDIO_PACKET`] bytes); `at` numbers its first sample (48 kHz,
    /// wrapping, counting the sound sent), so a packet the viewer missed shows. `0x40`
    Audio { at: u32, packet: Vec<u8> },
}

/// Messages from the browser to the display proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// A key went down or up: DOM `KeyboardEvent.code` and the X keysym of `key`. `0x81`
    Key { seq: u32, down: bool, keysym: u32, code: String },
    /// Absolute pointer position, buttons (bit 0 left, 1 middle, 2 right, 3 back, 4 forward)
    /// and wheel steps (positive: down/right). `0x82`
    Pointer { seq: u32, x: u16, y: u16, buttons: u8, wheel_x: i8, wheel_y: i8 },
    /// Clipboard text to paste into the guest. `0x83`
    Clipboard { text: String },
    /// The frame with this number has been drawn. `0x84`
    FrameAck { frame: u32 },
    /// Latency probe, answered with [`ServerMessage::Pong`]. `0x85`
    Ping { id: u32 },
    /// Ask for a whole new frame (after the client lost its canvas). `0x86`
    Refresh,
    /// Ask the desktop to take this size (the browser window's, or one the user chose). The
    /// proxy fits it to the desktop's limits; the answer is a [`ServerMessage::Resize`] once the
    /// desktop has changed. `0x87`
    Resize { width: u16, height: u16 },
    /// Send the desktop's sound (`true`: the viewer plays it) or stop (muted). Only a viewer
    /// with [`caps::AUDIO`] is sent any. `0x88`
    Audio { enabled: bool },
    /// This viewer decodes VP8 (`true`): moving areas may come as video. `false`, or never
    /// sent: still images only. Only a viewer with [`caps::VIDEO`] is sent any. `0x89`
    Video { enabled: bool },
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("message truncated")]
    Truncated,
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("bad {0}")]
    BadValue(&'static str),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// A byte that must be 0 (false) or 1 (true); anything else is a bad `what`.
    fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue(what)),
        }
    }
    fn i8(&mut self) -> Result<i8, DecodeError> {
        Ok(i8::from_le_bytes([self.u8()?]))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn rect(&mut self) -> Result<Rect, DecodeError> {
        Ok(Rect { x: self.u16()?, y: self.u16()?, w: self.u16()?, h: self.u16()? })
    }
    fn bytes32(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLarge(len));
        }
        self.take(len)
    }
    fn text32(&mut self, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes32(max)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadValue("UTF-8 text"))
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::Trailing(self.buf.len())) }
    }
}

fn put_rect(out: &mut Vec<u8>, r: Rect) {
    for v in [r.x, r.y, r.w, r.h] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("message payloads are far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

impl ServerMessage {
    /// Appends the wire form of this message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello { version, width, height, caps, max_frames_in_flight, name } => {
                out.push(0x01);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&width.to_le_bytes());
                out.extend_from_slice(&height.to_le_bytes());
                out.extend_from_slice(&caps.to_le_bytes());
                out.push(*max_frames_in_flight);
                let name = truncate_utf8(name, 255);
                out.push(u8::try_from(name.len()).expect("truncated to 255"));
                out.extend_from_slice(name.as_bytes());
            }
            Self::Resize { width, height } => {
                out.push(0x02);
                out.extend_from_slice(&width.to_le_bytes());
                out.extend_from_slice(&height.to_le_bytes());
            }
            Self::Resizable { max_width, max_height } => {
                out.push(0x03);
                out.extend_from_slice(&max_width.to_le_bytes());
                out.extend_from_slice(&max_height.to_le_bytes());
            }
            Self::Fill { rect, rgba } => {
                out.push(0x10);
                put_rect(out, *rect);
                out.extend_from_slice(rgba);
            }
            Self::Image { rect, format, data } => {
                out.push(0x11);
                put_rect(out, *rect);
                out.push(*format as u8);
                put_bytes32(out, data);
            }
            Self::Copy { rect, src_x, src_y } => {
                out.push(0x12);
                put_rect(out, *rect);
                out.extend_from_slice(&src_x.to_le_bytes());
                out.extend_from_slice(&src_y.to_le_bytes());
            }
            Self::Video { rect, key, data } => {
                out.push(0x13);
                put_rect(out, *rect);
                out.push(u8::from(*key));
                put_bytes32(out, data);
            }
            Self::FrameEnd { frame, input_seq } => {
                out.push(0x1f);
                out.extend_from_slice(&frame.to_le_bytes());
                out.extend_from_slice(&input_seq.to_le_bytes());
            }
            Self::Cursor { hot_x, hot_y, png } => {
                out.push(0x20);
                out.extend_from_slice(&hot_x.to_le_bytes());
                out.extend_from_slice(&hot_y.to_le_bytes());
                put_bytes32(out, png);
            }
            Self::Clipboard { text } => {
                out.push(0x30);
                put_bytes32(out, text.as_bytes());
            }
            Self::Pong { id } => {
                out.push(0x31);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Self::Audio { at, packet } => {
                out.push(0x40);
                out.extend_from_slice(&at.to_le_bytes());
                let len = u16::try_from(packet.len().min(MAX_AUDIO_PACKET)).expect("bounded");
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&packet[..usize::from(len)]);
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decodes a server message (used by test clients and the benchmark).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let (&ty, rest) = buf.split_first().ok_or(DecodeError::Empty)?;
        let mut r = Reader { buf: rest };
        let msg = match ty {
            0x01 => {
                let version = r.u16()?;
                let width = r.u16()?;
                let height = r.u16()?;
                let caps = r.u32()?;
                let max_frames_in_flight = r.u8()?;
                let n = r.u8()? as usize;
                let name = String::from_utf8(r.take(n)?.to_vec())
                    .map_err(|_| DecodeError::BadValue("UTF-8 text"))?;
                Self::Hello { version, width, height, caps, max_frames_in_flight, name }
            }
            0x02 => Self::Resize { width: r.u16()?, height: r.u16()? },
            0x03 => Self::Resizable { max_width: r.u16()?, max_height: r.u16()? },
            0x10 => {
                let rect = r.rect()?;
                let c = r.take(4)?;
                Self::Fill { rect, rgba: [c[0], c[1], c[2], c[3]] }
            }
            0x11 => {
                let rect = r.rect()?;
                let format = ImageFormat::from_u8(r.u8()?)?;
                let data = r.bytes32(usize::MAX)?.to_vec();
                Self::Image { rect, format, data }
            }
            0x12 => Self::Copy { rect: r.rect()?, src_x: r.u16()?, src_y: r.u16()? },
            0x13 => {
                let rect = r.rect()?;
                let key = r.flag("key frame flag")?;
                let data = r.bytes32(MAX_VIDEO_FRAME)?.to_vec();
                if data.is_empty() || rect.w == 0 || rect.h == 0 {
                    return Err(DecodeError::BadValue("video frame"));
                }
                Self::Video { rect, key, data }
            }
            0x1f => Self::FrameEnd { frame: r.u32()?, input_seq: r.u32()? },
            0x20 => {
                let hot_x = r.u16()?;
                let hot_y = r.u16()?;
                Self::Cursor { hot_x, hot_y, png: r.bytes32(usize::MAX)?.to_vec() }
            }
            0x30 => Self::Clipboard { text: r.text32(MAX_CLIPBOARD)? },
            0x31 => Self::Pong { id: r.u32()? },
            0x40 => {
                let at = r.u32()?;
                let len = usize::from(r.u16()?);
                if len == 0 || len > MAX_AUDIO_PACKET {
                    return Err(DecodeError::BadValue("audio packet length"));
                }
                Self::Audio { at, packet: r.take(len)?.to_vec() }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl ClientMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Key { seq, down, keysym, code } => {
                out.push(0x81);
                out.extend_from_slice(&seq.to_le_bytes());
                out.push(u8::from(*down));
                out.extend_from_slice(&keysym.to_le_bytes());
                let code = truncate_utf8(code, MAX_CODE_LEN);
                out.push(u8::try_from(code.len()).expect("truncated to MAX_CODE_LEN"));
                out.extend_from_slice(code.as_bytes());
            }
            Self::Pointer { seq, x, y, buttons, wheel_x, wheel_y } => {
                out.push(0x82);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
                out.push(*buttons);
                out.extend_from_slice(&wheel_x.to_le_bytes());
                out.extend_from_slice(&wheel_y.to_le_bytes());
            }
            Self::Clipboard { text } => {
                out.push(0x83);
                put_bytes32(&mut out, text.as_bytes());
            }
            Self::FrameAck { frame } => {
                out.push(0x84);
                out.extend_from_slice(&frame.to_le_bytes());
            }
            Self::Ping { id } => {
                out.push(0x85);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Self::Refresh => out.push(0x86),
            Self::Resize { width, height } => {
                out.push(0x87);
                out.extend_from_slice(&width.to_le_bytes());
                out.extend_from_slice(&height.to_le_bytes());
            }
            Self::Audio { enabled } => {
                out.push(0x88);
                out.push(u8::from(*enabled));
            }
            Self::Video { enabled } => {
                out.push(0x89);
                out.push(u8::from(*enabled));
            }
        }
        out
    }

    /// Decodes a client message. Anything malformed is an error; nothing panics.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() > MAX_CLIENT_MESSAGE {
            return Err(DecodeError::TooLarge(buf.len()));
        }
        let (&ty, rest) = buf.split_first().ok_or(DecodeError::Empty)?;
        let mut r = Reader { buf: rest };
        let msg = match ty {
            0x81 => {
                let seq = r.u32()?;
                let down = r.flag("key state")?;
                let keysym = r.u32()?;
                let n = r.u8()? as usize;
                if n > MAX_CODE_LEN {
                    return Err(DecodeError::BadValue("key code length"));
                }
                let code = r.take(n)?;
                if !code.iter().all(u8::is_ascii_alphanumeric) {
                    return Err(DecodeError::BadValue("key code"));
                }
                let code = String::from_utf8(code.to_vec()).expect("checked ASCII");
                Self::Key { seq, down, keysym, code }
            }
            0x82 => Self::Pointer {
                seq: r.u32()?,
                x: r.u16()?,
                y: r.u16()?,
                buttons: r.u8()?,
                wheel_x: r.i8()?,
                wheel_y: r.i8()?,
            },
            0x83 => Self::Clipboard { text: r.text32(MAX_CLIPBOARD)? },
            0x84 => Self::FrameAck { frame: r.u32()? },
            0x85 => Self::Ping { id: r.u32()? },
            0x86 => Self::Refresh,
            0x87 => Self::Resize { width: r.u16()?, height: r.u16()? },
            0x88 => Self::Audio { enabled: r.flag("audio state")? },
            0x89 => Self::Video { enabled: r.flag("video state")? },
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
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
mod tests {
    use super::*;

    fn all_server() -> Vec<ServerMessage> {
        let rect = Rect { x: 1, y: 2, w: 64, h: 48 };
        vec![
            ServerMessage::Hello {
                version: VERSION,
                width: 1280,
                height: 800,
                caps: caps::VIEW_ONLY | caps::SHADOW,
                max_frames_in_flight: 2,
                name: "alice — desktop".into(),
            },
            ServerMessage::Resize { width: 1920, height: 1080 },
            ServerMessage::Resizable { max_width: 2560, max_height: 1440 },
            ServerMessage::Fill { rect, rgba: [1, 2, 3, 255] },
            ServerMessage::Image { rect, format: ImageFormat::Png, data: vec![9; 100] },
            ServerMessage::Copy { rect, src_x: 0, src_y: 16 },
            ServerMessage::FrameEnd { frame: 42, input_seq: 7 },
            ServerMessage::Cursor { hot_x: 3, hot_y: 4, png: vec![] },
            ServerMessage::Clipboard { text: "grüße".into() },
            ServerMessage::Pong { id: 99 },
            ServerMessage::Audio { at: 48_000, packet: vec![0xfc, 1, 2, 3] },
            ServerMessage::Video { rect, key: true, data: vec![0x9d, 1, 0x2a] },
            ServerMessage::Video { rect, key: false, data: vec![7; 40] },
        ]
    }

    fn all_client() -> Vec<ClientMessage> {
        vec![
            ClientMessage::Key { seq: 1, down: true, keysym: 0x61, code: "KeyA".into() },
            ClientMessage::Pointer { seq: 2, x: 10, y: 20, buttons: 5, wheel_x: 0, wheel_y: -3 },
            ClientMessage::Clipboard { text: "hello ✓".into() },
            ClientMessage::FrameAck { frame: 3 },
            ClientMessage::Ping { id: 4 },
            ClientMessage::Refresh,
            ClientMessage::Resize { width: 1366, height: 768 },
            ClientMessage::Audio { enabled: true },
            ClientMessage::Audio { enabled: false },
            ClientMessage::Video { enabled: true },
            ClientMessage::Video { enabled: false },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_server() {
            assert_eq!(ServerMessage::decode(&m.encode()).unwrap(), m);
        }
        for m in all_client() {
            assert_eq!(ClientMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        for m in all_client() {
            let b = m.encode();
            for n in 0..b.len() {
                assert!(ClientMessage::decode(&b[..n]).is_err(), "{m:?} cut at {n}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(ClientMessage::decode(&longer), Err(DecodeError::Trailing(1)));
        }
        for m in all_server() {
            let b = m.encode();
            for n in 0..b.len() {
                assert!(ServerMessage::decode(&b[..n]).is_err(), "{m:?} cut at {n}");
            }
        }
    }

    #[test]
    fn malformed_client_messages_are_refused() {
        assert_eq!(ClientMessage::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(ClientMessage::decode(&[0x01]), Err(DecodeError::UnknownType(1)));
        assert_eq!(ClientMessage::decode(&[0xff]), Err(DecodeError::UnknownType(0xff)));
        // Key state other than 0/1.
        let mut k =
            ClientMessage::Key { seq: 1, down: true, keysym: 1, code: "KeyA".into() }.encode();
        k[5] = 2;
        assert!(ClientMessage::decode(&k).is_err());
        // Non-alphanumeric key code.
        let k = [0x81, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, b'<', b'>'];
        assert_eq!(ClientMessage::decode(&k), Err(DecodeError::BadValue("key code")));
        // Clipboard longer than the limit, and invalid UTF-8.
        let mut c = vec![0x83];
        c.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(ClientMessage::decode(&c), Err(DecodeError::TooLarge(_))));
        let c = [0x83, 2, 0, 0, 0, 0xff, 0xfe];
        assert_eq!(ClientMessage::decode(&c), Err(DecodeError::BadValue("UTF-8 text")));
        let huge = vec![0x83; MAX_CLIENT_MESSAGE + 1];
        assert!(matches!(ClientMessage::decode(&huge), Err(DecodeError::TooLarge(_))));
        assert_eq!(ClientMessage::decode(&[0x88, 2]), Err(DecodeError::BadValue("audio state")));
        assert_eq!(ClientMessage::decode(&[0x87, 0, 4]), Err(DecodeError::Truncated));
        assert_eq!(ClientMessage::decode(&[0x89, 3]), Err(DecodeError::BadValue("video state")));
    }

    #[test]
    fn video_frames_that_are_empty_flagged_oddly_or_too_large_are_refused() {
        let rect = Rect { x: 0, y: 0, w: 64, h: 64 };
        let good = ServerMessage::Video { rect, key: false, data: vec![1] }.encode();
        let mut flag = good.clone();
        flag[9] = 2;
        assert_eq!(ServerMessage::decode(&flag), Err(DecodeError::BadValue("key frame flag")));
        let empty = ServerMessage::Video { rect, key: true, data: vec![] }.encode();
        assert_eq!(ServerMessage::decode(&empty), Err(DecodeError::BadValue("video frame")));
        let flat = ServerMessage::Video { rect: Rect { h: 0, ..rect }, key: true, data: vec![1] };
        assert_eq!(
            ServerMessage::decode(&flat.encode()),
            Err(DecodeError::BadValue("video frame"))
        );
        let mut huge = good[..10].to_vec();
        huge.extend_from_slice(&u32::try_from(MAX_VIDEO_FRAME + 1).unwrap().to_le_bytes());
        assert!(matches!(ServerMessage::decode(&huge), Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn audio_packets_of_no_length_or_over_the_limit_are_refused() {
        for len in [0u16, 4001] {
            let mut m = vec![0x40, 0, 0, 0, 0];
            m.extend_from_slice(&len.to_le_bytes());
            m.resize(m.len() + usize::from(len), 0xfc);
            assert_eq!(
                ServerMessage::decode(&m),
                Err(DecodeError::BadValue("audio packet length")),
                "{len}"
            );
        }
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("abc", 5), "abc");
    }
}
