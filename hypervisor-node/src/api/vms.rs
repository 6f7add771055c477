//! `/api/v1/vms`: create, list, read, stop, delete a VM; its serial console, a screenshot, the
//! signed-in user's session, the clipboard, and the screen's size.

use std::time::Duration;

use atrium_protocol::agent::SessionUser;
use atrium_protocol::node::{
    ClipboardPaste, ClipboardState, DisplaySize, RuntimeKind, ScreenSize, SessionRequest, VmInfo,
    VmSpec,
};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use super::json::{self, FieldCheck, check};
use super::{ApiError, AppState};

/// The fields of a VM spec, to name the one at fault in a malformed request.
pub const SPEC_FIELDS: &[FieldCheck] = &[
    ("image", check::<String>),
    ("vcpus", check::<u32>),
    ("memory_mib", check::<u32>),
    ("display", check::<DisplaySize>),
    ("runtime", check::<Option<RuntimeKind>>),
    ("persistent_disk", check::<Option<String>>),
    ("user", check::<Option<SessionUser>>),
];

const SESSION_FIELDS: &[FieldCheck] = &[("user", check::<SessionUser>)];
const CLIPBOARD_FIELDS: &[FieldCheck] = &[("text", check::<Option<String>>), ("png", check_base64)];
const SCREEN_FIELDS: &[FieldCheck] = &[("size", check::<DisplaySize>)];
/// Checks that a field is base64 text (or absent).
fn check_base64(v: &serde_json::Value) -> Result<(), serde_json::Error> {
    atrium_protocol::b64::option::deserialize(v).map(drop)
}

/// Longest a clipboard read may wait for a change.
const MAX_WAIT_SECS: u64 = 30;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vms", post(create).get(list))
        .route("/vms/{id}", get(read).delete(delete))
        .route("/vms/{id}/stop", post(stop))
        .route("/vms/{id}/console", get(console))
        .route("/vms/{id}/screenshot.png", get(screenshot))
        .route("/vms/{id}/session", post(start_session).delete(end_session))
        .route("/vms/{id}/clipboard", post(paste).get(clipboard))
        .route("/vms/{id}/screen", put(set_screen))
}

/// What the display proxy beside the node reads (on the local socket): where a VM's display is,
/// its clipboard, and its screen's size (the viewer's window).
pub fn display_router() -> Router<AppState> {
    Router::new()
        .route("/vms/{id}", get(read))
        .route("/vms/{id}/clipboard", post(paste).get(clipboard))
        .route("/vms/{id}/screen", put(set_screen))
}

async fn create(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<VmInfo>), ApiError> {
    let spec: VmSpec = json::parse(&body, SPEC_FIELDS)?;
    let info = s.node.create(spec).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list(State(s): State<AppState>) -> Json<Vec<VmInfo>> {
    Json(s.node.list())
}

async fn read(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(s.node.get(&id)?.info()))
}

async fn stop(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(s.node.stop(&id).await?))
}

async fn delete(State(s): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.node.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn console(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let text = s.node.get(&id)?.console.text();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

async fn screenshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let frame = s.node.screenshot(&id).await?;
    // PNG encoding is CPU work: off the async threads.
    let png = tokio::task::spawn_blocking(move || frame.to_png())
        .await
        .map_err(|e| ApiError::Internal(format!("encoding the screenshot: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], png))
}

async fn start_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<VmInfo>, ApiError> {
    let req: SessionRequest = json::parse(&body, SESSION_FIELDS)?;
    Ok(Json(s.node.start_session(&id, req.user).await?))
}

async fn end_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(s.node.end_session(&id).await?))
}

async fn paste(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: ClipboardPaste = json::parse(&body, CLIPBOARD_FIELDS)?;
    s.node.paste(&id, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_screen(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ScreenSize>, ApiError> {
    let req: ScreenSize = json::parse(&body, SCREEN_FIELDS)?;
    Ok(Json(ScreenSize { size: s.node.set_screen(&id, req.size).await? }))
}

#[derive(Debug, Deserialize)]
struct ClipboardQuery {
    after: Option<u64>,
    wait: Option<u64>,
}

async fn clipboard(
    State(s): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ClipboardQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ClipboardState>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {e}"), None))?;
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(
            format!("wait: at most {MAX_WAIT_SECS} seconds"),
            Some("wait"),
        ));
    }
    Ok(Json(s.node.clipboard(&id, q.after.unwrap_or(0), Duration::from_secs(wait)).await?))
}
