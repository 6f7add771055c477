//! Chunks on their way out: one task per recording sends them in order through a [`Sink`],
//! retrying with a growing pause while the other side is out of reach, for at most
//! [`RETRY_FOR`] per chunk. A refusal, a chunk that cannot leave in time, or more than
//! [`super::MAX_PENDING`] bytes waiting is the recording's failure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, mpsc};

use super::MAX_PENDING;
use crate::source::node::{NodeClient, NodeError};

/// How long one chunk may keep failing to leave before the recording fails.
pub const RETRY_FOR: Duration = Duration::from_secs(15 * 60);
/// The longest pause between tries.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// Why a chunk did not leave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The other side is out of reach or failed: try again.
    #[error("{0}")]
    Retry(String),
    /// The other side refused the chunk: the recording cannot go on.
    #[error("{0}")]
    Refused(String),
}

/// Where chunks go.
pub trait Sink: Send + Sync + std::fmt::Debug + 'static {
    /// Chunk `n` of recording `id` of VM `vm`; `last` ends the recording.
    fn put<'a>(
        &'a self,
        vm: &'a str,
        id: &'a str,
        n: u64,
        last: bool,
        chunk: Bytes,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Ends recording `id` with no more chunks.
    fn end<'a>(&'a self, vm: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), SinkError>>;
}

fn sink_error(e: NodeError) -> SinkError {
    match e {
        NodeError::Status { status: 502..=504, .. } | NodeError::Http(_) => {
            SinkError::Retry(e.to_string())
        }
        other => SinkError::Refused(other.to_string()),
    }
}

/// The node agent beside this proxy, which signs chunks on to the broker.
impl Sink for NodeClient {
    fn put<'a>(
        &'a self,
        vm: &'a str,
        id: &'a str,
        n: u64,
        last: bool,
        chunk: Bytes,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(
            async move { self.recording_chunk(vm, id, n, last, chunk).await.map_err(sink_error) },
        )
    }

    fn end<'a>(&'a self, vm: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.recording_end(vm, id).await.map_err(sink_error) })
    }
}

enum Job {
    Chunk { n: u64, last: bool, bytes: Bytes },
    End,
}

#[derive(Debug, Default)]
struct Shared {
    pending: AtomicUsize,
    failure: Mutex<Option<String>>,
    failed: Notify,
}

impl Shared {
    fn fail(&self, why: String) {
        let mut f = self.failure.lock().expect("failure lock");
        if f.is_none() {
            tracing::warn!(reason = %why, "the session's recording failed");
            *f = Some(why);
            self.failed.notify_waiters();
        }
    }
}

/// The sending side of one recording's uploads.
#[derive(Debug)]
pub(super) struct Uploads {
    jobs: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
    next: u64,
}

impl Uploads {
    pub(super) fn start(sink: Arc<dyn Sink>, vm: String, id: String) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(sink, vm, id, rx, Arc::clone(&shared)));
        Self { jobs, shared, next: 0 }
    }

    pub(super) fn push(&mut self, bytes: Bytes, last: bool) {
        let len = bytes.len();
        if self.shared.pending.fetch_add(len, Ordering::AcqRel) + len > MAX_PENDING {
            self.shared.pending.fetch_sub(len, Ordering::AcqRel);
            self.shared.fail(format!(
                "the recording cannot leave the node fast enough ({} MiB waiting)",
                MAX_PENDING >> 20
            ));
            return;
        }
        let n = self.next;
        self.next += 1;
        if self.jobs.send(Job::Chunk { n, last, bytes }).is_err() {
            self.shared.pending.fetch_sub(len, Ordering::AcqRel);
        }
    }

    pub(super) fn end(&self) {
        let _ = self.jobs.send(Job::End);
    }

    pub(super) fn failure(&self) -> Option<String> {
        self.shared.failure.lock().expect("failure lock").clone()
    }

    pub(super) fn watch(&self) -> FailureWatch {
        FailureWatch(Arc::clone(&self.shared))
    }
}

/// Resolves when a recording fails.
#[derive(Debug, Clone)]
pub struct FailureWatch(Arc<Shared>);

impl FailureWatch {
    /// Waits for the failure; its reason.
    pub async fn failed(&self) -> String {
        loop {
            let notified = self.0.failed.notified();
            if let Some(why) = self.0.failure.lock().expect("failure lock").clone() {
                return why;
            }
            notified.await;
        }
    }
}

async fn run(
    sink: Arc<dyn Sink>,
    vm: String,
    id: String,
    mut rx: mpsc::UnboundedReceiver<Job>,
    shared: Arc<Shared>,
) {
    while let Some(job) = rx.recv().await {
        let (len, result) = match job {
            Job::Chunk { n, last, bytes } => {
                let len = bytes.len();
                (len, send(|| sink.put(&vm, &id, n, last, bytes.clone())).await)
            }
            Job::End => (0, send(|| sink.end(&vm, &id)).await),
        };
        shared.pending.fetch_sub(len, Ordering::AcqRel);
        if let Err(why) = result {
            shared.fail(why);
            // What is left cannot be stored after a gap: it is dropped.
            return;
        }
    }
}

/// Tries until done, refused, or [`RETRY_FOR`] has passed.
async fn send<'a, F>(mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> BoxFuture<'a, Result<(), SinkError>>,
{
    let first = Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(SinkError::Refused(why)) => {
                return Err(format!("the recording was refused: {why}"));
            }
            Err(SinkError::Retry(why)) => {
                if first.elapsed() >= RETRY_FOR {
                    return Err(format!(
                        "the recording could not be stored for {} minutes: {why}",
                        RETRY_FOR.as_secs() / 60
                    ));
                }
                if pause >= Duration::from_secs(2) {
                    tracing::warn!(reason = %why, "a recording chunk cannot leave yet; trying again");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}
