//! Session recordings: what a display proxy records of one viewer's stream, how it travels to
//! the broker in chunks, and how the broker chains the chunks so that tampering shows.
//!
//! A recording is the display stream exactly as the viewer received it (the display protocol's
//! server messages, never decoded and re-encoded), with each message's time, plus key frames:
//! the whole screen, encoded losslessly now and then, so that playback can start anywhere
//! without replaying everything before. It travels in chunks of at most [`MAX_CHUNK_BYTES`]:
//!
//! ```text
//! chunk  = "ATRC" version:u8 record*
//! record = t_ms:u32 kind:u8 len:u32 payload[len]          (little-endian)
//! ```
//!
//! `t_ms` counts milliseconds from the recording's start and never goes back. The kinds:
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
/// The largest chunk a broker takes.
pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 9;
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

/// A new chunk's header.
pub fn chunk_header(out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
}

/// Appends one record.
///
/// # Panics
/// If `payload` is 4 GiB or more (nothing the proxy sends comes near it).
pub fn write_record(out: &mut Vec<u8>, t_ms: u32, kind: Kind, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("a record under 4 GiB");
    out.extend_from_slice(&t_ms.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
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
    #[error("record at byte {0} goes back in time")]
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
    if bytes.len() <= MAGIC.len() + 1 || bytes.len() > MAX_CHUNK_BYTES {
        return Err(ChunkError::Size);
    }
    if &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(ChunkError::Header);
    }
    let mut out = Vec::new();
    let mut at = MAGIC.len() + 1;
    let mut last = not_before;
    while at < bytes.len() {
        let head = bytes.get(at..at + RECORD_HEADER).ok_or(ChunkError::Truncated(at))?;
        let t_ms = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let kind = Kind::from_u8(head[4]).ok_or(ChunkError::Kind(at))?;
        let len = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
        let len = usize::try_from(len).map_err(|_| ChunkError::Truncated(at))?;
        let start = at + RECORD_HEADER;
        let payload = start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .ok_or(ChunkError::Truncated(at))?;
        if t_ms < last {
            return Err(ChunkError::Time(at));
        }
        if kind == Kind::Key && key_parts(payload).is_none() {
            return Err(ChunkError::Key(at));
        }
        last = t_ms;
        out.push(Record { t_ms, kind, offset: at, payload });
        at = start + len;
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
        let mut c = Vec::new();
        chunk_header(&mut c);
        for (t, k, p) in records {
            write_record(&mut c, *t, *k, p);
        }
        c
    }

    #[test]
    fn a_chunk_is_read_back_with_its_key_frames() {
        let mut key = Vec::new();
        write_key_part(&mut key, &[0x02, 1, 0, 1, 0]);
        write_key_part(&mut key, &[0x10; 14]);
        let c = chunk(&[(5, Kind::Message, b"ab"), (9, Kind::Key, &key), (9, Kind::Input, b"k")]);
        let recs = parse_chunk(&c, 3).expect("valid");
        assert_eq!(recs.len(), 3);
        assert_eq!((recs[1].kind, recs[1].payload), (Kind::Key, key.as_slice()));
        assert_eq!(key_parts(recs[1].payload).expect("parts").len(), 2);
        let s = summarise(&recs);
        assert_eq!((s.t_first, s.t_last, s.records), (5, 9, 3));
        assert_eq!(s.keys, vec![(9, recs[1].offset)]);
        assert_eq!(&c[s.keys[0].1 + RECORD_HEADER..][..key.len()], key.as_slice());
    }

    #[test]
    fn a_bad_chunk_is_refused_with_where() {
        let good = chunk(&[(5, Kind::Message, b"ab")]);
        assert_eq!(parse_chunk(&good[..good.len() - 1], 0), Err(ChunkError::Truncated(5)));
        assert_eq!(parse_chunk(&good, 6), Err(ChunkError::Time(5)), "before the last chunk");
        assert_eq!(parse_chunk(b"ATRC\x01", 0), Err(ChunkError::Size));
        assert_eq!(parse_chunk(b"ATRC\x02xxxxxxxxx", 0), Err(ChunkError::Header));
        let mut bad_kind = good.clone();
        bad_kind[9] = 7;
        assert_eq!(parse_chunk(&bad_kind, 0), Err(ChunkError::Kind(5)));
        let back = chunk(&[(5, Kind::Message, b"a"), (4, Kind::Message, b"b")]);
        assert_eq!(parse_chunk(&back, 0), Err(ChunkError::Time(15)));
        for key in [&b""[..], &[1, 0, 0, 0][..], &[0, 0, 0, 0][..], &[9, 0, 0, 0, 1][..]] {
            let c = chunk(&[(1, Kind::Key, key)]);
            assert_eq!(parse_chunk(&c, 0), Err(ChunkError::Key(5)), "{key:?}");
        }
        let huge = [MAGIC.as_slice(), &[VERSION], &[0xff; 4], &[0], &[0xff; 4]].concat();
        assert_eq!(parse_chunk(&huge, 0), Err(ChunkError::Truncated(5)), "a length past the end");
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
