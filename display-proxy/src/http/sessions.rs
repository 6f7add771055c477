//! `POST /api/v1/sessions/{sid}/end`: the broker ends a desktop session (sign-out, revocation,
//! an administrator, idle or maximum time), and its viewers here are disconnected and told why.

use atrium_protocol::node::SessionEnd;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::AppState;
use crate::error::Refused;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/sessions/{sid}/end", post(end_session))
}

/// Largest body of a session end (`{"reason": ...}`).
const MAX_END_BODY: usize = 1024;

/// `POST /api/v1/sessions/{sid}/end`, a call the broker signed for this node: disconnects
/// every viewer of a broker session, with the reason in an optional JSON body
/// ([`SessionEnd`]). Idempotent.
async fn end_session(
    State(s): State<AppState>,
    uri: axum::extract::OriginalUri,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.len() > MAX_END_BODY {
        return Refused::new(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large")
            .into_response();
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let path = uri.0.path_and_query().map_or("/", |p| p.as_str());
    let req =
        atrium_protocol::signed::Request { method: "POST", path_and_query: path, body: &body };
    if let Err(e) = s.0.verifier.verify_request(auth, &req, &s.0.node_audience).await {
        tracing::warn!(session = %sid.chars().take(64).collect::<String>(), reason = %e, "a session end not signed by the broker was refused");
        return Refused::new(
            StatusCode::UNAUTHORIZED,
            format!("a call signed by the broker is required: {e}"),
        )
        .into_response();
    }
    let end = if body.is_empty() {
        SessionEnd::default()
    } else {
        match serde_json::from_slice::<SessionEnd>(&body) {
            Ok(end) => end,
            Err(e) => {
                return Refused::new(StatusCode::BAD_REQUEST, format!("invalid body: {e}"))
                    .into_response();
            }
        }
    };
    let n = s.0.sessions.end(&sid, end.reason);
    tracing::info!(session = %sid, viewers = n, reason = end.reason.code(), "the broker ended a session");
    StatusCode::NO_CONTENT.into_response()
}
