//! Files in and out of a VM (local socket only). Uploads: the display proxy streams a file in,
//! and once its scanner has passed it, commits it to the user, or aborts it; what is received
//! but not decided within [`DECIDE_WITHIN`] is thrown away. Downloads: the list of the user's
//! transfer folder, and a file of it streamed out as fast as the proxy reads it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use atrium_protocol::node::{FILE_SIZE_HEADER, FileListing, UploadSaved, UploadStaged};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::vm::StagedFile;

/// How long a received file waits for its commit.
pub const DECIDE_WITHIN: Duration = Duration::from_secs(600);
/// Most received files waiting for a decision on this node.
const MAX_STAGED: usize = 256;

/// Received files waiting for a decision, by number.
#[derive(Debug, Default)]
pub struct Uploads {
    staged: Mutex<HashMap<u64, StagedFile>>,
    next: AtomicU64,
}

impl Uploads {
    fn take(&self, vm: &str, n: u64) -> Result<StagedFile, ApiError> {
        let mut staged = self.staged.lock().expect("uploads lock");
        match staged.remove(&n) {
            Some(f) if f.vm == vm => Ok(f),
            Some(f) => {
                staged.insert(n, f);
                Err(not_found(n))
            }
            None => Err(not_found(n)),
        }
    }
}

fn not_found(n: u64) -> ApiError {
    ApiError::NotFound {
        message: format!("no received upload {n} waits for a decision on this VM"),
        field: None,
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vms/{id}/uploads", post(upload))
        .route("/vms/{id}/uploads/{n}/commit", post(commit))
        .route("/vms/{id}/uploads/{n}", delete(abort))
        .route("/vms/{id}/files", get(list))
        .route("/vms/{id}/files/content", get(content))
}

async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FileListing>, ApiError> {
    Ok(Json(FileListing { files: s.node.list_files(&id).await? }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentQuery {
    name: String,
}

/// The file's bytes, as long as its size says (in `Content-Length` and [`FILE_SIZE_HEADER`]);
/// a body that ends before was cut off (the guest failed, or the file shrank).
async fn content(
    State(s): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ContentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {e}"), None))?;
    let download = s.node.download(&id, &q.name).await?;
    let size = download.size;
    let body = futures_util::stream::unfold(download, |mut d| async move {
        let item = d.next().await?.map_err(std::io::Error::other);
        Some((item, d))
    });
    Ok((
        [
            (header::CONTENT_LENGTH, size.to_string()),
            (FILE_SIZE_HEADER.parse().expect("a header name"), size.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    name: String,
    size: u64,
}

async fn upload(
    State(s): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Json<UploadStaged>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {e}"), None))?;
    if s.uploads.staged.lock().expect("uploads lock").len() >= MAX_STAGED {
        return Err(ApiError::Conflict(format!(
            "{MAX_STAGED} received files wait for a decision on this node already"
        )));
    }
    let file = s.node.upload(&id, &q.name, q.size, body.into_data_stream()).await?;
    let n = s.uploads.next.fetch_add(1, Ordering::Relaxed) + 1;
    s.uploads.staged.lock().expect("uploads lock").insert(n, file);
    let uploads = std::sync::Arc::clone(&s.uploads);
    tokio::spawn(async move {
        tokio::time::sleep(DECIDE_WITHIN).await;
        if let Some(f) = uploads.staged.lock().expect("uploads lock").remove(&n) {
            tracing::warn!(vm = %f.vm, upload = n, "a received file was not decided on in time");
        }
    });
    Ok(Json(UploadStaged { upload: n, size: q.size }))
}

async fn commit(
    State(s): State<AppState>,
    Path((id, n)): Path<(String, u64)>,
) -> Result<Json<UploadSaved>, ApiError> {
    let file = s.uploads.take(&id, n)?;
    Ok(Json(UploadSaved { path: file.commit().await? }))
}

async fn abort(
    State(s): State<AppState>,
    Path((id, n)): Path<(String, u64)>,
) -> Result<StatusCode, ApiError> {
    s.uploads.take(&id, n)?.abort().await?;
    Ok(StatusCode::NO_CONTENT)
}
