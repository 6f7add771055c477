//! The builtin VMM's display channel: a unix stream socket per VM over which the display proxy
//! receives the framebuffer (a memfd passed with `SCM_RIGHTS` alongside [`VmmEvent::Hello`]),
//! asks which pages changed, and sends input that the VMM injects through virtio-input.
//!
//! Framing: `u32` little-endian length of what follows, then a one-byte type and its payload.

use thiserror::Error;

/// Pixel format of the shared framebuffer: 32 bits per pixel, `0x00RRGGBB` little-endian
/// (bytes B, G, R, X), DRM's `XRGB8888`.
pub const FORMAT_XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Messages from the VMM to the display client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmEvent {
    /// Sent once on connect, with the framebuffer memfd attached. `0x01`
    Hello { width: u32, height: u32, stride: u32, format: u32, fb_size: u64, page_size: u32 },
    /// Answer to [`VmmRequest::GetDirty`]: bit `i` (LSB first) set when page `i` of the
    /// framebuffer was written since the last answer. `0x02`
    Dirty { pages: u32, bitmap: Vec<u8> },
    /// An input event was refused (device not ready, value out of range). `0x03`
    InputRefused { reason: String },
}

/// Messages from the display client to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmRequest {
    /// Which framebuffer pages changed? `0x81`
    GetDirty,
    /// A key, as a Linux evdev key code. `0x82`
    Key { code: u16, down: bool },
    /// Absolute pointer in framebuffer pixels, buttons (bit 0 left, 1 middle, 2 right), wheel. `0x83`
    Pointer { x: u32, y: u32, buttons: u8, wheel: i8 },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    #[error("frame truncated")]
    Truncated,
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("bad {0}")]
    BadValue(&'static str),
}

fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len() + 1).expect("frames are far below 4 GiB");
    let mut v = Vec::with_capacity(payload.len() + 5);
    v.extend_from_slice(&len.to_le_bytes());
    v.push(ty);
    v.extend_from_slice(payload);
    v
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ChannelError> {
    let s = b.get(at..at + 4).ok_or(ChannelError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads the length prefix of a frame: how many bytes follow it. Refuses oversize frames.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ChannelError> {
    let n = u32::from_le_bytes(prefix) as usize;
    if n == 0 {
        return Err(ChannelError::Truncated);
    }
    if n > MAX_FRAME {
        return Err(ChannelError::TooLarge(n));
    }
    Ok(n)
}

impl VmmEvent {
    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Hello { width, height, stride, format, fb_size, page_size } => {
                let mut p = Vec::with_capacity(28);
                for v in [width, height, stride, format] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
                p.extend_from_slice(&fb_size.to_le_bytes());
                p.extend_from_slice(&page_size.to_le_bytes());
                frame(0x01, &p)
            }
            Self::Dirty { pages, bitmap } => {
                let mut p = pages.to_le_bytes().to_vec();
                p.extend_from_slice(bitmap);
                frame(0x02, &p)
            }
            Self::InputRefused { reason } => frame(0x03, reason.as_bytes()),
        }
    }

    /// Decodes a frame body (type byte and payload, without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, ChannelError> {
        let (&ty, p) = body.split_first().ok_or(ChannelError::Truncated)?;
        match ty {
            0x01 => {
                if p.len() != 28 {
                    return Err(ChannelError::Truncated);
                }
                let fb = p.get(16..24).ok_or(ChannelError::Truncated)?;
                Ok(Self::Hello {
                    width: u32_at(p, 0)?,
                    height: u32_at(p, 4)?,
                    stride: u32_at(p, 8)?,
                    format: u32_at(p, 12)?,
                    fb_size: u64::from_le_bytes(fb.try_into().expect("8 bytes")),
                    page_size: u32_at(p, 24)?,
                })
            }
            0x02 => {
                let pages = u32_at(p, 0)?;
                let bitmap = p[4..].to_vec();
                if bitmap.len() != (pages as usize).div_ceil(8) {
                    return Err(ChannelError::BadValue("dirty bitmap length"));
                }
                Ok(Self::Dirty { pages, bitmap })
            }
            0x03 => Ok(Self::InputRefused { reason: String::from_utf8_lossy(p).into_owned() }),
            other => Err(ChannelError::UnknownType(other)),
        }
    }
}

impl VmmRequest {
    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::GetDirty => frame(0x81, &[]),
            Self::Key { code, down } => {
                let mut p = code.to_le_bytes().to_vec();
                p.push(u8::from(*down));
                frame(0x82, &p)
            }
            Self::Pointer { x, y, buttons, wheel } => {
                let mut p = Vec::with_capacity(10);
                p.extend_from_slice(&x.to_le_bytes());
                p.extend_from_slice(&y.to_le_bytes());
                p.push(*buttons);
                p.extend_from_slice(&wheel.to_le_bytes());
                frame(0x83, &p)
            }
        }
    }

    /// Decodes a frame body (type byte and payload, without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, ChannelError> {
        let (&ty, p) = body.split_first().ok_or(ChannelError::Truncated)?;
        match (ty, p.len()) {
            (0x81, 0) => Ok(Self::GetDirty),
            (0x82, 3) => Ok(Self::Key {
                code: u16::from_le_bytes([p[0], p[1]]),
                down: match p[2] {
                    0 => false,
                    1 => true,
                    _ => return Err(ChannelError::BadValue("key state")),
                },
            }),
            (0x83, 10) => Ok(Self::Pointer {
                x: u32_at(p, 0)?,
                y: u32_at(p, 4)?,
                buttons: p[8],
                wheel: i8::from_le_bytes([p[9]]),
            }),
            (0x81..=0x83, _) => Err(ChannelError::BadValue("payload length")),
            (other, _) => Err(ChannelError::UnknownType(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        let n = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn round_trips() {
        let events = [
            VmmEvent::Hello {
                width: 1280,
                height: 800,
                stride: 5120,
                format: FORMAT_XRGB8888,
                fb_size: 4_096_000,
                page_size: 4096,
            },
            VmmEvent::Dirty { pages: 10, bitmap: vec![0xff, 0x03] },
            VmmEvent::InputRefused { reason: "no keyboard".into() },
        ];
        for e in events {
            assert_eq!(VmmEvent::decode(body(&e.encode())).unwrap(), e);
        }
        let reqs = [
            VmmRequest::GetDirty,
            VmmRequest::Key { code: 30, down: true },
            VmmRequest::Pointer { x: 5, y: 6, buttons: 1, wheel: -1 },
        ];
        for r in reqs {
            assert_eq!(VmmRequest::decode(body(&r.encode())).unwrap(), r);
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(frame_len(u32::MAX.to_le_bytes()).is_err());
        assert!(frame_len([0; 4]).is_err());
        assert!(VmmRequest::decode(&[]).is_err());
        assert!(VmmRequest::decode(&[0x82, 1]).is_err());
        assert!(VmmRequest::decode(&[0x82, 1, 0, 7]).is_err());
        assert!(VmmRequest::decode(&[0x01]).is_err());
        assert!(VmmEvent::decode(&[0x02, 10, 0, 0, 0, 1]).is_err());
    }
}
