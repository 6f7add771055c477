//! Session recording chunks, as the broker reads them from a node (possibly stolen) and the
//! player reads them back: `parse_chunk` on any bytes, then what it accepted written again with
//! the proxy's own writer reads back as the same records; key frames split into whole messages.
#![no_main]

use atrium_protocol::recording::{ChunkWriter, Kind, key_parts, parse_chunk, summarise};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the time the chunk may not start before.
    let (not_before, chunk) = match data.split_first() {
        Some((b, rest)) => (u32::from(*b) * 1000, rest),
        None => return,
    };
    let Ok(records) = parse_chunk(chunk, not_before) else { return };
    let s = summarise(&records);
    assert!(s.t_first >= not_before && s.t_last >= s.t_first);
    assert!(records.windows(2).all(|w| w[0].t_ms <= w[1].t_ms && w[0].offset < w[1].offset));
    let mut again = ChunkWriter::new();
    for r in &records {
        if r.kind == Kind::Key {
            let parts = key_parts(r.payload).expect("a key frame the parser took");
            assert!(parts.iter().all(|p| !p.is_empty()));
        }
        again.record(r.t_ms, r.kind, r.payload);
    }
    let bytes = again.take();
    let back = parse_chunk(&bytes, not_before).expect("a chunk written again reads back");
    assert_eq!(back.len(), records.len());
    for (a, b) in back.iter().zip(&records) {
        assert_eq!((a.t_ms, a.kind, a.payload), (b.t_ms, b.kind, b.payload));
    }
});
