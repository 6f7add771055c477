//! Sign-in sessions and failed sign-in counters.

use super::{Db, DbResult, col};

/// A sign-in session (the session cookie carries its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSession {
    pub id: String,
    pub username: String,
    pub client_addr: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_seen_at: i64,
    pub revoked_at: Option<i64>,
}

impl LoginSession {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

impl Db {
    pub async fn insert_login_session(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        s: &LoginSession,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO login_sessions (id, username, client_addr, created_at, expires_at, last_seen_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&s.id)
        .bind(&s.username)
        .bind(&s.client_addr)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.last_seen_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn get_login_session(&self, id: &str) -> DbResult<Option<LoginSession>> {
        let row = sqlx::query("SELECT * FROM login_sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(LoginSession {
                id: col(&r, "id")?,
                username: col(&r, "username")?,
                client_addr: col(&r, "client_addr")?,
                created_at: col(&r, "created_at")?,
                expires_at: col(&r, "expires_at")?,
                last_seen_at: col(&r, "last_seen_at")?,
                revoked_at: col(&r, "revoked_at")?,
            })
        })
        .transpose()
    }

    pub async fn touch_login_session(&self, id: &str, now: i64) -> DbResult<()> {
        sqlx::query("UPDATE login_sessions SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Revokes a sign-in session; returns whether it was active.
    pub async fn revoke_login_session(&self, id: &str, now: i64) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE login_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// When the first of `keys` is locked until, if any is locked now.
    pub async fn locked_until(&self, keys: &[&str], now: i64) -> DbResult<Option<i64>> {
        let mut latest = None;
        for key in keys {
            let row = sqlx::query(
                "SELECT locked_until FROM login_failures WHERE key = $1 AND locked_until > $2",
            )
            .bind(*key)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
            if let Some(r) = row {
                let until: i64 = col(&r, "locked_until")?;
                latest = Some(latest.map_or(until, |l: i64| l.max(until)));
            }
        }
        Ok(latest)
    }

    /// Counts a failed sign-in against `key`; locks it for `lockout_ms` once `limit` failures fall
    /// within `window_ms`. Returns whether the key is now locked.
    pub async fn record_login_failure(
        &self,
        key: &str,
        now: i64,
        window_ms: i64,
        limit: u32,
        lockout_ms: i64,
    ) -> DbResult<bool> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT failures, window_start FROM login_failures WHERE key = $1{}",
            self.for_update()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key).fetch_optional(&mut *tx).await?;
        let (failures, window_start) = match row {
            Some(r) => {
                let f: i64 = col(&r, "failures")?;
                let w: i64 = col(&r, "window_start")?;
                if now - w > window_ms { (1, now) } else { (f + 1, w) }
            }
            None => (1, now),
        };
        let locked = failures >= i64::from(limit);
        let locked_until = if locked { now + lockout_ms } else { 0 };
        sqlx::query(
            "INSERT INTO login_failures (key, failures, window_start, locked_until) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, window_start = excluded.window_start,
               locked_until = CASE WHEN excluded.locked_until > login_failures.locked_until
                                   THEN excluded.locked_until ELSE login_failures.locked_until END",
        )
        .bind(key)
        .bind(if locked { 0 } else { failures })
        .bind(window_start)
        .bind(locked_until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(locked)
    }

    /// Forgets failures of `key` (after a successful sign-in).
    pub async fn clear_login_failures(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        key: &str,
        now: i64,
    ) -> DbResult<()> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1 AND locked_until <= $2")
            .bind(key)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
