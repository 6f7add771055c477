//! Files in transfer with the guest agent: each has an id and a channel for the agent's
//! answers about it; its chunks go out as data frames through the link's writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use atrium_protocol::agent::{FileEntry, HostMessage, MAX_FILE_CHUNK};
use tokio::sync::mpsc;

use super::{AgentError, Guard};

/// What the agent answers about one file in transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileReply {
    Ready,
    Received {
        size: u64,
    },
    Saved {
        path: String,
    },
    Error {
        message: String,
    },
    /// The files the user may download (checked: names that may cross, at most
    /// [`atrium_protocol::agent::MAX_LISTED_FILES`]).
    List(Vec<FileEntry>),
    /// A download's size; its data follows.
    Sending {
        size: u64,
    },
    /// A download's next bytes.
    Data(axum::body::Bytes),
}

/// Most answers about one file kept unread (an agent has no reason to send more than one or
/// two at a time; beyond this a guest is flooding and is not heard).
pub(super) const FILE_REPLIES: usize = 4;
/// Most answers kept unread for a download: its window in whole chunks, and some. A guest that
/// sends beyond the window its host gave it overflows them, and its download fails.
pub const DOWNLOAD_REPLIES: usize = 24;

/// Where the answers about each file in transfer go, by id.
pub(super) type FileRoutes = Arc<Mutex<HashMap<u32, mpsc::Sender<FileReply>>>>;

/// What the writer sends the guest: a message, or a chunk of a file.
#[derive(Debug)]
pub(super) enum Outgoing {
    Message(HostMessage),
    Data(u32, axum::body::Bytes),
}

/// One file in transfer with the agent: its id, and the agent's answers about it. Dropping it
/// stops the answers (the file itself is the caller's to abort).
#[derive(Debug)]
pub struct FileChannel {
    pub id: u32,
    pub(super) tx: mpsc::Sender<Outgoing>,
    pub(super) replies: mpsc::Receiver<FileReply>,
    pub(super) routes: FileRoutes,
}

impl Drop for FileChannel {
    fn drop(&mut self) {
        self.routes.lock().expect("file routes lock").remove(&self.id);
    }
}

impl FileChannel {
    pub async fn send(&self, msg: HostMessage) -> Result<(), AgentError> {
        self.tx.send(Outgoing::Message(msg)).await.map_err(|_| AgentError::Closed)
    }

    /// Sends `data` as chunks of at most [`MAX_FILE_CHUNK`] bytes; waits while the guest is
    /// slower than the sender.
    pub async fn data(&self, mut data: axum::body::Bytes) -> Result<(), AgentError> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_FILE_CHUNK));
            self.tx.send(Outgoing::Data(self.id, chunk)).await.map_err(|_| AgentError::Closed)?;
        }
        Ok(())
    }

    /// The agent's next answer, or `None` when the link closed.
    pub async fn reply(&mut self) -> Option<FileReply> {
        self.replies.recv().await
    }

    /// An answer already there (an error while the data still flows).
    pub fn try_reply(&mut self) -> Option<FileReply> {
        self.replies.try_recv().ok()
    }
}

/// Passes an answer about file `id` to whoever waits for it; one nobody asked for is noted.
/// When the waiter's queue is full (a guest flooding it), the file fails: its channel closes,
/// so nothing is lost without the waiter knowing.
pub(super) fn route_file(
    files: &FileRoutes,
    id: u32,
    reply: FileReply,
    vm: &str,
    guard: &mut Guard,
) {
    let mut routes = files.lock().expect("file routes lock");
    match routes.get(&id) {
        Some(tx) => {
            if tx.try_send(reply).is_err() {
                routes.remove(&id);
                drop(routes);
                guard.warn(vm, format_args!("guest agent: too many answers about file {id}"));
            }
        }
        // Frames of a download already stopped are expected: they were on their way.
        None if matches!(reply, FileReply::Data(_)) => {}
        None => {
            drop(routes);
            guard.warn(vm, format_args!("guest agent: an answer about file {id}, unasked"));
        }
    }
}
