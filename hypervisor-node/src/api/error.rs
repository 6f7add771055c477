//! The API's one error type: every handler returns `Result<_, ApiError>`; the body is always
//! `atrium_protocol::node::ErrorBody`. Internal errors are logged with their detail and answered
//! with a generic message.

use atrium_protocol::node::ErrorBody;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::agent_link::AgentError;
use crate::vm::VmError;

#[derive(Debug)]
pub enum ApiError {
    /// Not a request signed by the broker for this node; why.
    Unauthorized(String),
    BadRequest {
        message: String,
        field: Option<String>,
    },
    NotFound {
        message: String,
        field: Option<String>,
    },
    Conflict(String),
    Timeout(String),
    Internal(String),
    /// The broker could not be reached, or failed: the caller may try again.
    BadGateway(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, field: Option<&str>) -> Self {
        Self::BadRequest { message: message.into(), field: field.map(str::to_owned) }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::Invalid(f) => {
                Self::BadRequest { message: f.to_string(), field: Some(f.field.into()) }
            }
            VmError::ImageNotFound { .. } => {
                Self::NotFound { message: e.to_string(), field: Some("image".into()) }
            }
            VmError::NotFound(_) => Self::NotFound { message: e.to_string(), field: None },
            VmError::Capacity(_)
            | VmError::Conflict(_)
            | VmError::NotReady { .. }
            | VmError::NoAgent { .. } => Self::Conflict(e.to_string()),
            VmError::Agent(AgentError::Closed) => {
                Self::Conflict("the VM's guest agent is not connected".into())
            }
            VmError::AgentTimeout { .. } => Self::Timeout(e.to_string()),
            VmError::Start { ref id, .. } => {
                tracing::error!("{e}");
                Self::Internal(format!("starting VM {id} failed; the node's log has the reason"))
            }
            VmError::Runtime(_) | VmError::Agent(_) | VmError::Internal(_) => {
                tracing::error!("{e}");
                Self::Internal("internal error; the node's log has the reason".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = match self {
            Self::Unauthorized(why) => ErrorBody {
                error: format!("a request signed by the broker for this node is required: {why}"),
                field: None,
            },
            Self::BadRequest { message, field } | Self::NotFound { message, field } => {
                ErrorBody { error: message, field }
            }
            Self::Conflict(m) | Self::Timeout(m) | Self::Internal(m) | Self::BadGateway(m) => {
                ErrorBody { error: m, field: None }
            }
        };
        let mut r = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        r
    }
}
