//! Desktop sessions: a user using a desktop, from connect to its end (disconnect, sign-out,
//! idle or maximum length, an administrator, a lost node). What the display proxy sees of
//! each (its user's viewers, their last input) arrives in the node's heartbeats and is kept
//! here; the reconcile loop ends sessions by it ([`Db::expired_sessions`]).

use std::collections::HashMap;

use atrium_protocol::session::{EndReason, SessionActivity};
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
    /// The last keyboard or pointer input from the user's viewers, as the display proxy saw
    /// it (or the last connect).
    pub last_active_at: i64,
    /// Since when none of the user's viewers has been connected, as the display proxy said.
    pub disconnected_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

/// How long a session may be without its user's viewers (a reload, a network blip, a ticket
/// not yet used) before it ends as disconnected; its desktop is then kept for the pool's
/// disconnect time.
pub const DISCONNECT_GRACE_MS: i64 = 30_000;

/// Why the reconcile loop ends a session: the text stored and audited, and what the viewer is
/// told.
pub type Expiry = (&'static str, EndReason);

/// When the user's logon on the session's desktop began, from which the pool's maximum
/// session length counts: the desktop's `assigned_at` (set when a spare or a new desktop is
/// given to them, and again when their dedicated desktop starts again). A disconnect and a
/// reconnect do not start it again; without it a session counts from its own start.
pub fn logon_start(s: &DesktopSession, assigned_at: Option<i64>) -> i64 {
    assigned_at.map_or(s.started_at, |a| a.min(s.started_at))
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
        disconnected_at: col(r, "disconnected_at")?,
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
                    "UPDATE desktop_sessions SET last_active_at = $2, login_session_id = $3, client_addr = $4, node_id = $5,
                       disconnected_at = NULL WHERE id = $1",
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
        // The desktop's disconnect time counts from now.
        sqlx::query("UPDATE desktops SET last_active_at = $2 WHERE id = (SELECT desktop_id FROM desktop_sessions WHERE id = $1) AND last_active_at < $2")
            .bind(id)
            .bind(now)
            .execute(self.pool())
            .await?;
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

    /// Takes what the display proxy of node `node` said of its sessions (a heartbeat's
    /// `sessions`): a listed session is connected and its last input moves up to what the
    /// proxy saw; an open session of that node not listed has none of its user's viewers. A
    /// node that does not report (`None`) has its sessions taken as in use. Sessions of other
    /// nodes are not touched, whatever the report says.
    pub async fn apply_session_activity(
        &self,
        node: &str,
        report: Option<&[SessionActivity]>,
        now: i64,
    ) -> DbResult<()> {
        let rows = sqlx::query(
            "SELECT id, desktop_id, last_active_at, disconnected_at FROM desktop_sessions
             WHERE node_id = $1 AND ended_at IS NULL",
        )
        .bind(node)
        .fetch_all(self.pool())
        .await?;
        let listed: HashMap<&str, &SessionActivity> =
            report.unwrap_or_default().iter().map(|a| (a.sid.as_str(), a)).collect();
        for r in &rows {
            let id: String = col(r, "id")?;
            let last: i64 = col(r, "last_active_at")?;
            let gone: Option<i64> = col(r, "disconnected_at")?;
            let input = match (report, listed.get(id.as_str())) {
                (None, _) => Some(now),
                (Some(_), Some(a)) => {
                    let idle = i64::try_from(a.idle_ms).unwrap_or(i64::MAX);
                    Some(now.saturating_sub(idle).min(now))
                }
                (Some(_), None) => None,
            };
            let Some(input) = input else {
                // None of the user's viewers: noted once, kept until one is back. (A connect
                // racing this clears it again, and counts as activity.)
                if gone.is_none() {
                    sqlx::query(
                        "UPDATE desktop_sessions SET disconnected_at = COALESCE(disconnected_at, $2)
                         WHERE id = $1 AND ended_at IS NULL",
                    )
                    .bind(&id)
                    .bind(now)
                    .execute(self.pool())
                    .await?;
                }
                continue;
            };
            // Input moves the time forward only, and by a second at least (fewer writes); the
            // update cannot move back what a connect racing it wrote.
            if input < last + 1000 && gone.is_none() {
                continue;
            }
            let input = input.max(last);
            sqlx::query(
                "UPDATE desktop_sessions SET disconnected_at = NULL,
                   last_active_at = CASE WHEN last_active_at < $2 THEN $2 ELSE last_active_at END
                 WHERE id = $1 AND ended_at IS NULL",
            )
            .bind(&id)
            .bind(input)
            .execute(self.pool())
            .await?;
            if input > last {
                sqlx::query(
                    "UPDATE desktops SET last_active_at = $2 WHERE id = $1 AND last_active_at < $2",
                )
                .bind(col::<String>(r, "desktop_id")?)
                .bind(input)
                .execute(self.pool())
                .await?;
            }
        }
        Ok(())
    }

    /// Open sessions to end now, with why: past their pool's maximum length (from the user's
    /// logon on the desktop, [`logon_start`]); without their user's viewers for
    /// [`DISCONNECT_GRACE_MS`] (and no connect in that time); connected but without input for
    /// their pool's idle time.
    pub async fn expired_sessions(&self, now: i64) -> DbResult<Vec<(DesktopSession, Expiry)>> {
        let rows = sqlx::query(
            "SELECT s.*, p.idle_timeout_secs, p.max_session_secs,
                    d.assigned_at AS desktop_assigned_at
             FROM desktop_sessions s JOIN pools p ON p.id = s.pool_id
             LEFT JOIN desktops d ON d.id = s.desktop_id
             WHERE s.ended_at IS NULL",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let s = row_to_session(r)?;
            let idle: i64 = col(r, "idle_timeout_secs")?;
            let max: i64 = col(r, "max_session_secs")?;
            let start = logon_start(&s, col(r, "desktop_assigned_at")?);
            let expiry = if now - start > max.saturating_mul(1000) {
                Some(("maximum session length reached", EndReason::MaxLength))
            } else if let Some(gone) = s.disconnected_at {
                let quiet = now - gone.max(s.last_active_at);
                (quiet > DISCONNECT_GRACE_MS).then_some(("disconnected", EndReason::Disconnected))
            } else if now - s.last_active_at > idle.saturating_mul(1000) {
                Some(("idle timeout", EndReason::Idle))
            } else {
                None
            };
            if let Some(e) = expiry {
                out.push((s, e));
            }
        }
        Ok(out)
    }
}
