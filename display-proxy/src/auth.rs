//! What a viewer's request must show before anything else happens, at the proxy and at the
//! gateway alike: a well-formed VM id, a page the configuration allows, and a display ticket
//! (checked by [`crate::ticket`]).

use atrium_protocol::node::validate_name;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
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

/// The page's `Origin` when it is one of `allowed` (an answer to it then names it for CORS);
/// `Ok(None)` without one (a request not from a page: a gateway, a native client).
pub fn cors_origin(
    headers: &HeaderMap,
    allowed: &[String],
) -> Result<Option<HeaderValue>, Refused> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(None) };
    if origin.to_str().is_ok_and(|o| allowed.iter().any(|a| a == o)) {
        return Ok(Some(origin.clone()));
    }
    Err(Refused::new(StatusCode::FORBIDDEN, "origin not allowed"))
}

/// `r`, readable by a page of `origin` (CORS) when there is one.
pub fn with_cors(mut r: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    r
}

/// The answer to a file link's CORS preflight from a page of `origin` (allowed already): it
/// may `PUT`, with a `Content-Type`.
pub fn link_preflight(origin: Option<HeaderValue>) -> Response {
    let Some(origin) = origin else { return StatusCode::NO_CONTENT.into_response() };
    let mut r = with_cors(StatusCode::NO_CONTENT.into_response(), Some(origin));
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("PUT"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    r
}
