//! Desktop sessions: a user using a desktop, from connect to its end (disconnect, sign-out,
//! idle or maximum length, an administrator, a lost node).

use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Db, DbResult, col};
use crate::db::Desktop;

/// A user using a desktop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DesktopSession {
    pub id: String,
    pub desktop_id: String,
    pub login_session_id: String,
    pub username: String,
    pub pool_id: String,
    pub node_id: Option<String>,
    pub client_addr: String,
    pub started_at: i64,
    pub last_active_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

fn row_to_session(r: &AnyRow) -> DbResult<DesktopSession> {
    Ok(DesktopSession {
        id: col(r, "id")?,
        desktop_id: col(r, "desktop_id")?,
        login_session_id: col(r, "login_session_id")?,
        username: col(r, "username")?,
        pool_id: col(r, "pool_id")?,
        node_id: col(r, "node_id")?,
        client_addr: col(r, "client_addr")?,
        started_at: col(r, "started_at")?,
        last_active_at: col(r, "last_active_at")?,
        ended_at: col(r, "ended_at")?,
        end_reason: col(r, "end_reason")?,
    })
}

/// An open session with what an administrator wants to see beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OpenSessionView {
    #[serde(flatten)]
    pub session: DesktopSession,
    pub pool_name: String,
    pub vm_id: Option<String>,
}

impl Db {
    /// Starts (or continues) the user's session on a desktop.
    pub async fn open_desktop_session(
        &self,
        desktop: &Desktop,
        username: &str,
        login_session_id: &str,
        client_addr: &str,
        now: i64,
    ) -> DbResult<DesktopSession> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT * FROM desktop_sessions WHERE desktop_id = $1 AND username = $2 AND ended_at IS NULL{}",
            self.for_update()
        );
        let open = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&desktop.id)
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?;
        let id = match open {
            Some(r) => {
                let s = row_to_session(&r)?;
                sqlx::query(
                    "UPDATE desktop_sessions SET last_active_at = $2, login_session_id = $3, client_addr = $4, node_id = $5 WHERE id = $1",
                )
                .bind(&s.id)
                .bind(now)
                .bind(login_session_id)
                .bind(client_addr)
                .bind(&desktop.node_id)
                .execute(&mut *tx)
                .await?;
                s.id
            }
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO desktop_sessions (id, desktop_id, login_session_id, username, pool_id, node_id, client_addr,
                       started_at, last_active_at, ended_at, end_reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, NULL, NULL)",
                )
                .bind(&id)
                .bind(&desktop.id)
                .bind(login_session_id)
                .bind(username)
                .bind(&desktop.pool_id)
                .bind(&desktop.node_id)
                .bind(client_addr)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        sqlx::query("UPDATE desktops SET last_active_at = $2 WHERE id = $1")
            .bind(&desktop.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT * FROM desktop_sessions WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        let s = row_to_session(&row)?;
        tx.commit().await?;
        Ok(s)
    }

    pub async fn get_desktop_session(&self, id: &str) -> DbResult<Option<DesktopSession>> {
        let row = sqlx::query("SELECT * FROM desktop_sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(row_to_session).transpose()
    }

    /// Ends an open session; `None` when it was not open.
    pub async fn end_desktop_session(
        &self,
        id: &str,
        reason: &str,
        now: i64,
    ) -> DbResult<Option<DesktopSession>> {
        let r = sqlx::query("UPDATE desktop_sessions SET ended_at = $2, end_reason = $3 WHERE id = $1 AND ended_at IS NULL")
            .bind(id)
            .bind(now)
            .bind(reason)
            .execute(self.pool())
            .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        self.get_desktop_session(id).await
    }

    /// Open sessions of a sign-in session (ended together at sign-out).
    pub async fn open_sessions_of_login(
        &self,
        login_session_id: &str,
    ) -> DbResult<Vec<DesktopSession>> {
        let rows = sqlx::query(
            "SELECT * FROM desktop_sessions WHERE login_session_id = $1 AND ended_at IS NULL",
        )
        .bind(login_session_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_session).collect()
    }

    /// The open desktop sessions of `username`.
    pub async fn open_sessions_of_user(&self, username: &str) -> DbResult<Vec<DesktopSession>> {
        let rows =
            sqlx::query("SELECT * FROM desktop_sessions WHERE username = $1 AND ended_at IS NULL")
                .bind(username)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(row_to_session).collect()
    }

    pub async fn open_sessions_of_desktop(
        &self,
        desktop_id: &str,
    ) -> DbResult<Vec<DesktopSession>> {
        let rows = sqlx::query(
            "SELECT * FROM desktop_sessions WHERE desktop_id = $1 AND ended_at IS NULL",
        )
        .bind(desktop_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_session).collect()
    }

    pub async fn list_open_sessions(&self) -> DbResult<Vec<OpenSessionView>> {
        let rows = sqlx::query(
            "SELECT s.*, COALESCE(p.name, '') AS pool_name, d.vm_id AS vm_id FROM desktop_sessions s
             LEFT JOIN pools p ON p.id = s.pool_id LEFT JOIN desktops d ON d.id = s.desktop_id
             WHERE s.ended_at IS NULL ORDER BY s.started_at",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OpenSessionView {
                    session: row_to_session(r)?,
                    pool_name: col(r, "pool_name")?,
                    vm_id: col(r, "vm_id")?,
                })
            })
            .collect()
    }

    /// Marks a session (and its desktop) active now. Returns whether the session was open.
    pub async fn touch_desktop_session(&self, id: &str, now: i64) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE desktop_sessions SET last_active_at = $2 WHERE id = $1 AND ended_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(self.pool())
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE desktops SET last_active_at = $2 WHERE id = (SELECT desktop_id FROM desktop_sessions WHERE id = $1)")
            .bind(id)
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(true)
    }

    /// Open sessions past their pool's idle timeout or maximum length: `(session, reason)`.
    pub async fn expired_sessions(
        &self,
        now: i64,
    ) -> DbResult<Vec<(DesktopSession, &'static str)>> {
        let rows = sqlx::query(
            "SELECT s.*, p.idle_timeout_secs, p.max_session_secs FROM desktop_sessions s
             JOIN pools p ON p.id = s.pool_id WHERE s.ended_at IS NULL",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let s = row_to_session(r)?;
            let idle: i64 = col(r, "idle_timeout_secs")?;
            let max: i64 = col(r, "max_session_secs")?;
            if now - s.started_at > max.saturating_mul(1000) {
                out.push((s, "maximum session length reached"));
            } else if now - s.last_active_at > idle.saturating_mul(1000) {
                out.push((s, "idle timeout"));
            }
        }
        Ok(out)
    }
}
