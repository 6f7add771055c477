//! The node API (axum). Over TCP, `/api/v1/...` is for the broker alone: every call must be a
//! request the broker signed for this node ([`auth`]). On the node's local socket, the display
//! proxy beside it reads a VM's display endpoint and its clipboard and sets its screen's size,
//! and nothing else; the socket's file permissions say who that is. `/healthz` and `/metrics`
//! need nothing. One module per resource, each with its own router, merged here.

pub mod auth;
mod capacity;
pub mod error;
mod health;
mod json;
mod vms;

use std::sync::Arc;

use axum::Router;

pub use self::auth::BrokerKeys;
pub use self::error::ApiError;
use crate::vm::VmManager;

#[derive(Clone, Debug)]
pub struct AppState {
    pub node: Arc<VmManager>,
    /// The broker's public keys: what signed calls are checked with.
    pub keys: Arc<BrokerKeys>,
    spent: Arc<auth::Spent>,
}

impl AppState {
    pub fn new(node: Arc<VmManager>, keys: Arc<BrokerKeys>) -> Self {
        Self { node, keys, spent: Arc::default() }
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound { message: "no such API path".into(), field: None }
}

/// The TCP API: health and metrics, and `/api/v1` for calls the broker signed.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(vms::router())
        .merge(capacity::router())
        .fallback(|| async { not_found() })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_broker));
    Router::new().merge(health::router()).nest("/api/v1", api).with_state(state)
}

/// The local socket's API, for the display proxy on this host: a VM's display endpoint and
/// its clipboard. Whoever may open the socket may call these.
pub fn local_router(state: AppState) -> Router {
    let api = vms::display_router().fallback(|| async { not_found() });
    Router::new().nest("/api/v1", api).fallback(|| async { not_found() }).with_state(state)
}

#[cfg(test)]
mod tests;
