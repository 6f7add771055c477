//! `/api/v1/admin/recordings`: session recordings, for administrators whom policy lets review
//! them (`review_recordings`): the list (by user and time), one recording's index (what a
//! player needs to seek; opening it is audited as a playback), its chunks (each checked
//! against its hash as it is served) and a check of its whole chain.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{ClientAddr, Reviewer};
use crate::db::{Chunk, Recording, RecordingFilter};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::recordings::{self, Integrity};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_recordings))
        .routes(routes!(get_recording))
        .routes(routes!(get_chunk))
        .routes(routes!(verify_recording))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecordingQuery {
    /// Only this user's (exact username).
    pub user: Option<String>,
    /// Started at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Started at or before this time (ms since the epoch).
    pub until: Option<i64>,
    /// At most this many (1-1000, default 200), newest first.
    pub limit: Option<u32>,
}

/// A recording with what a player needs: its chunks, their times and key frames.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingIndex {
    pub recording: Recording,
    pub chunks: Vec<Chunk>,
}

async fn find(st: &AppState, id: &str) -> ApiResult<Recording> {
    recordings::check_id(id)?;
    st.db.get_recording(id).await?.ok_or_else(|| ApiError::NotFound("no such recording".into()))
}

/// Session recordings, newest first.
#[utoipa::path(get, path = "/api/v1/admin/recordings", tag = "recordings", params(RecordingQuery),
    responses((status = 200, body = Vec<Recording>), (status = 401, body = ErrorResponse),
        (status = 403, description = "Not permitted to review recordings", body = ErrorResponse)))]
async fn list_recordings(
    State(st): State<AppState>,
    _reviewer: Reviewer,
    q: Result<Query<RecordingQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Recording>>> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let f = RecordingFilter {
        username: q.user.filter(|u| !u.is_empty()),
        since: q.since,
        until: q.until,
        limit: q.limit.unwrap_or(200),
    };
    Ok(Json(st.db.list_recordings(&f).await?))
}

/// One recording and its index, to play it. Every call is audited as a playback
/// (`recording.play`).
#[utoipa::path(get, path = "/api/v1/admin/recordings/{id}", tag = "recordings", params(("id" = String, Path)),
    responses((status = 200, body = RecordingIndex), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn get_recording(
    State(st): State<AppState>,
    Reviewer(who): Reviewer,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<Json<RecordingIndex>> {
    let recording = find(&st, &id).await?;
    let chunks = st.db.recording_chunks(&id).await?;
    service::audit(
        &st,
        &who.username,
        "recording.play",
        &id,
        "success",
        addr.0,
        serde_json::json!({ "user": recording.username, "pool": recording.pool, "started_at": recording.started_at }),
    )
    .await;
    Ok(Json(RecordingIndex { recording, chunks }))
}

/// One chunk's bytes (the recording format), checked against the hash stored when it was
/// recorded: a chunk changed or lost since is a 409 saying so.
#[utoipa::path(get, path = "/api/v1/admin/recordings/{id}/chunks/{n}", tag = "recordings", params(("id" = String, Path), ("n" = i64, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "The chunk was changed or lost: the recording was tampered with", body = ErrorResponse)))]
async fn get_chunk(
    State(st): State<AppState>,
    _reviewer: Reviewer,
    Path((id, n)): Path<(String, i64)>,
) -> ApiResult<Response> {
    recordings::check_id(&id)?;
    let chunk = st
        .db
        .recording_chunk(&id, n)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such chunk".into()))?;
    let bytes = recordings::read_chunk(&st, &id, &chunk).await.map_err(|p| {
        tracing::warn!(recording = %id, problem = %p, "a recording chunk failed its check");
        ApiError::Conflict(format!("the recording was tampered with: {p}"))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            // Chunks never change: a player may keep them while it seeks.
            (header::CACHE_CONTROL, "private, max-age=3600, immutable"),
        ],
        bytes,
    )
        .into_response())
}

/// Checks a recording's whole chain: every chunk there, unchanged and in order.
#[utoipa::path(get, path = "/api/v1/admin/recordings/{id}/verify", tag = "recordings", params(("id" = String, Path)),
    responses((status = 200, body = Integrity), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn verify_recording(
    State(st): State<AppState>,
    _reviewer: Reviewer,
    Path(id): Path<String>,
) -> ApiResult<Json<Integrity>> {
    let r = find(&st, &id).await?;
    let v = recordings::verify(&st, &r).await?;
    if let Some(p) = &v.problem {
        tracing::warn!(recording = %id, problem = %p, "a recording failed its check");
    }
    Ok(Json(v))
}
