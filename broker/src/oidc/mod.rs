//! Single sign-on through an OpenID provider: the authorization code flow with PKCE, `state`
//! and `nonce` (RFC 6749, RFC 7636, OpenID Connect Core). The provider's discovery document
//! and keys are fetched when first needed and cached (the keys fetched again when a token names
//! one the cache lacks); every answer is bounded in size and time, and anything unusable is a
//! clear [`OidcError`], never a panic or a hang.

pub mod idtoken;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::config::{Config, OidcSection};
use crate::secret::Secret;

/// Largest answer read from the provider (discovery, keys, token, userinfo).
const MAX_ANSWER: usize = 1024 * 1024;
/// How long the discovery document and keys are reused.
const CACHE_FOR: Duration = Duration::from_secs(3600);
/// Keys are fetched again for an unknown key id at most this often.
const KEY_REFRESH_EVERY: Duration = Duration::from_secs(30);
/// After a failed fetch, callers are answered with the failure for this long instead of each
/// waiting for the provider in turn.
const FAILURE_MEMO: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum OidcError {
    /// The provider is down, slow, or answered something unusable.
    #[error("the identity provider is unavailable or answered something unusable: {0}")]
    Provider(String),
    /// The provider (or the user there) refused the sign-in.
    #[error("the identity provider refused the sign-in: {0}")]
    Denied(String),
    /// The browser came back without the sign-in this browser started (no cookie, an expired
    /// one, or another `state`).
    #[error("the sign-in was not started in this browser, or took too long")]
    State,
    /// The provider refused the code (used already, expired, or for another client).
    #[error("the identity provider refused the sign-in code: {0}")]
    Code(String),
    /// The ID token failed a check.
    #[error("{0}")]
    Token(String),
    /// The user the provider vouched for cannot use Atrium (unusable claims, not in the
    /// directory).
    #[error("{0}")]
    User(String),
}

impl OidcError {
    /// The short code the web client turns into a message for the user.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Provider(_) => "provider",
            Self::Denied(_) => "denied",
            Self::State => "state",
            Self::Code(_) => "code",
            Self::Token(_) => "token",
            Self::User(_) => "user",
        }
    }
}

/// The provider's discovery document: the fields Atrium uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// What the token endpoint answers.
#[derive(Debug, Deserialize)]
pub struct Tokens {
    pub id_token: String,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub token_type: Option<String>,
}

#[derive(Debug)]
struct Cached<T> {
    value: Arc<T>,
    at: Instant,
}

/// A cache slot: the value, or the last failure to fetch it.
#[derive(Debug)]
struct Slot<T> {
    cached: Option<Cached<T>>,
    failed: Option<(Instant, String)>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self { cached: None, failed: None }
    }
}

impl<T> Slot<T> {
    /// The recent failure, if the provider failed within [`FAILURE_MEMO`].
    fn recent_failure(&self) -> Option<OidcError> {
        self.failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FAILURE_MEMO)
            .map(|(_, e)| OidcError::Provider(e.clone()))
    }

    fn store(&mut self, r: Result<T, OidcError>) -> Result<Arc<T>, OidcError> {
        match r {
            Ok(v) => {
                let v = Arc::new(v);
                self.cached = Some(Cached { value: Arc::clone(&v), at: Instant::now() });
                self.failed = None;
                Ok(v)
            }
            Err(e) => {
                self.failed = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    cfg: OidcSection,
    redirect_url: String,
    post_logout_url: String,
    http: reqwest::Client,
    meta: Mutex<Slot<Discovery>>,
    keys: Mutex<Slot<JwkSet>>,
}

/// The OpenID provider client (cheap to clone).
#[derive(Debug, Clone)]
pub struct Oidc {
    inner: Arc<Inner>,
}

impl Oidc {
    /// The client for `[oidc]`, or `None` when single sign-on is off. Nothing is fetched yet: a
    /// provider that is down at start-up does not stop the broker.
    pub fn new(cfg: &Config) -> Result<Option<Self>, String> {
        if !cfg.oidc.enabled() {
            return Ok(None);
        }
        let timeout = Duration::from_secs(cfg.oidc.timeout_secs);
        let http = atrium_door::client::http_client(cfg.oidc.ca_file.as_deref())
            .map_err(|e| format!("oidc.ca_file: {e}"))?
            .timeout(timeout)
            .connect_timeout(timeout)
            // The provider's endpoints are used as published; a redirect is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("oidc: {e}"))?;
        Ok(Some(Self {
            inner: Arc::new(Inner {
                cfg: cfg.oidc.clone(),
                redirect_url: cfg.oidc_redirect_url(),
                post_logout_url: cfg.oidc_post_logout_url(),
                http,
                meta: Mutex::default(),
                keys: Mutex::default(),
            }),
        }))
    }

    pub fn config(&self) -> &OidcSection {
        &self.inner.cfg
    }

    /// The discovery document, fetched when missing or older than an hour.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        let mut meta = self.inner.meta.lock().await;
        if let Some(c) = meta.cached.as_ref()
            && c.at.elapsed() < CACHE_FOR
        {
            return Ok(Arc::clone(&c.value));
        }
        // Callers that waited for a fetch that failed get its failure at once.
        if let Some(e) = meta.recent_failure() {
            return Err(e);
        }
        let fetched = self.fetch_discovery().await;
        meta.store(fetched)
    }

    async fn fetch_discovery(&self) -> Result<Discovery, OidcError> {
        let issuer = self.issuer();
        let url = format!("{issuer}/.well-known/openid-configuration");
        let d: Discovery = self.get_json(&url, None).await?;
        // OpenID Connect Discovery 1.0, 4.3: the issuer must be the one asked for.
        if d.issuer.trim_end_matches('/') != issuer {
            return Err(OidcError::Provider(format!(
                "its discovery document names issuer {:?}, not {:?} (oidc.issuer_url)",
                crate::service::printable(&d.issuer, 200),
                issuer
            )));
        }
        for (name, u) in [
            ("authorization_endpoint", Some(&d.authorization_endpoint)),
            ("token_endpoint", Some(&d.token_endpoint)),
            ("jwks_uri", Some(&d.jwks_uri)),
            ("userinfo_endpoint", d.userinfo_endpoint.as_ref()),
            ("end_session_endpoint", d.end_session_endpoint.as_ref()),
        ] {
            if let Some(u) = u
                && let Err(e) = crate::config::check_url(u)
            {
                return Err(OidcError::Provider(format!("{name}: {e}")));
            }
        }
        if self.algorithms_of(&d).is_empty() {
            return Err(OidcError::Provider(format!(
                "it signs ID tokens with {:?}, none of which is accepted (oidc.algorithms)",
                d.id_token_signing_alg_values_supported
            )));
        }
        Ok(d)
    }

    fn algorithms_of(&self, d: &Discovery) -> Vec<jsonwebtoken::Algorithm> {
        // A provider that publishes nothing signs with RS256 (Discovery 1.0, 3: REQUIRED, and
        // RS256 must be among them).
        let published = if d.id_token_signing_alg_values_supported.is_empty() {
            vec!["RS256".to_owned()]
        } else {
            d.id_token_signing_alg_values_supported.clone()
        };
        idtoken::accepted_algorithms(&self.inner.cfg.algorithms, &published)
    }

    /// Where to send the browser to sign in.
    pub async fn authorize_url(
        &self,
        state: &str,
        nonce: &str,
        code_challenge: &str,
    ) -> Result<String, OidcError> {
        let d = self.discovery().await?;
        let mut url = Url::parse(&d.authorization_endpoint)
            .map_err(|e| OidcError::Provider(format!("authorization_endpoint: {e}")))?;
        let mut scopes = vec!["openid"];
        scopes.extend(self.inner.cfg.scopes.iter().map(String::as_str).filter(|s| *s != "openid"));
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.inner.cfg.client_id)
            .append_pair("redirect_uri", &self.inner.redirect_url)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// The issuer the callback's `iss` parameter (RFC 9207) must name when present.
    pub fn issuer(&self) -> &str {
        self.inner.cfg.issuer_url.trim_end_matches('/')
    }

    /// Exchanges an authorization code for tokens.
    pub async fn exchange(&self, code: &str, verifier: &str) -> Result<Tokens, OidcError> {
        let d = self.discovery().await?;
        let cfg = &self.inner.cfg;
        // client_secret_basic unless the provider takes only client_secret_post.
        let post_only = d.token_endpoint_auth_methods_supported.as_ref().is_some_and(|m| {
            m.iter().any(|m| m == "client_secret_post")
                && !m.iter().any(|m| m == "client_secret_basic")
        });
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &self.inner.redirect_url)
                .append_pair("code_verifier", verifier);
            if post_only {
                form.append_pair("client_id", &cfg.client_id)
                    .append_pair("client_secret", cfg.client_secret.expose());
            }
            form.finish()
        };
        let mut req = self.inner.http.post(&d.token_endpoint);
        if !post_only {
            // RFC 6749, 2.3.1: both parts form-encoded before Basic.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(&cfg.client_id), Some(enc(cfg.client_secret.expose())));
        }
        let resp = req
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                // Down or moved: the next sign-in reads the discovery document again, so it
                // is told at once rather than sent to a provider that does not answer.
                self.inner.meta.lock().await.cached = None;
                return Err(OidcError::Provider(format!("token endpoint: {}", without_url(&e))));
            }
        };
        let status = resp.status();
        let body = read_bounded(resp).await?;
        if status.is_client_error() {
            // RFC 6749, 5.2: `invalid_grant` is a code used already, expired, or not ours.
            let err: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
            let code = err.get("error").and_then(Value::as_str).unwrap_or("unknown");
            let code = crate::service::printable(code, 64);
            return Err(match code.as_str() {
                "invalid_grant" => OidcError::Code(code),
                _ => OidcError::Provider(format!("token endpoint answered {status}: {code}")),
            });
        }
        if !status.is_success() {
            return Err(OidcError::Provider(format!("token endpoint answered {status}")));
        }
        let t: Tokens = serde_json::from_slice(&body).map_err(|_| {
            OidcError::Provider("the token endpoint's answer is not a token response".into())
        })?;
        if t.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(OidcError::Provider("the token endpoint issued a non-Bearer token".into()));
        }
        Ok(t)
    }

    /// Checks an ID token (see [`idtoken`]); its claims.
    pub async fn verify_id_token(
        &self,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, OidcError> {
        let d = self.discovery().await?;
        let (alg, kid) = idtoken::header(token, &self.algorithms_of(&d))?;
        let expected = idtoken::Expected {
            issuer: &d.issuer,
            client_id: &self.inner.cfg.client_id,
            nonce,
            now_secs: jsonwebtoken::get_current_timestamp(),
        };
        let keys = self.keys(&d, false).await?;
        if let Ok(k) = idtoken::find_key(&keys, alg, kid.as_deref()) {
            return idtoken::verify(token, k, alg, &expected);
        }
        // A key the cache lacks: the provider may have rotated. Fetched again (at most every
        // 30 s, so a stream of made-up key ids cannot make the broker hammer the provider).
        let keys = self.keys(&d, true).await?;
        let k = idtoken::find_key(&keys, alg, kid.as_deref()).map_err(|_| {
            OidcError::Token(
                "the ID token is signed with a key the provider does not publish".into(),
            )
        })?;
        idtoken::verify(token, k, alg, &expected)
    }

    async fn keys(&self, d: &Discovery, refresh: bool) -> Result<Arc<JwkSet>, OidcError> {
        let mut keys = self.inner.keys.lock().await;
        if let Some(c) = keys.cached.as_ref() {
            let age = c.at.elapsed();
            if age < CACHE_FOR && (!refresh || age < KEY_REFRESH_EVERY) {
                return Ok(Arc::clone(&c.value));
            }
        }
        if let Some(e) = keys.recent_failure() {
            return Err(e);
        }
        let fetched = self.get_json::<JwkSet>(&d.jwks_uri, None).await;
        keys.store(fetched)
    }

    /// The userinfo claims of the user `sub`, when the provider has the endpoint.
    pub async fn userinfo(
        &self,
        access_token: &str,
        sub: &str,
    ) -> Result<Option<Map<String, Value>>, OidcError> {
        let d = self.discovery().await?;
        let Some(url) = &d.userinfo_endpoint else { return Ok(None) };
        let claims: Map<String, Value> = self.get_json(url, Some(access_token)).await?;
        // OpenID Connect Core, 5.3.2: the sub must be the ID token's.
        if claims.get("sub").and_then(Value::as_str) != Some(sub) {
            return Err(OidcError::Token("the userinfo answer is about another user".into()));
        }
        Ok(Some(claims))
    }

    /// Where to send the browser to end the user's session at the provider, if it offers that.
    pub async fn logout_url(&self) -> Option<String> {
        if !self.inner.cfg.provider_logout {
            return None;
        }
        // Only what is known already: signing out never waits for the provider.
        let d = self.inner.meta.try_lock().ok()?.cached.as_ref().map(|c| Arc::clone(&c.value))?;
        let mut url = Url::parse(d.end_session_endpoint.as_ref()?).ok()?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.inner.cfg.client_id)
            .append_pair("post_logout_redirect_uri", &self.inner.post_logout_url);
        Some(url.into())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        bearer: Option<&str>,
    ) -> Result<T, OidcError> {
        let mut req = self.inner.http.get(url).header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let what = url.split('?').next().unwrap_or(url);
        let resp = req
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("{what}: {}", without_url(&e))))?;
        if !resp.status().is_success() {
            return Err(OidcError::Provider(format!("{what} answered {}", resp.status())));
        }
        let body = read_bounded(resp).await?;
        serde_json::from_slice(&body)
            .map_err(|e| OidcError::Provider(format!("{what} answered something unusable: {e}")))
    }
}

/// A reqwest error without the URL (which may carry a code or token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirected"
    } else {
        "request failed"
    };
    kind.to_owned()
}

/// The body of `resp`, refused past [`MAX_ANSWER`] bytes.
async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, OidcError> {
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(OidcError::Provider("its answer is too large".into()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| OidcError::Provider(format!("reading its answer: {}", without_url(&e))))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(OidcError::Provider("its answer is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A PKCE verifier (RFC 7636: 43 characters of 32 random bytes) and its challenge.
pub fn pkce_pair() -> (Secret, String) {
    let verifier = crate::auth::random_token();
    let challenge = s256(&verifier);
    (Secret::new(verifier), challenge)
}

/// The S256 challenge of a PKCE verifier.
fn s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_the_s256_of_the_verifier() {
        // RFC 7636, appendix B.
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (v, c) = pkce_pair();
        assert_eq!(v.expose().len(), 43);
        assert_eq!(s256(v.expose()), c);
    }
}
