//! A refused request, the one error type of the proxy's and the gateway's HTTP edges: its
//! status and the sentence the client gets (`{"error": ...}`).

use atrium_protocol::node::ErrorBody;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::ticket::TicketError;

#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

impl Refused {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message, field: None })).into_response()
    }
}

/// A ticket that does not pass: 403 when it is good but not for this (another VM or node),
/// 503 while the broker's keys cannot be had, else 401.
impl From<&TicketError> for Refused {
    fn from(e: &TicketError) -> Self {
        let status = match e {
            _ if e.is_forbidden() => StatusCode::FORBIDDEN,
            TicketError::Busy | TicketError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        Self::new(status, e.to_string())
    }
}
