//! Server messages from a buffer of received bytes: [`scan`] finds how long the next message
//! is once all of it has arrived (checking every size it declares, so no message can make the
//! buffer grow beyond what the screen explains), and [`Cursor`] reads it field by field.

use atrium_protocol::display::{MAX_CLIPBOARD, Rect};

use super::{
    AUDIO_DATA, ENC_COPYRECT, ENC_CURSOR, ENC_DESKTOP_SIZE, ENC_EXT_DESKTOP_SIZE, ENC_LAST_RECT,
    ENC_QEMU_AUDIO, ENC_QEMU_EXT_KEY, ENC_RAW, ENC_ZRLE, MAX_AUDIO_DATA, MSG_QEMU, QEMU_AUDIO,
    check_size,
};
use crate::source::SourceError;

/// The length of the next server message at the start of `buf`, once all of it is there
/// (`None`: more bytes are needed). `width` and `height` are the screen's size; an update that
/// resizes it is checked against the new size from there on.
pub fn scan(buf: &[u8], width: u16, height: u16) -> Result<Option<usize>, SourceError> {
    Ok(scan_work(buf, width, height)?.map(|(len, _)| len))
}

/// [`scan`], with the work decoding the message takes: the bytes of framebuffer it writes (a
/// copy of the whole screen is a few bytes on the wire but a screen of work, and a resize
/// reallocates the screen).
pub fn scan_work(
    buf: &[u8],
    width: u16,
    height: u16,
) -> Result<Option<(usize, usize)>, SourceError> {
    let mut c = Cursor::new(buf);
    let Some(ty) = c.peek_u8() else { return Ok(None) };
    let mut work = 0;
    let complete = match ty {
        0 => scan_update(&mut c, width, height, &mut work)?,
        1 => {
            // SetColourMapEntries: type, padding, first colour, count, then 6 bytes each.
            c.take(4).and_then(|_| c.be_u16()).and_then(|n| c.take(usize::from(n) * 6)).is_some()
        }
        2 | 150 => c.take(1).is_some(), // Bell, EndOfContinuousUpdates
        3 => match c.take(4).and_then(|_| c.be_i32()) {
            None => false,
            Some(len) => {
                let n = usize::try_from(len.unsigned_abs()).unwrap_or(usize::MAX);
                if n > MAX_CLIPBOARD {
                    return Err(SourceError::protocol("server cut text over the clipboard limit"));
                }
                c.take(n).is_some()
            }
        },
        MSG_QEMU => {
            // QEMU's audio: sub-type, operation, and for data a length and the samples.
            let sub = c.take(2).map(|b| b[1]);
            let op = c.be_u16();
            match (sub, op) {
                (Some(QEMU_AUDIO), Some(AUDIO_DATA)) => match c.be_u32() {
                    None => false,
                    Some(n) => {
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        if n > MAX_AUDIO_DATA {
                            return Err(SourceError::protocol("audio data over the limit"));
                        }
                        c.take(n).is_some()
                    }
                },
                (Some(QEMU_AUDIO), Some(_)) => true,
                (Some(other), Some(_)) => {
                    return Err(SourceError::protocol(format!("unknown QEMU message {other}")));
                }
                _ => false,
            }
        }
        other => {
            return Err(SourceError::protocol(format!("unknown server message type {other}")));
        }
    };
    Ok(complete.then_some((c.pos, work)))
}

/// Whether the update at the start of `c` has fully arrived (leaving `c` after it).
fn scan_update(
    c: &mut Cursor<'_>,
    mut width: u16,
    mut height: u16,
    work: &mut usize,
) -> Result<bool, SourceError> {
    let Some(count) = c.take(2).and_then(|_| c.be_u16()) else { return Ok(false) };
    // Pixel data beyond two screens' worth is not an honest update (it would only make the
    // receive buffer grow).
    let limit = usize::from(width) * usize::from(height) * 4 * 2 + (1 << 20);
    let mut payload = 0usize;
    // Nor is decoding work beyond a few screens: copies and resizes are cheap on the wire but
    // each may move a whole screen, and the work runs on the encode pool every desktop shares.
    let mut biggest_screen = usize::from(width) * usize::from(height) * 4;
    for _ in 0..count {
        let (Some(x), Some(y), Some(w), Some(h), Some(enc)) =
            (c.be_u16(), c.be_u16(), c.be_u16(), c.be_u16(), c.be_i32())
        else {
            return Ok(false);
        };
        let r = Rect { x, y, w, h };
        let inside = u32::from(x) + u32::from(w) <= u32::from(width)
            && u32::from(y) + u32::from(h) <= u32::from(height);
        let pixels = usize::from(w) * usize::from(h);
        let screen = usize::from(width) * usize::from(height) * 4;
        let len = match enc {
            ENC_RAW | ENC_COPYRECT | ENC_ZRLE if !inside => {
                return Err(SourceError::protocol(format!(
                    "rectangle {r:?} outside the {width}x{height} screen"
                )));
            }
            ENC_RAW | ENC_COPYRECT | ENC_ZRLE => {
                *work = work.saturating_add(pixels * 4);
                match enc {
                    ENC_RAW => pixels * 4,
                    ENC_COPYRECT => 4,
                    _ => {
                        let Some(n) = c.peek_be_u32() else { return Ok(false) };
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        if n > pixels * 5 + 4096 {
                            return Err(SourceError::protocol(
                                "ZRLE data larger than its rectangle allows",
                            ));
                        }
                        4 + n
                    }
                }
            }
            ENC_DESKTOP_SIZE => {
                check_size(w, h)?;
                (width, height) = (w, h);
                *work = work.saturating_add(screen.max(pixels * 4));
                0
            }
            ENC_EXT_DESKTOP_SIZE => {
                let Some(screens) = c.peek_u8() else { return Ok(false) };
                if y == 0 {
                    check_size(w, h)?;
                    (width, height) = (w, h);
                    *work = work.saturating_add(screen.max(pixels * 4));
                }
                4 + usize::from(screens) * 16
            }
            ENC_QEMU_EXT_KEY | ENC_QEMU_AUDIO => 0,
            ENC_CURSOR => pixels * 4 + usize::from(w).div_ceil(8) * usize::from(h),
            ENC_LAST_RECT => break,
            other => return Err(SourceError::protocol(format!("unexpected encoding {other}"))),
        };
        biggest_screen = biggest_screen.max(usize::from(width) * usize::from(height) * 4);
        if *work > biggest_screen.saturating_mul(MAX_SCREENS_OF_WORK).saturating_add(1 << 20) {
            return Err(SourceError::protocol(
                "an update asks for more work than its screen explains",
            ));
        }
        payload = payload.saturating_add(len);
        if payload > limit {
            return Err(SourceError::protocol("an update larger than its screen explains"));
        }
        if c.take(len).is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How many whole screens of decoding one update may ask for (an honest one: a resize, a
/// scroll's copy and the new pixels).
const MAX_SCREENS_OF_WORK: usize = 8;

/// Big-endian reads from a message that [`scan`] found complete (running short is a protocol
/// error all the same).
#[derive(Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn peek_be_u32(&self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn be_u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn be_u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn be_i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], SourceError> {
        self.take(n).ok_or_else(|| SourceError::protocol("a server message ended early"))
    }

    pub fn u8(&mut self) -> Result<u8, SourceError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, SourceError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, SourceError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32(&mut self) -> Result<i32, SourceError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: u16, y: u16, w: u16, h: u16, enc: i32) -> Vec<u8> {
        let mut v = Vec::new();
        for n in [x, y, w, h] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&enc.to_be_bytes());
        v
    }

    #[test]
    fn a_message_is_complete_only_when_every_byte_is_there() {
        let mut m = vec![0, 0, 0, 2];
        m.extend(rect(0, 0, 2, 1, ENC_RAW));
        m.extend([1; 8]);
        m.extend(rect(0, 0, 1, 1, ENC_COPYRECT));
        m.extend([0, 1, 0, 0]);
        for cut in 0..m.len() {
            assert_eq!(scan(&m[..cut], 4, 4).unwrap(), None, "{cut} bytes");
        }
        assert_eq!(scan(&m, 4, 4).unwrap(), Some(m.len()));
        // Trailing bytes belong to the next message.
        let mut two = m.clone();
        two.push(2);
        assert_eq!(scan(&two, 4, 4).unwrap(), Some(m.len()));
        assert_eq!(scan(&[2], 4, 4).unwrap(), Some(1), "bell");
        assert_eq!(scan(&[], 4, 4).unwrap(), None);
    }

    #[test]
    fn sizes_are_checked_before_anything_is_buffered() {
        // A raw rectangle outside the screen: refused from its header alone.
        let mut m = vec![0, 0, 0, 1];
        m.extend(rect(3, 0, 2, 1, ENC_RAW));
        assert!(scan(&m, 4, 4).is_err());
        // An update that resizes: later rectangles are checked against the new size.
        let mut m = vec![0, 0, 0, 2];
        m.extend(rect(0, 0, 16, 2, ENC_DESKTOP_SIZE));
        m.extend(rect(8, 0, 8, 1, ENC_RAW));
        assert_eq!(scan(&m, 4, 4).unwrap(), None, "waiting for its pixels");
        // Thousands of full-screen rectangles: more than a screen explains.
        let mut m = vec![0, 0, 0xff, 0xff];
        for _ in 0..80 {
            m.extend(rect(0, 0, 64, 64, ENC_RAW));
            m.extend(vec![0; 64 * 64 * 4]);
        }
        assert!(scan(&m, 64, 64).is_err());
        // Cut text over the limit, a huge ZRLE payload, an unknown message.
        let mut m = vec![3, 0, 0, 0];
        m.extend(u32::try_from(MAX_CLIPBOARD + 1).unwrap().to_be_bytes());
        assert!(scan(&m, 4, 4).is_err());
        let mut m = vec![0, 0, 0, 1];
        m.extend(rect(0, 0, 1, 1, ENC_ZRLE));
        m.extend(1_000_000u32.to_be_bytes());
        assert!(scan(&m, 4, 4).is_err());
        assert!(scan(&[99], 4, 4).is_err());
    }

    #[test]
    fn work_counts_pixels_written_not_bytes_received() {
        // A copy of the whole screen: 13 bytes on the wire, a screen of work.
        let mut m = vec![0, 0, 0, 1];
        m.extend(rect(0, 0, 640, 480, ENC_COPYRECT));
        m.extend([0, 0, 0, 0]);
        assert_eq!(scan_work(&m, 640, 480).unwrap(), Some((m.len(), 640 * 480 * 4)));
        // A resize reallocates the new screen.
        let mut m = vec![0, 0, 0, 1];
        m.extend(rect(0, 0, 1024, 768, ENC_DESKTOP_SIZE));
        assert_eq!(scan_work(&m, 640, 480).unwrap(), Some((m.len(), 1024 * 768 * 4)));
        // A bell and cut text write nothing.
        assert_eq!(scan_work(&[2], 4, 4).unwrap(), Some((1, 0)));
        let mut m = vec![3, 0, 0, 0, 0, 0, 0, 2];
        m.extend(b"hi");
        assert_eq!(scan_work(&m, 4, 4).unwrap(), Some((m.len(), 0)));
    }
}
