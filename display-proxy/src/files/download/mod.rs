//! Downloads: the list of the files a desktop offers, and each download in a task of its own
//! that reads the file from the node and sends it to the viewer within the viewer's window
//! (see the module above); [`link`]: one the browser fetches itself, over its link.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use atrium_protocol::agent::validate_file_name;
use atrium_protocol::display::{FILE_WINDOW, MAX_FILE_CHUNK, ServerMessage};
use atrium_protocol::filetype::{Kinds, SNIFF_BYTES};
use atrium_protocol::ticket::Capabilities;
use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

mod link;

use super::scan::Verdict;
use super::totals::Reserved;
use super::{Failed, FileTarget, Outcome, kind_refused, over_file_limit, over_session};

/// Downloads one viewer may have at once.
pub const MAX_DOWNLOADS_PER_VIEWER: usize = 4;
/// How long a download waits for the viewer to take what it was sent.
const TAKE_WITHIN: Duration = Duration::from_secs(120);
/// While a file is scanned, or fetched over its link, its progress is told every so many bytes.
const PROGRESS_EVERY: u64 = 1 << 20;

/// What the viewer said of one download: how much it took, and whether it cancelled.
#[derive(Debug, Clone, Copy, Default)]
struct Taken {
    done: u64,
    cancelled: bool,
}

/// A viewer's downloads. Dropping it (the viewer went away) ends every one still running.
#[derive(Debug)]
pub struct Downloads {
    target: Option<FileTarget>,
    rights: Capabilities,
    open: HashMap<u32, watch::Sender<Taken>>,
    /// Held by each download's task until it has ended.
    running: Arc<Semaphore>,
    /// One listing at a time per viewer.
    listing: Arc<Semaphore>,
    say: mpsc::Sender<ServerMessage>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

impl Downloads {
    pub fn new(
        target: Option<FileTarget>,
        rights: Capabilities,
        say: mpsc::Sender<ServerMessage>,
        outcomes: mpsc::UnboundedSender<Outcome>,
    ) -> Self {
        Self {
            target,
            rights,
            open: HashMap::new(),
            running: Arc::new(Semaphore::new(MAX_DOWNLOADS_PER_VIEWER)),
            listing: Arc::new(Semaphore::new(1)),
            say,
            outcomes,
        }
    }

    fn allowed(&self) -> bool {
        self.rights.file_download && !self.rights.view_only
    }

    /// The viewer asks for the files it may download. Answered from a task of its own; a
    /// request while one is being answered is dropped (that answer is coming).
    pub async fn list(&self) {
        let no_list = |message: &str| ServerMessage::FileList {
            message: message.to_owned(),
            files: Vec::new(),
        };
        if !self.allowed() {
            let m = no_list("downloads from this desktop are not allowed for you");
            let _ = self.say.send(m).await;
            return;
        }
        let Some(target) = self.target.clone() else {
            let m = no_list("this desktop offers no files (it has no guest agent)");
            let _ = self.say.send(m).await;
            return;
        };
        let Ok(permit) = Arc::clone(&self.listing).try_acquire_owned() else { return };
        let say = self.say.clone();
        tokio::spawn(async move {
            let guest = &target.guest;
            let answer = match guest.node.list_files(&guest.vm).await {
                Ok(files) => ServerMessage::FileList { message: String::new(), files },
                Err(e) => {
                    let why = e.node_message().unwrap_or_else(|| e.to_string());
                    no_list(&format!("the desktop's files cannot be listed: {why}"))
                }
            };
            let _ = say.send(answer).await;
            drop(permit);
        });
    }

    /// The viewer starts download `id` of file `name`; `fetch`: over a link the browser
    /// fetches itself (see [`super::links`]), when it is fetched in time.
    pub async fn get(&mut self, id: u32, name: String, fetch: bool) {
        self.open.retain(|_, t| !t.is_closed());
        // As for uploads: a viewer that only watches is refused, and not audited.
        if !self.allowed() {
            let message = "downloads from this desktop are not allowed for you".to_owned();
            let _ = self.say.send(ServerMessage::FileRefused { id, message }).await;
            return;
        }
        let check = || -> Result<(FileTarget, OwnedSemaphorePermit), String> {
            let target = self
                .target
                .clone()
                .ok_or("this desktop offers no files (it has no guest agent)")?;
            validate_file_name(&name)?;
            if self.rights.scan_downloads && target.scanner.is_none() {
                return Err("downloads must be scanned for viruses here, and no scanner is set \
                            up: ask your administrator"
                    .into());
            }
            if self.open.contains_key(&id) {
                return Err(format!("download {id} is already in progress"));
            }
            let permit = Arc::clone(&self.running).try_acquire_owned().map_err(|_| {
                format!(
                    "{MAX_DOWNLOADS_PER_VIEWER} downloads are in progress: wait for one to finish"
                )
            })?;
            Ok((target, permit))
        };
        let (target, permit) = match check() {
            Ok(t) => t,
            Err(message) => {
                let detail = Some(message.clone());
                let outcome = Outcome::file("download", &name, 0, None, "refused", detail);
                let _ = self.outcomes.send(outcome);
                let _ = self.say.send(ServerMessage::FileRefused { id, message }).await;
                return;
            }
        };
        let (taken_tx, taken) = watch::channel(Taken::default());
        self.open.insert(id, taken_tx);
        let job = Job {
            id,
            name,
            fetch,
            scan: self.rights.scan_downloads,
            max: self.rights.download_max_bytes,
            session_max: self.rights.download_session_max_bytes,
            types: self.rights.download_types,
            reserved: None,
            target,
            taken,
            say: self.say.clone(),
        };
        let outcomes = self.outcomes.clone();
        tokio::spawn(async move {
            let outcome = job.run().await;
            let _ = outcomes.send(outcome);
            drop(permit);
        });
    }

    /// The viewer has taken the first `done` bytes of download `id`.
    pub fn taken(&self, id: u32, done: u64) {
        if let Some(t) = self.open.get(&id) {
            t.send_if_modified(|t| {
                let more = done > t.done;
                t.done = t.done.max(done);
                more
            });
        }
    }

    /// The viewer stops download `id` (nothing when it is not one).
    pub fn cancel(&mut self, id: u32) {
        if let Some(t) = self.open.remove(&id) {
            t.send_modify(|t| t.cancelled = true);
        }
    }
}

/// Bytes of a file, from the node or from the spool.
type Source = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// One download's work.
struct Job {
    id: u32,
    name: String,
    /// Offer a link for the browser to fetch first.
    fetch: bool,
    scan: bool,
    /// Largest file allowed; 0: any.
    max: u64,
    /// Most bytes the session's downloads may take out in all; 0: no limit.
    session_max: u64,
    /// The kinds of file allowed; 0: any.
    types: Kinds,
    /// The file's size, counted in its session's total until it ends (kept when sent).
    reserved: Option<Reserved>,
    target: FileTarget,
    taken: watch::Receiver<Taken>,
    say: mpsc::Sender<ServerMessage>,
}

impl Job {
    async fn run(mut self) -> Outcome {
        let (id, name) = (self.id, self.name.clone());
        let mut size = 0;
        let mut hash = None;
        let (verdict, detail, reply) = match self.pass(&mut size, &mut hash).await {
            Ok(sha256) => {
                if let Some(r) = self.reserved.take() {
                    r.keep();
                }
                ("saved", None, ServerMessage::FileDone { id, sha256 })
            }
            Err(f) => f.refusal(id),
        };
        let _ = self.say.send(reply).await;
        Outcome::file("download", &name, size, hash, verdict, detail)
    }

    fn cancelled(&self) -> Failed {
        Failed::new("cancelled", format!("{}: the download was cancelled", self.name))
    }

    /// The browser took nothing for [`TAKE_WITHIN`].
    fn idle(&self) -> Failed {
        Failed::new(
            "failed",
            format!(
                "{} was not downloaded: the browser took nothing for {} s",
                self.name,
                TAKE_WITHIN.as_secs()
            ),
        )
    }

    /// Reads the file from the node and sends it; a file that must be scanned is first read
    /// whole into the spool (so not a byte of a flagged file reaches the viewer), and sent
    /// from there once the scanner passed it. Returns its hash.
    async fn pass(
        &mut self,
        size: &mut u64,
        hash: &mut Option<[u8; 32]>,
    ) -> Result<[u8; 32], Failed> {
        let name = self.name.clone();
        let guest = self.target.guest.clone();
        let (declared, resp) = guest.node.download(&guest.vm, &name).await.map_err(|e| {
            let why = e.node_message().unwrap_or_else(|| e.to_string());
            Failed::new("failed", format!("{name} was not downloaded: {why}"))
        })?;
        *size = declared;
        if self.max > 0 && declared > self.max {
            let why = over_file_limit(&name, declared, self.max, "downloaded");
            return Err(Failed::new("refused", why));
        }
        let target = &self.target;
        let reserved = target
            .totals
            .reserve(&target.sid, "download", declared, self.session_max)
            .map_err(|used| {
            Failed::new(
                "refused",
                over_session(&name, declared, self.session_max, used, "download"),
            )
        })?;
        self.reserved = Some(reserved);
        let mut body: Source = Box::pin(resp.bytes_stream().map(|r| r.map_err(|e| e.to_string())));
        // Its kind first, from its first bytes, before any of it goes anywhere.
        if self.types != 0 {
            let (mut head, mut first) = (Vec::new(), Vec::new());
            while head.len() < SNIFF_BYTES && (head.len() as u64) < declared {
                let Some(chunk) = self.next(&mut body).await? else { break };
                head.extend_from_slice(&chunk[..chunk.len().min(SNIFF_BYTES)]);
                first.push(Ok(chunk));
            }
            let whole = declared <= head.len() as u64;
            if let Some(why) = kind_refused(&name, &head, whole, self.types, "downloaded") {
                return Err(Failed::new("refused", why));
            }
            body = Box::pin(futures_util::stream::iter(first).chain(body));
        }
        if !self.scan {
            let digest = self.deliver(declared, body, None).await?;
            *hash = Some(digest);
            return Ok(digest);
        }
        let (spool, digest) = self.scan(declared, body).await?;
        *hash = Some(digest);
        let spooled: Source = Box::pin(futures_util::stream::unfold(spool, |mut f| async move {
            let mut buf = vec![0; MAX_FILE_CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(format!("the spool cannot be read: {e}")), f)),
            }
        }));
        self.deliver(declared, spooled, Some(digest)).await
    }

    /// The next bytes of `source`, unless the viewer cancels (or went away) first.
    async fn next(&mut self, source: &mut Source) -> Result<Option<Bytes>, Failed> {
        loop {
            if self.taken.borrow_and_update().cancelled {
                return Err(self.cancelled());
            }
            tokio::select! {
                next = source.next() => {
                    return next.transpose().map_err(|e| {
                        Failed::new("failed", format!("{} was not downloaded: {e}", self.name))
                    });
                }
                changed = self.taken.changed() => {
                    if changed.is_err() {
                        return Err(self.cancelled()); // the viewer is gone
                    }
                }
            }
        }
    }

    /// Reads all of the file into a spool file while the scanner reads it too, telling the
    /// viewer how far it got. Returns the spool, at its start, and the file's hash.
    async fn scan(
        &mut self,
        size: u64,
        mut body: Source,
    ) -> Result<(tokio::fs::File, [u8; 32]), Failed> {
        let name = self.name.clone();
        let failed = |e: &dyn std::fmt::Display| {
            Failed::new("failed", format!("{name} was not downloaded: {e}"))
        };
        let scanner = self.target.scanner.clone().ok_or_else(|| failed(&"no virus scanner"))?;
        let mut scan = scanner.start().await.map_err(|e| {
            tracing::warn!(error = %e, "downloads cannot be scanned");
            failed(&e)
        })?;
        let mut spool = spool().await.map_err(|e| failed(&format!("no room to check it: {e}")))?;
        let mut sha = Sha256::new();
        let (mut got, mut told) = (0u64, 0u64);
        while let Some(chunk) = self.next(&mut body).await? {
            got += chunk.len() as u64;
            if got > size {
                return Err(failed(&"the desktop sent more than the file's size"));
            }
            sha.update(&chunk);
            scan.feed(&chunk).await.map_err(|e| failed(&e))?;
            spool.write_all(&chunk).await.map_err(|e| failed(&format!("the spool: {e}")))?;
            if got - told >= PROGRESS_EVERY {
                told = got;
                let _ = self.say.send(ServerMessage::FileProgress { id: self.id, done: got }).await;
            }
        }
        if got < size {
            return Err(failed(&"the desktop stopped sending it (did it change?)"));
        }
        match scan.finish().await.map_err(|e| failed(&e))? {
            Verdict::Clean => {}
            Verdict::Found(what) => {
                return Err(Failed {
                    verdict: "infected",
                    message: format!(
                        "{name} was refused: the virus scanner found {what} in it. It was not \
                         downloaded."
                    ),
                    detail: Some(what),
                });
            }
        }
        spool.flush().await.map_err(|e| failed(&format!("the spool: {e}")))?;
        spool.seek(SeekFrom::Start(0)).await.map_err(|e| failed(&format!("the spool: {e}")))?;
        Ok((spool, sha.finalize().into()))
    }

    /// Sends `size` bytes of `source` to the viewer, never more than [`FILE_WINDOW`] beyond
    /// what it took. Returns the hash of what was sent (`known` when it was computed already).
    async fn send(
        &mut self,
        size: u64,
        mut source: Source,
        known: Option<[u8; 32]>,
    ) -> Result<[u8; 32], Failed> {
        let name = self.name.clone();
        let _ = self.say.send(ServerMessage::FileStart { id: self.id, size }).await;
        let mut sha = known.is_none().then(Sha256::new);
        let mut sent = 0u64;
        while let Some(chunk) = self.next(&mut source).await? {
            if sent + chunk.len() as u64 > size {
                return Err(Failed::new(
                    "failed",
                    format!("{name} was not downloaded: the desktop sent more than its size"),
                ));
            }
            for piece in chunk.chunks(MAX_FILE_CHUNK) {
                self.room(sent + piece.len() as u64).await?;
                if let Some(s) = sha.as_mut() {
                    s.update(piece);
                }
                let m = ServerMessage::FileChunk { id: self.id, data: piece.to_vec() };
                if self.say.send(m).await.is_err() {
                    return Err(self.cancelled());
                }
                sent += piece.len() as u64;
            }
        }
        if sent < size {
            return Err(Failed::new(
                "failed",
                format!(
                    "{name} was not downloaded: the desktop stopped sending it after {sent} of \
                     {size} bytes"
                ),
            ));
        }
        Ok(known.unwrap_or_else(|| sha.map(|s| s.finalize().into()).unwrap_or_default()))
    }

    /// Waits until the viewer has room for the bytes up to `end`.
    async fn room(&mut self, end: u64) -> Result<(), Failed> {
        loop {
            let t = *self.taken.borrow_and_update();
            if t.cancelled {
                return Err(self.cancelled());
            }
            if end <= t.done.saturating_add(FILE_WINDOW) {
                return Ok(());
            }
            match tokio::time::timeout(TAKE_WITHIN, self.taken.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.cancelled()),
                Err(_) => return Err(self.idle()),
            }
        }
    }
}

/// A file of this proxy's temporary directory, for a download being scanned: readable by this
/// proxy only, and already unlinked (it goes when the download ends, or the proxy).
async fn spool() -> std::io::Result<tokio::fs::File> {
    let dir = std::env::temp_dir();
    let mut tries = 0;
    loop {
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let path = dir.join(format!(".atrium-download-{random:016x}"));
        let opened = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await;
        match opened {
            Ok(f) => {
                tokio::fs::remove_file(&path).await?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spool_file_has_no_name_and_keeps_its_bytes() {
        let mut f = spool().await.unwrap();
        f.write_all(b"abc").await.unwrap();
        f.flush().await.unwrap();
        f.seek(SeekFrom::Start(0)).await.unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).await.unwrap();
        assert_eq!(back, "abc");
        let leftover = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(".atrium-download-"));
        assert!(!leftover, "the spool is unlinked at once");
    }

    fn rights() -> Capabilities {
        Capabilities { file_download: true, ..Capabilities::default() }
    }

    #[tokio::test]
    async fn refusals_are_told_and_audited_but_not_a_watchers() {
        let (say, mut said) = mpsc::channel(8);
        let (outcomes, mut audited) = mpsc::unbounded_channel();
        let mut d = Downloads::new(None, rights(), say.clone(), outcomes.clone());
        d.get(1, "bericht.pdf".into(), false).await;
        let Some(ServerMessage::FileRefused { id: 1, message }) = said.recv().await else {
            panic!("no refusal")
        };
        assert!(message.contains("no guest agent"), "{message}");
        let o = audited.try_recv().unwrap();
        assert_eq!(
            (o.direction, o.verdict, o.name.as_str()),
            ("download", "refused", "bericht.pdf")
        );
        d.list().await;
        let Some(ServerMessage::FileList { message, files }) = said.recv().await else {
            panic!("no list")
        };
        assert!(files.is_empty() && message.contains("no guest agent"), "{message}");

        let watcher = Capabilities { view_only: true, ..rights() };
        let mut d = Downloads::new(None, watcher, say, outcomes);
        d.get(2, "../etc/passwd".into(), true).await;
        assert!(matches!(said.recv().await, Some(ServerMessage::FileRefused { id: 2, .. })));
        assert!(audited.try_recv().is_err(), "a watcher's refusals are not audited");
        d.cancel(2); // nothing to cancel: no effect
        d.taken(2, 1 << 40);
    }
}
