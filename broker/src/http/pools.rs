//! `/api/v1/pools`: the pools a user is entitled to, and connecting to one.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthUser, ClientAddr};
use crate::db::{DesktopState, PoolKind};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::policy::Action;
use crate::service::{self, ConnectResponse, Connecting};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_pools)).routes(routes!(connect))
}

/// What `POST /pools/{pool}/connect` may carry.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// The XKB layout of the user's keyboard (`us`, `de`, `fr`...): keys reach the desktop as
    /// physical keys, and the desktop applies this layout when the user's session starts.
    #[serde(default)]
    pub keyboard_layout: Option<String>,
}

fn valid_layout(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 32
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-+()".contains(&b))
}

/// A pool as a user sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPool {
    pub name: String,
    pub description: String,
    pub kind: PoolKind,
    pub display: String,
    /// `ready` (a desktop is waiting), `starting` (yours is booting), `in_use_elsewhere` (yours is
    /// open in another sign-in), `available` (one will be started), `full`.
    pub state: String,
    /// The user's desktop in this pool, if any.
    pub desktop_id: Option<String>,
}

/// The pools the signed-in user may use, with their state.
#[utoipa::path(get, path = "/api/v1/pools", tag = "desktops",
    responses((status = 200, body = Vec<UserPool>), (status = 401, body = ErrorResponse)))]
async fn list_pools(
    State(st): State<AppState>,
    user: AuthUser,
    addr: ClientAddr,
) -> ApiResult<Json<Vec<UserPool>>> {
    let ctx = service::policy_ctx(addr.0);
    let mine = st.db.user_desktops(&user.id).await?;
    let mut out = Vec::new();
    for pool in st.db.list_pools().await? {
        if !st.policies.is_allowed(
            &user.principal(),
            Action::Connect,
            service::pool_resource(&pool),
            &ctx,
        ) {
            continue;
        }
        let desktop = mine.iter().find(|d| d.pool_id == pool.id);
        let state = match desktop {
            Some(d) => {
                let open = st.db.open_sessions_of_desktop(&d.id).await?;
                if open.iter().any(|s| s.login_session_id != user.sid) {
                    "in_use_elsewhere"
                } else {
                    match d.state {
                        DesktopState::Ready => "ready",
                        DesktopState::Provisioning | DesktopState::Starting => "starting",
                        _ => "available",
                    }
                }
            }
            None => {
                let c = st.db.pool_counts(&pool.id).await?;
                if c.ready > 0 {
                    "ready"
                } else if c.starting > 0 || c.total < pool.max_size {
                    "available"
                } else {
                    "full"
                }
            }
        };
        out.push(UserPool {
            name: pool.name.clone(),
            description: pool.description.clone(),
            kind: pool.kind,
            display: pool.display.to_string(),
            state: state.into(),
            desktop_id: desktop.map(|d| d.id.clone()),
        });
    }
    Ok(Json(out))
}

/// Connect to a desktop of a pool: the user's own desktop, else a ready spare, else a new one
/// (`status: starting`: ask again). A ready desktop comes with a display ticket.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/connect", tag = "desktops",
    params(("pool" = String, Path, description = "Pool name")), request_body(content = ConnectRequest, description = "Optional"),
    responses(
        (status = 200, body = ConnectResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Policy does not allow this pool", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 503, description = "No desktop free, or no node able to start one", body = ErrorResponse)))]
async fn connect(
    State(st): State<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    Path(pool): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ConnectResponse>> {
    // The body is optional: empty, `{}` or `{"keyboard_layout": "de"}`.
    let req: ConnectRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ConnectRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?
    };
    if let Some(l) = &req.keyboard_layout
        && !valid_layout(l)
    {
        return Err(ApiError::Validation {
            field: "keyboard_layout".into(),
            message: format!(
                "keyboard_layout: {l:?} is not an XKB layout name (like us, de, fr(azerty))"
            ),
        });
    }
    let who = Connecting {
        username: &user.username,
        user_id: &user.id,
        login_sid: &user.sid,
        groups: &user.groups,
        display_name: user.display_name.as_deref(),
        uid: user.uid_number,
        gid: user.gid_number,
        addr: addr.0,
        keyboard_layout: req.keyboard_layout.as_deref(),
        mfa: user.mfa,
    };
    Ok(Json(service::connect(&st, &who, &pool).await?))
}
