//! The node API (axum). Over TCP, `/api/v1/...` is for the broker alone: every call must be a
//! request the broker signed for this node ([`auth`]). On the node's local socket, the display
//! proxy beside it reads a VM's display endpoint and its clipboard, sets its screen's size,
//! takes uploaded files in, hands over session recordings and the sessions' activity for the
//! broker, and nothing else; the socket's file permissions say who that is. `/healthz` and `/metrics` need nothing. One module per resource, each with its own router, merged here.

mod activity;
pub mod auth;
mod capacity;
pub mod error;
mod files;
mod health;
mod json;
mod recordings;
mod vms;

use std::sync::Arc;

use axum::Router;

pub use self::activity::Activity;
pub use self::auth::BrokerKeys;
pub use self::error::ApiError;
pub use self::recordings::Uplink;
use crate::vm::VmManager;

#[derive(Clone, Debug)]
pub struct AppState {
    pub node: Arc<VmManager>,
    /// The broker's public keys: what signed calls are checked with.
    pub keys: Arc<BrokerKeys>,
    spent: Arc<auth::Spent>,
    /// Where recordings go (the broker), when the node has one.
    uplink: Option<Arc<Uplink>>,
    /// The display proxy's latest word on the sessions' viewers and input, for heartbeats.
    pub activity: Arc<Activity>,
    /// Uploaded files waiting for the display proxy's decision.
    uploads: Arc<files::Uploads>,
}

impl AppState {
    pub fn new(node: Arc<VmManager>, keys: Arc<BrokerKeys>) -> Self {
        Self {
            node,
            keys,
            spent: Arc::default(),
            uplink: None,
            activity: Arc::default(),
            uploads: Arc::default(),
        }
    }

    /// Sends session recordings to the broker through `uplink`.
    #[must_use]
    pub fn with_uplink(mut self, uplink: Arc<Uplink>) -> Self {
        self.uplink = Some(uplink);
        self
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

/// The local socket's API, for the display proxy on this host: a VM's display endpoint, its
/// clipboard and screen size, uploads into it, and recordings and the sessions' activity on
/// their way to the broker. Whoever may open the socket may call these.
pub fn local_router(state: AppState) -> Router {
    let api = vms::display_router()
        .merge(recordings::router())
        .merge(activity::router())
        .merge(files::router())
        .fallback(|| async { not_found() });
    Router::new().nest("/api/v1", api).fallback(|| async { not_found() }).with_state(state)
}

#[cfg(test)]
mod tests;
