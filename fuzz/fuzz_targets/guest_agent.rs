//! The guest agent protocol, from both ends: a hostile guest's byte stream cut into lines
//! (bounded, however it is chunked) and each line read as an `AgentMessage`; and the host's
//! lines as the agent in the guest reads them (`HostMessage`, its user checked). What parses
//! serializes back to the same message.
#![no_main]

use atrium_protocol::agent::{AgentMessage, HostMessage, Line, LineReader, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte cuts the stream into reads of 1-256 bytes, as a socket might. The second
    // sets the line limit: the protocol's, or (so that the fuzzer's short inputs reach it) a
    // multiple of 64 bytes.
    let [chunk, limit, stream @ ..] = data else { return };
    let chunk = usize::from(*chunk) + 1;
    let limit = if *limit == 0 { MAX_LINE } else { usize::from(*limit) * 64 };
    let mut reader = LineReader::with_limit(limit);
    let mut lines = Vec::new();
    for piece in stream.chunks(chunk) {
        lines.extend(reader.push(piece));
    }
    // How the bytes arrive changes nothing about the lines they make.
    assert_eq!(
        lines,
        LineReader::with_limit(limit).push(stream),
        "lines do not depend on the reads"
    );
    for line in lines {
        let Line::Complete(line) = line else { continue };
        assert!(line.len() < limit, "a line is bounded");
        assert!(!line.contains(&b'\n'));
        if let Ok(msg) = serde_json::from_slice::<AgentMessage>(&line) {
            let again: AgentMessage = serde_json::from_slice(&serde_json::to_vec(&msg).unwrap())
                .expect("a message reads back");
            assert_eq!(again, msg);
        }
        if let Ok(msg) = serde_json::from_slice::<HostMessage>(&line) {
            if let HostMessage::Session { user } = &msg {
                let _ = user.validate();
            }
            let again: HostMessage = serde_json::from_slice(&serde_json::to_vec(&msg).unwrap())
                .expect("a message reads back");
            assert_eq!(again, msg);
        }
    }
});
