//! Uploads: each runs in a task of its own, the viewer's chunks passing through it to the
//! scanner and the node as they come (see the module above).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrium_protocol::agent::validate_file_name;
use atrium_protocol::display::{FILE_WINDOW, MAX_FILE_CHUNK, ServerMessage};
use atrium_protocol::filetype::{Kinds, SNIFF_BYTES};
use atrium_protocol::ticket::Capabilities;
use axum::body::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::scan::Verdict;
use super::totals::Reserved;
use super::{Failed, FileTarget, Outcome, kind_refused, links, over_file_limit, over_session};

/// Uploads one viewer may have at once.
pub const MAX_UPLOADS_PER_VIEWER: usize = 4;
/// Chunks queued for one upload: the viewer's whole window, and some.
const QUEUED_CHUNKS: usize = 20;
const _: () = assert!(QUEUED_CHUNKS as u64 * MAX_FILE_CHUNK as u64 > FILE_WINDOW);

/// How long an upload's link waits to be used before its bytes are asked for over the
/// WebSocket instead.
const LINK_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// What the receiving side (or the upload's link) passes to an upload's task: its next bytes,
/// or why it stops.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    /// The verdict and the message for the viewer.
    Stop(&'static str, String),
}

/// One upload in flight, as the receiving side of the viewer sees it.
#[derive(Debug)]
struct Open {
    data: mpsc::Sender<Piece>,
    /// Stops the upload whatever its queue holds (a cancel, a refusal of the viewer's data).
    halt: Option<oneshot::Sender<Piece>>,
    size: u64,
    received: u64,
    /// Set while its bytes are to come over its link, not this connection.
    linked: Arc<AtomicBool>,
}

/// A viewer's uploads. Dropping it (the viewer went away) throws every unfinished one away.
#[derive(Debug)]
pub struct Uploads {
    target: Option<FileTarget>,
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
        target: Option<FileTarget>,
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

    /// The viewer starts upload `id`; `link`: its bytes are to come over a link (see
    /// [`super::links`]) when the browser uses it in time.
    pub async fn open(&mut self, id: u32, size: u64, name: String, link: bool) {
        self.open.retain(|_, o| !o.data.is_closed());
        // A viewer that only watches has nothing to upload: refused, and not audited (it could
        // fill the audit with refusals charged to the user it watches).
        if !self.rights.file_upload || self.rights.view_only {
            let message = "uploads into this desktop are not allowed for you".to_owned();
            return self.refuse(id, message).await;
        }
        let check = || -> Result<(FileTarget, OwnedSemaphorePermit, Reserved), String> {
            let target =
                self.target.clone().ok_or("this desktop takes no files (it has no guest agent)")?;
            validate_file_name(&name)?;
            let max = self.rights.upload_max_bytes;
            if max > 0 && size > max {
                return Err(over_file_limit(&name, size, max, "uploaded"));
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
            let limit = self.rights.upload_session_max_bytes;
            let reserved = target
                .totals
                .reserve(&target.sid, "upload", size, limit)
                .map_err(|used| over_session(&name, size, limit, used, "upload"))?;
            Ok((target, permit, reserved))
        };
        let (target, permit, reserved) = match check() {
            Ok(t) => t,
            Err(message) => {
                let detail = Some(message.clone());
                let outcome = Outcome::file("upload", &name, size, None, "refused", detail);
                let _ = self.outcomes.send(outcome);
                return self.refuse(id, message).await;
            }
        };
        let (data, chunks) = mpsc::channel(QUEUED_CHUNKS);
        let linked = Arc::new(AtomicBool::new(false));
        if link {
            self.offer_link(id, size, &target, &data, &linked).await;
        }
        let (halt, halted) = oneshot::channel();
        self.open.insert(id, Open { data, halt: Some(halt), size, received: 0, linked });
        let job = Job {
            id,
            name,
            size,
            scan: self.rights.scan_files,
            types: self.rights.upload_types,
            reserved: Some(reserved),
            target,
            chunks,
            halted: Some(halted),
            say: self.say.clone(),
        };
        let outcomes = self.outcomes.clone();
        tokio::spawn(async move {
            let outcome = job.run().await;
            let _ = outcomes.send(outcome);
            drop(permit);
        });
    }

    /// Offers upload `id`'s link and says so; a link not used within [`LINK_WITHIN`] is
    /// withdrawn, and the viewer told to send the bytes itself.
    async fn offer_link(
        &self,
        id: u32,
        size: u64,
        target: &FileTarget,
        data: &mpsc::Sender<Piece>,
        linked: &Arc<AtomicBool>,
    ) {
        let way = links::Way::Upload { size, into: data.clone() };
        let Some((mut offer, _)) = target.links.offer(&target.guest.vm, way) else {
            tracing::warn!("too many file links are open: this upload goes over the WebSocket");
            let _ = self.say.send(ServerMessage::FileUnlinked { id }).await;
            return;
        };
        linked.store(true, Ordering::SeqCst);
        let _ = self.say.send(ServerMessage::FileLink { id, size, token: offer.token }).await;
        let (say, linked, data) = (self.say.clone(), Arc::clone(linked), data.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = offer.fetched() => {}
                () = tokio::time::sleep(LINK_WITHIN) => {
                    if offer.withdraw() {
                        linked.store(false, Ordering::SeqCst);
                        let _ = say.send(ServerMessage::FileUnlinked { id }).await;
                    }
                }
                // The upload ended (cancelled) before its link was used.
                () = data.closed() => {}
            }
        });
    }

    /// The next bytes of upload `id`. Waits while the upload is slower than the viewer (only a
    /// viewer that ignores its window waits).
    pub async fn data(&mut self, id: u32, chunk: Vec<u8>) {
        let Some(o) = self.open.get_mut(&id) else { return };
        if o.linked.load(Ordering::SeqCst) {
            let why = "the viewer sent data for an upload that comes over its link".to_owned();
            self.stop(id, "refused", why);
            return;
        }
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

    /// Ends upload `id` with this verdict and message, whatever its queue holds.
    fn stop(&mut self, id: u32, verdict: &'static str, message: String) {
        if let Some(h) = self.open.remove(&id).and_then(|mut o| o.halt.take()) {
            let _ = h.send(Piece::Stop(verdict, message));
        }
    }
}

impl Drop for Uploads {
    /// The viewer went away: its unfinished uploads end, those coming over a link too.
    fn drop(&mut self) {
        for (_, mut o) in self.open.drain() {
            if let Some(h) = o.halt.take() {
                let _ = h.send(Piece::Stop("cancelled", "the viewer went away".into()));
            }
        }
    }
}

/// One upload's work.
struct Job {
    id: u32,
    name: String,
    size: u64,
    scan: bool,
    /// The kinds of file allowed; 0: any.
    types: Kinds,
    /// The file's size, counted in its session's total until it ends (kept when saved).
    reserved: Option<Reserved>,
    target: FileTarget,
    chunks: mpsc::Receiver<Piece>,
    /// A stop from the viewer's side, ahead of any chunk queued (none once it has answered).
    halted: Option<oneshot::Receiver<Piece>>,
    say: mpsc::Sender<ServerMessage>,
}

impl Job {
    async fn run(mut self) -> Outcome {
        let (id, name, size) = (self.id, self.name.clone(), self.size);
        let mut hash = None;
        let result = self.pass(&mut hash).await;
        let (verdict, detail, reply) = match result {
            Ok(path) => {
                if let Some(r) = self.reserved.take() {
                    r.keep();
                }
                let sha256 = hash.unwrap_or_default();
                ("saved", None, ServerMessage::FileSaved { id, sha256, path })
            }
            Err(f) => f.refusal(id),
        };
        let _ = self.say.send(reply).await;
        Outcome::file("upload", &name, size, hash, verdict, detail)
    }

    /// Streams the file to the node and the scanner; commits it when clean. Returns its path in
    /// the guest.
    async fn pass(&mut self, hash: &mut Option<[u8; 32]>) -> Result<String, Failed> {
        let name = self.name.clone();
        // Its kind first, from its first bytes, before any of it goes anywhere.
        let mut first = VecDeque::new();
        if self.types != 0 {
            let mut head = Vec::new();
            while head.len() < SNIFF_BYTES && (head.len() as u64) < self.size {
                match self.recv().await {
                    Some(Piece::Data(chunk)) => {
                        head.extend_from_slice(&chunk[..chunk.len().min(SNIFF_BYTES)]);
                        first.push_back(chunk);
                    }
                    stop => return Err(stopped(&name, stop)),
                }
            }
            let whole = self.size <= head.len() as u64;
            if let Some(why) = kind_refused(&name, &head, whole, self.types, "uploaded") {
                return Err(Failed::new("refused", why));
            }
        }
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
                piece = self.next_piece(&mut first) => {
                    let chunk = match piece {
                        Some(Piece::Data(chunk)) => chunk,
                        stop => {
                            // The node's request is cut off at once (never waiting for room
                            // in its body): the guest throws the file away.
                            drop(body_tx);
                            upload.abort();
                            return Err(stopped(&name, stop));
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

impl Job {
    /// The next piece, a stop from the viewer first. (The viewer's side lets go of the stop
    /// once it has passed all of the file on: the pieces queued then come.)
    async fn recv(&mut self) -> Option<Piece> {
        let Some(h) = self.halted.as_mut() else { return self.chunks.recv().await };
        let halted = tokio::select! {
            biased;
            r = h => r,
            piece = self.chunks.recv() => return piece,
        };
        self.halted = None;
        match halted {
            Ok(stop) => Some(stop),
            Err(_) => self.chunks.recv().await,
        }
    }

    /// The first bytes kept back to learn the file's kind, then the viewer's.
    async fn next_piece(&mut self, first: &mut VecDeque<Bytes>) -> Option<Piece> {
        match first.pop_front() {
            Some(chunk) => Some(Piece::Data(chunk)),
            None => self.recv().await,
        }
    }
}

/// Why an upload stopped before its end: the viewer's cancel, its verdict, or the viewer gone.
fn stopped(name: &str, stop: Option<Piece>) -> Failed {
    let (verdict, why) = match stop {
        Some(Piece::Stop(v, why)) => (v, why),
        _ => ("cancelled", "the upload was cancelled".to_owned()),
    };
    Failed::new(verdict, format!("{name}: {why}"))
}
