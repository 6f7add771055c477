//! Files a viewer uploads into its desktop, and downloads from it.
//!
//! Each upload runs in a task of its own. The viewer's chunks pass through it as they come:
//! hashed (SHA-256), fed to the virus scanner when the ticket says uploads are scanned, and
//! streamed on to the node, which writes them into the guest as a file the user cannot see
//! yet. Once all of it is there, a clean verdict commits the file to the user's `~/Transfer`;
//! anything else (a finding, a scanner that fails, a cancel, the viewer gone) throws it away,
//! so nothing partial or flagged is ever the user's.
//!
//! Downloads go the other way, from the files the user put in `~/Transfer`. One that must be
//! scanned is read whole from the node into an unlinked file of the proxy's temporary
//! directory while the scanner reads it; only a clean one is then sent to the viewer, so not a
//! byte of a flagged file leaves. One that need not be scanned streams straight through. The
//! viewer saves a file only once [`atrium_protocol::display::ServerMessage::FileDone`] came.
//! A web client asks for its downloads over HTTP instead ([`links`]): the browser's own
//! download fetches the bytes, and the file is complete only once all of them came.
//!
//! Memory is bounded on the way: an uploading viewer keeps at most
//! [`atrium_protocol::display::FILE_WINDOW`] bytes beyond the progress it was told, progress
//! is told only once a chunk is handed to the node, and the node's request body takes chunks
//! only as fast as the guest writes them. A download sends at most that window beyond what
//! the viewer said it took, and reads from the node only as fast as it sends.

mod download;
pub mod links;
pub mod scan;
mod totals;
pub mod upload;

pub use self::download::{Downloads, MAX_DOWNLOADS_PER_VIEWER};
pub use self::totals::SessionTotals;
pub use self::upload::{MAX_UPLOADS_PER_VIEWER, Uploads};

use std::fmt::Write as _;

use atrium_protocol::display::{ServerMessage, truncate_utf8};
use atrium_protocol::session::TransferRecord;
use sha2::{Digest, Sha256};

use self::scan::Scanner;
use crate::desktop::Clip;
use crate::source::open::GuestLink;

/// How one upload ended (or one clipboard text crossed), for the log and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `upload`, `download`, `clipboard_in` or `clipboard_out`.
    pub direction: &'static str,
    pub name: String,
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
    /// `saved`, `infected`, `refused`, `failed` or `cancelled`.
    pub verdict: &'static str,
    /// The scanner's finding, or why it failed.
    pub detail: Option<String>,
}

impl Outcome {
    /// How file `name` of `size` bytes ended, moving `direction`.
    fn file(
        direction: &'static str,
        name: &str,
        size: u64,
        sha256: Option<[u8; 32]>,
        verdict: &'static str,
        detail: Option<String>,
    ) -> Self {
        let name = atrium_protocol::text::printable(name, 255);
        Self { direction, name, size, sha256, verdict, detail }
    }

    /// Clipboard text or an image that crossed (`saved`) or was refused, in `direction`: what it
    /// was, its size and hash, never its content.
    pub fn clipboard(direction: &'static str, clip: &Clip, refused: Option<String>) -> Self {
        Self {
            direction,
            name: clip.what().into(),
            size: clip.bytes().len() as u64,
            sha256: Some(Sha256::digest(clip.bytes()).into()),
            verdict: if refused.is_some() { "refused" } else { "saved" },
            detail: refused,
        }
    }

    /// The audit record of this outcome, for session `sid`.
    pub fn record(self, sid: &str, sha256: Option<String>) -> TransferRecord {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        TransferRecord {
            sid: sid.to_owned(),
            direction: self.direction.into(),
            name: if self.name.is_empty() { "(no name)".into() } else { fit(&self.name, 255) },
            size: self.size,
            sha256,
            verdict: self.verdict.into(),
            detail: self.detail.map(|d| fit(&d, 1024)),
            at_ms: now.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// Why a file did not cross: the verdict, and the message for the user.
struct Failed {
    verdict: &'static str,
    message: String,
    /// For the audit, when it differs from the message (the scanner's finding).
    detail: Option<String>,
}

impl Failed {
    fn new(verdict: &'static str, message: impl Into<String>) -> Self {
        Self { verdict, message: message.into(), detail: None }
    }

    /// Its verdict, the audit's detail, and the viewer's answer for file `id`.
    fn refusal(self, id: u32) -> (&'static str, Option<String>, ServerMessage) {
        let detail = self.detail.or_else(|| Some(self.message.clone()));
        (self.verdict, detail, ServerMessage::FileRefused { id, message: self.message })
    }
}

/// Clipboard texts and refusals (that moved no file) audited per viewer: a burst of
/// [`AUDIT_BURST`], then [`AUDIT_PER_MINUTE`]. Files that moved are always audited.
pub const AUDIT_BURST: f64 = 60.0;
pub const AUDIT_PER_MINUTE: f64 = 30.0;

/// One viewer's audit budget (a token bucket).
#[derive(Debug)]
pub struct AuditBudget {
    tokens: f64,
    last: std::time::Instant,
    held_back: u64,
}

impl AuditBudget {
    pub fn new(now: std::time::Instant) -> Self {
        Self { tokens: AUDIT_BURST, last: now, held_back: 0 }
    }

    /// `Some(how many held back so far)` when `o` is beyond the budget and is not recorded.
    pub fn over(&mut self, o: &Outcome, now: std::time::Instant) -> Option<u64> {
        if matches!(o.direction, "upload" | "download") && o.verdict != "refused" {
            return None;
        }
        let minutes = now.saturating_duration_since(self.last).as_secs_f64() / 60.0;
        self.tokens = (self.tokens + minutes * AUDIT_PER_MINUTE).min(AUDIT_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        self.held_back += 1;
        Some(self.held_back)
    }
}

/// `s` printable, in at most `max` bytes.
fn fit(s: &str, max: usize) -> String {
    truncate_utf8(&atrium_protocol::text::printable(s, max), max).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_budget_keeps_files_and_bounds_the_rest() {
        let t0 = std::time::Instant::now();
        let mut b = AuditBudget::new(t0);
        let clip = Outcome::clipboard("clipboard_in", &Clip::Text("x".into()), None);
        let kept = (0..1000).filter(|_| b.over(&clip, t0).is_none()).count();
        assert_eq!(kept as f64, AUDIT_BURST);
        let file = Outcome { verdict: "saved", direction: "upload", ..clip.clone() };
        assert_eq!(b.over(&file, t0), None, "a file that moved is always audited");
        let refused = Outcome { verdict: "refused", direction: "upload", ..clip.clone() };
        assert!(b.over(&refused, t0).is_some());
        let out = Outcome { verdict: "infected", direction: "download", ..clip.clone() };
        assert_eq!(b.over(&out, t0), None, "a download that was tried is always audited");
        let later = t0 + std::time::Duration::from_secs(60);
        let again = (0..1000).filter(|_| b.over(&clip, later).is_none()).count();
        assert_eq!(again as f64, AUDIT_PER_MINUTE);
    }

    #[test]
    fn clipboard_outcomes_name_what_crossed_by_size_and_hash() {
        let png = axum::body::Bytes::from_static(b"\x89PNG\r\n\x1a\n");
        let o = Outcome::clipboard("clipboard_out", &Clip::Png(png), Some("too big".into()));
        assert_eq!((o.name.as_str(), o.size, o.verdict), ("clipboard image (PNG)", 8, "refused"));
        assert_eq!(o.sha256, Some(Sha256::digest(b"\x89PNG\r\n\x1a\n").into()));
        let t = Outcome::clipboard("clipboard_in", &Clip::Text("hé".into()), None);
        assert_eq!((t.name.as_str(), t.size, t.verdict), ("clipboard text", 3, "saved"));
    }
}

/// A hash in hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What uploads and downloads of a desktop go through.
#[derive(Debug, Clone)]
pub struct FileTarget {
    pub guest: GuestLink,
    /// The scanner, when this proxy has one.
    pub scanner: Option<Scanner>,
    /// The viewer's session, whose totals the files count against.
    pub sid: String,
    pub totals: std::sync::Arc<SessionTotals>,
    /// Where downloads the browser fetches itself are offered.
    pub links: std::sync::Arc<links::Links>,
}

/// `bytes` in MiB, rounded up, for a user.
fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Why a file of `size` bytes is over the limit of `max` for one file moving `way`.
fn over_file_limit(name: &str, size: u64, max: u64, way: &str) -> String {
    format!("{name} is {} MiB; files of at most {} MiB may be {way} here", mib(size), max >> 20)
}

/// Why a file of `size` bytes does not fit a session's `limit` when `used` are moved already.
fn over_session(name: &str, size: u64, limit: u64, used: u64, way: &str) -> String {
    format!(
        "{name} is {} MiB, and this session may {way} {} MiB in all, {} MiB of which are used",
        mib(size),
        limit >> 20,
        mib(used)
    )
}

/// Why a file of this kind may not cross, or nothing.
fn kind_refused(
    name: &str,
    head: &[u8],
    whole: bool,
    kinds: atrium_protocol::filetype::Kinds,
    way: &str,
) -> Option<String> {
    use atrium_protocol::filetype::{allows, describe_kinds, sniff};
    let kind = sniff(name, head, whole);
    (!allows(kinds, kind)).then(|| {
        let allowed = describe_kinds(kinds);
        if allowed.is_empty() {
            format!("{name} is {}; no file may be {way} here", kind.describe())
        } else {
            format!("{name} is {}; only {allowed} may be {way} here", kind.describe())
        }
    })
}
