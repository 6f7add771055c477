//! Single sign-on: `/api/v1/auth/methods` (what the sign-in page offers) and the two legs of
//! the browser's trip to the OpenID provider, `/api/v1/auth/oidc/start` and
//! `/api/v1/auth/oidc/callback`.
//!
//! Between the legs the browser holds the sign-in it started in the `atrium_oidc` cookie: a
//! token signed by the broker with the `state`, the `nonce` and the PKCE verifier, for ten
//! minutes, `SameSite=Lax` so that it comes back on the provider's redirect. Any replica
//! finishes what another started. Both legs answer with a redirect: to the provider, to the
//! portal signed in, or to the sign-in page with a short error code it explains.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{CSRF_COOKIE, ClientAddr, SESSION_COOKIE, cookie, cookie_with, read_cookie};
use crate::secret::constant_time_eq;
use crate::service;
use crate::state::AppState;

/// The cookie holding the sign-in in progress.
pub const PENDING_COOKIE: &str = "atrium_oidc";
/// The `aud` of the pending sign-in token.
const PENDING_AUDIENCE: &str = "atrium-oidc-pending";
/// How long a user has at the provider.
const PENDING_SECS: u64 = 600;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(methods)).routes(routes!(start)).routes(routes!(callback))
}

/// A way to sign in through an identity provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct SsoMethod {
    /// What the button says after "Sign in with".
    pub display_name: String,
    /// Where the button leads (a browser navigation, not an API call).
    pub start_url: String,
}

/// How users may sign in.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthMethods {
    /// Directory username and password (`POST /api/v1/auth/login`).
    pub password: bool,
    /// Single sign-on, when configured.
    pub oidc: Option<SsoMethod>,
}

/// How users may sign in (what the sign-in page shows).
#[utoipa::path(get, path = "/api/v1/auth/methods", tag = "auth",
    responses((status = 200, body = AuthMethods)))]
async fn methods(State(st): State<AppState>) -> Json<AuthMethods> {
    Json(AuthMethods {
        password: st.cfg.login.password,
        oidc: st.oidc.as_ref().map(|o| SsoMethod {
            display_name: o.config().display_name.clone(),
            start_url: "/api/v1/auth/oidc/start".into(),
        }),
    })
}

/// The sign-in in progress, as the pending cookie carries it.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    iss: String,
    aud: String,
    sub: String,
    exp: u64,
    state: String,
    nonce: String,
    verifier: String,
}

/// A redirect (303) with no-store and the given cookies.
fn redirect(to: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::LOCATION, HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        h.append(header::SET_COOKIE, c);
    }
    (StatusCode::SEE_OTHER, h).into_response()
}

/// Back to the sign-in page, which explains `code`.
fn to_signin(code: &str, cookies: Vec<HeaderValue>) -> Response {
    redirect(&format!("/#/signin/error/{code}"), cookies)
}

/// Starts single sign-on: sends the browser to the identity provider.
#[utoipa::path(get, path = "/api/v1/auth/oidc/start", tag = "auth",
    responses(
        (status = 303, description = "To the identity provider (or, when it is unavailable or single sign-on is not configured, back to the sign-in page with an error code)")))]
async fn start(State(st): State<AppState>) -> Response {
    let Some(oidc) = &st.oidc else { return to_signin("off", vec![]) };
    let state = crate::auth::random_token();
    let nonce = crate::auth::random_token();
    let (verifier, challenge) = crate::oidc::pkce_pair();
    let url = match oidc.authorize_url(&state, &nonce, &challenge).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "single sign-on cannot start");
            return to_signin(e.code(), vec![]);
        }
    };
    let pending = Pending {
        iss: atrium_protocol::ticket::ISSUER.into(),
        aud: PENDING_AUDIENCE.into(),
        sub: "oidc".into(),
        exp: jsonwebtoken::get_current_timestamp() + PENDING_SECS,
        state,
        nonce,
        verifier: verifier.expose().to_owned(),
    };
    let token = match st.keys.sign(&pending) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign the pending sign-in");
            return to_signin("internal", vec![]);
        }
    };
    let secure = st.cfg.secure_cookies();
    redirect(&url, vec![cookie_with(PENDING_COOKIE, &token, PENDING_SECS, true, secure, "Lax")])
}

/// The pending sign-in is used once, whatever happens: every answer of the callback clears it.
fn clear_pending(secure: bool) -> Vec<HeaderValue> {
    vec![cookie_with(PENDING_COOKIE, "", 0, true, secure, "Lax")]
}

/// A callback refused before the provider was asked anything: logged, audited when `audited`,
/// and back to the sign-in page.
async fn refuse(
    st: &AppState,
    addr: ClientAddr,
    code: &str,
    reason: String,
    audited: bool,
) -> Response {
    tracing::warn!(reason = %reason, "single sign-on refused");
    if audited {
        let details = serde_json::json!({ "method": "oidc", "reason": reason });
        service::audit(st, "-", "login.failed", "-", "failure", addr.0, details).await;
    }
    to_signin(code, clear_pending(st.cfg.secure_cookies()))
}

/// What the provider sends back (other parameters are ignored).
#[derive(Debug, Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    /// RFC 9207: the issuer that answers, when the provider says.
    iss: Option<String>,
    error: Option<String>,
}

/// Where the identity provider sends the browser back: the code is exchanged, the ID token
/// checked, the user signed in.
#[utoipa::path(get, path = "/api/v1/auth/oidc/callback", tag = "auth",
    params(("code" = Option<String>, Query), ("state" = Option<String>, Query), ("iss" = Option<String>, Query), ("error" = Option<String>, Query)),
    responses(
        (status = 303, description = "Signed in (session and CSRF cookies set) and sent to the portal, or sent to the sign-in page with an error code")))]
async fn callback(
    State(st): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(p): Query<CallbackParams>,
) -> Response {
    let Some(oidc) = &st.oidc else { return to_signin("off", vec![]) };
    let secure = st.cfg.secure_cookies();
    let pending = read_cookie(&headers, PENDING_COOKIE, secure)
        .and_then(|t| st.keys.verify::<Pending>(t, PENDING_AUDIENCE).ok());
    // Audited only when this browser has a sign-in in progress: anyone can call the callback,
    // and its refusals alone must not fill the audit log.
    let audited = pending.is_some();
    let refused = |code: &'static str, reason: String| refuse(&st, addr, code, reason, audited);
    if let Some(err) = &p.error {
        let err = service::printable(err, 64);
        let code = if err == "access_denied" { "denied" } else { "provider" };
        return refused(code, format!("the provider answered {err}")).await;
    }
    let (Some(pending), Some(state), Some(code)) = (pending, &p.state, &p.code) else {
        return refused("state", "no sign-in in progress in this browser, or it expired".into())
            .await;
    };
    if !constant_time_eq(state.as_bytes(), pending.state.as_bytes()) {
        return refused("state", "state does not match the sign-in in progress".into()).await;
    }
    if p.iss.as_deref().is_some_and(|i| i.trim_end_matches('/') != oidc.issuer()) {
        return refused("provider", "the answer names another issuer".into()).await;
    }
    if code.is_empty() || code.len() > 4096 {
        return refused("provider", "the code is empty or too long".into()).await;
    }
    match service::oidc_sign_in(&st, oidc, code, &pending.verifier, &pending.nonce, addr.0).await {
        Ok(signed) => {
            let mut cookies = clear_pending(secure);
            cookies.push(cookie(
                SESSION_COOKIE,
                &signed.session_token,
                signed.max_age,
                true,
                secure,
            ));
            cookies.push(cookie(CSRF_COOKIE, &signed.csrf_token, signed.max_age, false, secure));
            let to =
                if signed.mfa == crate::db::MfaState::Pending { "/#/mfa" } else { "/#/desktops" };
            redirect(to, cookies)
        }
        Err(e) => to_signin(e.code(), clear_pending(secure)),
    }
}
