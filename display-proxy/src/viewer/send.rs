//! The sending loop of one viewer: flow control (at most `max_frames_in_flight` frames
//! unacknowledged), the newest frame when there is room, refinement of lossy areas, the
//! pointer shape and the guest's clipboard.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::display::{ServerMessage, VERSION, caps};
use atrium_protocol::ticket::{Capabilities, Watermark};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::{broadcast, mpsc};

use super::clipboard::copy_out;
use super::{CLOSE_WITHIN, Ending, Event, InputLog, ViewerContext, caps_bits, may_resize};
use crate::desktop::Desktop;
use crate::files::Outcome;
use crate::framebuffer::intersect;
use crate::metrics::Metrics;
use crate::pipeline::encode::encode_plan;
use crate::pipeline::frame::Frame;
use crate::pipeline::plan::{
    Plan, ViewerTiles, apply, next_refine, plan_refine, plan_update, plan_update_except,
};
use crate::pipeline::publish::Published;
use crate::recording::{FailureWatch, Recorder};
use crate::video::{Decision, Video, mark_lossy};

struct InFlight {
    id: u32,
    sent: Instant,
    bytes: usize,
}

pub(super) struct Sender {
    sink: SplitSink<WebSocket, Message>,
    ctx: Arc<ViewerContext>,
    desktop: Arc<Desktop>,
    rights: Capabilities,
    inputs: Arc<Mutex<InputLog>>,
    ended: Arc<Ending>,
    view: ViewerTiles,
    in_flight: VecDeque<InFlight>,
    next_id: u32,
    /// Measured bytes per second to this viewer.
    bandwidth: Option<f64>,
    /// Moving areas as video, once the viewer said it decodes it.
    video: Option<Video>,
    /// The watermark this viewer's ticket asks for: only frames that carry it are sent.
    watermark: Option<Watermark>,
    /// Where this viewer's stream is recorded, when its ticket asks.
    pub(super) recorder: Option<Recorder>,
    /// Where what crossed the clipboard is noted (size and hash, for the audit).
    pub(super) outcomes: Option<mpsc::UnboundedSender<Outcome>>,
}

impl Sender {
    pub(super) fn new(
        sink: SplitSink<WebSocket, Message>,
        ctx: Arc<ViewerContext>,
        desktop: Arc<Desktop>,
        rights: Capabilities,
        inputs: Arc<Mutex<InputLog>>,
        ended: Arc<Ending>,
        watermark: Option<Watermark>,
    ) -> Self {
        Self {
            sink,
            ctx,
            desktop,
            rights,
            inputs,
            ended,
            watermark,
            view: ViewerTiles::new(),
            in_flight: VecDeque::new(),
            next_id: 1,
            bandwidth: None,
            video: None,
            recorder: None,
            outcomes: None,
        }
    }

    /// Whether `p` may be sent to this viewer: it carries the watermark the ticket asks for.
    fn may_see(&self, p: &Published) -> bool {
        self.watermark.as_ref().is_none_or(|w| p.watermark.as_ref().is_some_and(|s| s.carries(w)))
    }

    /// How long lossy areas wait before they are refined (longer while a slow video plays).
    fn refine_after(&self) -> Duration {
        self.video.as_ref().map_or(self.ctx.refine_after, |v| v.refine_after(self.ctx.refine_after))
    }

    /// JPEG quality for the measured throughput.
    fn quality(&self) -> u8 {
        match self.bandwidth {
            None => 70,
            Some(b) if b >= 10e6 => 85,
            Some(b) if b >= 3e6 => 75,
            Some(b) if b >= 1e6 => 60,
            Some(_) => 45,
        }
    }

    /// Queues one message. A client that stops reading cannot hold the viewer (and the
    /// desktop's slot) forever: a write that waits longer than the acknowledgement timeout
    /// fails.
    async fn send(&mut self, bytes: Bytes) -> Result<usize, axum::Error> {
        let n = bytes.len();
        let limit = self.ctx.ack_timeout;
        if let Some(r) = &mut self.recorder {
            r.message(&bytes);
        }
        tokio::time::timeout(limit, self.sink.feed(Message::Binary(bytes)))
            .await
            .map_err(|_| axum::Error::new("the client stopped reading"))??;
        Ok(n)
    }

    /// Sends what is queued, within the acknowledgement timeout.
    async fn flush(&mut self) -> Result<(), axum::Error> {
        tokio::time::timeout(self.ctx.ack_timeout, self.sink.flush())
            .await
            .map_err(|_| axum::Error::new("the client stopped reading"))?
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let reason = atrium_protocol::display::truncate_utf8(reason, 120).to_owned();
        let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(CLOSE_WITHIN, self.sink.send(close)).await;
    }

    pub(super) async fn run(&mut self, mut rx: mpsc::Receiver<Event>) -> String {
        let mut frames = self.desktop.frames();
        let mut cursor = self.desktop.cursor();
        let mut clip = self.desktop.clipboard();
        let first = Arc::clone(&frames.borrow());
        let hello = ServerMessage::Hello {
            version: VERSION,
            width: first.frame.grid.width,
            height: first.frame.grid.height,
            // Sound is offered where the ticket allows it and the desktop has some.
            caps: caps_bits(&self.rights)
                & if self.desktop.has_sound() { u32::MAX } else { !caps::AUDIO }
                | if self.ctx.video_max_fps > 0 { caps::VIDEO } else { 0 }
                | match &self.recorder {
                    Some(r) if r.records_input() => caps::RECORDED | caps::RECORDED_INPUT,
                    Some(_) => caps::RECORDED,
                    None => 0,
                },
            max_frames_in_flight: self.ctx.max_in_flight,
            name: self.desktop.name.clone(),
        };
        if self.send(Bytes::from(hello.encode())).await.is_err() {
            return "send failed".into();
        }
        if let Some(max) = self.desktop.screen_max().filter(|_| may_resize(&self.rights)) {
            let resizable = ServerMessage::Resizable {
                max_width: u16::try_from(max.width).unwrap_or(u16::MAX),
                max_height: u16::try_from(max.height).unwrap_or(u16::MAX),
            };
            if self.send(Bytes::from(resizable.encode())).await.is_err() {
                return "send failed".into();
            }
        }
        let shape = cursor.borrow_and_update().clone();
        if let Some(c) = shape
            && self.send(Bytes::from_owner(c)).await.is_err()
        {
            return "send failed".into();
        }
        let max = usize::from(self.ctx.max_in_flight);
        // The timers and the end-of-session notification live across iterations: each loop
        // only moves a deadline when it changes (a new timer per wake-up would register and
        // deregister it every time).
        let ended = Arc::clone(&self.ended);
        let ended = ended.notified();
        tokio::pin!(ended);
        let far = Instant::now() + Duration::from_secs(365 * 86_400);
        let refine_timer = tokio::time::sleep_until(far.into());
        tokio::pin!(refine_timer);
        let ack_timer = tokio::time::sleep_until(far.into());
        tokio::pin!(ack_timer);
        let (mut refine_armed, mut ack_armed) = (None::<Instant>, None::<Instant>);
        // The recording's open chunk leaves when due; a recording that fails ends the viewer.
        let chunk_timer = tokio::time::sleep_until(far.into());
        tokio::pin!(chunk_timer);
        let mut chunk_armed = None::<Instant>;
        let failure = self.recorder.as_ref().map(Recorder::failure_watch);
        // The desktop's sound, while the viewer asks for it (and its ticket allows).
        let mut sound: Option<broadcast::Receiver<Bytes>> = None;
        loop {
            if self.in_flight.len() < max {
                let newest = Arc::clone(&frames.borrow_and_update());
                let catch_up = self
                    .video
                    .as_ref()
                    .and_then(Video::catch_up_at)
                    .is_some_and(|t| t <= Instant::now());
                let result = if !self.may_see(&newest) {
                    // Its watermark is being drawn: the next frame carries it.
                    Ok(false)
                } else if newest.frame.seq > self.view.sent_seq
                    || self.view.sent_seq == 0
                    || catch_up
                {
                    self.send_frame(newest, false).await
                } else if next_refine(&self.view, self.refine_after())
                    .is_some_and(|t| t <= Instant::now())
                {
                    self.send_frame(newest, true).await
                } else {
                    Ok(false)
                };
                match result {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return format!("send failed: {e}"),
                }
            }
            let room = self.in_flight.len() < max;
            // One timer for refinement and for a video frame the rate limit postponed.
            let catch_up = self.video.as_ref().and_then(Video::catch_up_at);
            let refine_at = if room {
                [next_refine(&self.view, self.refine_after()), catch_up].into_iter().flatten().min()
            } else {
                None
            };
            let ack_deadline = self.in_flight.front().map(|f| f.sent + self.ctx.ack_timeout);
            if refine_at != refine_armed {
                if let Some(t) = refine_at {
                    refine_timer.as_mut().reset(t.into());
                }
                refine_armed = refine_at;
            }
            if ack_deadline != ack_armed {
                if let Some(t) = ack_deadline {
                    ack_timer.as_mut().reset(t.into());
                }
                ack_armed = ack_deadline;
            }
            let chunk_due = self.recorder.as_ref().and_then(Recorder::due_at);
            if chunk_due != chunk_armed {
                if let Some(t) = chunk_due {
                    chunk_timer.as_mut().reset(t.into());
                }
                chunk_armed = chunk_due;
            }
            tokio::select! {
                biased;
                () = &mut ended => {
                    let code = self.ended.reason().code();
                    self.close(close_code::NORMAL, &format!("the session ended: {code}")).await;
                    return format!("the broker ended the session ({code})");
                }
                why = wait_failure(failure.as_ref()), if failure.is_some() => {
                    Metrics::add(&self.ctx.metrics.recordings_failed, 1);
                    self.close(close_code::ERROR, "this session must be recorded, and its recording cannot be stored").await;
                    return format!("the recording failed: {why}");
                }
                ev = rx.recv() => match ev {
                    Some(Event::Ack(id)) => {
                        if !self.ack(id) {
                            self.ctx.metrics.connections_closed_bad_message.fetch_add(1, Ordering::Relaxed);
                            self.close(close_code::PROTOCOL, "acknowledgement of a frame never sent").await;
                            return "acknowledgement of a frame never sent".into();
                        }
                    }
                    Some(Event::Ping(id)) => {
                        let pong = ServerMessage::Pong { id }.encode();
                        if self.send(Bytes::from(pong)).await.is_err() || self.flush().await.is_err() {
                            return "send failed".into();
                        }
                    }
                    Some(Event::Say(m)) => {
                        if self.send(Bytes::from(m.encode())).await.is_err() || self.flush().await.is_err() {
                            return "send failed".into();
                        }
                    }
                    Some(Event::Refresh) => {
                        self.view = ViewerTiles::new();
                        if let Some(v) = &mut self.video {
                            v.reset();
                        }
                    }
                    Some(Event::Video(on)) => {
                        let fps = self.ctx.video_max_fps;
                        if !on || fps == 0 {
                            self.video = None;
                        } else if self.video.is_none() {
                            self.video = Some(Video::new(fps, self.desktop.video_slots()));
                        }
                    }
                    Some(Event::Input(m)) => {
                        if let Some(r) = &mut self.recorder {
                            r.input(&m);
                        }
                    }
                    Some(Event::Sound(on)) => {
                        sound = if on && self.rights.audio { self.desktop.sound() } else { None };
                    }
                    Some(Event::Close(code, reason)) => {
                        self.ctx.metrics.connections_closed_bad_message.fetch_add(1, Ordering::Relaxed);
                        self.close(code, &reason).await;
                        return reason;
                    }
                    Some(Event::Gone) | None => return "the client closed the connection".into(),
                },
                r = frames.changed(), if room => {
                    if r.is_err() {
                        self.close(close_code::AWAY, "the desktop's display ended").await;
                        return "the desktop's display ended".into();
                    }
                }
                r = cursor.changed() => {
                    if r.is_ok() {
                        let shape = cursor.borrow_and_update().clone();
                        if let Some(c) = shape
                            && (self.send(Bytes::from_owner(c)).await.is_err() || self.flush().await.is_err())
                        {
                            return "send failed".into();
                        }
                    }
                }
                r = clip.recv(), if self.rights.clipboard_copy_out => match r {
                    Ok(c) => {
                        let m = copy_out(&self.rights, self.outcomes.as_ref(), c).encode();
                        if self.send(Bytes::from(m)).await.is_err() || self.flush().await.is_err() {
                            return "send failed".into();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => clip = broadcast::channel(1).1,
                },
                r = recv_sound(&mut sound), if sound.is_some() => match r {
                    Ok(m) => {
                        // Outside the frame window: a few hundred bytes, due now.
                        if self.send(m).await.is_err() || self.flush().await.is_err() {
                            return "send failed".into();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Metrics::add(&self.ctx.metrics.audio_dropped, n);
                    }
                    Err(broadcast::error::RecvError::Closed) => sound = None,
                },
                () = &mut refine_timer, if refine_armed.is_some() => refine_armed = None,
                () = &mut chunk_timer, if chunk_armed.is_some() => {
                    chunk_armed = None;
                    if let Some(r) = &mut self.recorder {
                        r.tick(Instant::now());
                    }
                }
                () = &mut ack_timer, if ack_armed.is_some() => {
                    self.close(close_code::POLICY, "no frame acknowledgement").await;
                    return "no frame acknowledgement".into();
                }
            }
        }
    }

    /// Takes an acknowledgement of every frame up to `id`; false when `id` names a frame not
    /// sent yet (a client must not open its own window).
    fn ack(&mut self, id: u32) -> bool {
        if id >= self.next_id && !self.in_flight.iter().any(|f| f.id == id) {
            return false;
        }
        while let Some(f) = self.in_flight.front() {
            if f.id > id {
                break;
            }
            let f = self.in_flight.pop_front().expect("front exists");
            if f.id == id && f.bytes >= 16 * 1024 {
                let secs = f.sent.elapsed().as_secs_f64().max(0.001);
                #[allow(clippy::cast_precision_loss)]
                let sample = f.bytes as f64 / secs;
                self.bandwidth = Some(self.bandwidth.map_or(sample, |b| b * 0.7 + sample * 0.3));
            }
        }
        true
    }

    /// Plans, encodes and sends one frame (an update, or a refinement). Returns whether
    /// anything was sent.
    async fn send_frame(
        &mut self,
        published: Arc<Published>,
        refine: bool,
    ) -> Result<bool, axum::Error> {
        let now = Instant::now();
        let first = self.view.sent_seq == 0;
        let frame = Arc::clone(&published.frame);
        let decision = match &mut self.video {
            Some(v) if !refine => v.decide(&frame, &self.view, now),
            _ => Decision::Stills,
        };
        let prepared = if !refine && decision == Decision::Stills && is_next(&frame, &self.view) {
            published.in_step()
        } else {
            None
        };
        let (plan, messages) = if let Some(p) = prepared {
            (p.plan.clone(), p.messages.clone())
        } else {
            let view = self.view.clone();
            let p = Arc::clone(&published);
            let metrics = Arc::clone(&self.ctx.metrics);
            let (after, quality) = (self.refine_after(), Some(self.quality()));
            let mut video = self.video.take();
            let bandwidth = self.bandwidth;
            let work = move || {
                let (plan, messages) = if refine {
                    let plan = plan_refine(&p.frame, &view, now, after);
                    let messages = encode_plan(&p.frame, &p.encodings, &plan, &metrics);
                    (plan, messages)
                } else {
                    plan_with_video(
                        &p, &view, quality, decision, &mut video, bandwidth, &metrics, now,
                    )
                };
                (plan, messages, video)
            };
            // A small change (typing, a pointer) is planned and encoded right here: the
            // thread hand-offs to the pool would cost more than the work. Anything else is
            // one job on the pool, whatever the number of rectangles.
            let (plan, messages, video) =
                if !refine && decision == Decision::Stills && is_small(&frame, &self.view) {
                    work()
                } else {
                    self.ctx
                        .pool
                        .run(work)
                        .await
                        .map_err(|_| axum::Error::new("the encode pool stopped"))?
                };
            self.video = video;
            (plan, messages)
        };
        if plan.is_empty() && messages.is_empty() {
            if !refine {
                apply(&mut self.view, &frame, &plan, now);
                mark_lossy(&mut self.view, &frame, decision, now);
            }
            return Ok(false);
        }
        if !refine && self.view.sent_seq > 0 && frame.seq > self.view.sent_seq + 1 {
            Metrics::add(&self.ctx.metrics.frames_dropped, frame.seq - self.view.sent_seq - 1);
        }
        if refine {
            Metrics::add(&self.ctx.metrics.refinements, 1);
        }
        let mut bytes = 0;
        if let Some((width, height)) = plan.resize {
            bytes +=
                self.send(Bytes::from(ServerMessage::Resize { width, height }.encode())).await?;
        }
        if let Some(c) = plan.copy {
            let m = ServerMessage::Copy { rect: c.rect, src_x: c.src_x, src_y: c.src_y }.encode();
            bytes += self.send(Bytes::from(m)).await?;
        }
        for msg in messages {
            bytes += self.send(Bytes::from_owner(msg)).await?;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let input_seq = self.inputs.lock().expect("input log lock").before(frame.captured_at);
        bytes += self
            .send(Bytes::from(ServerMessage::FrameEnd { frame: id, input_seq }.encode()))
            .await?;
        self.flush().await?;
        self.in_flight.push_back(InFlight { id, sent: Instant::now(), bytes });
        apply(&mut self.view, &frame, &plan, now);
        if refine {
            // The stream's area shown losslessly again: motion there must build up anew.
            if let Some(v) = &mut self.video
                && let Some(s) = v.stream_rect()
                && plan.rects.iter().any(|(r, _)| intersect(*r, s).is_some())
            {
                v.end_stream();
            }
        } else {
            mark_lossy(&mut self.view, &frame, decision, now);
        }
        Metrics::add(&self.ctx.metrics.frames_sent, 1);
        Metrics::add(&self.ctx.metrics.bytes_sent, u64::try_from(bytes).unwrap_or(u64::MAX));
        if let Some(r) = &mut self.recorder {
            if first {
                r.first_frame(bytes);
            } else if r.key_due() {
                self.record_key(published).await?;
            }
        }
        Ok(true)
    }

    /// Adds a key frame to the recording: the whole of `published` (the frame the viewer was
    /// just sent), lossless, from nothing, with the pointer's shape.
    async fn record_key(&mut self, published: Arc<Published>) -> Result<(), axum::Error> {
        let metrics = Arc::clone(&self.ctx.metrics);
        let mut messages = self
            .ctx
            .pool
            .run(move || {
                let frame = &published.frame;
                let plan = plan_update(frame, &ViewerTiles::new(), None);
                let (width, height) = (frame.grid.width, frame.grid.height);
                let mut out: Vec<Arc<[u8]>> =
                    vec![Arc::from(ServerMessage::Resize { width, height }.encode())];
                out.extend(encode_plan(frame, &published.encodings, &plan, &metrics));
                out
            })
            .await
            .map_err(|_| axum::Error::new("the encode pool stopped"))?;
        if let Some(c) = self.desktop.cursor().borrow().clone() {
            messages.push(c);
        }
        if let Some(r) = &mut self.recorder {
            r.key(&messages);
        }
        Ok(())
    }
}

/// Plans an update from `view` to the published frame, with the moving area as video when
/// `decision` says so. If the encoder fails, the viewer gets stills from then on (and this
/// update has the area as stills too).
#[allow(clippy::too_many_arguments)]
fn plan_with_video(
    p: &Published,
    view: &ViewerTiles,
    quality: Option<u8>,
    decision: Decision,
    video: &mut Option<Video>,
    bandwidth: Option<f64>,
    metrics: &Metrics,
    now: Instant,
) -> (Plan, Vec<Arc<[u8]>>) {
    let mut encoded = None;
    if let (Decision::Encode(rect), Some(v)) = (decision, video.as_mut()) {
        match v.encode(&p.frame, rect, bandwidth, now) {
            Ok(e) => encoded = Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "video encoding failed: still images from now on");
                *video = None;
            }
        }
    }
    let except =
        if decision == Decision::Stills || video.is_none() { None } else { decision.except() };
    let plan = plan_update_except(&p.frame, view, quality, except);
    let mut messages = encode_plan(&p.frame, &p.encodings, &plan, metrics);
    if let Some((msg, cost)) = encoded {
        Metrics::add(&metrics.video_frames, 1);
        Metrics::add(&metrics.video_key_frames, u64::from(cost.key));
        Metrics::add(&metrics.video_bytes, u64::try_from(cost.bytes).unwrap_or(u64::MAX));
        Metrics::add(
            &metrics.video_encode_nanos,
            u64::try_from(cost.encode.as_nanos()).unwrap_or(u64::MAX),
        );
        messages.push(Arc::from(msg));
    }
    (plan, messages)
}

/// Pixels below which an update is planned and encoded on the connection's own task.
const INLINE_PIXELS: u32 = 64 * 64 * 4;

/// Whether `view` has the frame just before `frame`, at its size.
fn is_next(frame: &Frame, view: &ViewerTiles) -> bool {
    view.sent_seq > 0
        && view.sent_seq + 1 == frame.seq
        && view.sent_seq >= frame.size_seq
        && (view.width, view.height) == (frame.grid.width, frame.grid.height)
}

/// Whether bringing `view` to `frame` is a small job: the viewer has the frame before, and
/// few pixels changed.
fn is_small(frame: &Frame, view: &ViewerTiles) -> bool {
    is_next(frame, view)
        && frame.delta.iter().map(|d| u32::from(d.bbox.w) * u32::from(d.bbox.h)).sum::<u32>()
            <= INLINE_PIXELS
}

/// The recording's failure, once there is a recording (the branch is disabled otherwise).
async fn wait_failure(watch: Option<&FailureWatch>) -> String {
    match watch {
        Some(w) => w.failed().await,
        None => std::future::pending().await,
    }
}

/// The next sound message, once `sound` is set (the branch is disabled otherwise).
async fn recv_sound(
    sound: &mut Option<broadcast::Receiver<Bytes>>,
) -> Result<Bytes, broadcast::error::RecvError> {
    match sound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
