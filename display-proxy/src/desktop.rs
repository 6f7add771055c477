//! A desktop being watched: one source, any number of viewers (the user and shadows). A
//! source that can be polled (RFB) is driven by a task on the async runtime, which decodes,
//! compares and prepares small updates itself and hands large ones to the encode pool; other
//! sources (shared memory, synthetic) block on a capture thread of their own. Viewers get the
//! newest frame ([`Published`]) through a watch channel; the registry opens a desktop for its first viewer
//! and closes it after its last.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use atrium_protocol::display::{MAX_CLIPBOARD, ServerMessage, truncate_utf8};
use atrium_protocol::node::{DisplayEndpoint, VmState};
use futures_util::future::BoxFuture;
use thiserror::Error;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Semaphore, broadcast, watch};

use crate::framebuffer::Framebuffer;
use crate::metrics::Metrics;
use crate::node::{NodeClient, NodeError};
use crate::pipeline::capture::Capture;
use crate::pipeline::pool::EncodePool;
use crate::pipeline::publish::{Published, publish};
use crate::source::rfb::{RfbSource, RfbTarget};
use crate::source::shm::ShmSource;
use crate::source::{
    Buffered, CursorShape, FramebufferSource, InputSink, PolledSource, SourceError, SourceEvent,
    Stopper,
};

/// Why a desktop could not be opened or joined.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("no such VM: {0}")]
    NotFound(String),
    #[error("the VM is {0}")]
    NotRunning(&'static str),
    #[error("the node agent: {0}")]
    Node(NodeError),
    #[error("the VM's display: {0}")]
    Source(#[from] SourceError),
    #[error("the desktop already has {0} viewers")]
    TooManyViewers(usize),
}

impl From<NodeError> for OpenError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotFound(vm) => Self::NotFound(vm),
            other => Self::Node(other),
        }
    }
}

/// Text going into a guest's clipboard, and changes coming out of it.
#[derive(Debug, Clone)]
pub struct ClipboardLink {
    pub node: NodeClient,
    pub vm: String,
}

/// An opened source, with the guest's clipboard when there is one.
#[derive(Debug)]
pub struct OpenedSource {
    pub source: Box<dyn FramebufferSource>,
    pub clipboard: Option<ClipboardLink>,
}

/// Finds and connects a VM's display.
pub trait SourceOpener: Send + Sync + std::fmt::Debug {
    fn open<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<OpenedSource, OpenError>>;
}

/// The production opener: asks the node agent where the VM's display is.
#[derive(Debug, Clone)]
pub struct NodeOpener {
    pub node: NodeClient,
    /// For how long after input a QEMU desktop's refresh is kept fast (see
    /// [`RfbSource::set_keep_refresh`]); zero: never.
    pub keep_refresh: Duration,
}

impl SourceOpener for NodeOpener {
    fn open<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<OpenedSource, OpenError>> {
        Box::pin(async move {
            let info = self.node.vm(vm).await?;
            match info.state {
                VmState::Starting | VmState::Ready => {}
                other => return Err(OpenError::NotRunning(other.as_str())),
            }
            let name = vm.to_owned();
            let endpoint = info.display_endpoint;
            let keep_refresh = self.keep_refresh;
            let source = tokio::task::spawn_blocking(
                move || -> Result<Box<dyn FramebufferSource>, SourceError> {
                    Ok(match endpoint {
                        DisplayEndpoint::VncUnix { path } => {
                            let mut s = RfbSource::connect(&RfbTarget::Unix(path.into()))?;
                            s.set_keep_refresh(Some(keep_refresh));
                            Box::new(s)
                        }
                        DisplayEndpoint::VncTcp { address } => {
                            let mut s = RfbSource::connect(&RfbTarget::Tcp(address))?;
                            s.set_keep_refresh(Some(keep_refresh));
                            Box::new(s)
                        }
                        DisplayEndpoint::Shm { path } => {
                            Box::new(ShmSource::connect(path.as_ref(), &name)?)
                        }
                    })
                },
            )
            .await
            .map_err(|e| SourceError::Protocol(format!("connect task: {e}")))??;
            Ok(OpenedSource {
                source,
                clipboard: Some(ClipboardLink { node: self.node.clone(), vm: vm.to_owned() }),
            })
        })
    }
}

/// One watched desktop.
#[derive(Debug)]
pub struct Desktop {
    pub vm: String,
    pub name: String,
    frames: watch::Receiver<Arc<Published>>,
    cursor: watch::Receiver<Option<Arc<[u8]>>>,
    clipboard_out: broadcast::Sender<String>,
    clipboard_in: Option<ClipboardLink>,
    paste_slots: Arc<Semaphore>,
    input: Arc<dyn InputSink>,
    stopper: Arc<dyn Stopper>,
    alive: Arc<AtomicBool>,
    viewers: AtomicUsize,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    metrics: Arc<Metrics>,
}

/// How long a display may take to send its first image.
const FIRST_UPDATE_TIMEOUT: Duration = Duration::from_secs(15);

impl Desktop {
    /// Takes a freshly opened source: reads its first image (blocking, off the runtime) and
    /// starts capturing (on the runtime for a polled source, else on a capture thread).
    pub async fn start(
        vm: &str,
        opened: OpenedSource,
        metrics: Arc<Metrics>,
        pool: EncodePool,
    ) -> Result<Arc<Self>, OpenError> {
        Self::start_within(vm, opened, metrics, pool, FIRST_UPDATE_TIMEOUT).await
    }

    /// [`Desktop::start`], giving the source `first_update_timeout` to send its first image.
    pub async fn start_within(
        vm: &str,
        opened: OpenedSource,
        metrics: Arc<Metrics>,
        pool: EncodePool,
        first_update_timeout: Duration,
    ) -> Result<Arc<Self>, OpenError> {
        let OpenedSource { mut source, clipboard } = opened;
        let stopper = source.stopper();
        let first = tokio::task::spawn_blocking(move || {
            let (w, h) = source.size();
            let mut fb = Framebuffer::new(w, h);
            // The first update with pixels (a VNC server may first answer with only its size).
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut events = Vec::new();
            while std::time::Instant::now() < deadline {
                let ev = source.next_update(&mut fb)?;
                let pixels = ev
                    .iter()
                    .any(|e| matches!(e, SourceEvent::Damage(_) | SourceEvent::Resized { .. }));
                events.extend(ev);
                if pixels {
                    break;
                }
            }
            Ok::<_, SourceError>((source, fb, events))
        });
        // A server that goes quiet after its handshake must not hold this VM's slot (and every
        // later viewer of it) forever: stopping the source ends the blocked read.
        let (source, fb, events) = match tokio::time::timeout(first_update_timeout, first).await {
            Ok(joined) => {
                joined.map_err(|e| SourceError::Protocol(format!("first update task: {e}")))??
            }
            Err(_) => {
                stopper.stop();
                return Err(SourceError::protocol("the display sent no image in time").into());
            }
        };
        let capture = Capture::new(&fb);
        let (frames_tx, frames) =
            watch::channel(Arc::new(Published::new(Arc::clone(capture.last()))));
        let (cursor_tx, cursor) = watch::channel(None);
        let (clipboard_out, _) = broadcast::channel(8);
        let alive = Arc::new(AtomicBool::new(true));
        let desktop = Arc::new(Self {
            vm: vm.to_owned(),
            name: source.name().to_owned(),
            frames,
            cursor,
            clipboard_out: clipboard_out.clone(),
            clipboard_in: clipboard.clone(),
            paste_slots: Arc::new(Semaphore::new(2)),
            input: source.input(),
            stopper: source.stopper(),
            alive: Arc::clone(&alive),
            viewers: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
            metrics: Arc::clone(&metrics),
        });
        let mut cap = CaptureLoop {
            pipe: Pipeline { source, fb, capture, metrics: Arc::clone(&metrics) },
            out: Publish { frames_tx, cursor_tx, clipboard_out: clipboard_out.clone() },
        };
        cap.out.side_events(&events);
        let vm_name = vm.to_owned();
        let span = tracing::info_span!("capture", vm = %vm_name);
        if cap.pipe.source.polled().is_some() {
            // Not instrumented: the span is entered for the one line the task may log, not on
            // every poll.
            let task = tokio::spawn(async move {
                cap.run_polled(pool, &span).await;
                alive.store(false, Ordering::SeqCst);
            });
            desktop.tasks.lock().expect("tasks lock").push(task.abort_handle());
        } else {
            std::thread::Builder::new()
                .name(format!("capture-{}", truncate_utf8(vm, 7)))
                .spawn(move || {
                    let _g = span.enter();
                    cap.run();
                    alive.store(false, Ordering::SeqCst);
                })
                .map_err(SourceError::Io)?;
        }
        if let Some(link) = clipboard {
            let task = tokio::spawn(poll_clipboard(link, clipboard_out));
            desktop.tasks.lock().expect("tasks lock").push(task.abort_handle());
        }
        metrics.desktops.fetch_add(1, Ordering::Relaxed);
        tracing::info!(vm, name = %desktop.name, "desktop opened");
        Ok(desktop)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Newest frames, as they are captured.
    pub fn frames(&self) -> watch::Receiver<Arc<Published>> {
        self.frames.clone()
    }

    /// The encoded pointer-shape message, as it changes.
    pub fn cursor(&self) -> watch::Receiver<Option<Arc<[u8]>>> {
        self.cursor.clone()
    }

    /// Guest clipboard changes.
    pub fn clipboard(&self) -> broadcast::Receiver<String> {
        self.clipboard_out.subscribe()
    }

    pub fn input(&self) -> &Arc<dyn InputSink> {
        &self.input
    }

    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::SeqCst)
    }

    /// Puts text on the guest clipboard (through the node); dropped when two pastes are
    /// already under way or the desktop has no clipboard channel.
    pub fn paste(&self, text: String) {
        let Some(link) = self.clipboard_in.clone() else { return };
        let Ok(permit) = Arc::clone(&self.paste_slots).try_acquire_owned() else {
            tracing::warn!(vm = %self.vm, "clipboard paste dropped: two already in progress");
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = link.node.paste(&link.vm, text).await {
                tracing::warn!(vm = %link.vm, error = %e, "clipboard paste failed");
            }
            drop(permit);
        });
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        self.stopper.stop();
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        self.metrics.desktops.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(vm = %self.vm, "desktop closed");
    }
}

/// Updates writing more than this many bytes of framebuffer (not bytes on the wire: a copy of
/// the whole screen or a ZRLE fill is a few bytes) are decoded, compared and prepared on the
/// encode pool; smaller ones on the async runtime, where a thread hand-off would cost more
/// than the work.
const LARGE_UPDATE: usize = 256 * 1024;

/// What turns a source's updates into frames (moved to the encode pool and back for a large
/// update).
struct Pipeline {
    source: Box<dyn FramebufferSource>,
    fb: Framebuffer,
    capture: Capture,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// After a source reported `events` (its framebuffer is updated): the new frame, if the
    /// screen really changed, with the update of viewers in step prepared.
    fn compare(&mut self, events: &[SourceEvent]) -> Option<Arc<Published>> {
        let frame = self.capture.process(&self.fb, events)?;
        self.metrics.frames_captured.fetch_add(1, Ordering::Relaxed);
        // Viewers in step get this frame's update ready-made.
        Some(Arc::new(publish(frame, &self.metrics)))
    }

    /// Decodes the polled source's buffered message of `len` bytes and compares.
    fn decode_and_compare(&mut self, len: usize) -> Result<Decoded, SourceError> {
        let Some(p) = self.source.polled() else {
            return Err(SourceError::protocol("the source cannot be polled"));
        };
        let Some(events) = p.decode_message(len, &mut self.fb)? else { return Ok(None) };
        let frame = self.compare(&events);
        Ok(Some((events, frame)))
    }
}

/// What a decoded message reported, and the frame it made.
type Decoded = Option<(Vec<SourceEvent>, Option<Arc<Published>>)>;

/// Where a desktop's captures go.
struct Publish {
    frames_tx: watch::Sender<Arc<Published>>,
    cursor_tx: watch::Sender<Option<Arc<[u8]>>>,
    clipboard_out: broadcast::Sender<String>,
}

impl Publish {
    fn side_events(&self, events: &[SourceEvent]) {
        for e in events {
            match e {
                SourceEvent::Cursor(c) => {
                    self.cursor_tx.send_replace(Some(Arc::from(cursor_message(c))));
                }
                SourceEvent::Clipboard(t) => {
                    let _ = self.clipboard_out.send(truncate_utf8(t, MAX_CLIPBOARD).to_owned());
                }
                SourceEvent::Damage(_) | SourceEvent::Resized { .. } => {}
            }
        }
    }
}

struct CaptureLoop {
    pipe: Pipeline,
    out: Publish,
}

impl CaptureLoop {
    /// Drives a blocking source on its own thread.
    fn run(&mut self) {
        loop {
            match self.pipe.source.next_update(&mut self.pipe.fb) {
                Ok(events) => {
                    self.out.side_events(&events);
                    if let Some(frame) = self.pipe.compare(&events) {
                        self.out.frames_tx.send_replace(frame);
                    }
                }
                Err(SourceError::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "the desktop's display source ended");
                    return;
                }
            }
            if self.out.frames_tx.is_closed() {
                return;
            }
        }
    }

    /// Drives a polled source from the async runtime: waits for its socket, decodes small
    /// updates right here and large ones on `pool`.
    async fn run_polled(self, pool: EncodePool, span: &tracing::Span) {
        let Self { pipe, out } = self;
        match poll_loop(pipe, &out, &pool).await {
            Ok(()) | Err(SourceError::Stopped) => {}
            Err(e) => {
                tracing::warn!(parent: span, error = %e, "the desktop's display source ended");
            }
        }
    }
}

fn polled(pipe: &mut Pipeline) -> Result<&mut dyn PolledSource, SourceError> {
    pipe.source.polled().ok_or_else(|| SourceError::protocol("the source cannot be polled"))
}

async fn poll_loop(
    mut pipe: Pipeline,
    out: &Publish,
    pool: &EncodePool,
) -> Result<(), SourceError> {
    let fd = polled(&mut pipe)?.readiness()?;
    // SAFETY: `fd` is an open descriptor that the AsyncFd owns from here (an `OwnedFd` always
    // returns the same descriptor and closes it only when dropped, with the AsyncFd).
    let ready = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| SourceError::Io(std::io::Error::other(e.to_string())))?;
    loop {
        if out.frames_tx.is_closed() {
            return Ok(());
        }
        let Some(Buffered { len, work }) = polled(&mut pipe)?.buffered_message()? else {
            let again = polled(&mut pipe)?.keep_alive(std::time::Instant::now());
            let mut guard = tokio::select! {
                biased;
                g = ready.readable() => g?,
                () = tokio::time::sleep_until(again.unwrap_or_else(std::time::Instant::now).into()), if again.is_some() => continue,
            };
            match guard.try_io(|_| match polled(&mut pipe) {
                Ok(p) => p.read_available(),
                Err(e) => Err(std::io::Error::other(e)),
            }) {
                Ok(Ok(0)) => {
                    return Err(SourceError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the display source closed the connection",
                    )));
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
            continue;
        };
        let decoded = if work >= LARGE_UPDATE || len >= LARGE_UPDATE {
            let (back, decoded) = pool
                .run(move || {
                    let d = pipe.decode_and_compare(len);
                    (pipe, d)
                })
                .await
                .map_err(|_| SourceError::protocol("the encode pool stopped"))?;
            pipe = back;
            decoded?
        } else {
            pipe.decode_and_compare(len)?
        };
        if let Some((events, frame)) = decoded {
            out.side_events(&events);
            if let Some(frame) = frame {
                out.frames_tx.send_replace(frame);
            }
        }
        // A server that keeps the socket full of small messages must not keep the runtime's
        // one thread from the viewers: this yields once the task's budget is spent.
        tokio::task::coop::consume_budget().await;
    }
}

/// The Cursor message for a pointer shape (PNG with alpha; empty hides the pointer).
pub fn cursor_message(c: &CursorShape) -> Vec<u8> {
    let png = if c.width == 0 || c.height == 0 || c.rgba.is_empty() {
        Vec::new()
    } else {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, u32::from(c.width), u32::from(c.height));
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        match enc
            .write_header()
            .and_then(|mut w| w.write_image_data(&c.rgba).and_then(|()| w.finish()))
        {
            Ok(()) => out,
            Err(e) => {
                tracing::debug!(error = %e, "cannot encode a pointer shape");
                Vec::new()
            }
        }
    };
    ServerMessage::Cursor { hot_x: c.hot_x, hot_y: c.hot_y, png }.encode()
}

/// Long-polls the guest clipboard through the node and broadcasts changes.
async fn poll_clipboard(link: ClipboardLink, out: broadcast::Sender<String>) {
    let mut seq = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        match link.node.clipboard_after(&link.vm, seq.unwrap_or(0), 25).await {
            Ok(state) => {
                backoff = Duration::from_secs(1);
                let first = seq.is_none();
                if seq.is_none_or(|s| state.seq > s) {
                    seq = Some(state.seq);
                    if !first && let Some(text) = state.text {
                        let _ = out.send(truncate_utf8(&text, MAX_CLIPBOARD).to_owned());
                    }
                }
            }
            Err(e) => {
                tracing::debug!(vm = %link.vm, error = %e, "guest clipboard unavailable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Counts a viewer on a desktop while it lives.
#[derive(Debug)]
pub struct ViewerSlot {
    desktop: Arc<Desktop>,
}

impl ViewerSlot {
    pub fn desktop(&self) -> &Arc<Desktop> {
        &self.desktop
    }
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        self.desktop.viewers.fetch_sub(1, Ordering::SeqCst);
    }
}

type Slot = Arc<tokio::sync::Mutex<Weak<Desktop>>>;

/// The open desktops, by VM id.
#[derive(Debug)]
pub struct Desktops {
    opener: Arc<dyn SourceOpener>,
    map: Mutex<HashMap<String, Slot>>,
    metrics: Arc<Metrics>,
    pool: EncodePool,
    max_viewers: usize,
}

impl Desktops {
    pub fn new(
        opener: Arc<dyn SourceOpener>,
        metrics: Arc<Metrics>,
        pool: EncodePool,
        max_viewers: usize,
    ) -> Self {
        Self { opener, map: Mutex::new(HashMap::new()), metrics, pool, max_viewers }
    }

    /// Joins the desktop of `vm`, opening it for its first viewer.
    pub async fn join(&self, vm: &str) -> Result<ViewerSlot, OpenError> {
        let slot = {
            let mut map = self.map.lock().expect("desktops lock");
            map.retain(|_, s| s.try_lock().map_or(true, |w| w.strong_count() > 0));
            Arc::clone(map.entry(vm.to_owned()).or_default())
        };
        let mut weak = slot.lock().await;
        let desktop = match weak.upgrade().filter(|d| d.is_alive()) {
            Some(d) => d,
            None => {
                let opened = self.opener.open(vm).await?;
                let pool = self.pool.clone();
                let d = Desktop::start(vm, opened, Arc::clone(&self.metrics), pool).await?;
                *weak = Arc::downgrade(&d);
                d
            }
        };
        let n = desktop.viewers.fetch_add(1, Ordering::SeqCst);
        let slot = ViewerSlot { desktop };
        if n >= self.max_viewers {
            return Err(OpenError::TooManyViewers(n));
        }
        Ok(slot)
    }
}

/// Opens a [`SyntheticSource`](crate::source::synthetic::SyntheticSource) for any VM id: the
/// benchmark's fan-out measurement and the pipeline's tests use it. Keeps each desktop's input
/// counter so tests can see what reached the desktop.
#[derive(Debug)]
pub struct SyntheticOpener {
    pub config: crate::source::synthetic::SyntheticConfig,
    inputs: Mutex<HashMap<String, Arc<crate::source::synthetic::SyntheticInput>>>,
}

impl SyntheticOpener {
    pub fn new(config: crate::source::synthetic::SyntheticConfig) -> Self {
        Self { config, inputs: Mutex::new(HashMap::new()) }
    }

    /// The input counter of the desktop opened for `vm`.
    pub fn input_of(&self, vm: &str) -> Option<Arc<crate::source::synthetic::SyntheticInput>> {
        self.inputs.lock().expect("inputs lock").get(vm).cloned()
    }
}

impl SourceOpener for SyntheticOpener {
    fn open<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<OpenedSource, OpenError>> {
        Box::pin(async move {
            let src = crate::source::synthetic::SyntheticSource::new(self.config);
            self.inputs.lock().expect("inputs lock").insert(vm.to_owned(), src.input_counter());
            Ok(OpenedSource { source: Box::new(src), clipboard: None })
        })
    }
}
