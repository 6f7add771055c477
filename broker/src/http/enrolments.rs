//! `/api/v1/admin/enrolments` and `/api/v1/admin/nodes/{id}/revoke`: the administrator's side
//! of node identities (see [`crate::enrol`]). Every change is audited.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use crate::auth::{AdminPerson, AdminUser, ClientAddr};
use crate::db::enrolments::Enrolment;
use crate::enrol::{self, CreatedEnrolment, EnrolmentInput};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_enrolments, create_enrolment))
        .routes(routes!(delete_enrolment))
        .routes(routes!(revoke_node))
}

/// Enrolment tokens, newest first (never the tokens themselves).
#[utoipa::path(get, path = "/api/v1/admin/enrolments", tag = "admin",
    responses((status = 200, body = Vec<Enrolment>), (status = 403, body = ErrorResponse)))]
async fn list_enrolments(
    State(st): State<AppState>,
    _admin: AdminUser,
) -> ApiResult<Json<Vec<Enrolment>>> {
    Ok(Json(st.db.list_enrolments().await?))
}

/// Create a one-time enrolment token for a new node. The token is in this answer only.
#[utoipa::path(post, path = "/api/v1/admin/enrolments", tag = "admin", request_body = EnrolmentInput,
    responses((status = 201, body = CreatedEnrolment), (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn create_enrolment(
    State(st): State<AppState>,
    AdminPerson(admin): AdminPerson,
    addr: ClientAddr,
    JsonBody(input): JsonBody<EnrolmentInput>,
) -> ApiResult<(StatusCode, Json<CreatedEnrolment>)> {
    let created = enrol::create(&st.db, &admin.username, &input).await?;
    service::audit(
        &st,
        &admin.username,
        "node.enrolment_create",
        &created.id,
        "success",
        addr.0,
        serde_json::json!({ "node_id": created.node_id, "expires_at": created.expires_at }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Withdraw an enrolment token.
#[utoipa::path(delete, path = "/api/v1/admin/enrolments/{id}", tag = "admin", params(("id" = String, Path, description = "Enrolment id")),
    responses((status = 204, description = "Withdrawn"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn delete_enrolment(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !st.db.delete_enrolment(&id).await? {
        return Err(ApiError::NotFound("no such enrolment token".into()));
    }
    service::audit(
        &st,
        &admin.username,
        "node.enrolment_delete",
        &id,
        "success",
        addr.0,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke a node: its key opens nothing from now on, the broker treats it as lost (its
/// desktops fail over), and its id may enrol again only with a new token.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{id}/revoke", tag = "admin", params(("id" = String, Path, description = "Node id")),
    responses((status = 204, description = "Revoked"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn revoke_node(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !st.db.revoke_node(&id).await? {
        return Err(ApiError::NotFound("no enrolled node with this id".into()));
    }
    tracing::warn!(node = %id, by = %admin.username, "node revoked");
    service::audit(
        &st,
        &admin.username,
        "node.revoke",
        &id,
        "success",
        addr.0,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
