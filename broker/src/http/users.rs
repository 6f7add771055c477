//! `/api/v1/admin/users/...`: the users Atrium knows, their sign-in and desktop sessions, and
//! signing one out everywhere.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AdminPerson, AdminUser, ClientAddr};
use crate::db::{ApiToken, DesktopSession, UserSummary, now_ms};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(get_user))
        .routes(routes!(sign_out_everywhere))
        .routes(routes!(reset_mfa))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsersQuery {
    /// Only usernames starting with this (any case).
    pub search: Option<String>,
    /// At most this many (1-500, default 100).
    pub limit: Option<u32>,
}

/// Users who have signed in, by name, with their active sign-in sessions.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", params(UsersQuery),
    responses((status = 200, body = Vec<UserSummary>), (status = 400, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn list_users(
    State(st): State<AppState>,
    _admin: AdminUser,
    q: Result<Query<UsersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<UserSummary>>> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let search = q.search.unwrap_or_default();
    if search.chars().count() > 256 {
        return Err(ApiError::BadRequest("search is at most 256 characters".into()));
    }
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 500));
    Ok(Json(st.db.list_users(&search, now_ms(), limit).await?))
}

/// A sign-in session as administrators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignInSessionView {
    pub id: String,
    /// `password` or `oidc`.
    pub method: String,
    pub client_addr: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

/// A user, their active sign-in sessions, their open desktop sessions and the API tokens they
/// created.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserDetail {
    pub user: UserSummary,
    /// An authenticator app is set up.
    pub mfa_enrolled: bool,
    pub sessions: Vec<SignInSessionView>,
    pub desktop_sessions: Vec<DesktopSession>,
    /// API tokens they created that are still in force (never their secrets).
    pub tokens: Vec<ApiToken>,
}

async fn summary(st: &AppState, username: &str) -> ApiResult<UserSummary> {
    st.db
        .user_summary(username, now_ms())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user {username:?} has signed in")))
}

/// A user with their active sign-in sessions and open desktop sessions.
#[utoipa::path(get, path = "/api/v1/admin/users/{username}", tag = "admin",
    responses((status = 200, body = UserDetail), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn get_user(
    State(st): State<AppState>,
    _admin: AdminUser,
    Path(username): Path<String>,
) -> ApiResult<Json<UserDetail>> {
    let user = summary(&st, &username).await?;
    let sessions = match &user.id {
        Some(id) => st.db.active_login_sessions(id, now_ms()).await?,
        None => Vec::new(),
    };
    let sessions = sessions
        .into_iter()
        .map(|s| SignInSessionView {
            id: s.id,
            method: s.method.as_str().into(),
            client_addr: s.client_addr,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
        })
        .collect();
    let desktop_sessions = st.db.open_sessions_of_user(&username).await?;
    let mfa_enrolled = match &user.id {
        Some(id) => st.db.get_mfa(id).await?.is_some_and(|e| e.confirmed_at.is_some()),
        None => false,
    };
    let now = now_ms();
    let tokens = st
        .db
        .list_api_tokens()
        .await?
        .into_iter()
        .filter(|t| t.created_by == username && t.is_active(now))
        .collect();
    Ok(Json(UserDetail { user, mfa_enrolled, sessions, desktop_sessions, tokens }))
}

/// What signing a user out everywhere did.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedOutEverywhere {
    /// Sign-in sessions ended (their desktop sessions ended with them, viewers disconnected).
    pub sessions_ended: usize,
}

/// Signs a user out everywhere: every sign-in session, every open desktop session (viewers
/// disconnected within seconds), their unused floating desktops recycled. Audited.
#[utoipa::path(post, path = "/api/v1/admin/users/{username}/signout", tag = "admin",
    responses((status = 200, body = SignedOutEverywhere), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn sign_out_everywhere(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(username): Path<String>,
) -> ApiResult<Json<SignedOutEverywhere>> {
    let user = summary(&st, &username).await?;
    let Some(id) = user.id else {
        return Err(ApiError::NotFound(format!("{username:?} has no sign-in sessions to end")));
    };
    let n = service::sign_out_everywhere(
        &st,
        &username,
        &id,
        &admin.username,
        "signed out by an administrator",
        addr.0,
    )
    .await?;
    Ok(Json(SignedOutEverywhere { sessions_ended: n }))
}

/// Removes a user's second factor (a lost phone and no recovery code left) and ends their
/// sign-ins: they set up a new one at their next sign-in where policy requires it. Audited.
#[utoipa::path(delete, path = "/api/v1/admin/users/{username}/mfa", tag = "admin",
    responses((status = 204, description = "Reset"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn reset_mfa(
    State(st): State<AppState>,
    AdminPerson(admin): AdminPerson,
    addr: ClientAddr,
    Path(username): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    let user = summary(&st, &username).await?;
    let id =
        user.id.ok_or_else(|| ApiError::NotFound(format!("{username:?} has no second factor")))?;
    if !st.db.reset_mfa(&id).await? {
        return Err(ApiError::NotFound(format!("{username:?} has no second factor")));
    }
    service::audit(
        &st,
        &admin.username,
        "mfa.reset",
        &username,
        "success",
        addr.0,
        serde_json::json!({}),
    )
    .await;
    // Whoever holds one of their sign-ins now must not set up their own authenticator in the
    // user's place: every sign-in ends, and the user sets one up at their next.
    service::sign_out_everywhere(
        &st,
        &username,
        &id,
        &admin.username,
        "second factor reset by an administrator",
        addr.0,
    )
    .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
