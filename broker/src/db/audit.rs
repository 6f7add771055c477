//! The audit log: every sign-in, failed sign-in, assignment, session end and admin action.

use serde::Serialize;
use utoipa::ToSchema;

use super::{Db, DbResult, col};

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// Who: a username, `node:<id>` or `system`.
    pub actor: String,
    /// What, as `resource.verb` (e.g. `login.failed`, `pool.create`, `desktop.assign`).
    pub action: String,
    /// On what (pool name, desktop id, username...).
    pub target: String,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
    /// From where.
    pub client_addr: String,
    /// More, as JSON text.
    pub details: String,
}

/// A filter over the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only events older than this one (its time and id): the page after it.
    pub before: Option<(i64, String)>,
    pub limit: u32,
}

impl AuditEvent {
    /// An event happening now, with a fresh id; who and on what are made printable and cut.
    pub fn now(
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        client_addr: String,
        details: &serde_json::Value,
    ) -> Self {
        use atrium_protocol::text::printable;
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            at: super::now_ms(),
            actor: printable(actor, 256),
            action: action.to_owned(),
            target: printable(target, 512),
            outcome: outcome.to_owned(),
            client_addr,
            details: details.to_string(),
        }
    }
}

impl Db {
    pub async fn insert_audit<'c, E>(&self, exec: E, e: &AuditEvent) -> DbResult<()>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        sqlx::query(
            "INSERT INTO audit_events (id, at, actor, action, target, outcome, client_addr, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&e.id)
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.outcome)
        .bind(&e.client_addr)
        .bind(&e.details)
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Newest first. `action` matches a prefix (`pool.` finds every pool action).
    pub async fn list_audit(&self, f: &AuditFilter) -> DbResult<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_events
             WHERE ($1 = '' OR actor = $1)
               AND ($2 = '' OR action = $2 OR action LIKE $3)
               AND at >= $4 AND at <= $5
               AND (at < $7 OR (at = $7 AND id < $8))
             ORDER BY at DESC, id DESC LIMIT $6",
        )
        .bind(f.actor.clone().unwrap_or_default())
        .bind(f.action.clone().unwrap_or_default())
        .bind(format!("{}%", f.action.as_deref().unwrap_or("").replace(['%', '_'], "")))
        .bind(f.since.unwrap_or(0))
        .bind(f.until.unwrap_or(i64::MAX))
        .bind(i64::from(f.limit.clamp(1, 1000)))
        .bind(f.before.as_ref().map_or(i64::MAX, |b| b.0))
        .bind(f.before.as_ref().map_or("", |b| b.1.as_str()))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    id: col(r, "id")?,
                    at: col(r, "at")?,
                    actor: col(r, "actor")?,
                    action: col(r, "action")?,
                    target: col(r, "target")?,
                    outcome: col(r, "outcome")?,
                    client_addr: col(r, "client_addr")?,
                    details: col(r, "details")?,
                })
            })
            .collect()
    }
}
