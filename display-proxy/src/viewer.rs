//! One viewer's WebSocket: a receiving task that checks every client message and enforces the
//! ticket's rights, and a sending loop with flow control. At most `max_frames_in_flight`
//! frames are unacknowledged; while the window is full the viewer is simply not sent anything,
//! and when room appears it gets the newest frame (a slow viewer gets fewer, newer frames, and
//! nothing queues up). Lossy areas are refined once they stop changing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::display::{ClientMessage, DecodeError, ServerMessage, VERSION, caps};
use atrium_protocol::keymap;
use atrium_protocol::ticket::{Capabilities, DisplayClaims, MAX_TICKET_TTL_SECS};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::desktop::{Desktop, ViewerSlot};
use crate::metrics::Metrics;
use crate::pipeline::encode::encode_plan;
use crate::pipeline::frame::Frame;
use crate::pipeline::plan::{ViewerTiles, apply, next_refine, plan_refine, plan_update};
use crate::pipeline::pool::EncodePool;
use crate::pipeline::publish::Published;
use crate::source::InputEvent;

/// How long a close message may take to go out to a client.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// What every viewer shares.
#[derive(Debug)]
pub struct ViewerContext {
    pub pool: EncodePool,
    pub metrics: Arc<Metrics>,
    pub max_in_flight: u8,
    pub refine_after: Duration,
    pub ack_timeout: Duration,
}

/// A viewer waiting to be told its session ended: its id and its notifier.
type Waiter = (u64, Arc<Ending>);

/// How a viewer learns that its session ended: the sending loop waits on `notify`; the
/// receiving task checks `ended` before it forwards any input (the sending loop may be stuck
/// writing to a client that does not read).
#[derive(Debug, Default)]
pub struct Ending {
    notify: Notify,
    ended: AtomicBool,
}

impl Ending {
    fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

/// The viewers of each broker session, so the broker can end a session (sign-out, policy,
/// administrator) and every viewer of it is disconnected; and the sessions ended lately, so a
/// ticket minted before its session ended no longer connects.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Vec<Waiter>>>,
    next: std::sync::atomic::AtomicU64,
    /// Sessions ended, until every ticket minted before could have expired.
    ended: Mutex<HashMap<String, Instant>>,
}

/// How long an ended session is remembered: the longest ticket lifetime and a leeway.
const ENDED_MEMORY: Duration = Duration::from_secs(MAX_TICKET_TTL_SECS + 60);
/// Most ended sessions remembered at once (the broker ends each once; it holds the node token).
const MAX_ENDED: usize = 100_000;

impl Sessions {
    fn register(self: &Arc<Self>, sid: &str) -> SessionEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Ending::default());
        // Ended between the ticket check and now: the viewer stops at once.
        if self.has_ended(sid) {
            notify.end();
        }
        self.map
            .lock()
            .expect("sessions lock")
            .entry(sid.to_owned())
            .or_default()
            .push((id, Arc::clone(&notify)));
        SessionEntry { sessions: Arc::clone(self), sid: sid.to_owned(), id, notify }
    }

    /// Disconnects every viewer of `sid` and refuses its tickets from now on; returns how many
    /// viewers there were.
    pub fn end(&self, sid: &str) -> usize {
        {
            let mut ended = self.ended.lock().expect("ended lock");
            let now = Instant::now();
            if ended.len() >= MAX_ENDED {
                ended.retain(|_, until| *until > now);
            }
            if ended.len() < MAX_ENDED {
                ended.insert(sid.to_owned(), now + ENDED_MEMORY);
            }
        }
        let viewers = self.map.lock().expect("sessions lock").remove(sid).unwrap_or_default();
        for (_, n) in &viewers {
            n.end();
        }
        viewers.len()
    }

    /// Whether the broker ended `sid` (within the last few minutes).
    pub fn has_ended(&self, sid: &str) -> bool {
        self.ended.lock().expect("ended lock").get(sid).is_some_and(|until| *until > Instant::now())
    }
}

struct SessionEntry {
    sessions: Arc<Sessions>,
    sid: String,
    id: u64,
    notify: Arc<Ending>,
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        let mut map = self.sessions.map.lock().expect("sessions lock");
        if let Some(v) = map.get_mut(&self.sid) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                map.remove(&self.sid);
            }
        }
    }
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
    ] {
        if on {
            b |= bit;
        }
    }
    b
}

/// What the receiving task tells the sending loop.
#[derive(Debug)]
enum Event {
    Ack(u32),
    Ping(u32),
    Refresh,
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
pub async fn serve(
    socket: WebSocket,
    slot: ViewerSlot,
    claims: DisplayClaims,
    ctx: Arc<ViewerContext>,
    sessions: Arc<Sessions>,
) {
    // The span names the viewer in its log lines; it is not entered on every poll of the
    // connection (that costs more than the few lines it serves).
    let span = tracing::info_span!("viewer", vm = %slot.desktop().vm, user = %claims.sub, session = %claims.sid);
    let entry = sessions.register(&claims.sid);
    serve_inner(socket, slot, claims.caps, ctx, Arc::clone(&entry.notify), &span).await;
    drop(entry);
}

async fn serve_inner(
    socket: WebSocket,
    slot: ViewerSlot,
    rights: Capabilities,
    ctx: Arc<ViewerContext>,
    ended: Arc<Ending>,
    span: &tracing::Span,
) {
    let desktop = Arc::clone(slot.desktop());
    ctx.metrics.clients.fetch_add(1, Ordering::Relaxed);
    tracing::info!(parent: span, view_only = rights.view_only, viewers = desktop.viewers(), "viewer connected");
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(64);
    let inputs = Arc::new(Mutex::new(InputLog::default()));
    let receiver = tokio::spawn(receive(
        stream,
        tx,
        Arc::clone(&desktop),
        rights,
        Arc::clone(&inputs),
        Arc::clone(&ctx.metrics),
        Arc::clone(&ended),
    ));
    let mut sender = Sender {
        sink,
        ctx: Arc::clone(&ctx),
        desktop: Arc::clone(&desktop),
        rights,
        inputs,
        ended,
        view: ViewerTiles::new(),
        in_flight: VecDeque::new(),
        next_id: 1,
        bandwidth: None,
    };
    let why = sender.run(rx).await;
    receiver.abort();
    ctx.metrics.clients.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(parent: span, reason = %why, "viewer disconnected");
    drop(slot);
}

struct InFlight {
    id: u32,
    sent: Instant,
    bytes: usize,
}

struct Sender {
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
}

impl Sender {
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

    async fn run(&mut self, mut rx: mpsc::Receiver<Event>) -> String {
        let mut frames = self.desktop.frames();
        let mut cursor = self.desktop.cursor();
        let mut clip = self.desktop.clipboard();
        let first = Arc::clone(&frames.borrow());
        let hello = ServerMessage::Hello {
            version: VERSION,
            width: first.frame.grid.width,
            height: first.frame.grid.height,
            caps: caps_bits(&self.rights),
            max_frames_in_flight: self.ctx.max_in_flight,
            name: self.desktop.name.clone(),
        };
        if self.send(Bytes::from(hello.encode())).await.is_err() {
            return "send failed".into();
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
        let ended = ended.notify.notified();
        tokio::pin!(ended);
        let far = Instant::now() + Duration::from_secs(365 * 86_400);
        let refine_timer = tokio::time::sleep_until(far.into());
        tokio::pin!(refine_timer);
        let ack_timer = tokio::time::sleep_until(far.into());
        tokio::pin!(ack_timer);
        let (mut refine_armed, mut ack_armed) = (None::<Instant>, None::<Instant>);
        loop {
            if self.in_flight.len() < max {
                let newest = Arc::clone(&frames.borrow_and_update());
                let result = if newest.frame.seq > self.view.sent_seq || self.view.sent_seq == 0 {
                    self.send_frame(newest, false).await
                } else if next_refine(&self.view, self.ctx.refine_after)
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
            let refine_at =
                if room { next_refine(&self.view, self.ctx.refine_after) } else { None };
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
            tokio::select! {
                biased;
                () = &mut ended => {
                    self.close(close_code::NORMAL, "the session ended").await;
                    return "the broker ended the session".into();
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
                    Some(Event::Refresh) => self.view = ViewerTiles::new(),
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
                    Ok(text) => {
                        let m = ServerMessage::Clipboard { text }.encode();
                        if self.send(Bytes::from(m)).await.is_err() || self.flush().await.is_err() {
                            return "send failed".into();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => clip = broadcast::channel(1).1,
                },
                () = &mut refine_timer, if refine_armed.is_some() => refine_armed = None,
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
        let frame = Arc::clone(&published.frame);
        let prepared =
            if !refine && is_next(&frame, &self.view) { published.in_step() } else { None };
        let (plan, messages) = if let Some(p) = prepared {
            (p.plan.clone(), p.messages.clone())
        } else {
            let view = self.view.clone();
            let p = Arc::clone(&published);
            let metrics = Arc::clone(&self.ctx.metrics);
            let (after, quality) = (self.ctx.refine_after, Some(self.quality()));
            let work = move || {
                let plan = if refine {
                    plan_refine(&p.frame, &view, now, after)
                } else {
                    plan_update(&p.frame, &view, quality)
                };
                let messages = encode_plan(&p.frame, &p.encodings, &plan, &metrics);
                (plan, messages)
            };
            // A small change (typing, a pointer) is planned and encoded right here: the
            // thread hand-offs to the pool would cost more than the work. Anything else is
            // one job on the pool, whatever the number of rectangles.
            if !refine && is_small(&frame, &self.view) {
                work()
            } else {
                self.ctx
                    .pool
                    .run(work)
                    .await
                    .map_err(|_| axum::Error::new("the encode pool stopped"))?
            }
        };
        if plan.is_empty() {
            if !refine {
                apply(&mut self.view, &frame, &plan, now);
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
        Metrics::add(&self.ctx.metrics.frames_sent, 1);
        Metrics::add(&self.ctx.metrics.bytes_sent, u64::try_from(bytes).unwrap_or(u64::MAX));
        Ok(true)
    }
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

/// Most keys one viewer is tracked as holding down at once.
const MAX_HELD_KEYS: usize = 256;

/// Keys and buttons a viewer holds down, released if it goes away.
struct Held {
    desktop: Arc<Desktop>,
    keys: HashSet<(u32, Option<u16>)>,
    buttons: Option<(u16, u16, u8)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for (keysym, evdev) in self.keys.drain() {
            let _ = self.desktop.input().send(InputEvent::Key { down: false, keysym, evdev });
        }
        if let Some((x, y, b)) = self.buttons
            && b != 0
        {
            let _ = self.desktop.input().send(InputEvent::Pointer {
                x,
                y,
                buttons: 0,
                wheel_x: 0,
                wheel_y: 0,
            });
        }
    }
}

fn close_for(e: &DecodeError) -> (u16, String) {
    let code = match e {
        DecodeError::TooLarge(_) => close_code::SIZE,
        DecodeError::UnknownType(_) => close_code::UNSUPPORTED,
        _ => close_code::PROTOCOL,
    };
    (code, format!("bad message: {e}"))
}

async fn receive(
    mut stream: SplitStream<WebSocket>,
    tx: mpsc::Sender<Event>,
    desktop: Arc<Desktop>,
    rights: Capabilities,
    inputs: Arc<Mutex<InputLog>>,
    metrics: Arc<Metrics>,
    ending: Arc<Ending>,
) {
    let mut held = Held { desktop: Arc::clone(&desktop), keys: HashSet::new(), buttons: None };
    loop {
        let msg = match stream.next().await {
            None => {
                let _ = tx.send(Event::Gone).await;
                return;
            }
            Some(Err(e)) => {
                let text = e.to_string();
                let ev = if text.contains("Space limit exceeded") || text.contains("too long") {
                    Event::Close(close_code::SIZE, "bad message: over the size limit".into())
                } else {
                    Event::Gone
                };
                let _ = tx.send(ev).await;
                return;
            }
            Some(Ok(m)) => m,
        };
        let data = match msg {
            Message::Binary(b) => b,
            Message::Text(_) => {
                let _ = tx
                    .send(Event::Close(
                        close_code::UNSUPPORTED,
                        "text messages are not part of the display protocol".into(),
                    ))
                    .await;
                return;
            }
            Message::Close(_) => {
                let _ = tx.send(Event::Gone).await;
                return;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let m = match ClientMessage::decode(&data) {
            Ok(m) => m,
            Err(e) => {
                let (code, reason) = close_for(&e);
                let _ = tx.send(Event::Close(code, reason)).await;
                return;
            }
        };
        // Once the broker ended the session nothing more reaches the desktop, even while the
        // sending side is still stuck on a client that does not read.
        if ending.is_ended() {
            let _ = tx.send(Event::Gone).await;
            return;
        }
        let ev = match m {
            ClientMessage::Key { seq, down, keysym, code } => {
                let evdev = keymap::evdev_code(&code);
                forward(
                    &desktop,
                    &rights,
                    &metrics,
                    &inputs,
                    seq,
                    InputEvent::Key { down, keysym, evdev },
                );
                if !rights.view_only {
                    // A keyboard has about a hundred keys: a client claiming to hold more is
                    // not tracked further (its releases at disconnect are best effort anyway).
                    if down && held.keys.len() < MAX_HELD_KEYS {
                        held.keys.insert((keysym, evdev));
                    } else if !down {
                        held.keys.remove(&(keysym, evdev));
                    }
                }
                continue;
            }
            ClientMessage::Pointer { seq, x, y, buttons, wheel_x, wheel_y } => {
                forward(
                    &desktop,
                    &rights,
                    &metrics,
                    &inputs,
                    seq,
                    InputEvent::Pointer { x, y, buttons, wheel_x, wheel_y },
                );
                if !rights.view_only {
                    held.buttons = Some((x, y, buttons));
                }
                continue;
            }
            ClientMessage::Clipboard { text } => {
                if rights.clipboard_paste_in && !rights.view_only {
                    desktop.paste(text);
                } else {
                    tracing::debug!("clipboard paste refused: not allowed by the ticket");
                }
                continue;
            }
            ClientMessage::FrameAck { frame } => Event::Ack(frame),
            ClientMessage::Ping { id } => Event::Ping(id),
            ClientMessage::Refresh => Event::Refresh,
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

fn forward(
    desktop: &Desktop,
    rights: &Capabilities,
    metrics: &Metrics,
    inputs: &Mutex<InputLog>,
    seq: u32,
    ev: InputEvent,
) {
    if rights.view_only {
        metrics.input_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let at = Instant::now();
    if let Err(e) = desktop.input().send(ev) {
        metrics.input_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, "input dropped");
        return;
    }
    inputs.lock().expect("input log lock").record(seq, at);
}
