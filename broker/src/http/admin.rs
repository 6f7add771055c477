//! `/api/v1/admin/...`: pools, nodes, desktops, sessions. Every handler takes
//! [`AdminUser`], so forgetting the check does not compile; every change is audited.

use atrium_protocol::session::EndReason;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use crate::auth::{AdminPerson, AdminUser, ClientAddr};
use crate::db::{Desktop, Node, OpenSessionView, Pool, PoolCounts, PoolInput, now_ms};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::policy::{Action, Principal};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pools, create_pool))
        .routes(routes!(get_pool, update_pool, delete_pool))
        .routes(routes!(list_nodes))
        .routes(routes!(delete_node))
        .routes(routes!(drain_node))
        .routes(routes!(undrain_node))
        .routes(routes!(list_desktops))
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
        .routes(routes!(shadow_session))
}

/// A pool with its live counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminPool {
    #[serde(flatten)]
    pub pool: Pool,
    pub counts: PoolCounts,
}

async fn with_counts(st: &AppState, pool: Pool) -> ApiResult<AdminPool> {
    let counts = st.db.pool_counts(&pool.id).await?;
    Ok(AdminPool { pool, counts })
}

/// Every pool, with ready, in-use and total counts.
#[utoipa::path(get, path = "/api/v1/admin/pools", tag = "admin",
    responses((status = 200, body = Vec<AdminPool>), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn list_pools(
    State(st): State<AppState>,
    _admin: AdminUser,
) -> ApiResult<Json<Vec<AdminPool>>> {
    let mut out = Vec::new();
    for p in st.db.list_pools().await? {
        out.push(with_counts(&st, p).await?);
    }
    Ok(Json(out))
}

/// Create a pool.
#[utoipa::path(post, path = "/api/v1/admin/pools", tag = "admin", request_body = PoolInput,
    responses((status = 201, body = AdminPool), (status = 400, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 409, description = "A pool of that name exists", body = ErrorResponse),
        (status = 422, description = "A field is invalid (`field` names it)", body = ErrorResponse)))]
async fn create_pool(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    JsonBody(input): JsonBody<PoolInput>,
) -> ApiResult<(StatusCode, Json<AdminPool>)> {
    input.validate()?;
    let pool = st.db.create_pool(&input, now_ms()).await?;
    service::audit(
        &st,
        &admin.username,
        "pool.create",
        &pool.name,
        "success",
        addr.0,
        serde_json::to_value(&input).unwrap_or_default(),
    )
    .await;
    Ok((StatusCode::CREATED, Json(with_counts(&st, pool).await?)))
}

/// One pool.
#[utoipa::path(get, path = "/api/v1/admin/pools/{id}", tag = "admin", params(("id" = String, Path, description = "Pool id or name")),
    responses((status = 200, body = AdminPool), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn get_pool(
    State(st): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> ApiResult<Json<AdminPool>> {
    let pool =
        st.db.get_pool(&id).await?.ok_or_else(|| ApiError::NotFound("no such pool".into()))?;
    Ok(Json(with_counts(&st, pool).await?))
}

/// Replace a pool's settings. Spares follow the new `min_ready`; desktops already made keep
/// their size until they are replaced.
#[utoipa::path(put, path = "/api/v1/admin/pools/{id}", tag = "admin", params(("id" = String, Path, description = "Pool id or name")), request_body = PoolInput,
    responses((status = 200, body = AdminPool), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn update_pool(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<PoolInput>,
) -> ApiResult<Json<AdminPool>> {
    input.validate()?;
    let existing =
        st.db.get_pool(&id).await?.ok_or_else(|| ApiError::NotFound("no such pool".into()))?;
    let pool = st
        .db
        .update_pool(&existing.id, &input, now_ms())
        .await?
        .ok_or_else(|| ApiError::NotFound("no such pool".into()))?;
    service::audit(
        &st,
        &admin.username,
        "pool.update",
        &pool.name,
        "success",
        addr.0,
        serde_json::to_value(&input).unwrap_or_default(),
    )
    .await;
    Ok(Json(with_counts(&st, pool).await?))
}

/// Delete a pool with no desktop in use; its spares are destroyed.
#[utoipa::path(delete, path = "/api/v1/admin/pools/{id}", tag = "admin", params(("id" = String, Path, description = "Pool id or name")),
    responses((status = 204, description = "Deleted"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "Desktops of the pool are in use", body = ErrorResponse)))]
async fn delete_pool(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let pool =
        st.db.get_pool(&id).await?.ok_or_else(|| ApiError::NotFound("no such pool".into()))?;
    match st.db.delete_pool(&pool.id, now_ms()).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::NotFound("no such pool".into())),
        Err(crate::db::DbError::Conflict(why)) => return Err(ApiError::Conflict(why)),
        Err(e) => return Err(e.into()),
    }
    service::audit(
        &st,
        &admin.username,
        "pool.delete",
        &pool.name,
        "success",
        addr.0,
        serde_json::json!({ "id": pool.id }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Nodes with their capacity and health.
#[utoipa::path(get, path = "/api/v1/admin/nodes", tag = "admin",
    responses((status = 200, body = Vec<Node>), (status = 403, body = ErrorResponse)))]
async fn list_nodes(State(st): State<AppState>, _admin: AdminUser) -> ApiResult<Json<Vec<Node>>> {
    Ok(Json(st.db.list_nodes().await?))
}

/// Forget a node (decommissioned, or to let it register from new URLs). Refused while desktops
/// live on it: drain it and let them end first.
#[utoipa::path(delete, path = "/api/v1/admin/nodes/{id}", tag = "admin", params(("id" = String, Path, description = "Node id")),
    responses((status = 204, description = "Forgotten"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "Desktops still live on the node", body = ErrorResponse)))]
async fn delete_node(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    match st.db.delete_node(&id).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::NotFound("no such node".into())),
        Err(crate::db::DbError::Conflict(why)) => return Err(ApiError::Conflict(why)),
        Err(e) => return Err(e.into()),
    }
    service::audit(
        &st,
        &admin.username,
        "node.forget",
        &id,
        "success",
        addr.0,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_draining(
    st: &AppState,
    admin: &str,
    addr: ClientAddr,
    id: &str,
    draining: bool,
) -> ApiResult<Json<Node>> {
    if !st.db.set_node_draining(id, draining).await? {
        return Err(ApiError::NotFound("no such node".into()));
    }
    let action = if draining { "node.drain" } else { "node.undrain" };
    service::audit(st, admin, action, id, "success", addr.0, serde_json::json!({})).await;
    Ok(Json(st.db.get_node(id).await?.ok_or_else(|| ApiError::NotFound("no such node".into()))?))
}

/// Drain a node: no new desktop is placed on it; desktops on it carry on.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{id}/drain", tag = "admin", params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = Node), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn drain_node(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    set_draining(&st, &admin.username, addr, &id, true).await
}

/// Undrain a node.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{id}/undrain", tag = "admin", params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = Node), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn undrain_node(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    set_draining(&st, &admin.username, addr, &id, false).await
}

/// Every desktop, assigned or spare.
#[utoipa::path(get, path = "/api/v1/admin/desktops", tag = "admin",
    responses((status = 200, body = Vec<Desktop>), (status = 403, body = ErrorResponse)))]
async fn list_desktops(
    State(st): State<AppState>,
    _admin: AdminUser,
) -> ApiResult<Json<Vec<Desktop>>> {
    Ok(Json(st.db.list_desktops().await?))
}

/// Open desktop sessions: user, pool, node, since, client address.
#[utoipa::path(get, path = "/api/v1/admin/sessions", tag = "admin",
    responses((status = 200, body = Vec<OpenSessionView>), (status = 403, body = ErrorResponse)))]
async fn list_sessions(
    State(st): State<AppState>,
    _admin: AdminUser,
) -> ApiResult<Json<Vec<OpenSessionView>>> {
    Ok(Json(st.db.list_open_sessions().await?))
}

/// End a session: its viewers are disconnected; a floating desktop is destroyed.
#[utoipa::path(post, path = "/api/v1/admin/sessions/{id}/end", tag = "admin", params(("id" = String, Path, description = "Session id")),
    responses((status = 204, description = "Ended"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn end_session(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = st
        .db
        .get_desktop_session(&id)
        .await?
        .filter(|s| s.ended_at.is_none())
        .ok_or_else(|| ApiError::NotFound("no open session with that id".into()))?;
    service::end_session(&st, &s, "ended by an administrator", EndReason::Administrator, now_ms())
        .await?;
    service::audit(
        &st,
        &admin.username,
        "session.end_by_admin",
        &id,
        "success",
        addr.0,
        serde_json::json!({ "user": s.username }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A view-only display ticket into someone's session (policy action `shadow` on its pool).
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowResponse {
    pub ws_url: String,
    pub ticket: String,
    pub ticket_expires_in: u64,
}

/// Join a session view-only.
#[utoipa::path(post, path = "/api/v1/admin/sessions/{id}/shadow", tag = "admin", params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = ShadowResponse), (status = 403, description = "Policy does not allow shadowing this pool", body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
async fn shadow_session(
    State(st): State<AppState>,
    AdminPerson(admin): AdminPerson,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<Json<ShadowResponse>> {
    let s = st
        .db
        .get_desktop_session(&id)
        .await?
        .filter(|s| s.ended_at.is_none())
        .ok_or_else(|| ApiError::NotFound("no open session with that id".into()))?;
    let pool = st
        .db
        .get_pool(&s.pool_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("the session's pool is gone".into()))?;
    if !st.policies.is_allowed(
        &admin.principal(),
        Action::Shadow,
        service::pool_resource(&pool),
        &service::policy_ctx(addr.0),
    ) {
        service::audit(
            &st,
            &admin.username,
            "session.shadow",
            &id,
            "denied",
            addr.0,
            serde_json::json!({ "user": s.username }),
        )
        .await;
        return Err(ApiError::Forbidden("policy does not allow shadowing this pool".into()));
    }
    // A pool that asks its users for the second factor asks whoever watches them too.
    service::check_pool_mfa(&st, &admin.principal(), admin.mfa, &pool, addr.0)?;
    let d = st
        .db
        .get_desktop(&s.desktop_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("the session's desktop is gone".into()))?;
    let caps = atrium_protocol::ticket::Capabilities {
        view_only: true,
        shadow: true,
        audio: false,
        ..Default::default()
    };
    // The watched user's watermark (as their own viewer draws it, from their address) with a
    // line naming the administrator, when policy watermarks either of them here.
    let owner = st.db.get_user(&s.username).await?;
    let owner_groups = owner.as_ref().map(|u| u.groups.clone()).unwrap_or_default();
    let owner_ctx = service::policy_ctx(s.client_addr.parse().unwrap_or(addr.0));
    let owner_principal = Principal { username: &s.username, groups: &owner_groups };
    let resource = service::pool_resource(&pool);
    let watermark =
        (st.policies.is_allowed(&owner_principal, Action::Watermark, resource, &owner_ctx)
            || st.policies.is_allowed(
                &admin.principal(),
                Action::Watermark,
                resource,
                &service::policy_ctx(addr.0),
            ))
        .then(|| {
            let watched = service::Watched {
                username: &s.username,
                display_name: owner.as_ref().and_then(|u| u.display_name.as_deref()),
                client: &s.client_addr,
                pool: &pool.name,
            };
            service::render_watermark(&st.cfg.watermark, watched, Some(&admin.username))
        });
    let (ws_url, ticket) =
        service::mint_ticket(&st, &d, &admin.username, &s.id, caps, watermark, None).await?;
    service::audit(
        &st,
        &admin.username,
        "session.shadow",
        &id,
        "success",
        addr.0,
        serde_json::json!({ "user": s.username }),
    )
    .await;
    Ok(Json(ShadowResponse { ws_url, ticket, ticket_expires_in: st.cfg.tickets.ttl_secs }))
}
