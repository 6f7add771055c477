//! What a viewer's request must show before anything else happens, at the proxy and at the
//! gateway alike: a well-formed VM id, a page the configuration allows, and a display ticket
//! (checked by [`crate::ticket`]).

use atrium_protocol::node::validate_name;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use crate::error::Refused;

/// `GET /ws/{vm}?ticket=...`: the ticket, empty when missing (it is then refused as malformed).
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    #[serde(default)]
    pub ticket: String,
}

/// The VM id of the path.
pub fn check_vm(vm: &str) -> Result<(), Refused> {
    validate_name("vm", vm, 128).map_err(|_| Refused::new(StatusCode::BAD_REQUEST, "invalid VM id"))
}

/// A page's `Origin` must be one of `allowed`; a request without one (not from a browser page:
/// a gateway, a native client) passes.
pub fn check_origin(vm: &str, headers: &HeaderMap, allowed: &[String]) -> Result<(), Refused> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    if origin.to_str().is_ok_and(|o| allowed.iter().any(|a| a == o)) {
        return Ok(());
    }
    tracing::warn!(vm, origin = ?origin, "display connection from a page not allowed");
    Err(Refused::new(StatusCode::FORBIDDEN, "origin not allowed"))
}
