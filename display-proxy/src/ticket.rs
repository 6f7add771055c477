//! Display tickets: EdDSA JWTs the broker signs, checked here against the broker's published
//! JWKS with no call back to the broker. Keys are cached, fetched again when an unknown key id
//! appears (rate-limited) and in the background every half `max_age`; each `jti` is accepted
//! once by a display proxy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atrium_protocol::signed;
use atrium_protocol::ticket::{
    DISPLAY_AUDIENCE, DISPLAY_AUDIENCE_RECORDED, DISPLAY_AUDIENCE_WATERMARKED, DisplayClaims,
    ISSUER, MAX_TICKET_TTL_SECS,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use thiserror::Error;
use tokio::sync::RwLock;

/// Longest ticket accepted, in bytes.
pub const MAX_TICKET_LEN: usize = 8 * 1024;
/// Longest `jti`.
const MAX_JTI_LEN: usize = 128;

/// Why a ticket was refused. The message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TicketError {
    #[error("no ticket")]
    Missing,
    #[error("the ticket is not a well-formed JWT")]
    Malformed,
    #[error("ticket algorithm {0:?} is not accepted (EdDSA only)")]
    Algorithm(String),
    #[error("the ticket names no key id")]
    NoKeyId,
    #[error("the ticket is signed with an unknown key")]
    UnknownKey,
    #[error("the ticket signature is invalid")]
    BadSignature,
    #[error("the ticket has expired")]
    Expired,
    #[error("the ticket is not valid yet")]
    NotYetValid,
    #[error("the ticket is not for the display service")]
    Audience,
    #[error("the ticket was not issued by the broker")]
    Issuer,
    #[error("the ticket claims a lifetime over {MAX_TICKET_TTL_SECS} s")]
    TooLong,
    #[error("invalid ticket claims: {0}")]
    Claims(String),
    #[error("the ticket was already used")]
    Replayed,
    #[error("the ticket was issued before this display service started; ask for a new one")]
    BeforeStart,
    #[error("the ticket is for another VM")]
    WrongVm,
    #[error("the ticket is for another node")]
    WrongNode,
    #[error("too many tickets in flight; try again")]
    Busy,
    #[error("the broker's signing keys are unavailable")]
    KeysUnavailable,
}

impl TicketError {
    /// Refusals that mean "this ticket is fine but not for this" (HTTP 403) rather than
    /// "no valid ticket" (401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::WrongVm | Self::WrongNode)
    }
}

/// Settings of a [`TicketVerifier`].
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// `{broker_url}/.well-known/jwks.json`.
    pub jwks_url: String,
    /// When set, tickets must name this node.
    pub node_id: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Least time between two JWKS fetches caused by unknown key ids.
    pub min_refresh: Duration,
    /// The keys are fetched again every half of this (in the background).
    pub max_age: Duration,
    /// Most `jti`s remembered at once (tickets admitted per ticket lifetime).
    pub max_jti: usize,
    /// The CA bundle that issued the broker's certificate, for an `https://` broker (default:
    /// the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
}

impl VerifierConfig {
    pub fn new(broker_url: &str) -> Self {
        Self {
            jwks_url: format!("{}/.well-known/jwks.json", broker_url.trim_end_matches('/')),
            node_id: None,
            leeway_secs: 5,
            min_refresh: Duration::from_secs(10),
            max_age: Duration::from_secs(300),
            max_jti: 100_000,
            ca_file: None,
        }
    }
}

#[derive(Debug, Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    attempted: Option<Instant>,
}

/// While no key is known, `/readyz` may fetch the key set this often (a probe every second or
/// so brings the service up as soon as the broker answers).
const READY_REFRESH: Duration = Duration::from_secs(1);

impl KeyCache {
    /// Whether a fetch may start: none was tried within `min`.
    fn may_fetch(&self, min: Duration) -> bool {
        self.attempted.is_none_or(|t| t.elapsed() >= min)
    }
}

/// Remembers used `jti`s until their ticket expires.
#[derive(Debug, Default)]
struct JtiStore {
    seen: HashMap<String, u64>,
}

impl JtiStore {
    fn insert(&mut self, jti: &str, expires: u64, now: u64, max: usize) -> Result<(), TicketError> {
        if self.seen.contains_key(jti) {
            return Err(TicketError::Replayed);
        }
        if self.seen.len() >= max {
            self.seen.retain(|_, &mut exp| exp >= now);
            if self.seen.len() >= max {
                return Err(TicketError::Busy);
            }
        }
        self.seen.insert(jti.to_owned(), expires);
        Ok(())
    }
}

/// Checks display tickets.
#[derive(Debug)]
pub struct TicketVerifier {
    cfg: VerifierConfig,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// One fetch at a time, made without holding `cache`: checks with known keys never wait
    /// for the broker.
    fetching: tokio::sync::Mutex<()>,
    jti: Mutex<JtiStore>,
    /// When this verifier began (seconds since the epoch): spent `jti`s are remembered in
    /// memory only, so a ticket issued before then may have been used already.
    started: u64,
}

/// Largest JWKS answer read (a key set is a few hundred bytes a key).
const MAX_JWKS_BYTES: usize = 256 * 1024;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TicketVerifier {
    pub fn new(cfg: VerifierConfig) -> Self {
        let http = match atrium_door::client::http_client(cfg.ca_file.as_deref()) {
            Ok(b) => b,
            Err(e) => {
                // Configurations check their CA file before this; an unreadable one here
                // leaves the system's roots, and fetches say why they fail.
                tracing::error!(error = %e, "the broker's CA bundle; using the system's roots");
                reqwest::Client::builder()
            }
        }
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client with a checked TLS configuration");
        Self {
            cfg,
            http,
            cache: RwLock::new(KeyCache::default()),
            fetching: tokio::sync::Mutex::new(()),
            jti: Mutex::new(JtiStore::default()),
            started: now_secs(),
        }
    }

    /// Fetches the keys again every half `max_age`, so that retired keys leave and new ones
    /// arrive without a check waiting; runs until the service ends. A failed fetch keeps the
    /// keys in hand and is logged.
    pub async fn keep_fresh(&self) {
        let mut tick = tokio::time::interval((self.cfg.max_age / 2).max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cannot refresh the broker's signing keys; the ones in hand stay");
            }
        }
    }

    /// Fetches the JWKS now (at start-up); the error says why it failed.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _one = self.fetching.lock().await;
        self.fetch_and_store().await
    }

    /// Fetches the key set and stores it; the caller holds `fetching`.
    async fn fetch_and_store(&self) -> Result<usize, String> {
        self.cache.write().await.attempted = Some(Instant::now());
        let keys = self.fetch().await?;
        tracing::info!(keys = keys.len(), url = %self.cfg.jwks_url, "fetched the broker's signing keys");
        let n = keys.len();
        self.cache.write().await.keys = keys;
        Ok(n)
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let mut resp = self.http.get(&self.cfg.jwks_url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", self.cfg.jwks_url, resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "{} sent a key set over {MAX_JWKS_BYTES} bytes",
                    self.cfg.jwks_url
                ));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }

    /// The key for `kid`; the JWKS is fetched when the key is unknown (at most once per
    /// `min_refresh`). A known key is used at once, however old the cache: a slow broker never
    /// holds up a check, and [`Self::keep_fresh`] refreshes the cache in the background.
    async fn key(&self, kid: &str) -> Result<DecodingKey, TicketError> {
        let state = |cache: &KeyCache| {
            (cache.keys.get(kid).cloned(), cache.may_fetch(self.cfg.min_refresh))
        };
        if let (Some(k), _) = state(&*self.cache.read().await) {
            return Ok(k);
        }
        let _one = self.fetching.lock().await;
        // Another check may have fetched while this one waited.
        let (known, may_fetch) = state(&*self.cache.read().await);
        if let Some(k) = known {
            return Ok(k);
        }
        if may_fetch && let Err(e) = self.fetch_and_store().await {
            tracing::warn!(error = %e, "cannot fetch the broker's signing keys");
            if self.cache.read().await.keys.is_empty() {
                return Err(TicketError::KeysUnavailable);
            }
        }
        self.cache.read().await.keys.get(kid).cloned().ok_or(TicketError::UnknownKey)
    }

    /// Checks `token` for a connection to `vm`; on success its `jti` is spent. This is the
    /// display proxy's check: everything [`Self::check`] does, then the node, the service's
    /// start and single use.
    pub async fn verify(&self, token: &str, vm: &str) -> Result<DisplayClaims, TicketError> {
        let c = self.check(token, vm).await?;
        if let Some(node) = &self.cfg.node_id
            && &c.node != node
        {
            return Err(TicketError::WrongNode);
        }
        if c.iat + self.cfg.leeway_secs < self.started {
            return Err(TicketError::BeforeStart);
        }
        let forget_after = c.exp + self.cfg.leeway_secs;
        self.jti.lock().expect("jti lock").insert(
            &c.jti,
            forget_after,
            now_secs(),
            self.cfg.max_jti,
        )?;
        Ok(c)
    }

    /// Checks `token` for a connection to `vm` and spends nothing: algorithm, key, signature,
    /// issuer, audience, times, lifetime, VM and `jti` format. A display gateway checks this
    /// much at the edge and keeps no state; the proxy behind it spends the `jti`.
    pub async fn check(&self, token: &str, vm: &str) -> Result<DisplayClaims, TicketError> {
        if token.is_empty() {
            return Err(TicketError::Missing);
        }
        if token.len() > MAX_TICKET_LEN {
            return Err(TicketError::Malformed);
        }
        let alg = header_alg(token)?;
        if alg != "EdDSA" {
            return Err(TicketError::Algorithm(alg));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TicketError::Malformed)?;
        let kid = header.kid.ok_or(TicketError::NoKeyId)?;
        let key = self.key(&kid).await?;

        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[
            DISPLAY_AUDIENCE,
            DISPLAY_AUDIENCE_WATERMARKED,
            DISPLAY_AUDIENCE_RECORDED,
        ]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = self.cfg.leeway_secs;
        let data =
            jsonwebtoken::decode::<DisplayClaims>(token, &key, &v).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TicketError::BadSignature,
                ErrorKind::ExpiredSignature => TicketError::Expired,
                ErrorKind::ImmatureSignature => TicketError::NotYetValid,
                ErrorKind::InvalidAudience => TicketError::Audience,
                ErrorKind::InvalidIssuer => TicketError::Issuer,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    TicketError::Algorithm(format!("{:?}", header.alg))
                }
                ErrorKind::MissingRequiredClaim(c) => TicketError::Claims(format!("missing {c}")),
                ErrorKind::InvalidClaimFormat(c) => TicketError::Claims(format!("bad {c}")),
                ErrorKind::Json(e) => TicketError::Claims(e.to_string()),
                _ => TicketError::Malformed,
            })?;
        let c = data.claims;
        if c.exp.saturating_sub(c.iat) > MAX_TICKET_TTL_SECS
            || c.exp > now_secs() + MAX_TICKET_TTL_SECS + self.cfg.leeway_secs
        {
            return Err(TicketError::TooLong);
        }
        if c.vm != vm {
            return Err(TicketError::WrongVm);
        }
        if c.jti.is_empty() || c.jti.len() > MAX_JTI_LEN {
            return Err(TicketError::Claims("bad jti".into()));
        }
        if let Some(w) = &c.watermark {
            w.validate().map_err(TicketError::Claims)?;
        }
        if let Some(r) = &c.record {
            r.validate().map_err(TicketError::Claims)?;
        }
        // A watermarked or recorded ticket names its own audience, which a proxy that cannot
        // draw watermarks or record refuses; here they must agree.
        if c.aud != DisplayClaims::audience(c.watermark.is_some(), c.record.is_some()) {
            return Err(TicketError::Claims(
                "the audience does not match the watermark or recording".into(),
            ));
        }
        Ok(c)
    }

    /// Checks that a call here was signed by the broker, for `aud` (this node) and for this
    /// request ([`atrium_protocol::signed`]), with the same keys tickets are checked with.
    pub async fn verify_request(
        &self,
        authorization: Option<&str>,
        req: &signed::Request<'_>,
        aud: &str,
    ) -> Result<signed::RequestClaims, signed::RequestAuthError> {
        let token = signed::bearer(authorization)?;
        let kid = signed::peek(token)?.kid.ok_or(signed::RequestAuthError::UnknownKey)?;
        let key = self.key(&kid).await.map_err(|_| signed::RequestAuthError::UnknownKey)?;
        let claims = signed::verify(token, &key, aud, req, now_secs(), signed::CLOCK_LEEWAY_SECS)?;
        if claims.sub != ISSUER {
            return Err(signed::RequestAuthError::Claims("not signed by the broker".into()));
        }
        Ok(claims)
    }

    /// Whether the broker's keys are loaded; when they are not, fetches them first (at most
    /// once a second, however often this is asked).
    pub async fn ready(&self) -> bool {
        if !self.cache.read().await.keys.is_empty() {
            return true;
        }
        let _one = self.fetching.lock().await;
        let may_fetch = self.cache.read().await.may_fetch(READY_REFRESH);
        if may_fetch && let Err(e) = self.fetch_and_store().await {
            tracing::debug!(error = %e, "the broker's signing keys are still unavailable");
        }
        !self.cache.read().await.keys.is_empty()
    }
}

/// The `alg` of a JWT header, read before anything else so `none` and HMAC are refused by
/// name.
fn header_alg(token: &str) -> Result<String, TicketError> {
    let head = token.split('.').next().ok_or(TicketError::Malformed)?;
    if token.split('.').count() != 3 {
        return Err(TicketError::Malformed);
    }
    let json = URL_SAFE_NO_PAD.decode(head).map_err(|_| TicketError::Malformed)?;
    let v: serde_json::Value = serde_json::from_slice(&json).map_err(|_| TicketError::Malformed)?;
    v.get("alg").and_then(|a| a.as_str()).map(str::to_owned).ok_or(TicketError::Malformed)
}

/// The Ed25519 keys of a JWKS document, by key id. Other keys are skipped.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("JWKS is not valid: {e}"))?;
    let mut out = HashMap::new();
    for v in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else { continue };
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        let AlgorithmParameters::OctetKeyPair(p) = &jwk.algorithm else { continue };
        if p.curve != EllipticCurve::Ed25519 {
            continue;
        }
        // The verifier slices 32 bytes out of the key: check the length first.
        if URL_SAFE_NO_PAD.decode(&p.x).map(|b| b.len()) != Ok(32) {
            tracing::warn!(%kid, "skipping a JWKS key whose x is not 32 bytes");
            continue;
        }
        if let Ok(k) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid, k);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
