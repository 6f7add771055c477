//! One viewer's WebSocket: a receiving task that checks every client message and enforces the
//! ticket's rights, and a sending loop with flow control. At most `max_frames_in_flight`
//! frames are unacknowledged; while the window is full the viewer is simply not sent anything,
//! and when room appears it gets the newest frame (a slow viewer gets fewer, newer frames, and
//! nothing queues up). Lossy areas are refined once they stop changing.

mod clipboard;
mod receive;
mod send;
mod sessions;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::display::{ServerMessage, caps};
use atrium_protocol::ticket::{Capabilities, DisplayClaims, Watermark};
use axum::extract::ws::WebSocket;
use futures_util::StreamExt;
use tokio::sync::mpsc;

pub use sessions::Sessions;
use sessions::{Ending, Presence};

use crate::desktop::ViewerSlot;
use crate::files;
use crate::metrics::Metrics;
use crate::pipeline::pool::EncodePool;
use crate::recording::Recorder;
use crate::watermark::MarkGuard;
use receive::{Receiving, receive};
use send::Sender;

/// How long a close message may take to go out to a client.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// What every viewer shares.
#[derive(Debug)]
pub struct ViewerContext {
    pub pool: EncodePool,
    pub metrics: Arc<Metrics>,
    pub max_in_flight: u8,
    pub refine_after: Duration,
    /// Most video frames a second per viewer; 0: no video.
    pub video_max_fps: u32,
    pub ack_timeout: Duration,
    /// The virus scanner uploads and downloads pass, when this proxy has one.
    pub scanner: Option<crate::files::scan::Scanner>,
    /// What each session moved in files, against policy's totals.
    pub totals: Arc<files::SessionTotals>,
    /// Downloads offered for the browser to fetch itself (`/files/{vm}/{token}`).
    pub links: Arc<files::links::Links>,
}

/// The capability bits of a ticket, as sent in Hello.
pub fn caps_bits(c: &Capabilities) -> u32 {
    let mut b = 0;
    for (on, bit) in [
        (c.view_only, caps::VIEW_ONLY),
        (c.clipboard_copy_out, caps::CLIPBOARD_COPY_OUT),
        (c.clipboard_paste_in, caps::CLIPBOARD_PASTE_IN),
        (c.file_upload, caps::FILE_UPLOAD),
        (c.file_download, caps::FILE_DOWNLOAD),
        (c.shadow, caps::SHADOW),
        (c.audio, caps::AUDIO),
        (c.file_upload || c.file_download, caps::FILE_LINKS),
        (c.clipboard_paste_in && c.clipboard_in_images, caps::CLIPBOARD_IMAGES_IN),
        (c.clipboard_copy_out && c.clipboard_out_images, caps::CLIPBOARD_IMAGES_OUT),
    ] {
        if on {
            b |= bit;
        }
    }
    b
}

/// Whether a viewer may ask the desktop for another screen size: the user's own viewer may
/// (its window is the screen), one that only watches may not.
pub fn may_resize(c: &Capabilities) -> bool {
    !c.view_only && !c.shadow
}

/// What the receiving task tells the sending loop.
#[derive(Debug)]
enum Event {
    Ack(u32),
    Ping(u32),
    Refresh,
    /// The viewer wants the desktop's sound (true) or not (muted).
    Sound(bool),
    /// The viewer decodes video (true) or wants still images only.
    Video(bool),
    /// A key or pointer message to record (input recording is on).
    Input(axum::body::Bytes),
    /// A message for the viewer (about its uploads).
    Say(ServerMessage),
    /// Close with this code and reason.
    Close(u16, String),
    /// The client went away.
    Gone,
}

/// The input sequence numbers of recent events, with when they were forwarded.
#[derive(Debug, Default)]
struct InputLog {
    recent: VecDeque<(u32, Instant)>,
}

impl InputLog {
    /// Notes that input `seq` was forwarded at `at` (taken before the forwarding: a source that
    /// reacts at once may capture its pixels before the forwarding returns).
    fn record(&mut self, seq: u32, at: Instant) {
        if self.recent.len() >= 64 {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, at));
    }

    /// The newest input forwarded before `t`.
    fn before(&self, t: Instant) -> u32 {
        self.recent.iter().rev().find(|(_, at)| *at <= t).map_or(0, |(s, _)| *s)
    }
}

/// Runs a viewer until it or the desktop goes away.
/// `mark`: the viewer's watermark on the desktop, already drawn into its frames (or about to
/// be) when the ticket asks for one; the viewer is sent only frames that carry it.
/// `recorder`: the viewer's stream is recorded there, as its ticket asks.
pub async fn serve(
    socket: WebSocket,
    slot: ViewerSlot,
    mark: Option<MarkGuard>,
    recorder: Option<Recorder>,
    claims: DisplayClaims,
    ctx: Arc<ViewerContext>,
    sessions: Arc<Sessions>,
) {
    // The span names the viewer in its log lines; it is not entered on every poll of the
    // connection (that costs more than the few lines it serves).
    let span = tracing::info_span!("viewer", vm = %slot.desktop().vm, user = %claims.sub, session = %claims.sid);
    let entry = sessions.register(&claims.sid, !claims.caps.shadow);
    let (outcomes, mut outcomes_rx) = mpsc::unbounded_channel::<files::Outcome>();
    let log_span = span.clone();
    let (audit, sid) = (Arc::clone(&sessions), claims.sid.clone());
    // Every upload's end is logged and kept for the broker's audit log; this ends with the
    // last upload of the viewer, which may outlive its connection by a little.
    tokio::spawn(async move {
        let mut budget = files::AuditBudget::new(std::time::Instant::now());
        while let Some(o) = outcomes_rx.recv().await {
            // Clipboard texts and refusals that moved nothing are audited within a budget: a
            // viewer sending thousands cannot push the other sessions' records out.
            if let Some(held_back) = budget.over(&o, std::time::Instant::now()) {
                if held_back.is_power_of_two() {
                    tracing::warn!(parent: &log_span, held_back,
                        "clipboard texts and refusals beyond the audit budget are not recorded one by one");
                }
                continue;
            }
            let sha256 = o.sha256.as_ref().map(|h| files::hex(h));
            tracing::info!(parent: &log_span, direction = o.direction, name = %o.name,
                size = o.size, sha256 = sha256.as_deref().unwrap_or(""), verdict = o.verdict,
                detail = o.detail.as_deref().unwrap_or(""), "transfer");
            audit.note_transfer(o.record(&sid, sha256));
        }
    });
    let extras = Extras {
        watermark: claims.watermark,
        recorder,
        presence: entry.presence(),
        outcomes,
        sid: claims.sid.clone(),
    };
    serve_inner(socket, slot, claims.caps, extras, ctx, entry.ending(), &span).await;
    drop(mark);
    drop(entry);
}

/// What a ticket adds to a viewer beyond its rights.
struct Extras {
    watermark: Option<Watermark>,
    recorder: Option<Recorder>,
    /// Where this viewer's input is noted (the session's idle time).
    presence: Arc<Presence>,
    /// Where the outcomes of its uploads go.
    outcomes: mpsc::UnboundedSender<files::Outcome>,
    /// The broker's session id.
    sid: String,
}

async fn serve_inner(
    socket: WebSocket,
    slot: ViewerSlot,
    rights: Capabilities,
    extras: Extras,
    ctx: Arc<ViewerContext>,
    ended: Arc<Ending>,
    span: &tracing::Span,
) {
    let desktop = Arc::clone(slot.desktop());
    ctx.metrics.clients.fetch_add(1, Ordering::Relaxed);
    let Extras { watermark, recorder, presence, outcomes, sid } = extras;
    let record_input = recorder.as_ref().is_some_and(Recorder::records_input);
    tracing::info!(parent: span, view_only = rights.view_only, watermark = watermark.is_some(),
        recording = recorder.as_ref().map(Recorder::id), viewers = desktop.viewers(), "viewer connected");
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(64);
    let inputs = Arc::new(Mutex::new(InputLog::default()));
    // Answers about uploads and downloads (a download's bytes too) reach the sending side as
    // events.
    let (say, mut said) = mpsc::channel::<ServerMessage>(16);
    let events = tx.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(m) = said.recv().await {
            if events.send(Event::Say(m)).await.is_err() {
                return;
            }
        }
    });
    let target = desktop.guest().map(|g| files::FileTarget {
        guest: g.clone(),
        scanner: ctx.scanner.clone(),
        sid: sid.clone(),
        totals: Arc::clone(&ctx.totals),
        links: Arc::clone(&ctx.links),
    });
    let uploads = files::Uploads::new(target.clone(), rights, say.clone(), outcomes.clone());
    let downloads = files::Downloads::new(target, rights, say, outcomes.clone());
    let receiver = tokio::spawn(receive(
        stream,
        tx,
        Receiving {
            desktop: Arc::clone(&desktop),
            rights,
            inputs: Arc::clone(&inputs),
            metrics: Arc::clone(&ctx.metrics),
            ending: Arc::clone(&ended),
            record_input,
            presence,
            uploads,
            downloads,
            outcomes: outcomes.clone(),
        },
    ));
    let mut sender =
        Sender::new(sink, Arc::clone(&ctx), Arc::clone(&desktop), rights, inputs, ended, watermark);
    sender.recorder = recorder;
    sender.outcomes = Some(outcomes);
    let why = sender.run(rx).await;
    receiver.abort();
    forwarder.abort();
    if let Some(r) = sender.recorder.take() {
        r.finish();
    }
    ctx.metrics.clients.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(parent: span, reason = %why, "viewer disconnected");
    drop(slot);
}
