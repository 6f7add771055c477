//! A desktop session as the display proxy sees it, on its way to the broker: which sessions
//! have their user's viewers and how long each has been without input (reported to the node,
//! carried in its heartbeats), and why the broker ended one (told to the proxy, said to the
//! viewer). docs/pools.md describes the time limits built on them.

use serde::{Deserialize, Serialize};

use crate::node::FieldError;

/// Most sessions one activity report (or heartbeat) may carry.
pub const MAX_REPORTED_SESSIONS: usize = 100_000;

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
}

impl ActivityReport {
    /// Checks a report from outside: bounded, with session ids that fit a broker's.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_sessions(&self.sessions)
    }
}

/// Checks sessions' activity from outside (a report, a heartbeat): bounded, with session ids
/// that fit a broker's.
pub fn validate_sessions(sessions: &[SessionActivity]) -> Result<(), FieldError> {
    if sessions.len() > MAX_REPORTED_SESSIONS {
        return Err(FieldError::new("sessions", "too many sessions"));
    }
    for s in sessions {
        if s.sid.is_empty()
            || s.sid.len() > 128
            || !s.sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
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
        let ok = ActivityReport { sessions: vec![one("0b1e-uuid_7", 1)] };
        assert!(ok.validate().is_ok());
        for (bad, field) in [
            (one("", 1), "sessions[].sid"),
            (one("a/b", 1), "sessions[].sid"),
            (one(&"a".repeat(129), 1), "sessions[].sid"),
            (one("a", 0), "sessions[].viewers"),
        ] {
            let r = ActivityReport { sessions: vec![bad] };
            assert_eq!(r.validate().unwrap_err().field, field);
        }
        let many = ActivityReport { sessions: vec![one("a", 1); MAX_REPORTED_SESSIONS + 1] };
        assert_eq!(many.validate().unwrap_err().field, "sessions");
        let r: Result<ActivityReport, _> =
            serde_json::from_str(r#"{"sessions":[{"sid":"a","viewers":1,"idle_ms":1,"x":1}]}"#);
        assert!(r.is_err(), "unknown fields are refused");
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
