//! The node API (axum): `/api/v1/...` for the broker and the display proxy (bearer node token on
//! every call), `/healthz` and `/metrics` without a token. One module per resource, each with
//! its own router, merged here.

mod capacity;
pub mod error;
mod health;
mod json;
mod vms;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

pub use self::error::ApiError;
use crate::config::Secret;
use crate::vm::VmManager;

#[derive(Clone, Debug)]
pub struct AppState {
    pub node: Arc<VmManager>,
    token_digest: [u8; 32],
}

impl AppState {
    pub fn new(node: Arc<VmManager>, token: &Secret) -> Self {
        Self { node, token_digest: Sha256::digest(token.expose().as_bytes()).into() }
    }

    /// Compares digests in constant time, so the answer time says nothing about the token.
    fn token_matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        d.iter().zip(self.token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Refuses every `/api/v1` request without `Authorization: Bearer <node token>`.
async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if state.token_matches(t) => Ok(next.run(req).await),
        _ => Err(ApiError::Unauthorized),
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(vms::router())
        .merge(capacity::router())
        .fallback(|| async {
            ApiError::NotFound { message: "no such API path".into(), field: None }
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new().merge(health::router()).nest("/api/v1", api).with_state(state)
}

#[cfg(test)]
mod tests;
