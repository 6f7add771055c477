//! `/healthz` and `/metrics`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics))
}

async fn healthz(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "clients": s.0.metrics.clients.load(Ordering::Relaxed),
        "desktops": s.0.metrics.desktops.load(Ordering::Relaxed),
    }))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = format!("{}{}", s.0.metrics.render(), s.0.door.stats.render("atrium_display"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
