//! Signed requests: how one Atrium service proves to another who sent an HTTP request.
//!
//! A request carries `Authorization: Bearer <token>`, where the token is a short-lived JWT
//! (EdDSA only) whose claims bind it to this one request: the method (`htm`), the path and
//! query (`htu`) and the SHA-256 of the body (`bh`), plus who signed it (`sub`) and for whom it
//! is meant (`aud`). A token seen on the wire opens nothing else: not another path, not another
//! body, not another node, and not after a minute.
//!
//! Who signs with what:
//! - a node signs its heartbeats with its own key ([`NodeKey`]; the private key never leaves
//!   the node), for [`BROKER_AUDIENCE`]; the broker checks them with the public key the node
//!   enrolled;
//! - the broker signs its calls to a node, and to the display proxy beside it, with its token
//!   signing keys, for [`node_audience`] of that node.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header, Validation};
pub use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The `aud` of requests to the broker (node heartbeats).
pub const BROKER_AUDIENCE: &str = "atrium-broker";
/// How long a signed request stays valid.
pub const REQUEST_TTL_SECS: u64 = 60;
/// Clock difference between two hosts that a signed request tolerates (keep them on NTP).
pub const CLOCK_LEEWAY_SECS: u64 = 30;
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest `sub` (a node id or "broker").
const MAX_SUBJECT_LEN: usize = 128;

/// The `aud` of requests to one node: its agent's API and its display proxy.
pub fn node_audience(node_id: &str) -> String {
    format!("atrium-node:{node_id}")
}

/// Why a signed request was refused. The message is safe to answer with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestAuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is not signed with EdDSA")]
    Algorithm,
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired or is not valid yet")]
    Expired,
    #[error("the token is for another service")]
    Audience,
    #[error("the token lives longer than {REQUEST_TTL_SECS} s")]
    TooLong,
    #[error("the token was signed for another request")]
    OtherRequest,
    #[error("invalid token claims: {0}")]
    Claims(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The claims of a signed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestClaims {
    pub iss: String,
    /// Who signed: a node id, or the broker.
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    /// Random: tells two otherwise equal requests apart (a receiver may remember them).
    pub jti: String,
    /// The HTTP method, upper case.
    pub htm: String,
    /// The path and query, as sent.
    pub htu: String,
    /// SHA-256 of the body, base64url.
    pub bh: String,
}

/// The request a token is for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query (`/api/v1/vms/x?wait=1`), never the scheme or host: proxies and TLS
    /// terminators rewrite those.
    pub path_and_query: &'a str,
    pub body: &'a [u8],
}

/// SHA-256 of a body, base64url without padding.
pub fn body_hash(body: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(body))
}

/// The path and query of a URL (`http://h:1/a?b` gives `/a?b`).
pub fn path_and_query(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// Signs `req` as `sub` for `aud`, valid for [`REQUEST_TTL_SECS`] from `now` (seconds since
/// the epoch).
pub fn sign(
    key: &EncodingKey,
    kid: Option<&str>,
    iss: &str,
    sub: &str,
    aud: &str,
    req: &Request<'_>,
    now: u64,
) -> Result<String, RequestAuthError> {
    let mut jti = [0u8; 16];
    random_fill(&mut jti);
    let claims = RequestClaims {
        iss: iss.to_owned(),
        sub: sub.to_owned(),
        aud: aud.to_owned(),
        iat: now,
        exp: now + REQUEST_TTL_SECS,
        jti: URL_SAFE_NO_PAD.encode(jti),
        htm: req.method.to_ascii_uppercase(),
        htu: req.path_and_query.to_owned(),
        bh: body_hash(req.body),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| RequestAuthError::Sign(e.to_string()))
}

/// Fills `buf` from the operating system's random source (for keys, nonces and tokens).
pub fn random_fill(buf: &mut [u8]) {
    use rand::RngCore;
    rand::rngs::OsRng.fill_bytes(buf);
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, RequestAuthError> {
    let token = header.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).unwrap_or("");
    if token.is_empty() {
        return Err(RequestAuthError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(RequestAuthError::Malformed);
    }
    Ok(token)
}

/// What a token says about itself before its signature is checked: who signed it (`sub`) and
/// with which key (`kid`), so the receiver can pick the key. Trust nothing else in it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub sub: String,
    pub kid: Option<String>,
}

/// Reads `sub` and `kid` from a token without checking it (see [`Unverified`]).
pub fn peek(token: &str) -> Result<Unverified, RequestAuthError> {
    if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
        return Err(RequestAuthError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| RequestAuthError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(RequestAuthError::Algorithm);
    }
    #[derive(Deserialize)]
    struct Sub {
        sub: String,
    }
    let payload = token.split('.').nth(1).ok_or(RequestAuthError::Malformed)?;
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| RequestAuthError::Malformed)?;
    let sub: Sub = serde_json::from_slice(&json).map_err(|_| RequestAuthError::Malformed)?;
    if sub.sub.is_empty() || sub.sub.len() > MAX_SUBJECT_LEN {
        return Err(RequestAuthError::Claims("bad sub".into()));
    }
    Ok(Unverified { sub: sub.sub, kid: header.kid })
}

/// Checks a token for `req`: EdDSA, the signature under `key`, `aud`, the times (with
/// `leeway` seconds of clock skew), a lifetime of at most [`REQUEST_TTL_SECS`], and that it
/// was signed for this method, path, query and body.
pub fn verify(
    token: &str,
    key: &DecodingKey,
    aud: &str,
    req: &Request<'_>,
    now: u64,
    leeway: u64,
) -> Result<RequestClaims, RequestAuthError> {
    let c = verify_head(token, key, aud, req.method, req.path_and_query, now, leeway)?;
    c.check_body(req.body)?;
    Ok(c)
}

/// Everything [`verify`] checks but the body: what a receiver checks before it reads a body,
/// so that nobody without a valid signature makes it read one. Then [`RequestClaims::check_body`].
pub fn verify_head(
    token: &str,
    key: &DecodingKey,
    aud: &str,
    method: &str,
    path_and_query: &str,
    now: u64,
    leeway: u64,
) -> Result<RequestClaims, RequestAuthError> {
    use jsonwebtoken::errors::ErrorKind;
    peek(token)?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    // Times are checked below against `now`, so tests and callers agree on one clock.
    v.validate_exp = false;
    let c = jsonwebtoken::decode::<RequestClaims>(token, key, &v)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => RequestAuthError::BadSignature,
            ErrorKind::InvalidAudience => RequestAuthError::Audience,
            ErrorKind::InvalidAlgorithm => RequestAuthError::Algorithm,
            ErrorKind::Json(e) => RequestAuthError::Claims(e.to_string()),
            ErrorKind::MissingRequiredClaim(c) => RequestAuthError::Claims(format!("missing {c}")),
            _ => RequestAuthError::Malformed,
        })?
        .claims;
    if c.exp.saturating_sub(c.iat) > REQUEST_TTL_SECS {
        return Err(RequestAuthError::TooLong);
    }
    if now > c.exp + leeway || c.iat > now + leeway {
        return Err(RequestAuthError::Expired);
    }
    if !c.htm.eq_ignore_ascii_case(method) || c.htu != path_and_query {
        return Err(RequestAuthError::OtherRequest);
    }
    if c.jti.is_empty() || c.jti.len() > 64 {
        return Err(RequestAuthError::Claims("bad jti".into()));
    }
    Ok(c)
}

impl RequestClaims {
    /// Whether `body` is the body these claims were signed for.
    pub fn check_body(&self, body: &[u8]) -> Result<(), RequestAuthError> {
        if self.bh == body_hash(body) { Ok(()) } else { Err(RequestAuthError::OtherRequest) }
    }
}

/// Why a node key could not be loaded or made.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a PKCS#8 Ed25519 private key")]
    NotAKey { path: String },
}

/// A node's own Ed25519 key pair. Made on the node at its first start and kept there (a file of
/// mode 0600); only its public half ([`Self::public`]) is ever sent anywhere.
pub struct NodeKey {
    encoding: EncodingKey,
    public: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Loads the key at `path`, making one (mode 0600, in a folder of mode 0700) when there is
    /// none.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyFileError> {
        use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |source| KeyFileError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
                    .map_err(|_| KeyFileError::NotAKey { path: path.display().to_string() })?;
                return Ok(Self::from_signing_key(&key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        }
        let key = Self::generate_signing_key();
        let pem = key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        // Written aside and renamed, so a crash never leaves half a key.
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(Self::from_signing_key(&key))
    }

    /// A key that lives in memory only (tests, benchmarks).
    pub fn ephemeral() -> Self {
        Self::from_signing_key(&Self::generate_signing_key())
    }

    fn generate_signing_key() -> ed25519_dalek::SigningKey {
        let mut seed = [0u8; 32];
        random_fill(&mut seed);
        ed25519_dalek::SigningKey::from_bytes(&seed)
    }

    fn from_signing_key(key: &ed25519_dalek::SigningKey) -> Self {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        // A PKCS#8 v1 document (no public key inside), the form jsonwebtoken takes.
        let der =
            ed25519_dalek::pkcs8::KeypairBytes { secret_key: key.to_bytes(), public_key: None }
                .to_pkcs8_der()
                .expect("an Ed25519 key encodes");
        Self {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            public: URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
        }
    }

    /// The private key, to sign other claims with it (tests standing in for the broker).
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The public key: 32 bytes, base64url (a JWK's `x`).
    pub fn public(&self) -> &str {
        &self.public
    }

    /// Signs `req` as node `node_id` for `aud`.
    pub fn sign(
        &self,
        node_id: &str,
        aud: &str,
        req: &Request<'_>,
        now: u64,
    ) -> Result<String, RequestAuthError> {
        sign(&self.encoding, None, node_id, node_id, aud, req, now)
    }
}

/// The key that checks a node's requests, from the public key it enrolled with (see
/// [`NodeKey::public`]).
pub fn node_public_key(x: &str) -> Result<DecodingKey, RequestAuthError> {
    let raw = URL_SAFE_NO_PAD.decode(x).map_err(|_| RequestAuthError::UnknownKey)?;
    if raw.len() != 32
        || ed25519_dalek::VerifyingKey::from_bytes(&raw.try_into().expect("32")).is_err()
    {
        return Err(RequestAuthError::UnknownKey);
    }
    DecodingKey::from_ed_components(x).map_err(|_| RequestAuthError::UnknownKey)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn req(body: &[u8]) -> Request<'_> {
        Request { method: "POST", path_and_query: "/api/v1/nodes/heartbeat", body }
    }

    #[test]
    fn a_signed_request_verifies_only_as_itself() {
        let key = NodeKey::ephemeral();
        let public = node_public_key(key.public()).unwrap();
        let token = key.sign("node-1", BROKER_AUDIENCE, &req(b"{}"), NOW).unwrap();
        assert_eq!(peek(&token).unwrap().sub, "node-1");
        let c = verify(&token, &public, BROKER_AUDIENCE, &req(b"{}"), NOW + 30, 5).unwrap();
        assert_eq!((c.sub.as_str(), c.htm.as_str()), ("node-1", "POST"));

        let other_body = verify(&token, &public, BROKER_AUDIENCE, &req(b"{ }"), NOW, 5);
        assert_eq!(other_body, Err(RequestAuthError::OtherRequest));
        let other_path = Request { path_and_query: "/api/v1/nodes/heartbeat?x", ..req(b"{}") };
        assert_eq!(
            verify(&token, &public, BROKER_AUDIENCE, &other_path, NOW, 5),
            Err(RequestAuthError::OtherRequest)
        );
        let other_method = Request { method: "DELETE", ..req(b"{}") };
        assert_eq!(
            verify(&token, &public, BROKER_AUDIENCE, &other_method, NOW, 5),
            Err(RequestAuthError::OtherRequest)
        );
        assert_eq!(
            verify(&token, &public, &node_audience("node-1"), &req(b"{}"), NOW, 5),
            Err(RequestAuthError::Audience)
        );
        assert_eq!(
            verify(&token, &public, BROKER_AUDIENCE, &req(b"{}"), NOW + REQUEST_TTL_SECS + 6, 5),
            Err(RequestAuthError::Expired)
        );
        assert_eq!(
            verify(&token, &public, BROKER_AUDIENCE, &req(b"{}"), NOW - 60, 5),
            Err(RequestAuthError::Expired)
        );
        // A signer whose clock is ahead by less than the leeway is believed; further, not.
        let ahead = CLOCK_LEEWAY_SECS - 1;
        assert!(
            verify(&token, &public, BROKER_AUDIENCE, &req(b"{}"), NOW - ahead, CLOCK_LEEWAY_SECS)
                .is_ok()
        );
        assert_eq!(
            verify(
                &token,
                &public,
                BROKER_AUDIENCE,
                &req(b"{}"),
                NOW - 2 * CLOCK_LEEWAY_SECS,
                CLOCK_LEEWAY_SECS
            ),
            Err(RequestAuthError::Expired)
        );
        let stranger = node_public_key(NodeKey::ephemeral().public()).unwrap();
        assert_eq!(
            verify(&token, &stranger, BROKER_AUDIENCE, &req(b"{}"), NOW, 5),
            Err(RequestAuthError::BadSignature)
        );
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let key = NodeKey::ephemeral();
        let public = node_public_key(key.public()).unwrap();
        let token = key.sign("node-1", BROKER_AUDIENCE, &req(b""), NOW).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        // The same claims under `alg: none` and under HMAC.
        for alg in ["none", "HS256"] {
            let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let forged = format!("{head}.{}.{}", parts[1], parts[2]);
            assert!(verify(&forged, &public, BROKER_AUDIENCE, &req(b""), NOW, 5).is_err(), "{alg}");
        }
        // A payload changed under the signature (another node's id).
        let claims = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let changed = String::from_utf8(claims).unwrap().replace("node-1", "node-2");
        let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(changed), parts[2]);
        assert_eq!(peek(&forged).unwrap().sub, "node-2");
        assert_eq!(
            verify(&forged, &public, BROKER_AUDIENCE, &req(b""), NOW, 5),
            Err(RequestAuthError::BadSignature)
        );
        // A lifetime longer than allowed, signed properly.
        let mut long = RequestClaims {
            iss: "x".into(),
            sub: "node-1".into(),
            aud: BROKER_AUDIENCE.into(),
            iat: NOW,
            exp: NOW + 3600,
            jti: "j".into(),
            htm: "POST".into(),
            htu: "/api/v1/nodes/heartbeat".into(),
            bh: body_hash(b""),
        };
        let long_token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &long, &key.encoding).unwrap();
        assert_eq!(
            verify(&long_token, &public, BROKER_AUDIENCE, &req(b""), NOW, 5),
            Err(RequestAuthError::TooLong)
        );
        long.exp = NOW + 10;
        long.jti = String::new();
        let no_jti =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &long, &key.encoding).unwrap();
        assert!(matches!(
            verify(&no_jti, &public, BROKER_AUDIENCE, &req(b""), NOW, 5),
            Err(RequestAuthError::Claims(_))
        ));
        for bad in ["", "a.b", "a.b.c", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(peek(bad).is_err(), "{bad:.10}");
        }
        assert_eq!(bearer(Some("Basic abc")), Err(RequestAuthError::Missing));
        assert_eq!(bearer(None), Err(RequestAuthError::Missing));
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert!(node_public_key("not-a-key").is_err());
        assert!(node_public_key(&URL_SAFE_NO_PAD.encode([0u8; 31])).is_err());
    }

    #[test]
    fn node_keys_are_kept_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("atrium-nodekey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("keys/node.pem");
        let a = NodeKey::load_or_generate(&path).unwrap();
        let b = NodeKey::load_or_generate(&path).unwrap();
        assert_eq!(a.public(), b.public());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(NodeKey::load_or_generate(&path), Err(KeyFileError::NotAKey { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn path_and_query_drops_scheme_and_host() {
        assert_eq!(path_and_query("http://h:1/a/b?c=d"), "/a/b?c=d");
        assert_eq!(path_and_query("https://h"), "/");
        assert_eq!(path_and_query("/x"), "/x");
    }
}
