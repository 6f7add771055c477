//! Recording a viewer's stream when its ticket says so ([`atrium_protocol::recording`] has the
//! format).
//!
//! The [`Recorder`] sits in the viewer's sending loop: every message the viewer is sent (its
//! pictures, copies, video, pointer shapes and clipboard; not its sound or pongs) is recorded
//! as sent, with its time, never decoded or re-encoded. Now and then the sending loop adds a key
//! frame (the whole screen, encoded losslessly from the frame the viewer was just sent) so that
//! playback can start anywhere: when the stream since the last one has grown to
//! [`KEY_EVERY`] times that key frame's size, which keeps key frames under a fifteenth of what
//! is stored. With input recording on, the viewer's keys and pointer are recorded too.
//!
//! Records gather in a chunk that leaves at [`CHUNK_BYTES`] or [`CHUNK_AFTER`] after its first
//! record, whichever comes first: [`upload`] sends chunks in order through a [`Sink`] (the node
//! agent, which signs them on to the broker) and retries while the broker is out of reach.
//! Nothing is kept on the node beyond the chunks waiting to leave, at most [`MAX_PENDING`]
//! bytes: a recorded session whose recording cannot keep up, or that the broker refuses, is
//! ended ([`Recorder::failure`]) rather than continued unrecorded.

pub mod upload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_protocol::recording::{self, CHUNK_HEADER, ChunkWriter, Kind, MAX_CHUNK_BYTES};
use atrium_protocol::ticket::Record;
use axum::body::Bytes;

use crate::metrics::Metrics;
pub use upload::{FailureWatch, Sink, SinkError};

/// A chunk leaves once it holds this much.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// A chunk leaves this long after its first record, however small.
pub const CHUNK_AFTER: Duration = Duration::from_secs(2);
/// A key frame is due when the stream since the last one is this many times its size: key
/// frames are then at most a fifteenth of what is stored (the target is 1.1 times the stream,
/// record headers included), and a seek replays at most this many key frames' worth.
pub const KEY_EVERY: usize = 15;
/// ... or when this many records came since (many small updates replay slowly).
pub const KEY_RECORDS: usize = 20_000;
/// Bytes of chunks waiting to leave, at most.
pub const MAX_PENDING: usize = 64 * 1024 * 1024;
/// Room for a record's header (kind and two varints).
const RECORD_ROOM: usize = 11;

/// The server messages a recording keeps (by type byte): what changes the screen, the pointer's
/// shape and the clipboard; not `Hello`, `Resizable`, `Pong` or sound.
pub fn is_recorded(message: &[u8]) -> bool {
    matches!(message.first(), Some(0x02 | 0x10..=0x1f | 0x20 | 0x30 | 0x3c))
}

/// One viewer's recording.
#[derive(Debug)]
pub struct Recorder {
    record: Record,
    started: Instant,
    chunk: ChunkWriter,
    chunk_opened: Option<Instant>,
    /// Stream bytes and records since the last key frame (or the start: the viewer's first
    /// frame is a whole screen).
    since_key: usize,
    records_since_key: usize,
    last_key: Option<usize>,
    uploads: upload::Uploads,
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Starts recording `record` of `vm`, its chunks going to `sink`.
    pub fn new(record: Record, vm: &str, sink: Arc<dyn Sink>, metrics: Arc<Metrics>) -> Self {
        let uploads = upload::Uploads::start(sink, vm.to_owned(), record.id.clone());
        Self {
            record,
            started: Instant::now(),
            chunk: ChunkWriter::new(),
            chunk_opened: None,
            since_key: 0,
            records_since_key: 0,
            last_key: None,
            uploads,
            metrics,
        }
    }

    /// The recording's id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Whether the viewer's input is recorded too.
    pub fn records_input(&self) -> bool {
        self.record.input
    }

    fn t_ms(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX)
    }

    fn append(&mut self, kind: Kind, payload: &[u8]) {
        // A record that would take the open chunk past the broker's limit starts a new one.
        if !self.chunk.is_empty()
            && self.chunk.len() + RECORD_ROOM + payload.len() > MAX_CHUNK_BYTES
        {
            self.ship(false);
        }
        if self.chunk.is_empty() {
            self.chunk_opened = Some(Instant::now());
        }
        let t = self.t_ms();
        self.chunk.record(t, kind, payload);
        if self.chunk.len() >= CHUNK_BYTES {
            self.ship(false);
        }
    }

    /// Records a server message as the viewer was sent it (others are left out).
    pub fn message(&mut self, message: &[u8]) {
        if is_recorded(message) {
            self.since_key += message.len();
            self.records_since_key += 1;
            self.append(Kind::Message, message);
        }
    }

    /// Records a client message (keys, pointer) when input is recorded.
    pub fn input(&mut self, message: &[u8]) {
        if self.record.input {
            self.append(Kind::Input, message);
        }
    }

    /// Whether a key frame is due: the stream since the last one (or since the start, whose
    /// first frame was a whole screen) is [`KEY_EVERY`] times its size, or has
    /// [`KEY_RECORDS`] records.
    pub fn key_due(&self) -> bool {
        let key = self.last_key.unwrap_or(usize::MAX / KEY_EVERY);
        self.since_key > 0
            && (self.since_key >= key * KEY_EVERY || self.records_since_key >= KEY_RECORDS)
    }

    /// Notes the size of the viewer's first whole frame, the recording's first key.
    pub fn first_frame(&mut self, bytes: usize) {
        if self.last_key.is_none() {
            self.last_key = Some(bytes.max(1));
            self.since_key = 0;
            self.records_since_key = 0;
        }
    }

    /// Records a key frame: these messages draw the whole screen from nothing.
    pub fn key(&mut self, messages: &[Arc<[u8]>]) {
        let mut payload = Vec::with_capacity(messages.iter().map(|m| m.len() + 4).sum());
        for m in messages {
            recording::write_key_part(&mut payload, m);
        }
        // One that cannot fit a chunk is left out: playback seeks from the one before.
        if payload.is_empty() || payload.len() + RECORD_ROOM + CHUNK_HEADER > MAX_CHUNK_BYTES {
            return;
        }
        Metrics::add(&self.metrics.recording_key_frames, 1);
        self.last_key = Some(payload.len());
        self.since_key = 0;
        self.records_since_key = 0;
        self.append(Kind::Key, &payload);
    }

    /// When the open chunk must leave, if one is open.
    pub fn due_at(&self) -> Option<Instant> {
        self.chunk_opened.map(|t| t + CHUNK_AFTER)
    }

    /// Sends the open chunk if it is due.
    pub fn tick(&mut self, now: Instant) {
        if self.due_at().is_some_and(|t| t <= now) {
            self.ship(false);
        }
    }

    fn ship(&mut self, last: bool) {
        let chunk = Bytes::from(self.chunk.take());
        self.chunk_opened = None;
        Metrics::add(&self.metrics.recorded_bytes, chunk.len() as u64);
        self.uploads.push(chunk, last);
    }

    /// Why the recording cannot go on (the broker refused it, or it cannot keep up); the viewer
    /// must then be ended.
    pub fn failure(&self) -> Option<String> {
        self.uploads.failure()
    }

    /// A handle that resolves when the recording fails, apart from the recorder.
    pub fn failure_watch(&self) -> FailureWatch {
        self.uploads.watch()
    }

    /// Ends the recording: the open chunk leaves as the last (or the end is sent on its own);
    /// the chunks still waiting go on leaving after the viewer has gone.
    pub fn finish(mut self) {
        if self.chunk.is_empty() {
            self.uploads.end();
        } else {
            self.ship(true);
        }
    }
}

#[cfg(test)]
mod tests;
