//! Messages from the display proxy to the browser.

use super::wire::{Reader, put_bytes32, put_rect, put_text16};
use super::{
    DecodeError, ImageFormat, MAX_AUDIO_PACKET, MAX_CLIPBOARD, MAX_CLIPBOARD_IMAGE, MAX_FILE_CHUNK,
    MAX_FILE_MESSAGE, MAX_FILE_NAME, MAX_FILE_PATH, MAX_VIDEO_FRAME, Rect, truncate_utf8,
};
use crate::agent::{FileEntry, MAX_LISTED_FILES};

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
    /// `done` bytes of upload `id` have been taken on their way into the desktop. `0x32`
    FileProgress { id: u32, done: u64 },
    /// Upload `id` is in the desktop as `path`; `sha256` is the hash of what arrived. `0x33`
    FileSaved { id: u32, sha256: [u8; 32], path: String },
    /// Upload `id` was refused or failed, and nothing of it stays in the desktop: `message`
    /// says why, for the user. `0x34`
    FileRefused { id: u32, message: String },
    /// Clipboard text or an image of `size` bytes did not cross because policy allows at most
    /// `limit`:
    /// copied in the desktop (`out` true) or pasted from the browser (`out` false). `0x35`
    ClipboardRefused { out: bool, size: u32, limit: u32 },
    /// Answer to [`ClientMessage::FileList`]: the files of the desktop the viewer may
    /// download (newest first, at most [`MAX_LISTED_FILES`]), or, when `message` is not empty,
    /// why there is no list. `0x36`
    FileList { message: String, files: Vec<FileEntry> },
    /// Download `id` is `size` bytes; they follow as [`ServerMessage::FileChunk`]s. `0x37`
    FileStart { id: u32, size: u64 },
    /// The next bytes of download `id` (at most [`MAX_FILE_CHUNK`]). The proxy sends at most
    /// [`super::FILE_WINDOW`] bytes beyond what the viewer said it took
    /// ([`ClientMessage::FileTaken`]). `0x38`
    FileChunk { id: u32, data: Vec<u8> },
    /// All of download `id` came and passed the scanner: the viewer may save it. `sha256` is
    /// the hash of its bytes. Until this comes the viewer keeps the file to itself; a
    /// [`ServerMessage::FileRefused`] instead means it must be thrown away. `0x39`
    FileDone { id: u32, sha256: [u8; 32] },
    /// File `id` of `size` bytes moves over a link, used once, at `/files/{vm}/{token}` (the
    /// token in lower-case hex) beside the viewer's `/ws/{vm}`: a download
    /// ([`ClientMessage::FileFetch`]) is there for the browser's own download (`GET`); an
    /// upload ([`ClientMessage::FilePut`]) takes the file as the body of a `PUT`. Not used
    /// within a few seconds, the link is withdrawn: a download falls back to
    /// [`ServerMessage::FileStart`] and chunks, an upload to [`ServerMessage::FileUnlinked`].
    /// `0x3a`
    FileLink { id: u32, size: u64, token: [u8; 16] },
    /// Upload `id`'s link was not used in time and is withdrawn: its bytes are to come as
    /// [`ClientMessage::FileData`]. `0x3b`
    FileUnlinked { id: u32 },
    /// The guest clipboard holds an image: a PNG file of at most [`MAX_CLIPBOARD_IMAGE`] bytes.
    /// Refused for its size, it comes as [`ServerMessage::ClipboardRefused`] instead. `0x3c`
    ClipboardImage { png: Vec<u8> },
    /// One Opus packet of the desktop's sound ([`AUDIO_FRAME`] samples at [`AUDIO_RATE`],
    /// stereo, at most [`MAX_AUDIO_PACKET`] bytes); `at` numbers its first sample (48 kHz,
    /// wrapping, counting the sound sent), so a packet the viewer missed shows. `0x40`
    Audio { at: u32, packet: Vec<u8> },
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
            Self::FileProgress { id, done } => {
                out.push(0x32);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&done.to_le_bytes());
            }
            Self::FileSaved { id, sha256, path } => {
                out.push(0x33);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(sha256);
                put_text16(out, path, MAX_FILE_PATH);
            }
            Self::FileRefused { id, message } => {
                out.push(0x34);
                out.extend_from_slice(&id.to_le_bytes());
                put_text16(out, message, MAX_FILE_MESSAGE);
            }
            Self::ClipboardRefused { out: o, size, limit } => {
                out.push(0x35);
                out.push(u8::from(*o));
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&limit.to_le_bytes());
            }
            Self::FileList { message, files } => {
                out.push(0x36);
                put_text16(out, message, MAX_FILE_MESSAGE);
                let files = &files[..files.len().min(MAX_LISTED_FILES)];
                out.extend_from_slice(&u16::try_from(files.len()).expect("bounded").to_le_bytes());
                for f in files {
                    put_text16(out, &f.name, MAX_FILE_NAME);
                    out.extend_from_slice(&f.size.to_le_bytes());
                    out.extend_from_slice(&f.modified.to_le_bytes());
                }
            }
            Self::FileStart { id, size } => {
                out.push(0x37);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
            }
            Self::FileChunk { id, data } => {
                out.push(0x38);
                out.extend_from_slice(&id.to_le_bytes());
                put_bytes32(out, &data[..data.len().min(MAX_FILE_CHUNK)]);
            }
            Self::FileDone { id, sha256 } => {
                out.push(0x39);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(sha256);
            }
            Self::FileLink { id, size, token } => {
                out.push(0x3a);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(token);
            }
            Self::FileUnlinked { id } => {
                out.push(0x3b);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Self::ClipboardImage { png } => {
                out.push(0x3c);
                put_bytes32(out, png);
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
            0x32 => Self::FileProgress { id: r.u32()?, done: r.u64()? },
            0x33 => {
                let id = r.u32()?;
                let sha256 = r.take(32)?.try_into().expect("took 32 bytes");
                Self::FileSaved { id, sha256, path: r.text16(MAX_FILE_PATH)? }
            }
            0x34 => Self::FileRefused { id: r.u32()?, message: r.text16(MAX_FILE_MESSAGE)? },
            0x35 => Self::ClipboardRefused {
                out: r.flag("clipboard direction")?,
                size: r.u32()?,
                limit: r.u32()?,
            },
            0x36 => {
                let message = r.text16(MAX_FILE_MESSAGE)?;
                let n = usize::from(r.u16()?);
                if n > MAX_LISTED_FILES {
                    return Err(DecodeError::BadValue("file count"));
                }
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.text16(MAX_FILE_NAME)?;
                    files.push(FileEntry { name, size: r.u64()?, modified: r.u64()? });
                }
                Self::FileList { message, files }
            }
            0x37 => Self::FileStart { id: r.u32()?, size: r.u64()? },
            0x38 => Self::FileChunk { id: r.u32()?, data: r.bytes32(MAX_FILE_CHUNK)?.to_vec() },
            0x39 => {
                let id = r.u32()?;
                Self::FileDone { id, sha256: r.take(32)?.try_into().expect("took 32 bytes") }
            }
            0x3a => {
                let (id, size) = (r.u32()?, r.u64()?);
                Self::FileLink { id, size, token: r.take(16)?.try_into().expect("took 16 bytes") }
            }
            0x3b => Self::FileUnlinked { id: r.u32()? },
            0x3c => Self::ClipboardImage { png: r.bytes32(MAX_CLIPBOARD_IMAGE)?.to_vec() },
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
