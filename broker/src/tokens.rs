//! API tokens as text: `atrium_<id>_<secret>`, the id naming the stored token, the secret (32
//! random bytes) kept only as its SHA-256. Presented as `Authorization: Bearer`.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::secret::{Secret, constant_time_eq};

/// What every API token starts with (node requests, also Bearer, are JWTs: `eyJ...`).
pub const PREFIX: &str = "atrium_";

/// A new token: its id, its full text (shown once) and the hash to store.
pub fn mint() -> (String, Secret, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let secret = crate::auth::random_token();
    let hash = digest(&secret);
    (id.clone(), Secret::new(format!("{PREFIX}{id}_{secret}")), hash)
}

/// The id and secret of a presented token; `None` when it is not one.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let b64 = |s: &str| {
        s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (hex(id) && b64(secret)).then_some((id, secret))
}

/// Whether `secret` is the one whose hash is `stored`.
pub fn matches(secret: &str, stored: &str) -> bool {
    constant_time_eq(digest(secret).as_bytes(), stored.as_bytes())
}

fn digest(secret: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_anything_else_is_refused() {
        let (id, text, hash) = mint();
        let (pid, secret) = parse(text.expose()).unwrap();
        assert_eq!(pid, id);
        assert!(matches(secret, &hash));
        assert!(!matches(&secret.replace(|c: char| c != 'A', "A"), &hash));
        let (_, other, _) = mint();
        assert!(!matches(parse(other.expose()).unwrap().1, &hash));
        for bad in [
            "",
            "atrium_",
            "eyJhbGciOi.x.y",
            &format!("atrium_{id}"),
            &format!("atrium_{id}_short"),
            &format!("atrium_{}_{secret}", &id[1..]),
            &format!("atrium_{id}_{secret}x"),
            &format!("atrium_{id}_{}", secret.replace(|_: char| true, "%")),
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
