//! API tokens: named, scoped, expiring credentials for the admin API, kept as the SHA-256 of
//! their secret part.

use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Db, DbError, DbResult, col};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// The admin API's reads (`GET`).
    Read,
    /// All of the admin API (but not managing tokens).
    Admin,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    fn parse(s: &str) -> DbResult<Self> {
        match s {
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            other => Err(DbError::Corrupt(format!("api_tokens.scope {other:?}"))),
        }
    }
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    #[serde(skip)]
    pub secret_hash: String,
}

impl ApiToken {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

fn token_from_row(r: &AnyRow) -> DbResult<ApiToken> {
    Ok(ApiToken {
        id: col(r, "id")?,
        name: col(r, "name")?,
        scope: TokenScope::parse(&col::<String>(r, "scope")?)?,
        created_by: col(r, "created_by")?,
        created_at: col(r, "created_at")?,
        expires_at: col(r, "expires_at")?,
        last_used_at: col(r, "last_used_at")?,
        revoked_at: col(r, "revoked_at")?,
        secret_hash: col(r, "secret_hash")?,
    })
}

impl Db {
    /// Stores a new token; a name in use (even by a revoked token) is a conflict.
    pub async fn insert_api_token(&self, t: &ApiToken) -> DbResult<bool> {
        let r = sqlx::query(
            "INSERT INTO api_tokens (id, name, scope, secret_hash, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.scope.as_str())
        .bind(&t.secret_hash)
        .bind(&t.created_by)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn get_api_token(&self, id: &str) -> DbResult<Option<ApiToken>> {
        let row = sqlx::query("SELECT * FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Every token, newest first.
    pub async fn list_api_tokens(&self) -> DbResult<Vec<ApiToken>> {
        let rows = sqlx::query("SELECT * FROM api_tokens ORDER BY created_at DESC")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token; whether it was active.
    pub async fn revoke_api_token(&self, id: &str, now: i64) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a use (at most one write a minute per token).
    pub async fn touch_api_token(&self, id: &str, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1
               AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(id)
        .bind(now)
        .bind(now - 60_000)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
