//! Session recordings on their way off the node (local socket only): the display proxy hands
//! each chunk of a recorded viewer's stream here, and the node sends it on to the broker at
//! once, signed with the node's key ([`Uplink`]). Nothing is kept on the node. A refusal by
//! the broker is a 409 with its reason (the proxy stops the recorded viewer); a broker out of
//! reach is a 502 (the proxy tries again).

use std::time::Duration;

use atrium_protocol::recording::MAX_CHUNK_BYTES;
use atrium_protocol::signed::{self, BROKER_AUDIENCE, NodeKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;

use super::{ApiError, AppState};

/// How the node reaches the broker with its own signature.
#[derive(Debug)]
pub struct Uplink {
    client: reqwest::Client,
    /// The broker's base URL, without a trailing `/`.
    base: String,
    key: std::sync::Arc<NodeKey>,
    node_id: String,
}

impl Uplink {
    /// An uplink to the broker at `base`, trusting `ca_file` (or the system's roots).
    pub fn new(
        base: &str,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
        key: std::sync::Arc<NodeKey>,
        node_id: &str,
    ) -> Result<Self, String> {
        let client = atrium_door::client::http_client(ca_file)
            .map_err(|e| e.to_string())?
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            key,
            node_id: node_id.to_owned(),
        })
    }

    /// Posts `body` to the broker's `path_and_query`, signed.
    async fn post(&self, path_and_query: &str, body: Bytes) -> Result<(), ApiError> {
        let req = signed::Request { method: "POST", path_and_query, body: &body };
        let token = self
            .key
            .sign(&self.node_id, BROKER_AUDIENCE, &req, signed::now_secs())
            .map_err(|e| ApiError::Internal(format!("signing for the broker: {e}")))?;
        let resp = self
            .client
            .post(format!("{}{path_and_query}", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| ApiError::BadGateway(format!("the broker is out of reach: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if status.is_server_error() {
            Err(ApiError::BadGateway(format!("the broker answered {status}: {text}")))
        } else {
            Err(ApiError::Conflict(format!("the broker refused: {status}: {text}")))
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vms/{id}/recordings/{rec}/chunks/{n}", post(chunk))
        .route("/vms/{id}/recordings/{rec}/end", post(end))
        .layer(DefaultBodyLimit::max(MAX_CHUNK_BYTES))
}

#[derive(Debug, Deserialize)]
struct ChunkQuery {
    #[serde(default)]
    last: bool,
}

fn uplink(s: &AppState) -> Result<&Uplink, ApiError> {
    s.uplink.as_deref().ok_or_else(|| {
        ApiError::Conflict("this node has no broker (broker.url): nothing can be recorded".into())
    })
}

/// Well-formed ids. The VM may be gone already (a floating desktop destroyed at sign-out while
/// its last chunks were still on their way): the broker checks the recording is this node's.
fn check_ids(vm: &str, rec: &str) -> Result<(), ApiError> {
    atrium_protocol::node::validate_name("vm", vm, 128)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("vm")))?;
    atrium_protocol::ticket::validate_recording_id(rec)
        .map_err(|m| ApiError::bad_request(m, Some("recording")))
}

async fn chunk(
    State(s): State<AppState>,
    Path((vm, rec, n)): Path<(String, String, u64)>,
    Query(q): Query<ChunkQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_ids(&vm, &rec)?;
    let path = format!("/api/v1/nodes/recordings/{rec}/chunks/{n}?last={}", q.last);
    uplink(&s)?.post(&path, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn end(
    State(s): State<AppState>,
    Path((vm, rec)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_ids(&vm, &rec)?;
    uplink(&s)?.post(&format!("/api/v1/nodes/recordings/{rec}/end"), Bytes::new()).await?;
    Ok(StatusCode::NO_CONTENT)
}
