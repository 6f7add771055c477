//! Messages from the browser to the display proxy.

use super::wire::{Reader, put_bytes32, put_text16};
use super::{
    DecodeError, MAX_CLIENT_MESSAGE, MAX_CLIPBOARD, MAX_CLIPBOARD_IMAGE, MAX_CODE_LEN,
    MAX_FILE_CHUNK, MAX_FILE_NAME, truncate_utf8,
};

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
    /// Start an upload of `size` bytes named `name` into the desktop; `id` is the viewer's own
    /// number for it. Only a viewer with [`caps::FILE_UPLOAD`] may. The proxy answers with
    /// [`ServerMessage::FileProgress`] as the data is taken, then
    /// [`ServerMessage::FileSaved`] or [`ServerMessage::FileRefused`]. `0x8a`
    FileOpen { id: u32, size: u64, name: String },
    /// The next bytes of upload `id` (at most [`MAX_FILE_CHUNK`]). The viewer keeps at most
    /// [`super::FILE_WINDOW`] bytes beyond the last progress it was told. `0x8b`
    FileData { id: u32, data: Vec<u8> },
    /// Stop upload `id` (nothing of it stays in the desktop), or download `id`. `0x8c`
    FileCancel { id: u32 },
    /// Ask for the files of the desktop this viewer may download; answered with
    /// [`ServerMessage::FileList`]. Only a viewer with [`caps::FILE_DOWNLOAD`] may. `0x8d`
    FileList,
    /// Download file `name` (one of the list) as the viewer's download `id`. The proxy answers
    /// with [`ServerMessage::FileStart`], the file's bytes, then [`ServerMessage::FileDone`]
    /// or [`ServerMessage::FileRefused`]. `0x8e`
    FileGet { id: u32, name: String },
    /// The viewer has taken the first `done` bytes of download `id`. `0x8f`
    FileTaken { id: u32, done: u64 },
    /// Download file `name` as download `id`, as [`ClientMessage::FileGet`], but over HTTP
    /// when the proxy can: it answers with [`ServerMessage::FileLink`], whose URL the browser
    /// fetches as its own download (the bytes never pass through the page), then
    /// [`ServerMessage::FileProgress`] as they go and [`ServerMessage::FileDone`] or
    /// [`ServerMessage::FileRefused`]. A link not fetched in time falls back to
    /// [`ServerMessage::FileStart`] and chunks, as for `FileGet`. `0x90`
    FileFetch { id: u32, name: String },
    /// Start upload `id` as [`ClientMessage::FileOpen`] does, but with its bytes as the body of
    /// an HTTP `PUT` to the link the proxy answers with ([`ServerMessage::FileLink`]), which
    /// the browser streams from the file itself. The proxy tells [`ServerMessage::FileProgress`]
    /// and ends with [`ServerMessage::FileSaved`] or [`ServerMessage::FileRefused`]; a link not
    /// used in time is withdrawn with [`ServerMessage::FileUnlinked`], and the viewer then
    /// sends [`ClientMessage::FileData`] as for `FileOpen`. `0x91`
    FilePut { id: u32, size: u64, name: String },
    /// An image to paste into the guest: a PNG file of at most [`MAX_CLIPBOARD_IMAGE`] bytes.
    /// `0x92`
    ClipboardImage { png: Vec<u8> },
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
            Self::FileOpen { id, size, name } => {
                out.push(0x8a);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                put_text16(&mut out, name, MAX_FILE_NAME);
            }
            Self::FileData { id, data } => {
                out.push(0x8b);
                out.extend_from_slice(&id.to_le_bytes());
                put_bytes32(&mut out, data);
            }
            Self::FileCancel { id } => {
                out.push(0x8c);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Self::FileList => out.push(0x8d),
            Self::FileGet { id, name } => {
                out.push(0x8e);
                out.extend_from_slice(&id.to_le_bytes());
                put_text16(&mut out, name, MAX_FILE_NAME);
            }
            Self::FileTaken { id, done } => {
                out.push(0x8f);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&done.to_le_bytes());
            }
            Self::FileFetch { id, name } => {
                out.push(0x90);
                out.extend_from_slice(&id.to_le_bytes());
                put_text16(&mut out, name, MAX_FILE_NAME);
            }
            Self::FilePut { id, size, name } => {
                out.push(0x91);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                put_text16(&mut out, name, MAX_FILE_NAME);
            }
            Self::ClipboardImage { png } => {
                out.push(0x92);
                put_bytes32(&mut out, png);
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
            0x8a => Self::FileOpen { id: r.u32()?, size: r.u64()?, name: r.text16(MAX_FILE_NAME)? },
            0x8b => Self::FileData { id: r.u32()?, data: r.bytes32(MAX_FILE_CHUNK)?.to_vec() },
            0x8c => Self::FileCancel { id: r.u32()? },
            0x8d => Self::FileList,
            0x8e => Self::FileGet { id: r.u32()?, name: r.text16(MAX_FILE_NAME)? },
            0x8f => Self::FileTaken { id: r.u32()?, done: r.u64()? },
            0x90 => Self::FileFetch { id: r.u32()?, name: r.text16(MAX_FILE_NAME)? },
            0x91 => Self::FilePut { id: r.u32()?, size: r.u64()?, name: r.text16(MAX_FILE_NAME)? },
            0x92 => Self::ClipboardImage { png: r.bytes32(MAX_CLIPBOARD_IMAGE)?.to_vec() },
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}
