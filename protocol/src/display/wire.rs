//! The wire's building blocks: a bounded reader, the writers, and why a message could not be
//! decoded.

use thiserror::Error;

use super::Rect;

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

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// A byte that must be 0 (false) or 1 (true); anything else is a bad `what`.
    pub(super) fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue(what)),
        }
    }
    pub(super) fn i8(&mut self) -> Result<i8, DecodeError> {
        Ok(i8::from_le_bytes([self.u8()?]))
    }
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("took 8 bytes")))
    }
    /// UTF-8 text after a u16 length, at most `max` bytes.
    pub(super) fn text16(&mut self, max: usize) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::TooLarge(len));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| DecodeError::BadValue("UTF-8 text"))
    }
    pub(super) fn rect(&mut self) -> Result<Rect, DecodeError> {
        Ok(Rect { x: self.u16()?, y: self.u16()?, w: self.u16()?, h: self.u16()? })
    }
    pub(super) fn bytes32(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLarge(len));
        }
        self.take(len)
    }
    pub(super) fn text32(&mut self, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes32(max)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadValue("UTF-8 text"))
    }
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::Trailing(self.buf.len())) }
    }
}

pub(super) fn put_rect(out: &mut Vec<u8>, r: Rect) {
    for v in [r.x, r.y, r.w, r.h] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("message payloads are far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

/// `text` after a u16 length, cut to `max` bytes (on a character boundary).
pub(super) fn put_text16(out: &mut Vec<u8>, text: &str, max: usize) {
    let t = super::truncate_utf8(text, max.min(usize::from(u16::MAX)));
    out.extend_from_slice(&u16::try_from(t.len()).expect("cut to u16").to_le_bytes());
    out.extend_from_slice(t.as_bytes());
}
