//! `/api/v1/capacity`: what this node can still take, its KVM kind and its images.

use atrium_protocol::node::Capacity;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/capacity", get(capacity))
}

async fn capacity(State(s): State<AppState>) -> Json<Capacity> {
    Json(s.node.capacity())
}
