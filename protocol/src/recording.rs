//! Session recordings: what a display proxy records of one viewer's stream, how it travels to
//! the broker in chunks, and how the broker chains the chunks so that tampering shows.
//!
//! A recording is the display stream exactly as the viewer received it (the display protocol's
//! server messages, never decoded and re-encoded), with each message's time, plus key frames:
//! the whole screen, encoded losslessly now and then, so that playback can start anywhere
//! without replaying everything before. It travels in chunks of at most [`MAX_CHUNK_BYTES`]:
//!
//! ```text
//! chunk  = "ATRC" version:u8 t0:u32 record*                 (t0 little-endian)
//! record = kind:u8 dt:varint len:varint payload[len]
//! ```
//!
//! A record's time, in milliseconds from the recording's start, is the time before it (`t0` for
//! a chunk's first record) plus `dt`; times never go back, within a chunk or from one chunk to
//! the next. Varints are LEB128, at most 32 bits, in their shortest form. The kinds:
//! - [`Kind::Message`]: one server message as sent to the viewer;
//! - [`Kind::Key`]: a key frame, `(len:u32 message[len])*`: a `Resize` to the screen's size,
//!   then rectangles covering all of it (and the pointer's shape); playing from here needs
//!   nothing that came before;
//! - [`Kind::Input`]: one client message (keys, pointer) the viewer sent, when input is
//!   recorded.

use thiserror::Error;

/// The first bytes of every chunk.
pub const MAGIC: &[u8; 4] = b"ATRC";
/// The format's version.
pub const VERSION: u8 = 1;
/// The largest chunk a broker takes: a chunk leaves once it holds 1 MiB, but one message (a
/// VP8 frame of up to 16 MiB, a large picture) or key frame may be bigger; a record that cannot
/// fit in a chunk of this size cannot be recorded.
pub const MAX_CHUNK_BYTES: usize = 24 * 1024 * 1024;
/// Bytes of a chunk's header.
pub const CHUNK_HEADER: usize = 9;
/// Chunks one recording may have (a week of one every two seconds).
pub const MAX_CHUNKS: u64 = 400_000;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Message = 0,
    Key = 1,
    Input = 2,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Message),
            1 => Some(Self::Key),
            2 => Some(Self::Input),
            _ => None,
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push(u8::try_from(v & 0x7f).expect("seven bits") | 0x80);
        v >>= 7;
    }
    out.push(u8::try_from(v).expect("under 0x80"));
}

/// A LEB128 varint at `at`, at most 32 bits, in its shortest form: the value and the bytes it
/// took.
fn get_varint(bytes: &[u8], at: usize) -> Option<(u32, usize)> {
    let mut v: u64 = 0;
    for i in 0..5 {
        let b = *bytes.get(at + i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // Not overlong: a last byte of zero only for the value zero itself.
            if (b == 0 && i > 0) || v > u64::from(u32::MAX) {
                return None;
            }
            return Some((u32::try_from(v).ok()?, i + 1));
        }
    }
    None
}

/// A chunk being written: records in time order.
#[derive(Debug, Clone, Default)]
pub struct ChunkWriter {
    buf: Vec<u8>,
    last: u32,
}

impl ChunkWriter {
    /// An empty chunk (its header is written with its first record).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether it has no record yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Appends one record at `t_ms` (a time before the last record's is taken as the last's).
    ///
    /// # Panics
    /// If `payload` is 4 GiB or more (nothing the proxy sends comes near it).
    pub fn record(&mut self, t_ms: u32, kind: Kind, payload: &[u8]) {
        if self.buf.is_empty() {
            self.buf.extend_from_slice(MAGIC);
            self.buf.push(VERSION);
            self.buf.extend_from_slice(&t_ms.to_le_bytes());
            self.last = t_ms;
        }
        let t = t_ms.max(self.last);
        self.buf.push(kind as u8);
        put_varint(&mut self.buf, t - self.last);
        put_varint(&mut self.buf, u32::try_from(payload.len()).expect("a record under 4 GiB"));
        self.buf.extend_from_slice(payload);
        self.last = t;
    }

    /// The chunk's bytes; the writer is empty again.
    pub fn take(&mut self) -> Vec<u8> {
        self.last = 0;
        std::mem::take(&mut self.buf)
    }
}

/// Appends one message of a key frame's payload.
///
/// # Panics
/// If `message` is 4 GiB or more.
pub fn write_key_part(out: &mut Vec<u8>, message: &[u8]) {
    out.extend_from_slice(&u32::try_from(message.len()).expect("under 4 GiB").to_le_bytes());
    out.extend_from_slice(message);
}

/// One record of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub t_ms: u32,
    pub kind: Kind,
    /// Where the record starts in its chunk.
    pub offset: usize,
    pub payload: &'a [u8],
}

/// Why a chunk is not one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkError {
    #[error("the chunk is empty or larger than {MAX_CHUNK_BYTES} bytes")]
    Size,
    #[error("not a recording chunk (bad magic or version)")]
    Header,
    #[error("record at byte {0} is cut short")]
    Truncated(usize),
    #[error("record at byte {0} has an unknown kind")]
    Kind(usize),
    #[error("record at byte {0} goes back in time or past 49 days")]
    Time(usize),
    #[error("the key frame at byte {0} is malformed")]
    Key(usize),
    #[error("the chunk has no records")]
    Empty,
}

/// What the broker keeps of a chunk it checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkSummary {
    pub t_first: u32,
    pub t_last: u32,
    pub records: u32,
    /// Each key frame: its time and where its record starts.
    pub keys: Vec<(u32, usize)>,
}

/// The records of a chunk, checked: a header, whole records of known kinds in time order, key
/// frames made of whole messages. `not_before`: the last time of the chunk before (a chunk
/// does not go back in time either).
pub fn parse_chunk(bytes: &[u8], not_before: u32) -> Result<Vec<Record<'_>>, ChunkError> {
    if bytes.len() <= CHUNK_HEADER || bytes.len() > MAX_CHUNK_BYTES {
        return Err(ChunkError::Size);
    }
    if &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(ChunkError::Header);
    }
    let mut t = u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes"));
    if t < not_before {
        return Err(ChunkError::Time(CHUNK_HEADER));
    }
    let mut out = Vec::new();
    let mut at = CHUNK_HEADER;
    while at < bytes.len() {
        let kind = Kind::from_u8(bytes[at]).ok_or(ChunkError::Kind(at))?;
        let (dt, n1) = get_varint(bytes, at + 1).ok_or(ChunkError::Truncated(at))?;
        let (len, n2) = get_varint(bytes, at + 1 + n1).ok_or(ChunkError::Truncated(at))?;
        let start = at + 1 + n1 + n2;
        let payload = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .and_then(|end| bytes.get(start..end))
            .ok_or(ChunkError::Truncated(at))?;
        t = t.checked_add(dt).ok_or(ChunkError::Time(at))?;
        if kind == Kind::Key && key_parts(payload).is_none() {
            return Err(ChunkError::Key(at));
        }
        out.push(Record { t_ms: t, kind, offset: at, payload });
        at = start + payload.len();
    }
    if out.is_empty() {
        return Err(ChunkError::Empty);
    }
    Ok(out)
}

/// What the broker keeps of a checked chunk.
pub fn summarise(records: &[Record<'_>]) -> ChunkSummary {
    ChunkSummary {
        t_first: records.first().map_or(0, |r| r.t_ms),
        t_last: records.last().map_or(0, |r| r.t_ms),
        records: u32::try_from(records.len()).unwrap_or(u32::MAX),
        keys: records.iter().filter(|r| r.kind == Kind::Key).map(|r| (r.t_ms, r.offset)).collect(),
    }
}

/// The messages of a key frame's payload; `None` when it is not whole, non-empty messages.
pub fn key_parts(payload: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let len = u32::from_le_bytes(payload.get(at..at + 4)?.try_into().ok()?);
        let start = at + 4;
        let m = payload.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
        if m.is_empty() {
            return None;
        }
        out.push(m);
        at = start + m.len();
    }
    (!out.is_empty()).then_some(out)
}

/// The link of chunk `n` in a recording's chain: it covers the recording's id, the chunk's
/// number and hash, and the link before (32 zero bytes before chunk 0), so a chunk changed,
/// removed, reordered or moved to another recording breaks every link after it.
#[cfg(feature = "services")]
pub fn chain(recording: &str, n: u64, chunk_sha256: &[u8; 32], prev: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"atrium-recording-v1\0");
    h.update(recording.as_bytes());
    h.update([0]);
    h.update(n.to_le_bytes());
    h.update(chunk_sha256);
    h.update(prev);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(records: &[(u32, Kind, &[u8])]) -> Vec<u8> {
        let mut c = ChunkWriter::new();
        for (t, k, p) in records {
            c.record(*t, *k, p);
        }
        c.take()
    }

    #[test]
    fn a_chunk_is_read_back_with_its_key_frames() {
        let mut key = Vec::new();
        write_key_part(&mut key, &[0x02, 1, 0, 1, 0]);
        write_key_part(&mut key, &[0x10; 14]);
        let big = vec![0x11; 300];
        let c = chunk(&[
            (5, Kind::Message, b"ab"),
            (9, Kind::Key, &key),
            (9, Kind::Input, b"k"),
            (70_000, Kind::Message, &big),
        ]);
        // Three bytes before a small record: kind, a one-byte time step, a one-byte length.
        assert_eq!(c.len(), CHUNK_HEADER + 3 + 2 + 3 + key.len() + 3 + 1 + 1 + 3 + 2 + 300);
        let recs = parse_chunk(&c, 3).expect("valid");
        assert_eq!(recs.len(), 4);
        assert_eq!((recs[1].kind, recs[1].payload), (Kind::Key, key.as_slice()));
        assert_eq!(key_parts(recs[1].payload).expect("parts").len(), 2);
        assert_eq!((recs[3].t_ms, recs[3].payload), (70_000, big.as_slice()));
        let s = summarise(&recs);
        assert_eq!((s.t_first, s.t_last, s.records), (5, 70_000, 4));
        assert_eq!(s.keys, vec![(9, recs[1].offset)]);
        assert_eq!(c[s.keys[0].1], Kind::Key as u8, "a key frame's offset is its record's start");
        // A writer taken is empty again; a time going back is written as the last one.
        let mut w = ChunkWriter::new();
        w.record(10, Kind::Message, b"x");
        w.record(8, Kind::Message, b"y");
        let back = w.take();
        assert!(w.is_empty());
        let recs = parse_chunk(&back, 0).expect("valid");
        assert_eq!((recs[0].t_ms, recs[1].t_ms), (10, 10));
    }

    #[test]
    fn a_bad_chunk_is_refused_with_where() {
        let good = chunk(&[(5, Kind::Message, b"ab")]);
        assert_eq!(parse_chunk(&good[..good.len() - 1], 0), Err(ChunkError::Truncated(9)));
        assert_eq!(parse_chunk(&good, 6), Err(ChunkError::Time(9)), "before the last chunk");
        assert_eq!(parse_chunk(b"ATRC\x01\0\0\0\0", 0), Err(ChunkError::Size));
        assert_eq!(parse_chunk(b"ATRC\x02\0\0\0\0xxxx", 0), Err(ChunkError::Header));
        let mut bad_kind = good.clone();
        bad_kind[9] = 7;
        assert_eq!(parse_chunk(&bad_kind, 0), Err(ChunkError::Kind(9)));
        for key in [&b""[..], &[1, 0, 0, 0][..], &[0, 0, 0, 0][..], &[9, 0, 0, 0, 1][..]] {
            let c = chunk(&[(1, Kind::Key, key)]);
            assert_eq!(parse_chunk(&c, 0), Err(ChunkError::Key(9)), "{key:?}");
        }
        let head = [MAGIC.as_slice(), &[VERSION], &5u32.to_le_bytes()].concat();
        for (record, why) in [
            (&[0, 0x80, 0x80, 0x80, 0x80, 0x80, 0][..], "a varint over five bytes"),
            (&[0, 0x80, 0x00, 0][..], "an overlong varint"),
            (&[0, 0xff, 0xff, 0xff, 0xff, 0x1f, 0][..], "a varint over 32 bits"),
            (&[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f][..], "a length past the end"),
            (&[0, 0][..], "no length"),
        ] {
            let c = [head.as_slice(), record].concat();
            assert_eq!(parse_chunk(&c, 0), Err(ChunkError::Truncated(9)), "{why}");
        }
        let late = [head.as_slice(), &[0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0]].concat();
        assert_eq!(parse_chunk(&late, 0), Err(ChunkError::Time(9)), "past u32 milliseconds");
        assert_eq!(parse_chunk(&vec![0; MAX_CHUNK_BYTES + 1], 0), Err(ChunkError::Size));
    }

    #[test]
    fn the_chain_covers_the_recording_the_number_the_chunk_and_the_link_before() {
        let zero = [0; 32];
        let a = chain("r1", 0, &[1; 32], &zero);
        assert_eq!(a, chain("r1", 0, &[1; 32], &zero));
        for other in [
            chain("r2", 0, &[1; 32], &zero),
            chain("r1", 1, &[1; 32], &zero),
            chain("r1", 0, &[2; 32], &zero),
            chain("r1", 0, &[1; 32], &[3; 32]),
        ] {
            assert_ne!(a, other);
        }
    }
}
