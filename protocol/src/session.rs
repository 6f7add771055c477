//! A desktop session as the display proxy sees it, on its way to the broker: which sessions
//! have their user's viewers and how long each has been without input (reported to the node,
//! carried in its heartbeats), and why the broker ended one (told to the proxy, said to the
//! viewer). docs/pools.md describes the time limits built on them.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::node::FieldError;

/// Most sessions one activity report (or heartbeat) may carry.
pub const MAX_REPORTED_SESSIONS: usize = 100_000;
/// Most file transfers one activity report (or heartbeat) may carry.
pub const MAX_REPORTED_TRANSFERS: usize = 1000;
/// What a transfer moved ([`TransferRecord::direction`]): a file into the desktop, a file out of
/// it, clipboard text into it, clipboard text out of it.
pub const TRANSFER_DIRECTIONS: &[&str] = &["upload", "download", "clipboard_in", "clipboard_out"];
/// How file transfers can end ([`TransferRecord::verdict`]).
pub const TRANSFER_VERDICTS: &[&str] = &["saved", "infected", "refused", "failed", "cancelled"];

/// A file that crossed (or was refused at) the display proxy, for the broker's audit log: the
/// display proxy reports it to the node, whose heartbeat carries it to the broker. The broker
/// takes it only for a session of that node, and names the session's user, not anyone the
/// report names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRecord {
    /// The broker's session id the viewer belonged to.
    pub sid: String,
    /// One of [`TRANSFER_DIRECTIONS`].
    pub direction: String,
    /// The file's name (printable, at most 255 bytes).
    pub name: String,
    pub size: u64,
    /// SHA-256 of what passed, in hex, when all of it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// One of [`TRANSFER_VERDICTS`].
    pub verdict: String,
    /// What the scanner found, or why the transfer was refused or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When it ended, in milliseconds since the Unix epoch (the proxy's clock).
    pub at_ms: u64,
}

/// One broker session as the display proxy sees it: the user's own viewers connected to it
/// (a shadowing administrator is not counted) and how long since one of them sent keyboard or
/// pointer input (or connected, when none has yet). A session with no viewer is not listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionActivity {
    /// The broker's session id (a ticket's `sid`).
    pub sid: String,
    /// The user's viewers connected (at least 1).
    pub viewers: u32,
    /// Milliseconds since the last input, when the report was made: relative, so that the
    /// clocks of proxy, node and broker need not agree.
    pub idle_ms: u64,
}

/// `PUT /api/v1/activity` on the node's local socket: the display proxy says which sessions
/// have viewers and how long each has been without input. Sent every few seconds; each report
/// replaces the one before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityReport {
    pub sessions: Vec<SessionActivity>,
    /// Files that crossed since the last report (each is reported once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfers: Vec<TransferRecord>,
}

/// Transfers on their way to the broker's audit log (at the display proxy, at the node): taken
/// a batch at a time for a report or heartbeat, and given back, ahead of newer ones, when it
/// fails. Bounded: beyond `max` the oldest are dropped (the caller says so in its log).
#[derive(Debug)]
pub struct TransferQueue {
    q: Mutex<VecDeque<TransferRecord>>,
    max: usize,
}

impl TransferQueue {
    pub fn new(max: usize) -> Self {
        Self { q: Mutex::default(), max }
    }

    /// Adds `t`; true when the oldest had to be dropped for it.
    pub fn push(&self, t: TransferRecord) -> bool {
        let mut q = self.q.lock().expect("transfer queue lock");
        let full = q.len() >= self.max;
        if full {
            q.pop_front();
        }
        q.push_back(t);
        full
    }

    /// The oldest [`MAX_REPORTED_TRANSFERS`] at most, taken.
    pub fn take(&self) -> Vec<TransferRecord> {
        let mut q = self.q.lock().expect("transfer queue lock");
        let n = q.len().min(MAX_REPORTED_TRANSFERS);
        q.drain(..n).collect()
    }

    /// Puts back what [`TransferQueue::take`] gave, when it could not be delivered.
    pub fn give_back(&self, back: Vec<TransferRecord>) {
        let mut q = self.q.lock().expect("transfer queue lock");
        for t in back.into_iter().rev() {
            if q.len() >= self.max {
                break;
            }
            q.push_front(t);
        }
    }
}

impl ActivityReport {
    /// Checks a report from outside: bounded, with session ids that fit a broker's.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_sessions(&self.sessions)?;
        validate_transfers(&self.transfers)
    }
}

fn valid_sid(sid: &str) -> bool {
    !sid.is_empty()
        && sid.len() <= 128
        && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks file transfers from outside (a report, a heartbeat): bounded, printable, with
/// verdicts and hashes of the expected form.
pub fn validate_transfers(transfers: &[TransferRecord]) -> Result<(), FieldError> {
    if transfers.len() > MAX_REPORTED_TRANSFERS {
        return Err(FieldError::new("transfers", "too many transfers"));
    }
    let printable = |s: &str, max: usize| s.len() <= max && !s.chars().any(char::is_control);
    for t in transfers {
        if !valid_sid(&t.sid) {
            return Err(FieldError::new("transfers[].sid", "must be 1 to 128 of A-Z a-z 0-9 - _"));
        }
        if !TRANSFER_DIRECTIONS.contains(&t.direction.as_str()) {
            return Err(FieldError::new("transfers[].direction", "is not a known direction"));
        }
        if t.name.is_empty() || !printable(&t.name, 255) {
            return Err(FieldError::new("transfers[].name", "must be 1 to 255 printable bytes"));
        }
        if t.sha256.as_ref().is_some_and(|h| {
            h.len() != 64 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }) {
            return Err(FieldError::new("transfers[].sha256", "must be 64 lowercase hex digits"));
        }
        if !TRANSFER_VERDICTS.contains(&t.verdict.as_str()) {
            return Err(FieldError::new("transfers[].verdict", "is not a known verdict"));
        }
        if t.detail.as_ref().is_some_and(|d| !printable(d, 1024)) {
            return Err(FieldError::new(
                "transfers[].detail",
                "must be at most 1024 printable bytes",
            ));
        }
    }
    Ok(())
}

/// Checks sessions' activity from outside (a report, a heartbeat): bounded, with session ids
/// that fit a broker's.
pub fn validate_sessions(sessions: &[SessionActivity]) -> Result<(), FieldError> {
    if sessions.len() > MAX_REPORTED_SESSIONS {
        return Err(FieldError::new("sessions", "too many sessions"));
    }
    for s in sessions {
        if !valid_sid(&s.sid) {
            return Err(FieldError::new("sessions[].sid", "must be 1 to 128 of A-Z a-z 0-9 - _"));
        }
        if s.viewers == 0 {
            return Err(FieldError::new("sessions[].viewers", "must be at least 1"));
        }
    }
    Ok(())
}

/// Why the broker ended a session, as it tells the display proxy (`POST
/// /api/v1/sessions/{sid}/end?reason=<code>`): the viewer says it to the user. No reason (older
/// brokers) or an unknown one is [`EndReason::Other`]. In the query, not a body: a proxy older
/// than reasons checks the broker's signature over the path and query it received, and an empty
/// body, so it still ends the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EndReason {
    /// No keyboard or pointer input for the pool's idle time.
    Idle,
    /// The pool's maximum session length was reached.
    MaxLength,
    /// The user signed out (here or elsewhere), or their sign-in ended.
    SignedOut,
    /// An administrator ended it.
    Administrator,
    /// The user disconnected (another of their viewers asked).
    Disconnected,
    /// Anything else (a policy change, a lost node...).
    #[default]
    Other,
}

impl EndReason {
    const ALL: [Self; 6] = [
        Self::Idle,
        Self::MaxLength,
        Self::SignedOut,
        Self::Administrator,
        Self::Disconnected,
        Self::Other,
    ];

    /// The reason a code names; [`EndReason::Other`] for any other text.
    pub fn from_code(code: &str) -> Self {
        Self::ALL.into_iter().find(|r| r.code() == code).unwrap_or(Self::Other)
    }

    /// The code in the broker's call and in a viewer's close reason (`the session ended:
    /// <code>`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::MaxLength => "max_length",
            Self::SignedOut => "signed_out",
            Self::Administrator => "administrator",
            Self::Disconnected => "disconnected",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_activity_report_is_checked() {
        let one = |sid: &str, viewers| SessionActivity { sid: sid.into(), viewers, idle_ms: 5 };
        let ok = ActivityReport { sessions: vec![one("0b1e-uuid_7", 1)], transfers: vec![] };
        assert!(ok.validate().is_ok());
        for (bad, field) in [
            (one("", 1), "sessions[].sid"),
            (one("a/b", 1), "sessions[].sid"),
            (one(&"a".repeat(129), 1), "sessions[].sid"),
            (one("a", 0), "sessions[].viewers"),
        ] {
            let r = ActivityReport { sessions: vec![bad], transfers: vec![] };
            assert_eq!(r.validate().unwrap_err().field, field);
        }
        let many = ActivityReport {
            sessions: vec![one("a", 1); MAX_REPORTED_SESSIONS + 1],
            transfers: vec![],
        };
        assert_eq!(many.validate().unwrap_err().field, "sessions");
        let r: Result<ActivityReport, _> =
            serde_json::from_str(r#"{"sessions":[{"sid":"a","viewers":1,"idle_ms":1,"x":1}]}"#);
        assert!(r.is_err(), "unknown fields are refused");
    }

    #[test]
    fn transfers_are_checked() {
        let good = TransferRecord {
            sid: "s-1".into(),
            direction: "upload".into(),
            name: "Übersicht 2026.xlsx".into(),
            size: 5,
            sha256: Some("ab".repeat(32)),
            verdict: "saved".into(),
            detail: None,
            at_ms: 1,
        };
        assert!(validate_transfers(std::slice::from_ref(&good)).is_ok());
        let bad = |f: fn(&mut TransferRecord)| {
            let mut t = good.clone();
            f(&mut t);
            validate_transfers(&[t]).unwrap_err().field
        };
        assert_eq!(bad(|t| t.sid = "a b".into()), "transfers[].sid");
        assert_eq!(bad(|t| t.direction = "sideways".into()), "transfers[].direction");
        assert_eq!(bad(|t| t.name = "a\nforged".into()), "transfers[].name");
        assert_eq!(bad(|t| t.name = String::new()), "transfers[].name");
        assert_eq!(bad(|t| t.sha256 = Some("AB".repeat(32))), "transfers[].sha256");
        assert_eq!(bad(|t| t.sha256 = Some("ab".into())), "transfers[].sha256");
        assert_eq!(bad(|t| t.verdict = "fine".into()), "transfers[].verdict");
        assert_eq!(bad(|t| t.detail = Some("x".repeat(1025))), "transfers[].detail");
        let many = vec![good; MAX_REPORTED_TRANSFERS + 1];
        assert_eq!(validate_transfers(&many).unwrap_err().field, "transfers");
    }

    #[test]
    fn a_transfer_queue_is_bounded_and_keeps_order_across_a_failure() {
        let t = |n: u64| TransferRecord {
            sid: "s".into(),
            direction: "upload".into(),
            name: format!("f{n}"),
            size: n,
            sha256: None,
            verdict: "saved".into(),
            detail: None,
            at_ms: n,
        };
        let sizes = |v: &[TransferRecord]| v.iter().map(|r| r.size).collect::<Vec<_>>();
        let q = TransferQueue::new(3);
        let dropped: Vec<bool> = (0..4).map(|n| q.push(t(n))).collect();
        assert_eq!(dropped, [false, false, false, true]);
        let first = q.take();
        assert_eq!(sizes(&first), [1, 2, 3], "the oldest went");
        assert!(q.take().is_empty());
        // Not delivered: back in front of what came since, in order, within the bound.
        q.push(t(4));
        q.give_back(first);
        assert_eq!(sizes(&q.take()), [2, 3, 4]);
    }

    #[test]
    fn a_session_end_without_a_known_reason_is_other() {
        for r in EndReason::ALL {
            assert_eq!(EndReason::from_code(r.code()), r);
        }
        assert_eq!(EndReason::from_code("solar flare"), EndReason::Other);
        assert_eq!(EndReason::from_code(""), EndReason::Other);
        assert_eq!(EndReason::MaxLength.code(), "max_length");
    }
}
