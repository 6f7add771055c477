//! `/api/v1/admin/tokens`: API tokens for automation. Only a signed-in administrator manages
//! them (a token cannot make or revoke tokens); a new token is shown once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use crate::auth::{AdminPerson, ClientAddr};
use crate::db::{ApiToken, TokenScope, now_ms};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_tokens, create_token)).routes(routes!(revoke_token))
}

/// Longest a token may live.
const MAX_DAYS: u32 = 366;

/// Every API token (never their secrets), newest first.
#[utoipa::path(get, path = "/api/v1/admin/tokens", tag = "admin",
    responses((status = 200, body = Vec<ApiToken>), (status = 403, body = ErrorResponse)))]
async fn list_tokens(
    State(st): State<AppState>,
    _admin: AdminPerson,
) -> ApiResult<Json<Vec<ApiToken>>> {
    Ok(Json(st.db.list_api_tokens().await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A name for the audit log and the list: 1 to 64 letters, digits, `.`, `_` or `-`.
    pub name: String,
    pub scope: TokenScope,
    /// Days until it expires (1 to 366).
    pub expires_in_days: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: ApiToken,
    /// The token, shown this once: send it as `Authorization: Bearer <token>`.
    pub token: String,
}

/// Creates an API token; the answer holds it, once.
#[utoipa::path(post, path = "/api/v1/admin/tokens", tag = "admin", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorResponse),
        (status = 409, description = "The name is taken", body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn create_token(
    State(st): State<AppState>,
    AdminPerson(admin): AdminPerson,
    addr: ClientAddr,
    JsonBody(req): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let name = req.name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ApiError::Validation {
            field: "name".into(),
            message: "1 to 64 letters, digits, '.', '_' or '-'".into(),
        });
    }
    if !(1..=MAX_DAYS).contains(&req.expires_in_days) {
        return Err(ApiError::Validation {
            field: "expires_in_days".into(),
            message: format!("1 to {MAX_DAYS} days"),
        });
    }
    let now = now_ms();
    let (id, text, secret_hash) = crate::tokens::mint();
    let info = ApiToken {
        id,
        name: name.to_owned(),
        scope: req.scope,
        created_by: admin.username.clone(),
        created_at: now,
        expires_at: now + i64::from(req.expires_in_days) * 86_400_000,
        last_used_at: None,
        revoked_at: None,
        secret_hash,
    };
    if !st.db.insert_api_token(&info).await? {
        return Err(ApiError::Conflict(format!("a token named {name:?} exists")));
    }
    service::audit(
        &st,
        &admin.username,
        "token.create",
        &info.name,
        "success",
        addr.0,
        serde_json::json!({ "id": info.id, "scope": info.scope.as_str(), "expires_at": info.expires_at }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token: text.expose().to_owned() })))
}

/// Revokes an API token: it is refused from now on.
#[utoipa::path(delete, path = "/api/v1/admin/tokens/{id}", tag = "admin",
    responses((status = 204, description = "Revoked"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn revoke_token(
    State(st): State<AppState>,
    AdminPerson(admin): AdminPerson,
    addr: ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let t = st
        .db
        .get_api_token(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such token".into()))?;
    st.db.revoke_api_token(&id, now_ms()).await?;
    service::audit(
        &st,
        &admin.username,
        "token.revoke",
        &t.name,
        "success",
        addr.0,
        serde_json::json!({ "id": id }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn stored(st: &AppState, name: &str, scope: TokenScope, expires_at: i64) -> String {
        let (id, text, secret_hash) = crate::tokens::mint();
        let t = ApiToken {
            id,
            name: name.into(),
            scope,
            created_by: "carol".into(),
            created_at: 0,
            expires_at,
            last_used_at: None,
            revoked_at: None,
            secret_hash,
        };
        assert!(st.db.insert_api_token(&t).await.unwrap());
        text.expose().to_owned()
    }

    async fn call(app: &axum::Router, method: &str, path: &str, token: &str) -> StatusCode {
        call_with(app, method, path, token, "{}").await
    }

    async fn call_with(
        app: &axum::Router,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> StatusCode {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        app.clone().oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn tokens_are_scoped_expire_and_cannot_make_tokens() {
        let (st, _dir) = crate::http::tests::state().await;
        let now = now_ms();
        let read = stored(&st, "reader", TokenScope::Read, now + 60_000).await;
        let admin = stored(&st, "automation", TokenScope::Admin, now + 60_000).await;
        let expired = stored(&st, "old", TokenScope::Admin, now - 1).await;
        let app = crate::http::app(st.clone());
        assert_eq!(call(&app, "GET", "/api/v1/admin/pools", &read).await, StatusCode::OK);
        assert_eq!(
            call(&app, "DELETE", "/api/v1/admin/pools/x", &read).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&app, "DELETE", "/api/v1/admin/pools/x", &admin).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&app, "GET", "/api/v1/admin/pools", &expired).await,
            StatusCode::UNAUTHORIZED
        );
        // Not a person: no desktops, no tokens.
        assert_eq!(call(&app, "GET", "/api/v1/me", &admin).await, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "GET", "/api/v1/admin/tokens", &admin).await, StatusCode::FORBIDDEN);
        let body = r#"{"name": "more", "scope": "admin", "expires_in_days": 1}"#;
        assert_eq!(
            call_with(&app, "POST", "/api/v1/admin/tokens", &admin, body).await,
            StatusCode::FORBIDDEN
        );
        // Malformed, unknown, or another token's secret.
        let (id, _) = crate::tokens::parse(&admin).unwrap();
        let (_, other) = crate::tokens::parse(&read).unwrap();
        for bad in [
            "atrium_x",
            &format!("atrium_{id}_{other}"),
            &format!("atrium_{}_{other}", "0".repeat(32)),
        ] {
            assert_eq!(
                call(&app, "GET", "/api/v1/admin/pools", bad).await,
                StatusCode::UNAUTHORIZED,
                "{bad}"
            );
        }
        // Revoked.
        st.db.revoke_api_token(id, now).await.unwrap();
        assert_eq!(
            call(&app, "GET", "/api/v1/admin/pools", &admin).await,
            StatusCode::UNAUTHORIZED
        );
        // Every use is audited under the token's name.
        let f = crate::db::AuditFilter {
            actor: Some("token:reader".into()),
            action: Some("token.use".into()),
            since: None,
            until: None,
            before: None,
            limit: 10,
        };
        let uses = st.db.list_audit(&f).await.unwrap();
        assert_eq!(uses.len(), 2, "{uses:?}");
        assert!(uses.iter().any(|e| e.outcome == "failure" && e.details.contains("403")));
    }
}
