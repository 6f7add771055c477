//! Files a viewer uploads into its desktop.
//!
//! Each upload runs in a task of its own. The viewer's chunks pass through it as they come:
//! hashed (SHA-256), fed to the virus scanner when the ticket says uploads are scanned, and
//! streamed on to the node, which writes them into the guest as a file the user cannot see
//! yet. Once all of it is there, a clean verdict commits the file to the user's `~/Transfer`;
//! anything else (a finding, a scanner that fails, a cancel, the viewer gone) throws it away,
//! so nothing partial or flagged is ever the user's.
//!
//! Memory is bounded on the way: the viewer keeps at most [`FILE_WINDOW`] bytes beyond the
//! progress it was told, progress is told only once a chunk is handed to the node, and the
//! node's request body takes chunks only as fast as the guest writes them.

pub mod scan;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use atrium_protocol::agent::validate_file_name;
use atrium_protocol::display::{FILE_WINDOW, MAX_FILE_CHUNK, ServerMessage, truncate_utf8};
use atrium_protocol::session::TransferRecord;
use atrium_protocol::ticket::Capabilities;
use axum::body::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use self::scan::{Scanner, Verdict};
use crate::source::open::GuestLink;

/// Uploads one viewer may have at once.
pub const MAX_UPLOADS_PER_VIEWER: usize = 4;
/// Chunks queued for one upload: the viewer's whole window, and some.
const QUEUED_CHUNKS: usize = 20;
const _: () = assert!(QUEUED_CHUNKS as u64 * MAX_FILE_CHUNK as u64 > FILE_WINDOW);

/// How one upload ended (or one clipboard text crossed), for the log and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `upload`, `clipboard_in` or `clipboard_out`.
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
    /// Clipboard text that crossed (`saved`) or was refused, in `direction`: its size and hash,
    /// never its content.
    pub fn clipboard(direction: &'static str, text: &str, refused: Option<String>) -> Self {
        Self {
            direction,
            name: "clipboard text".into(),
            size: text.len() as u64,
            sha256: Some(Sha256::digest(text.as_bytes()).into()),
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
        if o.direction == "upload" && o.verdict != "refused" {
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
        let clip = Outcome::clipboard("clipboard_in", "x", None);
        let kept = (0..1000).filter(|_| b.over(&clip, t0).is_none()).count();
        assert_eq!(kept as f64, AUDIT_BURST);
        let file = Outcome { verdict: "saved", direction: "upload", ..clip.clone() };
        assert_eq!(b.over(&file, t0), None, "a file that moved is always audited");
        let refused = Outcome { verdict: "refused", direction: "upload", ..clip.clone() };
        assert!(b.over(&refused, t0).is_some());
        let later = t0 + std::time::Duration::from_secs(60);
        let again = (0..1000).filter(|_| b.over(&clip, later).is_none()).count();
        assert_eq!(again as f64, AUDIT_PER_MINUTE);
    }
}

/// A hash in hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What uploads of a desktop go through.
#[derive(Debug, Clone)]
pub struct UploadTarget {
    pub guest: GuestLink,
    /// The scanner, when this proxy has one.
    pub scanner: Option<Scanner>,
}

/// What the receiving side passes to an upload's task: its next bytes, or why it stops.
#[derive(Debug)]
enum Piece {
    Data(Bytes),
    /// The verdict and the message for the viewer.
    Stop(&'static str, String),
}

/// One upload in flight, as the receiving side of the viewer sees it.
#[derive(Debug)]
struct Open {
    data: mpsc::Sender<Piece>,
    size: u64,
    received: u64,
}

/// A viewer's uploads. Dropping it (the viewer went away) throws every unfinished one away.
#[derive(Debug)]
pub struct Uploads {
    target: Option<UploadTarget>,
    rights: Capabilities,
    open: HashMap<u32, Open>,
    /// Held by each upload's task until it has ended, cancelled ones too: a viewer cannot pile
    /// up tasks that wait on a desktop that takes nothing.
    running: Arc<Semaphore>,
    /// Where the viewer's answers go (the sending side writes them).
    say: mpsc::Sender<ServerMessage>,
    /// Where outcomes go (the session's audit).
    outcomes: mpsc::UnboundedSender<Outcome>,
}

impl Uploads {
    pub fn new(
        target: Option<UploadTarget>,
        rights: Capabilities,
        say: mpsc::Sender<ServerMessage>,
        outcomes: mpsc::UnboundedSender<Outcome>,
    ) -> Self {
        let running = Arc::new(Semaphore::new(MAX_UPLOADS_PER_VIEWER));
        Self { target, rights, open: HashMap::new(), running, say, outcomes }
    }

    async fn refuse(&self, id: u32, message: String) {
        let _ = self.say.send(ServerMessage::FileRefused { id, message }).await;
    }

    /// The viewer starts upload `id`.
    pub async fn open(&mut self, id: u32, size: u64, name: String) {
        self.open.retain(|_, o| !o.data.is_closed());
        // A viewer that only watches has nothing to upload: refused, and not audited (it could
        // fill the audit with refusals charged to the user it watches).
        if !self.rights.file_upload || self.rights.view_only {
            let message = "uploads into this desktop are not allowed for you".to_owned();
            return self.refuse(id, message).await;
        }
        let check = || -> Result<(UploadTarget, OwnedSemaphorePermit), String> {
            let target =
                self.target.clone().ok_or("this desktop takes no files (it has no guest agent)")?;
            validate_file_name(&name)?;
            let max = self.rights.upload_max_bytes;
            if max > 0 && size > max {
                return Err(format!(
                    "{name} is {} MiB; files of at most {} MiB may be uploaded here",
                    size.div_ceil(1 << 20),
                    max >> 20
                ));
            }
            if self.rights.scan_files && target.scanner.is_none() {
                return Err("uploads must be scanned for viruses here, and no scanner is \
                            set up: ask your administrator"
                    .into());
            }
            if self.open.contains_key(&id) {
                return Err(format!("upload {id} is already in progress"));
            }
            let permit = Arc::clone(&self.running).try_acquire_owned().map_err(|_| {
                format!("{MAX_UPLOADS_PER_VIEWER} uploads are in progress: wait for one to finish")
            })?;
            Ok((target, permit))
        };
        let (target, permit) = match check() {
            Ok(t) => t,
            Err(message) => {
                let _ = self.outcomes.send(Outcome {
                    direction: "upload",
                    name: atrium_protocol::text::printable(&name, 255),
                    size,
                    sha256: None,
                    verdict: "refused",
                    detail: Some(message.clone()),
                });
                return self.refuse(id, message).await;
            }
        };
        let (data, chunks) = mpsc::channel(QUEUED_CHUNKS);
        self.open.insert(id, Open { data, size, received: 0 });
        let job = Job {
            id,
            name,
            size,
            scan: self.rights.scan_files,
            target,
            chunks,
            say: self.say.clone(),
        };
        let outcomes = self.outcomes.clone();
        tokio::spawn(async move {
            let outcome = job.run().await;
            let _ = outcomes.send(outcome);
            drop(permit);
        });
    }

    /// The next bytes of upload `id`. Waits while the upload is slower than the viewer (only a
    /// viewer that ignores its window waits).
    pub async fn data(&mut self, id: u32, chunk: Vec<u8>) {
        let Some(o) = self.open.get_mut(&id) else { return };
        o.received += chunk.len() as u64;
        if o.received > o.size {
            let why = "the viewer sent more data than the file's size".to_owned();
            self.stop(id, "refused", why);
            return;
        }
        if o.data.send(Piece::Data(Bytes::from(chunk))).await.is_err() || o.received == o.size {
            // All of it was passed on, or the upload ended already (the viewer was told).
            self.open.remove(&id);
        }
    }

    /// The viewer stops upload `id`.
    pub fn cancel(&mut self, id: u32) {
        self.stop(id, "cancelled", "the upload was cancelled".into());
    }

    /// Ends upload `id` with this verdict and message (or, when its queue is full, as
    /// cancelled: the closed queue says so).
    fn stop(&mut self, id: u32, verdict: &'static str, message: String) {
        if let Some(o) = self.open.remove(&id) {
            let _ = o.data.try_send(Piece::Stop(verdict, message));
        }
    }
}

/// One upload's work.
struct Job {
    id: u32,
    name: String,
    size: u64,
    scan: bool,
    target: UploadTarget,
    chunks: mpsc::Receiver<Piece>,
    say: mpsc::Sender<ServerMessage>,
}

/// Why an upload did not reach the user: the verdict, and the message for them.
struct Failed {
    verdict: &'static str,
    message: String,
    detail: Option<String>,
}

impl Failed {
    fn new(verdict: &'static str, message: impl Into<String>) -> Self {
        Self { verdict, message: message.into(), detail: None }
    }
}

impl Job {
    async fn run(mut self) -> Outcome {
        let (id, name, size) = (self.id, self.name.clone(), self.size);
        let mut hash = None;
        let result = self.pass(&mut hash).await;
        let (verdict, detail, reply) = match result {
            Ok(path) => {
                let sha256 = hash.unwrap_or_default();
                ("saved", None, ServerMessage::FileSaved { id, sha256, path })
            }
            Err(f) => {
                let detail = f.detail.or_else(|| Some(f.message.clone()));
                (f.verdict, detail, ServerMessage::FileRefused { id, message: f.message })
            }
        };
        let _ = self.say.send(reply).await;
        Outcome {
            direction: "upload",
            name: atrium_protocol::text::printable(&name, 255),
            size,
            sha256: hash,
            verdict,
            detail,
        }
    }

    /// Streams the file to the node and the scanner; commits it when clean. Returns its path in
    /// the guest.
    async fn pass(&mut self, hash: &mut Option<[u8; 32]>) -> Result<String, Failed> {
        let name = self.name.clone();
        let mut scan = match (&self.target.scanner, self.scan) {
            (Some(s), true) => Some(s.start().await.map_err(|e| {
                tracing::warn!(error = %e, "uploads cannot be scanned");
                Failed::new("failed", format!("{name} was not uploaded: {e}"))
            })?),
            _ => None,
        };
        let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(
            body_rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        ));
        let guest = self.target.guest.clone();
        let (vm, file, size) = (guest.vm.clone(), name.clone(), self.size);
        let mut upload =
            tokio::spawn(async move { guest.node.upload(&vm, &file, size, body).await });
        let node_failed = |e: crate::source::node::NodeError| {
            let why = e.node_message().unwrap_or_else(|| e.to_string());
            Failed::new("failed", format!("{name} was not uploaded: {why}"))
        };
        let mut sha = Sha256::new();
        let mut done = 0u64;
        while done < self.size {
            tokio::select! {
                r = &mut upload => {
                    // The node answered before the last byte: it refused the file.
                    let r = r.map_err(|e| Failed::new("failed", format!("{name}: {e}")))?;
                    return Err(match r {
                        Err(e) => node_failed(e),
                        Ok(_) => Failed::new("failed", format!("{name}: the desktop ended it early")),
                    });
                }
                piece = self.chunks.recv() => {
                    let chunk = match piece {
                        Some(Piece::Data(chunk)) => chunk,
                        stop => {
                            // The node's request is cut off at once (never waiting for room
                            // in its body): the guest throws the file away.
                            drop(body_tx);
                            upload.abort();
                            let (verdict, why) = match stop {
                                Some(Piece::Stop(v, why)) => (v, why),
                                _ => ("cancelled", "the upload was cancelled".to_owned()),
                            };
                            return Err(Failed::new(verdict, format!("{name}: {why}")));
                        }
                    };
                    sha.update(&chunk);
                    if let Some(s) = scan.as_mut() {
                        s.feed(&chunk).await.map_err(|e| {
                            Failed::new("failed", format!("{name} was not uploaded: {e}"))
                        })?;
                    }
                    done += chunk.len() as u64;
                    if body_tx.send(Ok(chunk)).await.is_err() {
                        continue; // the node ended the request: its answer says why
                    }
                    let _ = self.say.send(ServerMessage::FileProgress { id: self.id, done }).await;
                }
            }
        }
        drop(body_tx);
        let staged = upload
            .await
            .map_err(|e| Failed::new("failed", format!("{name}: {e}")))?
            .map_err(node_failed)?;
        let digest: [u8; 32] = sha.finalize().into();
        *hash = Some(digest);
        let guest = &self.target.guest;
        let verdict = match scan {
            Some(s) => s.finish().await.map_err(|e| e.to_string()),
            None => Ok(Verdict::Clean),
        };
        match verdict {
            Ok(Verdict::Clean) => {
                guest.node.commit_upload(&guest.vm, staged.upload).await.map_err(|e| {
                    let why = e.node_message().unwrap_or_else(|| e.to_string());
                    Failed::new("failed", format!("{name} was not uploaded: {why}"))
                })
            }
            Ok(Verdict::Found(what)) => {
                let _ = guest.node.abort_upload(&guest.vm, staged.upload).await;
                Err(Failed {
                    verdict: "infected",
                    message: format!(
                        "{name} was refused: the virus scanner found {what} in it. It was not \
                         put in your desktop."
                    ),
                    detail: Some(what),
                })
            }
            Err(e) => {
                let _ = guest.node.abort_upload(&guest.vm, staged.upload).await;
                Err(Failed::new("failed", format!("{name} was not uploaded: {e}")))
            }
        }
    }
}
