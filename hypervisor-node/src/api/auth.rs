//! Who may call the node API: the broker, and nobody else. Every `/api/v1` call over TCP must
//! be a request the broker signed for this node ([`atrium_protocol::signed`]): the signature
//! under one of the broker's keys (they arrive with every heartbeat reply; an operator may trust
//! more in `broker.trusted_keys_file`), the audience `atrium-node:<this node>`, this method, path, query and
//! body, at most a minute old, and never seen before (each `jti` is spent once). A key stolen
//! from another node, or a call captured on the wire, opens nothing here.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use atrium_protocol::node::BrokerKey;
use atrium_protocol::signed::DecodingKey;
use atrium_protocol::signed::{self, RequestAuthError};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, AppState};

/// Largest request body read (a clipboard text, a VM spec).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most broker keys held (a ring has the active key and one or two retiring).
const MAX_KEYS: usize = 16;
/// Most `jti`s remembered (calls within a token's lifetime).
const MAX_SEEN: usize = 100_000;

/// The keys calls are checked with, by key id: the broker's (from its heartbeat replies) and
/// any the operator trusts besides (`broker.trusted_keys_file`).
#[derive(Default)]
pub struct BrokerKeys {
    broker: RwLock<HashMap<String, DecodingKey>>,
    trusted: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for BrokerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self.broker.read().expect("keys lock").keys().cloned().collect();
        let trusted: Vec<&String> = self.trusted.keys().collect();
        f.debug_struct("BrokerKeys").field("broker", &kids).field("trusted", &trusted).finish()
    }
}

fn decode(keys: &[BrokerKey]) -> HashMap<String, DecodingKey> {
    keys.iter()
        .take(MAX_KEYS)
        .filter(|k| !k.kid.is_empty() && k.kid.len() <= 128)
        .filter_map(|k| signed::node_public_key(&k.x).ok().map(|d| (k.kid.clone(), d)))
        .collect()
}

impl BrokerKeys {
    /// The broker's keys as heartbeats bring them, plus those in `trusted_file` (a JSON list of
    /// `{"kid": ..., "x": ...}`) when given.
    pub fn new(trusted_file: Option<&Path>) -> Result<Self, String> {
        let Some(path) = trusted_file else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let list: Vec<BrokerKey> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let trusted = decode(&list);
        if trusted.is_empty() {
            return Err(format!("{}: no Ed25519 key in it", path.display()));
        }
        Ok(Self { broker: RwLock::default(), trusted })
    }

    /// The keys a heartbeat reply named (a reply naming none it could read changes nothing).
    pub fn replace(&self, keys: &[BrokerKey]) {
        let new = decode(keys);
        if new.is_empty() {
            return;
        }
        let mut held = self.broker.write().expect("keys lock");
        if held.len() != new.len() || new.keys().any(|k| !held.contains_key(k)) {
            tracing::info!(keys = new.len(), "the broker's signing keys changed");
        }
        *held = new;
    }

    fn get(&self, kid: &str) -> Option<DecodingKey> {
        let broker = self.broker.read().expect("keys lock").get(kid).cloned();
        broker.or_else(|| self.trusted.get(kid).cloned())
    }
}

/// `jti`s already spent, until their token expires.
#[derive(Debug, Default)]
pub struct Spent(Mutex<HashMap<String, u64>>);

impl Spent {
    fn spend(&self, jti: &str, exp: u64, now: u64) -> Result<(), RequestAuthError> {
        let mut seen = self.0.lock().expect("jti lock");
        if seen.len() >= MAX_SEEN {
            seen.retain(|_, e| *e >= now);
        }
        if seen.contains_key(jti) {
            return Err(RequestAuthError::Claims("this request was already made".into()));
        }
        if seen.len() >= MAX_SEEN {
            return Err(RequestAuthError::Claims("too many requests in flight".into()));
        }
        seen.insert(jti.to_owned(), exp);
        Ok(())
    }
}

/// Checks that `req` was signed by the broker for this node, this method and this path, and
/// spends its id; the body is checked against the returned claims once it is read.
fn check_head(
    state: &AppState,
    req: &axum::http::request::Parts,
) -> Result<signed::RequestClaims, RequestAuthError> {
    let auth = req.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = signed::bearer(auth)?;
    let kid = signed::peek(token)?.kid.ok_or(RequestAuthError::UnknownKey)?;
    let key = state.keys.get(&kid).ok_or(RequestAuthError::UnknownKey)?;
    // Under `nest("/api/v1")` the URI has lost its prefix; what was signed is the original.
    let uri = req.extensions.get::<axum::extract::OriginalUri>().map_or(&req.uri, |o| &o.0);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let now = signed::now_secs();
    let aud = signed::node_audience(state.node.node_id());
    let claims = signed::verify_head(
        token,
        &key,
        &aud,
        req.method.as_str(),
        path,
        now,
        signed::CLOCK_LEEWAY_SECS,
    )?;
    if claims.sub != atrium_protocol::ticket::ISSUER {
        return Err(RequestAuthError::Claims("not signed by the broker".into()));
    }
    state.spent.spend(&claims.jti, claims.exp + signed::CLOCK_LEEWAY_SECS, now)?;
    Ok(claims)
}

/// Refuses every `/api/v1` request that is not signed by the broker for this node: the
/// signature is checked before the body is read (up to [`MAX_BODY`]), then the body's hash.
pub async fn require_broker(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let refused = |e: RequestAuthError, parts: &axum::http::request::Parts| {
        tracing::info!(method = %parts.method, path = %parts.uri.path(), reason = %e, "node API call refused");
        ApiError::Unauthorized(e.to_string())
    };
    let claims = check_head(&state, &parts).map_err(|e| refused(e, &parts))?;
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::bad_request(format!("the body exceeds {MAX_BODY} bytes"), None))?;
    claims.check_body(&bytes).map_err(|e| refused(e, &parts))?;
    Ok(next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await)
}
