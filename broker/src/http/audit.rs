//! `/api/v1/admin/audit`: the audit log, a page at a time (newest first, a cursor to the next
//! page), and what a filter selects as CSV.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AdminUser;
use crate::db::{AuditEvent, AuditFilter};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit)).routes(routes!(export_audit))
}

/// Most events one CSV export holds.
const EXPORT_MAX: usize = 1_000_000;
/// Events read from the database per step of an export.
const EXPORT_STEP: u32 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this actor (username, `token:<name>`, `system`).
    pub actor: Option<String>,
    /// Only this action, or actions starting with it (`pool.` finds every pool action).
    pub action: Option<String>,
    /// From this time (ms since the epoch).
    pub since: Option<i64>,
    /// Until this time (ms since the epoch).
    pub until: Option<i64>,
    /// The page after this event: the last event of the page before, as `<at>.<id>`.
    pub before: Option<String>,
    /// At most this many (1-1000, default 200). Not used by the CSV export, which has them all.
    pub limit: Option<u32>,
}

impl AuditQuery {
    fn filter(self) -> ApiResult<AuditFilter> {
        let before = match self.before.filter(|s| !s.is_empty()) {
            None => None,
            Some(c) => {
                let (at, id) = c
                    .split_once('.')
                    .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
                    .filter(|(_, id)| !id.is_empty() && id.len() <= 64)
                    .ok_or_else(|| {
                        ApiError::BadRequest("before: expected <at>.<id> of an event".into())
                    })?;
                Some((at, id.to_owned()))
            }
        };
        Ok(AuditFilter {
            actor: self.actor.filter(|s| !s.is_empty()),
            action: self.action.filter(|s| !s.is_empty()),
            since: self.since,
            until: self.until,
            before,
            limit: self.limit.unwrap_or(200),
        })
    }
}

fn query(
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<AuditFilter> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    q.filter()
}

/// The audit log, newest first, a page at a time: for the next page, ask again with `before`
/// set to the last event's `<at>.<id>` (the `X-Next-Before` header says it when there may be
/// more).
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEvent>, headers(("X-Next-Before" = String, description = "The `before` of the next page, when this one is full"))),
        (status = 400, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn list_audit(
    State(st): State<AppState>,
    _admin: AdminUser,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let f = query(q)?;
    let events = st.db.list_audit(&f).await?;
    let full = events.len() == f.limit.clamp(1, 1000) as usize;
    let next = events.last().filter(|_| full).map(|e| format!("{}.{}", e.at, e.id));
    let mut resp = Json(events).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("x-next-before", next);
    }
    Ok(resp)
}

/// Every event the filter selects (up to a million), newest first, as CSV: `at` (ISO 8601,
/// UTC), actor, action, target, outcome, client address, details.
#[utoipa::path(get, path = "/api/v1/admin/audit/export", tag = "admin", params(AuditQuery),
    responses((status = 200, description = "text/csv", content_type = "text/csv"), (status = 400, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn export_audit(
    State(st): State<AppState>,
    _admin: AdminUser,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let mut f = query(q)?;
    f.limit = EXPORT_STEP;
    // Streamed a step at a time: memory stays bounded whatever the log's size.
    let header_row = "at,actor,action,target,outcome,client_addr,details\r\n".to_owned();
    let state = Some((st.db.clone(), f, 0usize));
    let rows = futures_util::stream::unfold(state, |state| async move {
        let (db, mut f, sent) = state?;
        match db.list_audit(&f).await {
            Ok(events) if events.is_empty() || sent >= EXPORT_MAX => None,
            Ok(events) => {
                let last = events.last().map(|e| (e.at, e.id.clone()));
                let n = events.len();
                let text: String = events.iter().map(csv_row).collect();
                f.before = last;
                let more = n == EXPORT_STEP as usize;
                Some((Ok::<_, std::io::Error>(text), more.then_some((db, f, sent + n))))
            }
            Err(e) => {
                tracing::error!(error = %e, "audit export stopped");
                Some((Err(std::io::Error::other("the database failed during the export")), None))
            }
        }
    });
    let body = futures_util::stream::once(async move { Ok(header_row) }).chain(rows);
    let body = Body::from_stream(body);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"atrium-audit.csv\""),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// One CSV line (RFC 4180). A cell that a spreadsheet would run as a formula (`=`, `+`, `-`,
/// `@`, tab, carriage return first) is prefixed with `'`.
fn csv_row(e: &AuditEvent) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.at) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| e.at.to_string());
    let cells = [&at, &e.actor, &e.action, &e.target, &e.outcome, &e.client_addr, &e.details];
    let mut line = cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

fn csv_cell(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_cell("alice"), "alice");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\"\nbye"), "\"say \"\"hi\"\"\nbye\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        let e = AuditEvent {
            id: "i".into(),
            at: 0,
            actor: "carol".into(),
            action: "pool.create".into(),
            target: "general".into(),
            outcome: "success".into(),
            client_addr: "127.0.0.1".into(),
            details: "{\"a\":1}".into(),
        };
        assert_eq!(
            csv_row(&e),
            "1970-01-01T00:00:00Z,carol,pool.create,general,success,127.0.0.1,\"{\"\"a\"\":1}\"\r\n"
        );
    }
}
