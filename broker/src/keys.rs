//! Signing keys for session tokens and display tickets.
//!
//! Keys live as PKCS#8 PEM files (Ed25519) in one folder. When the
//! folder has none, an Ed25519 key is generated and stored with mode 0600.
//!
//! A key becomes active (signs) at its activation time: the number in its file name
//! (`signing-<seconds or milliseconds since 1970>.pem`), else the file's modification time. The
//! newest active key signs. A key whose time has not come is already published in
//! `/.well-known/jwks.json` and accepted, so every replica, gateway and display proxy knows it
//! before any token it signs reaches them: replicas sharing a key folder switch together. An
//! older key stays published and accepted until every token it could have signed has expired
//! (its successor's activation plus the longest token lifetime), so rotation
//! (`atrium-broker rotate-key [--activate-in SECS]`, then SIGHUP) never signs anyone out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("key folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Why a token was refused. Callers answer 401 without detail.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
}

struct PublicKey {
    kid: String,
    alg: Algorithm,
    decoding: DecodingKey,
    jwk: Jwk,
    /// Tokens signed by this key are accepted until then (`None`: the active key).
    valid_until: Option<SystemTime>,
}

struct Ring {
    active_kid: String,
    active_alg: Algorithm,
    encoding: EncodingKey,
    public: Vec<PublicKey>,
}

/// The broker's key ring.
pub struct Keys {
    dir: PathBuf,
    max_token_lifetime: Duration,
    ring: RwLock<Arc<Ring>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Keys {
    /// Loads the key folder, generating a first key when it holds none.
    pub fn load(dir: &Path, max_token_lifetime: Duration) -> Result<Self, KeyError> {
        let ring = load_ring(dir, max_token_lifetime)?;
        Ok(Self { dir: dir.to_owned(), max_token_lifetime, ring: RwLock::new(Arc::new(ring)) })
    }

    /// Re-reads the folder (after a rotation). On error the old keys stay.
    pub fn reload(&self) -> Result<(), KeyError> {
        let ring = load_ring(&self.dir, self.max_token_lifetime)?;
        let changed = ring.active_kid != self.ring().active_kid
            || ring.public.len() != self.ring().public.len();
        *self.ring.write().expect("key ring lock") = Arc::new(ring);
        if changed {
            tracing::info!(kid = %self.active_kid(), "signing keys reloaded");
        }
        Ok(())
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring.read().expect("key ring lock").clone()
    }

    pub fn active_kid(&self) -> String {
        self.ring().active_kid.clone()
    }

    /// Signs claims with the active key, naming it in `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let ring = self.ring();
        let mut header = Header::new(ring.active_alg);
        header.kid = Some(ring.active_kid.clone());
        jsonwebtoken::encode(&header, claims, &ring.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Verifies a token signed by one of our keys, for `audience`. Rejects `alg: none`, HMAC,
    /// a key/algorithm mismatch, expiry, a bad signature, and keys past retirement.
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let ring = self.ring();
        let key = ring.public.iter().find(|k| k.kid == kid).ok_or(TokenError::UnknownKey)?;
        if key.valid_until.is_some_and(|t| SystemTime::now() > t) {
            return Err(TokenError::UnknownKey);
        }
        if header.alg != key.alg {
            return Err(TokenError::Invalid("algorithm does not match the key".into()));
        }
        let mut v = Validation::new(key.alg);
        v.set_audience(&[audience]);
        v.set_issuer(&[atrium_protocol::ticket::ISSUER]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        v.leeway = 5;
        jsonwebtoken::decode::<T>(token, &key.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Signs a request to a node (or the display proxy beside it) as the broker, for `aud`
    /// ([`atrium_protocol::signed::node_audience`]).
    pub fn sign_request(
        &self,
        aud: &str,
        req: &atrium_protocol::signed::Request<'_>,
    ) -> Result<String, KeyError> {
        let ring = self.ring();
        atrium_protocol::signed::sign(
            &ring.encoding,
            Some(&ring.active_kid),
            atrium_protocol::ticket::ISSUER,
            atrium_protocol::ticket::ISSUER,
            aud,
            req,
            atrium_protocol::signed::now_secs(),
        )
        .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// The public keys as nodes take them with each heartbeat reply.
    pub fn node_keys(&self) -> Vec<atrium_protocol::node::BrokerKey> {
        self.jwks()
            .keys
            .iter()
            .filter_map(|k| match &k.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => {
                    Some(atrium_protocol::node::BrokerKey {
                        kid: k.common.key_id.clone()?,
                        x: p.x.clone(),
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// The public keys, as a JWKS document.
    pub fn jwks(&self) -> JwkSet {
        let now = SystemTime::now();
        JwkSet {
            keys: self
                .ring()
                .public
                .iter()
                .filter(|k| k.valid_until.is_none_or(|t| now <= t))
                .map(|k| k.jwk.clone())
                .collect(),
        }
    }
}

/// Writes a new Ed25519 key into `dir` (mode 0600), active from now; it signs from the next
/// load. Returns its path.
pub fn generate_key(dir: &Path) -> Result<PathBuf, KeyError> {
    generate_key_at(dir, SystemTime::now())
}

/// Writes a new Ed25519 key into `dir` (mode 0600) that becomes active at `active_from`
/// (named after it); until then it is published and accepted but does not sign.
pub fn generate_key_at(dir: &Path, active_from: SystemTime) -> Result<PathBuf, KeyError> {
    let io = |source| KeyError::Io { path: dir.to_owned(), source };
    create_private_dir(dir).map_err(io)?;
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let pem = ed25519_pkcs8(&seed)
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| KeyError::Sign(e.to_string()))?;
    let stamp =
        active_from.duration_since(SystemTime::UNIX_EPOCH).expect("clock after 1970").as_millis();
    let path = dir.join(format!("signing-{stamp}.pem"));
    let mut f =
        open_private(&path).map_err(|source| KeyError::Io { path: path.clone(), source })?;
    f.write_all(pem.as_bytes()).map_err(|source| KeyError::Io { path: path.clone(), source })?;
    f.sync_all().map_err(|source| KeyError::Io { path: path.clone(), source })?;
    Ok(path)
}

fn ed25519_pkcs8(secret: &[u8; 32]) -> ed25519_dalek::pkcs8::KeypairBytes {
    ed25519_dalek::pkcs8::KeypairBytes { secret_key: *secret, public_key: None }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

fn load_ring(dir: &Path, max_token_lifetime: Duration) -> Result<Ring, KeyError> {
    let io = |source| KeyError::Io { path: dir.to_owned(), source };
    create_private_dir(dir).map_err(io)?;
    let mut files = list_keys(dir)?;
    if files.is_empty() {
        let path = generate_key(dir)?;
        tracing::info!(path = %path.display(), "generated a new signing key");
        files = list_keys(dir)?;
    }
    // Newest first, by activation.
    let now = SystemTime::now();
    let mut files: Vec<(PathBuf, SystemTime)> = files
        .into_iter()
        .map(|(p, mtime)| {
            let at = activation(&p, mtime);
            (p, at)
        })
        .collect();
    files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    if files.iter().all(|(_, at)| *at > now) {
        // Nothing may sign yet: the oldest key signs rather than none.
        if let Some(last) = files.last_mut() {
            last.1 = now;
        }
    }
    let mut public = Vec::new();
    let mut active: Option<(String, Algorithm, EncodingKey)> = None;
    let mut successor_since: Option<SystemTime> = None;
    for (path, active_from) in &files {
        let pem =
            std::fs::read(path).map_err(|source| KeyError::Io { path: path.clone(), source })?;
        let bad = |message: String| KeyError::BadKey { path: path.clone(), message };
        let text = String::from_utf8_lossy(&pem);
        let (alg, encoding) = if let Ok(k) =
            <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(
                &text,
            ) {
            // Normalised to a PKCS#8 v1 document (no public key), the form jsonwebtoken takes.
            let der =
                ed25519_pkcs8(&k.to_bytes()).to_pkcs8_der().map_err(|e| bad(e.to_string()))?;
            (Algorithm::EdDSA, EncodingKey::from_ed_der(der.as_bytes()))
        } else if EncodingKey::from_ec_pem(&pem).is_ok() {
            // Display proxies verify EdDSA tickets only; an ES256 key would break every viewer.
            return Err(bad("an ECDSA key: Atrium signs with Ed25519 keys only".into()));
        } else {
            return Err(bad("not a PKCS#8 Ed25519 private key".into()));
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|e| bad(e.to_string()))?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(|e| bad(e.to_string()))?;
        let kid: String = kid.chars().take(16).collect();
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::EdDSA);
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| bad(e.to_string()))?;
        if *active_from > now {
            // Published and accepted ahead of its time; it signs from then on.
            public.push(PublicKey { kid, alg, decoding, jwk, valid_until: None });
            continue;
        }
        let valid_until = successor_since.map(|s| s + max_token_lifetime);
        if active.is_none() {
            active = Some((kid.clone(), alg, encoding));
        }
        if valid_until.is_none_or(|t| now <= t) {
            public.push(PublicKey { kid, alg, decoding, jwk, valid_until });
        } else {
            tracing::info!(path = %path.display(), "retired signing key is past its last token; it may be deleted");
        }
        successor_since = Some(*active_from);
    }
    let (active_kid, active_alg, encoding) = active.expect("at least one key");
    Ok(Ring { active_kid, active_alg, encoding, public })
}

/// When a key file's key may sign: the time in its name (`signing-<seconds or milliseconds
/// since 1970>.pem`), else the file's modification time.
fn activation(path: &Path, mtime: SystemTime) -> SystemTime {
    let n = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("signing-"))
        .and_then(|n| n.parse::<u64>().ok());
    match n {
        // Milliseconds from 2001 on; smaller numbers are seconds (or a plain counter: 1, 2...).
        Some(n) if n >= 1_000_000_000_000 => SystemTime::UNIX_EPOCH + Duration::from_millis(n),
        Some(n) => SystemTime::UNIX_EPOCH + Duration::from_secs(n),
        None => mtime,
    }
}

fn list_keys(dir: &Path) -> Result<Vec<(PathBuf, SystemTime)>, KeyError> {
    let io = |source| KeyError::Io { path: dir.to_owned(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pem") {
            let mtime = entry.metadata().and_then(|m| m.modified()).map_err(io)?;
            out.push((path, mtime));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Claims {
        iss: String,
        aud: String,
        sub: String,
        exp: u64,
    }

    fn claims(aud: &str, exp_in: i64) -> Claims {
        let now = jsonwebtoken::get_current_timestamp();
        Claims {
            iss: atrium_protocol::ticket::ISSUER.into(),
            aud: aud.into(),
            sub: "alice".into(),
            exp: now.saturating_add_signed(exp_in),
        }
    }

    fn tempdir() -> PathBuf {
        std::env::temp_dir().join(format!("atrium-keys-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn generates_a_private_key_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let keys = Keys::load(&dir, Duration::from_secs(60)).unwrap();
        let files = list_keys(&dir).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(std::fs::metadata(&files[0].0).unwrap().permissions().mode() & 0o777, 0o600);
        let t = keys.sign(&claims("atrium-broker", 60)).unwrap();
        let c: Claims = keys.verify(&t, "atrium-broker").unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(keys.jwks().keys.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_bad_tokens() {
        let dir = tempdir();
        let keys = Keys::load(&dir, Duration::from_secs(60)).unwrap();
        let good = keys.sign(&claims("atrium-broker", 60)).unwrap();
        // Wrong audience, expired.
        assert!(keys.verify::<Claims>(&good, "atrium-display").is_err());
        let old = keys.sign(&claims("atrium-broker", -120)).unwrap();
        assert!(matches!(
            keys.verify::<Claims>(&old, "atrium-broker"),
            Err(TokenError::Invalid(_))
        ));
        // Tampered payload.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(keys.verify::<Claims>(&parts.join("."), "atrium-broker").is_err());
        // alg: none, with our kid.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let h = b64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, keys.active_kid()));
        let p = b64.encode(serde_json::to_vec(&claims("atrium-broker", 60)).unwrap());
        assert!(keys.verify::<Claims>(&format!("{h}.{p}."), "atrium-broker").is_err());
        // HS256 signed with the public key bytes (algorithm confusion).
        let x = keys.jwks().keys[0].clone();
        let jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(okp) = &x.algorithm else {
            panic!()
        };
        let mut hdr = Header::new(Algorithm::HS256);
        hdr.kid = Some(keys.active_kid());
        let forged = jsonwebtoken::encode(
            &hdr,
            &claims("atrium-broker", 60),
            &EncodingKey::from_secret(okp.x.as_bytes()),
        )
        .unwrap();
        assert!(keys.verify::<Claims>(&forged, "atrium-broker").is_err());
        // Garbage.
        assert_eq!(
            keys.verify::<Claims>("not.a.token", "atrium-broker"),
            Err(TokenError::Malformed)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let dir = tempdir();
        let keys = Keys::load(&dir, Duration::from_secs(3600)).unwrap();
        let old_kid = keys.active_kid();
        let t = keys.sign(&claims("atrium-broker", 60)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        generate_key(&dir).unwrap();
        keys.reload().unwrap();
        assert_ne!(keys.active_kid(), old_kid);
        assert!(keys.verify::<Claims>(&t, "atrium-broker").is_ok());
        assert_eq!(keys.jwks().keys.len(), 2);
        // With no grace at all, the old key is retired at once.
        let strict = Keys::load(&dir, Duration::ZERO).unwrap();
        assert!(strict.verify::<Claims>(&t, "atrium-broker").is_err());
        assert_eq!(strict.jwks().keys.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_named_for_later_is_published_first_and_signs_from_then() {
        let dir = tempdir();
        let keys = Keys::load(&dir, Duration::from_secs(3600)).unwrap();
        let old_kid = keys.active_kid();
        let t = keys.sign(&claims("atrium-broker", 60)).unwrap();
        // A key for ten minutes from now: every replica learns it before it signs anything.
        generate_key_at(&dir, SystemTime::now() + Duration::from_secs(600)).unwrap();
        keys.reload().unwrap();
        assert_eq!(keys.active_kid(), old_kid, "not active before its time");
        assert_eq!(keys.jwks().keys.len(), 2, "published at once");
        assert!(keys.verify::<Claims>(&t, "atrium-broker").is_ok());
        // A key whose time has come (newer than the first, older than the future one): it
        // signs, and the first stays accepted.
        std::thread::sleep(Duration::from_millis(20));
        generate_key(&dir).unwrap();
        keys.reload().unwrap();
        assert_ne!(keys.active_kid(), old_kid);
        assert!(keys.verify::<Claims>(&t, "atrium-broker").is_ok());
        assert_eq!(keys.jwks().keys.len(), 3);
        std::fs::remove_dir_all(dir).unwrap();
        // Names as make-secrets.sh and operators write them.
        let t0 = SystemTime::UNIX_EPOCH;
        assert_eq!(
            activation(Path::new("signing-1.pem"), t0 + Duration::from_secs(9)),
            t0 + Duration::from_secs(1)
        );
        assert_eq!(
            activation(Path::new("/k/signing-1764600000.pem"), t0),
            t0 + Duration::from_secs(1_764_600_000)
        );
        assert_eq!(
            activation(Path::new("signing-1764600000123.pem"), t0),
            t0 + Duration::from_millis(1_764_600_000_123)
        );
        let mtime = t0 + Duration::from_secs(5);
        assert_eq!(activation(Path::new("key.pem"), mtime), mtime);
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempdir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.pem"), "garbage").unwrap();
        let e = Keys::load(&dir, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("x.pem"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
