//! Waiting for the host's `sync`: after each hello (the agent started, or a host connected
//! again) the agent reads nothing as a message until the host's answer with the hello's nonce.
//!
//! What comes before it may be the rest of what the host sent an earlier agent or an earlier
//! connection: the middle of an uploaded file, whose bytes the user chose, made to look like
//! messages. The nonce is new at every hello and random, so no such bytes can hold the answer;
//! and the bytes are searched for it as they are, without reading lines or frames, so no framing
//! in them can hide it either.

use atrium_protocol::agent::{HostMessage, encode_line};

/// A new random nonce (the kernel's; the clock if that fails).
pub fn nonce() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(t.as_nanos() & u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id())
}

/// Bytes read while waiting for the host's `sync`.
#[derive(Debug)]
pub struct Unsynced {
    needle: Vec<u8>,
    tail: Vec<u8>,
}

impl Unsynced {
    pub fn new(nonce: u64) -> Self {
        Self { needle: encode_line(&HostMessage::Sync { nonce }), tail: Vec::new() }
    }

    /// Feeds bytes; once the `sync` line has come, the bytes after it (the host's, fresh).
    pub fn push(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.tail.extend_from_slice(data);
        if let Some(at) = self.tail.windows(self.needle.len()).position(|w| w == self.needle) {
            let rest = self.tail.split_off(at + self.needle.len());
            self.tail.clear();
            return Some(rest);
        }
        // Only what could still be the start of the line is kept.
        let keep = self.needle.len() - 1;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_protocol::agent::encode_data;

    #[test]
    fn nothing_counts_before_the_sync_whatever_it_looks_like() {
        // The rest of a file made to look like a frame header and messages, then the answer
        // split across reads, then what the host says.
        let mut stream = b"tail of a file\n=1 262144\n".to_vec();
        stream.extend(encode_line(&HostMessage::FileCommit { id: 1 }));
        stream.extend(encode_line(&HostMessage::Sync { nonce: 41 }));
        stream.extend(encode_line(&HostMessage::Sync { nonce: 42 }));
        stream.extend(encode_line(&HostMessage::Ping { id: 7 }));
        stream.extend(encode_data(3, b"x"));
        let mut u = Unsynced::new(42);
        let mut after: Option<Vec<u8>> = None;
        for piece in stream.chunks(5) {
            match &mut after {
                Some(rest) => rest.extend_from_slice(piece),
                None => after = u.push(piece),
            }
        }
        let mut want = encode_line(&HostMessage::Ping { id: 7 });
        want.extend(encode_data(3, b"x"));
        assert_eq!(after, Some(want));
    }

    #[test]
    fn what_is_kept_while_waiting_is_bounded() {
        let mut u = Unsynced::new(1);
        for _ in 0..1000 {
            assert_eq!(u.push(&[b'a'; 4096]), None);
        }
        assert!(u.tail.len() < 64);
        assert_ne!(nonce(), nonce(), "a new nonce each time");
    }
}
