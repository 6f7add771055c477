//! The sessions' activity, on its way to the broker (local socket only): the display proxy
//! says every few seconds which broker sessions have viewers and how long each has been
//! without input ([`ActivityReport`]); the node keeps the latest report and carries it in its
//! heartbeats, where the broker counts idle and disconnect times from it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use atrium_protocol::session::{ActivityReport, SessionActivity, TransferQueue, TransferRecord};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::put;

use super::json::{self, FieldCheck, check};
use super::{ApiError, AppState};

/// A report older than this is the proxy's silence: nobody is connected through it.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// Largest report read (the most sessions a report may list, of a few dozen bytes each).
const MAX_REPORT_BYTES: usize = 16 << 20;

const REPORT_FIELDS: &[FieldCheck] =
    &[("sessions", check::<Vec<SessionActivity>>), ("transfers", check::<Vec<TransferRecord>>)];
/// Most file transfers kept while the broker does not take them; the oldest go first.
const MAX_KEPT_TRANSFERS: usize = 10_000;

/// The display proxy's latest report, and the file transfers it reported that the broker has
/// not taken yet.
#[derive(Debug)]
pub struct Activity {
    latest: Mutex<Option<(Instant, Vec<SessionActivity>)>>,
    transfers: TransferQueue,
}

impl Default for Activity {
    fn default() -> Self {
        Self { latest: Mutex::default(), transfers: TransferQueue::new(MAX_KEPT_TRANSFERS) }
    }
}

impl Activity {
    /// Keeps `report` (checked) as the latest, and its transfers until the broker takes them.
    pub fn put(&self, report: ActivityReport) {
        *self.latest.lock().expect("activity lock") = Some((Instant::now(), report.sessions));
        for t in report.transfers {
            if self.transfers.push(t) {
                tracing::error!("a transfer's audit record was dropped: the broker takes none");
            }
        }
    }

    /// Transfers for the next heartbeat (taken: give them back if it fails).
    pub fn take_transfers(&self) -> Vec<TransferRecord> {
        self.transfers.take()
    }

    /// Puts back the transfers of a heartbeat the broker did not take, ahead of newer ones.
    pub fn return_transfers(&self, back: Vec<TransferRecord>) {
        self.transfers.give_back(back);
    }

    /// What a heartbeat carries now: `None` before the proxy's first report (the broker then
    /// takes this node's sessions as in use, as it does for nodes that do not report); the
    /// latest report, its idle times aged to now; an empty list once the proxy has been silent
    /// for [`STALE_AFTER`].
    pub fn current(&self) -> Option<Vec<SessionActivity>> {
        let latest = self.latest.lock().expect("activity lock");
        let (at, sessions) = latest.as_ref()?;
        let age = at.elapsed();
        if age > STALE_AFTER {
            return Some(Vec::new());
        }
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        Some(
            sessions
                .iter()
                .map(|s| SessionActivity { idle_ms: s.idle_ms.saturating_add(age_ms), ..s.clone() })
                .collect(),
        )
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/activity", put(report)).layer(DefaultBodyLimit::max(MAX_REPORT_BYTES))
}

async fn report(State(s): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let report: ActivityReport = json::parse(&body, REPORT_FIELDS)?;
    report
        .validate()
        .map_err(|f| ApiError::bad_request(format!("{}: {}", f.field, f.message), Some(f.field)))?;
    s.activity.put(report);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sid: &str, idle_ms: u64) -> SessionActivity {
        SessionActivity { sid: sid.into(), viewers: 1, idle_ms }
    }

    #[test]
    fn nothing_is_said_before_the_first_report_and_the_latest_replaces_it() {
        let a = Activity::default();
        assert_eq!(a.current(), None);
        a.put(ActivityReport { sessions: vec![one("s1", 100), one("s2", 5)], transfers: vec![] });
        a.put(ActivityReport { sessions: vec![one("s2", 7)], transfers: vec![] });
        let now = a.current().expect("a report");
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].sid, "s2");
        assert!(now[0].idle_ms >= 7, "idle times only grow with the report's age");
    }

    #[test]
    fn a_silent_proxy_means_nobody_is_connected() {
        let a = Activity::default();
        let old = Instant::now().checked_sub(STALE_AFTER + Duration::from_secs(1));
        let Some(old) = old else { return };
        *a.latest.lock().unwrap() = Some((old, vec![one("s1", 0)]));
        assert_eq!(a.current(), Some(Vec::new()));
    }
}
