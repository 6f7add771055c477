//! A desktop being watched: one source, any number of viewers (the user and shadows). A
//! source that can be polled (RFB) is driven by a task on the async runtime, which decodes,
//! compares and prepares small updates itself and hands large ones to the encode pool; other
//! sources (shared memory, synthetic) block on a capture thread of their own (`run.rs`).
//! Viewers get the newest frame ([`Published`]) through a watch channel; the registry
//! opens a desktop for its first viewer and closes it after its last. Through the guest agent
//! (by way of the node) the desktop also carries the clipboard and, where the guest's screen
//! can change size, the size its viewer's window asks for (`screen.rs`).

mod clipboard;
mod registry;
mod run;
mod screen;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrium_protocol::display::truncate_utf8;
use atrium_protocol::node::DisplaySize;
use atrium_protocol::ticket::Watermark;
use axum::body::Bytes;
use tokio::sync::{Semaphore, broadcast, watch};

pub use registry::Desktops;

use crate::framebuffer::Framebuffer;
use crate::metrics::Metrics;
use crate::pipeline::capture::Capture;
use crate::pipeline::pool::EncodePool;
use crate::pipeline::publish::Published;
use crate::source::open::{GuestLink, OpenError, OpenedSource};
use crate::source::{InputSink, SourceError, SourceEvent, Stopper};
use crate::watermark::{Font, Layer, MarkGuard, Marks};
pub use clipboard::Clip;
use clipboard::poll_clipboard;
use run::{CaptureLoop, Outlets};
use screen::{ScreenSizes, follow_screen_requests};

/// One watched desktop.
#[derive(Debug)]
pub struct Desktop {
    pub vm: String,
    pub name: String,
    frames: watch::Receiver<Arc<Published>>,
    cursor: watch::Receiver<Option<Arc<[u8]>>>,
    clipboard_out: broadcast::Sender<Clip>,
    /// The desktop's sound, encoded, when its source carries sound.
    sound: Option<broadcast::Sender<Bytes>>,
    clipboard_in: Option<GuestLink>,
    /// Sizes viewers ask the guest's screen to take, when it can change size.
    screen: Option<ScreenSizes>,
    paste_slots: Arc<Semaphore>,
    /// Video streams of this desktop's viewers open at once (see [`VIDEO_STREAMS`]).
    video_slots: Arc<Semaphore>,
    /// The watermarks its viewers' tickets ask for.
    marks: Arc<Marks>,
    input: Arc<dyn InputSink>,
    stopper: Arc<dyn Stopper>,
    alive: Arc<AtomicBool>,
    viewers: AtomicUsize,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    metrics: Arc<Metrics>,
}

/// Video streams open at once among a desktop's viewers: each costs an encoder's CPU, so more
/// viewers (shadows, a ticket opened many times) get stills for what moves.
pub const VIDEO_STREAMS: usize = 2;

/// Sound packets kept for a viewer that is behind (20 ms each).
const SOUND_BACKLOG: usize = 25;

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
        font: Option<Arc<Font>>,
    ) -> Result<Arc<Self>, OpenError> {
        Self::start_within(vm, opened, metrics, pool, font, FIRST_UPDATE_TIMEOUT).await
    }

    /// [`Desktop::start`], giving the source `first_update_timeout` to send its first image.
    pub(crate) async fn start_within(
        vm: &str,
        opened: OpenedSource,
        metrics: Arc<Metrics>,
        pool: EncodePool,
        font: Option<Arc<Font>>,
        first_update_timeout: Duration,
    ) -> Result<Arc<Self>, OpenError> {
        let OpenedSource { mut source, guest } = opened;
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
        // Half a second of 20 ms packets: a viewer further behind skips ahead.
        let sound = source.has_sound().then(|| broadcast::channel(SOUND_BACKLOG).0);
        let screen_requests = guest.as_ref().and_then(|link| {
            let max = link.screen_max?;
            Some(ScreenSizes::new(max))
        });
        let alive = Arc::new(AtomicBool::new(true));
        let (marks, marks_rx) = Marks::new();
        let desktop = Arc::new(Self {
            vm: vm.to_owned(),
            name: source.name().to_owned(),
            frames,
            cursor,
            clipboard_out: clipboard_out.clone(),
            sound: sound.clone(),
            clipboard_in: guest.clone(),
            screen: screen_requests.as_ref().map(|(sizes, _)| sizes.clone()),
            paste_slots: Arc::new(Semaphore::new(2)),
            video_slots: Arc::new(Semaphore::new(VIDEO_STREAMS)),
            marks,
            input: source.input(),
            stopper: source.stopper(),
            alive: Arc::clone(&alive),
            viewers: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
            metrics: Arc::clone(&metrics),
        });
        let out = Outlets {
            frames_tx,
            cursor_tx,
            clipboard_out: clipboard_out.clone(),
            sound_out: sound,
            sound: None,
            metrics: Arc::clone(&metrics),
            marks: desktop.marks.subscribe(),
        };
        let layer = Layer::new(marks_rx, font);
        let mut cap = CaptureLoop::new(source, fb, capture, layer, Arc::clone(&metrics), out);
        cap.side_events(&events);
        let vm_name = vm.to_owned();
        let span = tracing::info_span!("capture", vm = %vm_name);
        if cap.is_polled() {
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
        if let Some(link) = guest {
            if let Some((_, wanted)) = screen_requests {
                let task = tokio::spawn(follow_screen_requests(link.clone(), wanted));
                desktop.tasks.lock().expect("tasks lock").push(task.abort_handle());
            }
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

    /// The desktop's sound as ready-made messages, when it has sound.
    pub fn sound(&self) -> Option<broadcast::Receiver<Bytes>> {
        self.sound.as_ref().map(broadcast::Sender::subscribe)
    }

    /// Draws `w` into this desktop's frames while the guard lives (see [`crate::watermark`]);
    /// refused when the desktop's watermark would grow too large.
    pub fn add_watermark(&self, w: Watermark) -> Result<MarkGuard, String> {
        self.marks.add(w)
    }

    /// The slots for video streams among this desktop's viewers.
    pub fn video_slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.video_slots)
    }

    pub fn has_sound(&self) -> bool {
        self.sound.is_some()
    }

    /// Guest clipboard changes.
    pub fn clipboard(&self) -> broadcast::Receiver<Clip> {
        self.clipboard_out.subscribe()
    }

    pub fn input(&self) -> &Arc<dyn InputSink> {
        &self.input
    }

    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::SeqCst)
    }

    /// The largest screen a viewer may ask for, when the guest's screen can change size.
    pub fn screen_max(&self) -> Option<DisplaySize> {
        self.screen.as_ref().map(ScreenSizes::max)
    }

    /// Asks the guest's screen to take this size (fitted to what it can take); the newest
    /// request wins. False when its screen cannot change size.
    pub fn ask_screen_size(&self, width: u16, height: u16) -> bool {
        self.screen.as_ref().map(|s| s.ask(width, height)).is_some()
    }

    /// The guest behind this desktop (through the node), when it has an agent: what files
    /// are uploaded through.
    pub fn guest(&self) -> Option<&GuestLink> {
        self.clipboard_in.as_ref()
    }

    /// Puts text or an image on the guest clipboard (through the node); dropped when two pastes
    /// are already under way or the desktop has no clipboard channel.
    ///
    /// Returns why it was dropped, if it was.
    pub fn paste(&self, clip: &Clip) -> Result<(), &'static str> {
        let Some(link) = self.clipboard_in.clone() else {
            return Err("this desktop has no clipboard channel");
        };
        let Ok(permit) = Arc::clone(&self.paste_slots).try_acquire_owned() else {
            tracing::warn!(vm = %self.vm, "clipboard paste dropped: two already in progress");
            return Err("two pastes were already in progress");
        };
        let paste = clip.to_paste();
        tokio::spawn(async move {
            if let Err(e) = link.node.paste(&link.vm, &paste).await {
                tracing::warn!(vm = %link.vm, error = %e, "clipboard paste failed");
            }
            drop(permit);
        });
        Ok(())
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
