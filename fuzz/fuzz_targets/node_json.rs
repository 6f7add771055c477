//! The JSON that crosses between broker and nodes: heartbeats and enrolments (read by the
//! broker from a node that may be stolen), the broker's replies and the node API's bodies
//! (read by the node), and the signed-request header every such call carries. What parses
//! and passes its checks serializes back to the same value.
#![no_main]

use atrium_protocol::node::{
    ClipboardPaste, EnrolReply, EnrolRequest, ErrorBody, HeartbeatReply, NodeHeartbeat,
    SessionRequest, VmInfo, VmSpec,
};
use std::sync::OnceLock;

use atrium_protocol::signed;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A broker key the fuzzed tokens claim to be signed with.
fn broker_key() -> &'static jsonwebtoken::DecodingKey {
    static KEY: OnceLock<jsonwebtoken::DecodingKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = signed::NodeKey::ephemeral();
        signed::node_public_key(key.public()).expect("an ephemeral key's public half")
    })
}

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let again: T = serde_json::from_slice(&serde_json::to_vec(&v).expect("serializes"))
            .expect("reads back");
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 10 {
        0 => round_trip::<NodeHeartbeat>(body),
        1 => round_trip::<HeartbeatReply>(body),
        2 => round_trip::<EnrolRequest>(body),
        3 => round_trip::<EnrolReply>(body),
        4 => round_trip::<SessionRequest>(body),
        5 => round_trip::<ClipboardPaste>(body),
        6 => round_trip::<VmInfo>(body),
        7 => round_trip::<ErrorBody>(body),
        8 => {
            round_trip::<VmSpec>(body);
            if let Ok(spec) = serde_json::from_slice::<VmSpec>(body)
                && spec.validate().is_ok()
            {
                round_trip::<VmSpec>(&serde_json::to_vec(&spec).expect("serializes"));
            }
        }
        _ => {
            // An `Authorization` header as a node's API or the broker's node endpoints read it:
            // bounded, and its claims readable only as the claims they are.
            let Ok(header) = std::str::from_utf8(body) else { return };
            if let Ok(token) = signed::bearer(Some(header)) {
                assert!(token.len() <= signed::MAX_TOKEN_LEN);
                if signed::peek(token).is_ok() {
                    let key = broker_key();
                    let _ = signed::verify_head(token, key, "atrium-node:n1", "POST", "/", 0, 30);
                }
            }
        }
    }
});
