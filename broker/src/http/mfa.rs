//! `/api/v1/auth/mfa/...`: the second factor. A user enrols (a secret shown as a QR code and as
//! text, confirmed with a first code; ten recovery codes shown once), then passes it with a
//! code from their authenticator app or a recovery code wherever policy (or their own
//! enrolment) asks: at sign-in, or before connecting to a pool that requires it. Wrong codes
//! count toward the account's lockout; a code is taken once.

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use crate::auth::{AuthUser, ClientAddr, SessionExtended};
use crate::db::{MfaState, now_ms};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::mfa::totp;
use crate::secret::Secret;
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(enrol))
        .routes(routes!(confirm))
        .routes(routes!(verify))
}

/// The signed-in user's second factor.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaStatus {
    /// An authenticator app is set up (confirmed).
    pub enrolled: bool,
    /// This sign-in session: `none` (not asked), `pending` (asked: pass it to go on),
    /// `verified`.
    pub session: String,
    /// Recovery codes not used yet.
    pub recovery_codes_left: i64,
}

/// Whether the user has a second factor, and where this sign-in stands.
#[utoipa::path(get, path = "/api/v1/auth/mfa", tag = "auth",
    responses((status = 200, body = MfaStatus), (status = 401, body = ErrorResponse)))]
async fn status(State(st): State<AppState>, user: AuthUser) -> ApiResult<Json<MfaStatus>> {
    let e = st.db.get_mfa(&user.id).await?;
    Ok(Json(MfaStatus {
        enrolled: e.as_ref().is_some_and(|e| e.enrolled()),
        session: user.mfa.as_str().into(),
        recovery_codes_left: st.db.recovery_codes_left(&user.id).await?,
    }))
}

/// A secret to put in an authenticator app.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enrolment {
    /// The secret as text (base32), for typing it in.
    pub secret: String,
    /// The `otpauth://` URI the QR code holds.
    pub otpauth_uri: String,
    /// The QR code, an SVG image.
    pub qr_svg: String,
}

/// Starts setting up an authenticator app: a new secret, put in force by `/enrol/confirm` with
/// its first code. A user who has one already sets up another only in a session that passed it
/// (the one in force stays until the new one is confirmed).
#[utoipa::path(post, path = "/api/v1/auth/mfa/enrol", tag = "auth",
    responses((status = 200, body = Enrolment), (status = 401, body = ErrorResponse),
        (status = 409, description = "Enrolled already: pass the second factor first (or ask an administrator to reset it)", body = ErrorResponse)))]
async fn enrol(
    State(st): State<AppState>,
    user: AuthUser,
    addr: ClientAddr,
) -> ApiResult<Json<Enrolment>> {
    let now = now_ms();
    if st.db.get_mfa(&user.id).await?.is_some_and(|e| e.enrolled())
        && user.mfa != MfaState::Verified
    {
        return Err(ApiError::Conflict(
            "an authenticator app is set up already: enter a code from it first, or ask an \
             administrator to reset it"
                .into(),
        ));
    }
    let secret = totp::new_secret();
    st.db.start_mfa(&user.id, &st.mfa.seal(&user.id, &secret), now).await?;
    audit(&st, &user, addr, "mfa.enrol.start", serde_json::json!({})).await;
    let uri = totp::otpauth_uri("Atrium", &user.username, &secret);
    Ok(Json(Enrolment {
        secret: totp::base32(&secret),
        qr_svg: crate::mfa::qr_svg(&uri),
        otpauth_uri: uri,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// Six digits from the authenticator app, or (for `verify`) a recovery code.
    #[schema(value_type = String)]
    pub code: Secret,
}

/// The recovery codes, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

/// Confirms the enrolment with a first code: the second factor is set up, this session has
/// passed it, and ten recovery codes are answered, once.
#[utoipa::path(post, path = "/api/v1/auth/mfa/enrol/confirm", tag = "auth", request_body = CodeRequest,
    responses((status = 200, body = RecoveryCodes), (status = 401, description = "Wrong code (field `code`), or the sign-in has ended (no field)", body = ErrorResponse),
        (status = 409, description = "Nothing being set up", body = ErrorResponse), (status = 429, body = ErrorResponse)))]
async fn confirm(
    State(st): State<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    JsonBody(req): JsonBody<CodeRequest>,
) -> ApiResult<(Extension<SessionExtended>, Json<RecoveryCodes>)> {
    let e = st.db.get_mfa(&user.id).await?;
    let Some(pending) = e.as_ref().and_then(|e| e.pending_sealed.clone()) else {
        return Err(ApiError::Conflict("nothing is being set up: start again".into()));
    };
    let secret = open_secret(&st, &user, &pending)?;
    let now = now_ms();
    let _turn = service::mfa_turn(&st, &user, addr.0, now).await?;
    let Some(step) = totp::verify(&secret, req.code.expose(), unix_secs(now), 0) else {
        return Err(service::mfa_failed(&st, &user, addr.0, "enrolment code", now).await);
    };
    let codes = crate::mfa::recovery_codes();
    let hashes: Vec<String> = codes.iter().filter_map(|c| crate::mfa::recovery_hash(c)).collect();
    let step = i64::try_from(step).unwrap_or(i64::MAX);
    // Only the secret the code was checked against (another session may have started a new
    // one meanwhile).
    if !st.db.confirm_mfa(&user.id, &pending, step, &hashes, now).await? {
        return Err(ApiError::Conflict(
            "the set-up was started again elsewhere: start again".into(),
        ));
    }
    let ends = service::mfa_passed(&st, &user, now).await?;
    audit(&st, &user, addr, "mfa.enrol", serde_json::json!({})).await;
    Ok((Extension(SessionExtended(ends)), Json(RecoveryCodes { recovery_codes: codes })))
}

/// Passes the second factor for this sign-in with a code from the authenticator app (each
/// taken once) or a recovery code (each usable once).
#[utoipa::path(post, path = "/api/v1/auth/mfa/verify", tag = "auth", request_body = CodeRequest,
    responses((status = 204, description = "Passed"), (status = 401, description = "Wrong or used code (field `code`), or the sign-in has ended (no field)", body = ErrorResponse),
        (status = 409, description = "No second factor set up", body = ErrorResponse), (status = 429, body = ErrorResponse)))]
async fn verify(
    State(st): State<AppState>,
    user: AuthUser,
    addr: ClientAddr,
    JsonBody(req): JsonBody<CodeRequest>,
) -> ApiResult<(Extension<SessionExtended>, axum::http::StatusCode)> {
    let e = st.db.get_mfa(&user.id).await?.filter(|e| e.enrolled()).ok_or_else(|| {
        ApiError::Conflict("no authenticator app is set up: set one up first".into())
    })?;
    let now = now_ms();
    // One attempt at a time per account (a burst of guesses cannot slip under the limit).
    let _turn = service::mfa_turn(&st, &user, addr.0, now).await?;
    let typed = req.code.expose();
    let how = if let Some(hash) = crate::mfa::recovery_hash(typed) {
        if !st.db.take_recovery_code(&user.id, &hash).await? {
            return Err(service::mfa_failed(&st, &user, addr.0, "recovery code", now).await);
        }
        "recovery code"
    } else {
        let secret = open_secret(&st, &user, e.secret_sealed.as_deref().unwrap_or(""))?;
        let after = u64::try_from(e.last_step).unwrap_or(0);
        let taken = match totp::verify(&secret, typed, unix_secs(now), after) {
            // Taken once, whichever replica sees it first.
            Some(step) => {
                st.db.take_mfa_step(&user.id, i64::try_from(step).unwrap_or(i64::MAX)).await?
            }
            None => false,
        };
        if !taken {
            return Err(service::mfa_failed(&st, &user, addr.0, "code", now).await);
        }
        "code"
    };
    let ends = service::mfa_passed(&st, &user, now).await?;
    audit(&st, &user, addr, "mfa.verify", serde_json::json!({ "with": how })).await;
    Ok((Extension(SessionExtended(ends)), axum::http::StatusCode::NO_CONTENT))
}

fn unix_secs(now_ms: i64) -> u64 {
    u64::try_from(now_ms / 1000).unwrap_or(0)
}

/// The user's secret, unsealed.
fn open_secret(st: &AppState, user: &AuthUser, sealed: &str) -> ApiResult<Vec<u8>> {
    st.mfa.open(&user.id, sealed).ok_or_else(|| {
        ApiError::internal(
            "opening an MFA secret",
            "sealed with another key (mfa.key_file changed?)",
        )
    })
}

/// An audit event of the user about their own second factor.
async fn audit(
    st: &AppState,
    user: &AuthUser,
    addr: ClientAddr,
    action: &str,
    details: serde_json::Value,
) {
    service::audit(st, &user.username, action, &user.username, "success", addr.0, details).await;
}
