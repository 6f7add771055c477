//! `/api/v1/desktops`: the user's desktops.

use atrium_protocol::session::EndReason;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthUser, ClientAddr};
use crate::db::{DesktopState, now_ms};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_desktops)).routes(routes!(disconnect))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserDesktop {
    pub id: String,
    pub pool: String,
    pub state: DesktopState,
    pub created_at: i64,
    /// Whether a session is open on it (from any sign-in).
    pub in_session: bool,
}

/// The signed-in user's desktops, to reconnect to.
#[utoipa::path(get, path = "/api/v1/desktops", tag = "desktops",
    responses((status = 200, body = Vec<UserDesktop>), (status = 401, body = ErrorResponse)))]
async fn list_desktops(
    State(st): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<Vec<UserDesktop>>> {
    let mut out = Vec::new();
    for d in st.db.user_desktops(&user.id).await? {
        let pool = st.db.get_pool(&d.pool_id).await?.map(|p| p.name).unwrap_or_default();
        let in_session = !st.db.open_sessions_of_desktop(&d.id).await?.is_empty();
        out.push(UserDesktop {
            id: d.id,
            pool,
            state: d.state,
            created_at: d.created_at,
            in_session,
        });
    }
    Ok(Json(out))
}

/// The user's open session on one of their desktops; 404 when the desktop is not theirs.
async fn own_open_session(
    st: &AppState,
    user: &AuthUser,
    desktop_id: &str,
) -> ApiResult<Option<crate::db::DesktopSession>> {
    let d = st.db.get_desktop(desktop_id).await?;
    let Some(d) = d.filter(|d| d.owner_id.as_deref() == Some(user.id.as_str())) else {
        return Err(ApiError::NotFound("no such desktop".into()));
    };
    Ok(st
        .db
        .open_sessions_of_desktop(&d.id)
        .await?
        .into_iter()
        .find(|s| s.username == user.username))
}

/// Disconnect from a desktop: the viewers close; the desktop stays assigned (for its pool's
/// disconnect time) so the user can reconnect. Disconnecting a desktop of the
/// user's that has no open session does nothing and succeeds (a retried request is safe).
#[utoipa::path(post, path = "/api/v1/desktops/{id}/disconnect", tag = "desktops",
    params(("id" = String, Path, description = "Desktop id")),
    responses((status = 204, description = "Disconnected"), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn disconnect(
    State(st): State<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let Some(s) = own_open_session(&st, &user, &id).await? else {
        return Ok(StatusCode::NO_CONTENT);
    };
    service::end_session(&st, &s, "disconnected", EndReason::Disconnected, now_ms()).await?;
    service::audit(
        &st,
        &user.username,
        "desktop.disconnect",
        &id,
        "success",
        addr.0,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
