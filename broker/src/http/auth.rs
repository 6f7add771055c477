//! `/api/v1/auth/...` and `/api/v1/me`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use crate::auth::{AuthUser, CSRF_COOKIE, ClientAddr, SESSION_COOKIE, cookie};
use crate::db::SignInMethod;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::policy::{Action, Resource};
use crate::secret::Secret;
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(login)).routes(routes!(logout)).routes(routes!(me))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    #[schema(value_type = String, format = Password)]
    pub password: Secret,
}

/// The signed-in user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserInfo {
    pub username: String,
    pub display_name: Option<String>,
    pub groups: Vec<String>,
    /// Whether policy lets this user administer Atrium (the portal shows admin pages).
    pub is_admin: bool,
    /// This sign-in and the second factor: `none` (not asked), `pending` (pass it before
    /// anything else: `/api/v1/auth/mfa`), `verified`.
    pub mfa: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub user: UserInfo,
    /// Also in the `atrium_csrf` cookie: send it as `X-CSRF-Token` on state-changing requests.
    pub csrf_token: String,
}

fn is_admin(st: &AppState, username: &str, groups: &[String], addr: ClientAddr) -> bool {
    let p = crate::policy::Principal { username, groups };
    st.policies.is_allowed(&p, Action::Administer, Resource::Broker, &service::policy_ctx(addr.0))
}

/// Sign in with a directory username and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in; session and CSRF cookies set", body = LoginResponse),
        (status = 401, description = "Wrong username or password (which one is not said)", body = ErrorResponse),
        (status = 403, description = "Password sign-in is off (`login.password = false`)", body = ErrorResponse),
        (status = 429, description = "Too many failed sign-ins: locked out for a while", body = ErrorResponse),
        (status = 503, description = "The directory is unavailable", body = ErrorResponse)))]
async fn login(
    State(st): State<AppState>,
    addr: ClientAddr,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<impl IntoResponse> {
    if !st.cfg.login.password {
        return Err(ApiError::Forbidden(
            "password sign-in is off here: sign in with single sign-on".into(),
        ));
    }
    let signed = service::login(&st, &req.username, &req.password, addr.0).await?;
    let secure = st.cfg.secure_cookies();
    let admin = is_admin(&st, &signed.user.username, &signed.user.groups, addr);
    let body = LoginResponse {
        user: UserInfo {
            username: signed.user.username,
            display_name: signed.user.display_name,
            groups: signed.user.groups,
            is_admin: admin,
            mfa: signed.mfa.as_str().into(),
        },
        csrf_token: signed.csrf_token.clone(),
    };
    Ok((
        AppendHeaders([
            (
                header::SET_COOKIE,
                cookie(SESSION_COOKIE, &signed.session_token, signed.max_age, true, secure),
            ),
            (
                header::SET_COOKIE,
                cookie(CSRF_COOKIE, &signed.csrf_token, signed.max_age, false, secure),
            ),
            (header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store")),
        ]),
        Json(body),
    ))
}

/// Where the browser goes after signing out of Atrium, to end the user's session at the
/// identity provider too.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogoutResponse {
    pub redirect: String,
}

/// Sign out: the session is revoked server-side and its desktop sessions end. A session made by
/// single sign-on answers where to end the user's session at the provider (when it offers that
/// and `oidc.provider_logout` is on).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Signed out; cookies cleared"),
        (status = 200, description = "Signed out; cookies cleared; send the browser to `redirect` to sign out at the identity provider", body = LogoutResponse),
        (status = 401, body = ErrorResponse), (status = 403, description = "Missing CSRF header", body = ErrorResponse)))]
async fn logout(
    State(st): State<AppState>,
    user: AuthUser,
    addr: ClientAddr,
) -> ApiResult<Response> {
    service::logout(&st, &user.username, &user.id, &user.sid, addr.0).await?;
    let secure = st.cfg.secure_cookies();
    let cookies = AppendHeaders([
        (header::SET_COOKIE, cookie(SESSION_COOKIE, "", 0, true, secure)),
        (header::SET_COOKIE, cookie(CSRF_COOKIE, "", 0, false, secure)),
    ]);
    let at_provider = match (&st.oidc, user.method) {
        (Some(oidc), SignInMethod::Oidc) => oidc.logout_url().await,
        _ => None,
    };
    Ok(match at_provider {
        Some(redirect) => (cookies, Json(LogoutResponse { redirect })).into_response(),
        None => (StatusCode::NO_CONTENT, cookies).into_response(),
    })
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth",
    responses((status = 200, body = UserInfo), (status = 401, body = ErrorResponse)))]
async fn me(State(st): State<AppState>, user: AuthUser, addr: ClientAddr) -> Json<UserInfo> {
    let admin = is_admin(&st, &user.username, &user.groups, addr);
    Json(UserInfo {
        username: user.username,
        display_name: user.display_name,
        groups: user.groups,
        is_admin: admin,
        mfa: user.mfa.as_str().into(),
    })
}
