//! Sign-in sessions: the session token (a short-lived EdDSA JWT in an `HttpOnly;
//! SameSite=Strict` cookie, refreshed while the user is active), the double-submit CSRF check,
//! the client address, and the extractors that put authorization in types ([`AuthUser`],
//! [`AdminUser`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use atrium_protocol::net::IpNet;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::{MfaState, SignInMethod, TokenScope, now_ms};
use crate::error::ApiError;
use crate::policy::{Action, Principal, RequestContext, Resource};
use crate::secret::{Secret, constant_time_eq};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "atrium_session";
pub const CSRF_COOKIE: &str = "atrium_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The `aud` of session tokens.
pub const SESSION_AUDIENCE: &str = "atrium-broker";

/// Claims of a session token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// The sign-in session id (revocable server-side).
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    /// SHA-256 of the CSRF token, binding it to this session.
    pub csrf: String,
}

/// A signed-in user, put in the request by [`session_layer`].
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub username: String,
    /// The directory entry's stable id: what the user's desktops belong to.
    pub id: String,
    pub sid: String,
    pub groups: Vec<String>,
    pub display_name: Option<String>,
    pub uid_number: Option<u32>,
    pub gid_number: Option<u32>,
    /// How this sign-in session was made.
    pub method: SignInMethod,
    /// Where this sign-in session stands with the second factor.
    pub mfa: MfaState,
}

impl AuthUser {
    pub fn principal(&self) -> Principal<'_> {
        Principal { username: &self.username, groups: &self.groups }
    }
}

/// A signed-in user whom policy lets administer Atrium, or an API token (an administrator's
/// grant; a `read` token only for `GET`). A token's user is `token:<name>`, its method
/// [`SignInMethod::ApiToken`].
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

/// An administrator who is a person (signed in), not an API token: for what mints credentials
/// (API tokens, node enrolment tokens) or shows a desktop (shadowing), so a leaked token can
/// neither make itself successors nor watch screens.
#[derive(Debug, Clone)]
pub struct AdminPerson(pub AuthUser);

impl FromRequestParts<AppState> for AdminPerson {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let AdminUser(user) = AdminUser::from_request_parts(parts, st).await?;
        if user.method == SignInMethod::ApiToken {
            return Err(ApiError::Forbidden(
                "an administrator signed in as a person does this, not an API token".into(),
            ));
        }
        Ok(Self(user))
    }
}

/// An administrator (a person, not an API token) whom policy also lets review session
/// recordings (`review_recordings` on the broker): recordings show what users did and typed.
#[derive(Debug, Clone)]
pub struct Reviewer(pub AuthUser);

impl FromRequestParts<AppState> for Reviewer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let AdminPerson(user) = AdminPerson::from_request_parts(parts, st).await?;
        let ClientAddr(ip) = ClientAddr::from_request_parts(parts, st).await?;
        let ctx = RequestContext { client_ip: ip, now_secs: now_ms() / 1000 };
        if st.policies.is_allowed(
            &user.principal(),
            Action::ReviewRecordings,
            Resource::Broker,
            &ctx,
        ) {
            Ok(Self(user))
        } else {
            Err(ApiError::Forbidden("reviewing recordings is not permitted to you".into()))
        }
    }
}

/// A request made with an API token (a request extension put by [`session_layer`]). It is not
/// an [`AuthUser`]: a token uses the admin API, never desktops.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub user: AuthUser,
    pub scope: TokenScope,
    pub token_id: String,
}

/// The client's address: the peer, or the first untrusted hop of `X-Forwarded-For` when the peer
/// is a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<AuthUser>().cloned().ok_or(ApiError::Unauthorized)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        if let Some(t) = parts.extensions.get::<TokenUser>() {
            if t.scope == TokenScope::Read && !is_safe(&parts.method) {
                return Err(ApiError::Forbidden("this API token is read-only".into()));
            }
            return Ok(Self(t.user.clone()));
        }
        let user = AuthUser::from_request_parts(parts, st).await?;
        let ClientAddr(ip) = ClientAddr::from_request_parts(parts, st).await?;
        let ctx = RequestContext { client_ip: ip, now_secs: now_ms() / 1000 };
        if st.policies.is_allowed(&user.principal(), Action::Administer, Resource::Broker, &ctx) {
            Ok(Self(user))
        } else {
            Err(ApiError::Forbidden("administrators only".into()))
        }
    }
}

/// A random token, URL-safe.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn csrf_digest(token: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A cookie's name as it is set: under TLS with the `__Host-` prefix, which browsers accept only
/// from a secure origin, for the whole host (`Path=/`, no `Domain`), so a sibling subdomain
/// cannot set or shadow it.
pub fn cookie_name(name: &str, secure: bool) -> String {
    if secure { format!("__Host-{name}") } else { name.to_owned() }
}

/// A `Set-Cookie` value (named by [`cookie_name`]), `SameSite=Strict`.
pub fn cookie(
    name: &str,
    value: &str,
    max_age_secs: u64,
    http_only: bool,
    secure: bool,
) -> HeaderValue {
    cookie_with(name, value, max_age_secs, http_only, secure, "Strict")
}

/// A `Set-Cookie` value with the given `SameSite` (`Lax` for a cookie that must come back on
/// the identity provider's redirect, a cross-site navigation).
pub fn cookie_with(
    name: &str,
    value: &str,
    max_age_secs: u64,
    http_only: bool,
    secure: bool,
    same_site: &str,
) -> HeaderValue {
    let name = cookie_name(name, secure);
    let mut c = format!("{name}={value}; Path=/; Max-Age={max_age_secs}; SameSite={same_site}");
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie values are URL-safe")
}

/// Reads a cookie from the request headers, by the name [`cookie`] gives it (under TLS only the
/// `__Host-` one counts).
pub fn read_cookie<'a>(headers: &'a HeaderMap, name: &str, secure: bool) -> Option<&'a str> {
    let name = cookie_name(name, secure);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Mints a session token for `sid`, expiring at the earlier of `ttl` and the session's end.
pub fn mint_session_token(
    st: &AppState,
    username: &str,
    sid: &str,
    csrf_hash: &str,
    session_expires_ms: i64,
) -> Result<(String, u64), ApiError> {
    let now = jsonwebtoken::get_current_timestamp();
    let end = u64::try_from(session_expires_ms / 1000).unwrap_or(0);
    let exp = (now + st.cfg.sessions.ttl_secs).min(end);
    let claims = SessionClaims {
        iss: atrium_protocol::ticket::ISSUER.into(),
        aud: SESSION_AUDIENCE.into(),
        sub: username.to_owned(),
        sid: sid.to_owned(),
        iat: now,
        exp,
        csrf: csrf_hash.to_owned(),
    };
    let token =
        st.keys.sign(&claims).map_err(|e| ApiError::internal("signing a session token", e))?;
    Ok((token, exp.saturating_sub(now)))
}

fn client_addr(req: &Request, trusted: &[IpNet]) -> IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let hops = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    atrium_protocol::net::client_addr(peer, hops, trusted)
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Authenticates the session cookie (if any), checks CSRF on state-changing requests, records
/// the client address, and refreshes the cookie when it is past half its life.
pub async fn session_layer(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = client_addr(&req, st.door.trusted());
    req.extensions_mut().insert(ClientAddr(ip));
    // An API token: no cookie is looked at, and every use is audited under the token's name.
    if let Some(token) = api_token_of(req.headers()) {
        let user = match token_user(&st, &token).await {
            Ok(u) => u,
            Err((e, name)) => {
                // A known token refused (revoked, expired, wrong secret) is audited under its name.
                if let Some(name) = name {
                    let details = serde_json::json!({ "method": req.method().as_str() });
                    let path = req.uri().path().to_owned();
                    crate::service::audit(
                        &st,
                        &name,
                        "token.refused",
                        &path,
                        "denied",
                        ip,
                        details,
                    )
                    .await;
                }
                return e.into_response();
            }
        };
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        req.extensions_mut().insert(user.clone());
        // In a task of its own: a client that goes away mid-request does not cancel the audit
        // of what the request did.
        let work = tokio::spawn(async move {
            let resp = next.run(req).await;
            let now = now_ms();
            if let Err(e) = st.db.touch_api_token(&user.token_id, now).await {
                tracing::warn!(error = %e, "could not record an API token's use");
            }
            let status = resp.status();
            let outcome = if status.is_success() { "success" } else { "failure" };
            let details =
                serde_json::json!({ "method": method.as_str(), "status": status.as_u16() });
            crate::service::audit(
                &st,
                &user.user.username,
                "token.use",
                &path,
                outcome,
                ip,
                details,
            )
            .await;
            resp
        });
        return match work.await {
            Ok(resp) => resp,
            Err(e) => ApiError::internal("a request made with an API token", e).into_response(),
        };
    }
    let mut refresh: Option<Vec<HeaderValue>> = None;
    let secure = st.cfg.secure_cookies();
    // The sign-in and its CSRF cookie, to send the cookies again if the handler lengthens it.
    let mut signed_in: Option<(String, SessionClaims, String)> = None;
    let token = read_cookie(req.headers(), SESSION_COOKIE, secure).map(str::to_owned);
    if let Some(token) = token {
        match authenticate(&st, &token).await {
            Ok(Some((user, claims))) => {
                // A sign-in that still owes its second factor reaches only what passing it needs.
                if user.mfa == MfaState::Pending && !mfa_may_reach(req.uri().path()) {
                    return ApiError::MfaRequired.into_response();
                }
                let csrf = read_cookie(req.headers(), CSRF_COOKIE, secure).unwrap_or("").to_owned();
                let exempt = req.uri().path() == "/api/v1/auth/login";
                if !is_safe(req.method()) && !exempt {
                    let header =
                        req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
                    let ok = !header.is_empty()
                        && constant_time_eq(header.as_bytes(), csrf.as_bytes())
                        && constant_time_eq(csrf_digest(header).as_bytes(), claims.csrf.as_bytes());
                    if !ok {
                        return ApiError::Csrf.into_response();
                    }
                }
                let now = jsonwebtoken::get_current_timestamp();
                if claims.exp.saturating_sub(now) < st.cfg.sessions.ttl_secs / 2
                    && let Ok(Some(s)) = st.db.get_login_session(&claims.sid).await
                {
                    refresh = session_cookies(&st, &user.username, &claims, &csrf, s.expires_at);
                    let _ = st.db.touch_login_session(&claims.sid, now_ms()).await;
                }
                signed_in = Some((user.username.clone(), claims, csrf));
                req.extensions_mut().insert(user);
            }
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    let mut resp = next.run(req).await;
    // The handler lengthened the sign-in (its second factor passed): cookies to match.
    if let Some(SessionExtended(expires_at)) = resp.extensions_mut().remove::<SessionExtended>()
        && let Some((username, claims, csrf)) = &signed_in
    {
        refresh = session_cookies(&st, username, claims, csrf, expires_at);
    }
    if let Some(cookies) = refresh {
        // A handler that set the session cookie itself (sign-in, sign-out) wins.
        let handler_set =
            resp.headers().get_all(header::SET_COOKIE).iter().any(|v| {
                v.to_str().is_ok_and(|s| s.starts_with(&cookie_name(SESSION_COOKIE, secure)))
            });
        if !handler_set {
            for c in cookies {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
        }
    }
    resp
}

/// Put in a response's extensions by a handler that lengthened the caller's sign-in session to
/// end at this time (ms): the session layer then sends its cookies again to match.
#[derive(Debug, Clone, Copy)]
pub struct SessionExtended(pub i64);

/// The session and CSRF cookies of a sign-in, good until `expires_at` (ms) at most; `None` if
/// the token cannot be signed (the cookies in place stay).
fn session_cookies(
    st: &AppState,
    username: &str,
    claims: &SessionClaims,
    csrf: &str,
    expires_at: i64,
) -> Option<Vec<HeaderValue>> {
    let secure = st.cfg.secure_cookies();
    let (t, max_age) =
        mint_session_token(st, username, &claims.sid, &claims.csrf, expires_at).ok()?;
    Some(vec![
        cookie(SESSION_COOKIE, &t, max_age, true, secure),
        cookie(CSRF_COOKIE, csrf, max_age, false, secure),
    ])
}

/// What a sign-in that has not passed its second factor yet may reach: who it is, signing
/// out, signing in again, and the second factor itself (the web client's files are not API).
fn mfa_may_reach(path: &str) -> bool {
    !path.starts_with("/api/")
        || matches!(
            path,
            "/api/v1/me" | "/api/v1/auth/logout" | "/api/v1/auth/login" | "/api/v1/auth/methods"
        )
        || path == "/api/v1/auth/mfa"
        || path.starts_with("/api/v1/auth/mfa/")
        || path.starts_with("/api/v1/auth/oidc/")
}

/// The API token in `Authorization: Bearer atrium_...`, if any (other bearer tokens, such as
/// nodes' signed requests, are left to their handlers).
fn api_token_of(headers: &HeaderMap) -> Option<Secret> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?.trim();
    t.starts_with(crate::tokens::PREFIX).then(|| Secret::new(t))
}

/// The token's user, when the token is well-formed, known, active and its secret right; else
/// the error, with the name of the token when it is a known one (`token:<name>`).
async fn token_user(
    st: &AppState,
    token: &Secret,
) -> Result<TokenUser, (ApiError, Option<String>)> {
    let (id, secret) = crate::tokens::parse(token.expose()).ok_or((ApiError::BadToken, None))?;
    let t = st.db.get_api_token(id).await.map_err(|e| (e.into(), None))?;
    let t = t.ok_or((ApiError::BadToken, None))?;
    if !t.is_active(now_ms()) || !crate::tokens::matches(secret, &t.secret_hash) {
        return Err((ApiError::BadToken, Some(format!("token:{}", t.name))));
    }
    Ok(TokenUser {
        user: AuthUser {
            username: format!("token:{}", t.name),
            id: format!("token:{}", t.id),
            sid: String::new(),
            groups: Vec::new(),
            display_name: None,
            uid_number: None,
            gid_number: None,
            method: SignInMethod::ApiToken,
            mfa: MfaState::None,
        },
        scope: t.scope,
        token_id: t.id,
    })
}

/// `Ok(None)`: not a valid session (anonymous). `Err`: the database failed.
async fn authenticate(
    st: &AppState,
    token: &str,
) -> Result<Option<(AuthUser, SessionClaims)>, ApiError> {
    let Ok(claims) = st.keys.verify::<SessionClaims>(token, SESSION_AUDIENCE) else {
        return Ok(None);
    };
    let Some((session, cached)) = st.db.get_login_with_user(&claims.sid).await? else {
        return Ok(None);
    };
    let now = now_ms();
    if !session.is_active(now) || session.username != claims.sub {
        return Ok(None);
    }
    // A sign-in that owes its second factor has `mfa.pending_secs` to pass it.
    let pending_ms = i64::try_from(st.cfg.mfa.pending_secs * 1000).unwrap_or(i64::MAX);
    if session.mfa == MfaState::Pending && now.saturating_sub(session.created_at) > pending_ms {
        return Ok(None);
    }
    // The session must belong to the entry that holds the name now: one made before ids were
    // kept, or by an entry since deleted (the name given to someone else), is not honoured.
    let Some(id) = session.user_id.filter(|id| Some(id) == cached.directory_id.as_ref()) else {
        return Ok(None);
    };
    Ok(Some((
        AuthUser {
            username: cached.username,
            id,
            sid: claims.sid.clone(),
            groups: cached.groups,
            display_name: cached.display_name,
            uid_number: cached.uid_number,
            gid_number: cached.gid_number,
            method: session.method,
            mfa: session.mfa,
        },
        claims,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_and_written() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; atrium_session=tok; atrium_csrf=c"),
        );
        assert_eq!(read_cookie(&h, SESSION_COOKIE, false), Some("tok"));
        assert_eq!(read_cookie(&h, CSRF_COOKIE, false), Some("c"));
        assert_eq!(read_cookie(&h, "nope", false), None);
        let c = cookie(CSRF_COOKIE, "y", 60, false, false);
        assert_eq!(c.to_str().unwrap(), "atrium_csrf=y; Path=/; Max-Age=60; SameSite=Strict");
        // Under TLS: the __Host- prefix, and a cookie without it (set by a sibling subdomain,
        // say) is not the session.
        let c = cookie(SESSION_COOKIE, "x", 60, true, true);
        assert_eq!(
            c.to_str().unwrap(),
            "__Host-atrium_session=x; Path=/; Max-Age=60; SameSite=Strict; HttpOnly; Secure"
        );
        assert_eq!(read_cookie(&h, SESSION_COOKIE, true), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("atrium_session=planted; __Host-atrium_session=real"),
        );
        assert_eq!(read_cookie(&h, SESSION_COOKIE, true), Some("real"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpNet = "10.0.0.1".parse().unwrap();
        let mk = |peer: &str, xff: &str| {
            let mut r = Request::new(axum::body::Body::empty());
            r.extensions_mut().insert(ConnectInfo(SocketAddr::new(peer.parse().unwrap(), 1)));
            r.headers_mut().insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
            r
        };
        assert_eq!(client_addr(&mk("1.2.3.4", "9.9.9.9"), &[proxy]).to_string(), "1.2.3.4");
        assert_eq!(
            client_addr(&mk("10.0.0.1", "9.9.9.9, 8.8.8.8"), &[proxy]).to_string(),
            "8.8.8.8"
        );
        assert_eq!(
            client_addr(&mk("10.0.0.1", "9.9.9.9, 10.0.0.1"), &[proxy]).to_string(),
            "9.9.9.9"
        );
        assert_eq!(client_addr(&mk("10.0.0.1", "garbage"), &[proxy]).to_string(), "10.0.0.1");
    }
}
