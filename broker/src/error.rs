//! One error type for the HTTP API. Internal errors are logged with context and answered with a
//! generic message; a constraint violation is 409 or 422.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;
use crate::ldap::LdapError;

/// Error body of every failed API call.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: String,
    /// The request field at fault, for validation errors; `mfa` when the second factor must be
    /// passed first; `code` for a wrong or used MFA code (a 401 without it: not signed in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("sign in first")]
    Unauthorized,
    /// A signed node request from a node id with no credential (never enrolled, or revoked).
    #[error("node {0} is not enrolled: enrol it with a token from an administrator")]
    NotEnrolled(String),
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("the API token is malformed, unknown, revoked or expired")]
    BadToken,
    /// Policy asks for the second factor first (at sign-in, or for this pool).
    #[error("verify your identity with your second factor first")]
    MfaRequired,
    #[error("the code is wrong or was used already")]
    WrongCode,
    #[error("too many failed sign-ins: try again in {minutes} minute(s)")]
    LockedOut { retry_after_secs: u64, minutes: u64 },
    #[error("{0}")]
    Forbidden(String),
    #[error("missing or wrong X-CSRF-Token header")]
    Csrf,
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the directory is unavailable: try again in a moment")]
    DirectoryUnavailable,
    #[error("{message}")]
    Unavailable { message: String, retry_after_secs: Option<u64> },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized
            | Self::InvalidCredentials
            | Self::BadToken
            | Self::WrongCode
            | Self::NotEnrolled(_) => StatusCode::UNAUTHORIZED,
            Self::LockedOut { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden(_) | Self::Csrf | Self::MfaRequired => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::DirectoryUnavailable | Self::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {e}"))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), retry_after_secs: None }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict(what) => Self::Conflict(format!("{what}: conflict")),
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                Self::Unavailable {
                    message: "the database is unavailable: try again in a moment".into(),
                    retry_after_secs: Some(2),
                }
            }
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<LdapError> for ApiError {
    fn from(e: LdapError) -> Self {
        match e {
            LdapError::InvalidCredentials => Self::InvalidCredentials,
            LdapError::Unavailable(why) => {
                tracing::warn!(reason = %why, "directory unavailable");
                Self::DirectoryUnavailable
            }
            LdapError::Directory(why) => {
                tracing::error!(reason = %why, "directory error");
                Self::DirectoryUnavailable
            }
        }
    }
}

impl From<atrium_protocol::node::FieldError> for ApiError {
    fn from(e: atrium_protocol::node::FieldError) -> Self {
        Self::Validation {
            field: e.field.to_owned(),
            message: format!("{}: {}", e.field, e.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let (message, field) = match &self {
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                ("internal error".to_owned(), None)
            }
            Self::Validation { field, .. } => (self.to_string(), Some(field.clone())),
            // The web client recognises it by the field and asks for a code.
            Self::MfaRequired => (self.to_string(), Some("mfa".to_owned())),
            // ...and a wrong code apart from a sign-in that has ended (both are 401).
            Self::WrongCode => (self.to_string(), Some("code".to_owned())),
            _ => (self.to_string(), None),
        };
        let retry = match &self {
            Self::LockedOut { retry_after_secs, .. } => Some(*retry_after_secs),
            Self::Unavailable { retry_after_secs, .. } => *retry_after_secs,
            Self::DirectoryUnavailable => Some(5),
            _ => None,
        };
        let mut resp = (status, Json(ErrorResponse { error: message, field })).into_response();
        if let Some(secs) = retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Cookie realm=\"atrium\""),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
