//! `POST /api/v1/sessions/{sid}/end`: the broker ends a desktop session (sign-out, revocation,
//! an administrator, idle or maximum time), and its viewers here are disconnected and told why.

use atrium_protocol::session::EndReason;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::AppState;
use serde::Deserialize;

use crate::error::Refused;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/sessions/{sid}/end", post(end_session))
}

/// The query of a session end.
#[derive(Debug, Deserialize)]
struct EndQuery {
    reason: Option<String>,
}

/// `POST /api/v1/sessions/{sid}/end?reason=<code>`, a call the broker signed for this node:
/// disconnects every viewer of a broker session, telling them why ([`EndReason`]; none or an
/// unknown code: `other`). Idempotent.
async fn end_session(
    State(s): State<AppState>,
    uri: axum::extract::OriginalUri,
    Path(sid): Path<String>,
    Query(q): Query<EndQuery>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let path = uri.0.path_and_query().map_or("/", |p| p.as_str());
    let req = atrium_protocol::signed::Request { method: "POST", path_and_query: path, body: b"" };
    if let Err(e) = s.0.verifier.verify_request(auth, &req, &s.0.node_audience).await {
        tracing::warn!(session = %sid.chars().take(64).collect::<String>(), reason = %e, "a session end not signed by the broker was refused");
        return Refused::new(
            StatusCode::UNAUTHORIZED,
            format!("a call signed by the broker is required: {e}"),
        )
        .into_response();
    }
    let reason = q.reason.as_deref().map_or(EndReason::Other, EndReason::from_code);
    let n = s.0.sessions.end(&sid, reason);
    tracing::info!(session = %sid, viewers = n, reason = reason.code(), "the broker ended a session");
    StatusCode::NO_CONTENT.into_response()
}
