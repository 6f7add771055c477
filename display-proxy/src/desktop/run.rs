//! What keeps a desktop's frames coming: the source's updates, compared and published (on a
//! capture thread of its own for a blocking source, on the async runtime for a polled one,
//! large updates on the encode pool).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use atrium_protocol::display::{MAX_CLIPBOARD, truncate_utf8};
use axum::body::Bytes;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, watch};

use crate::framebuffer::Framebuffer;
use crate::metrics::Metrics;
use crate::pipeline::capture::Capture;
use crate::pipeline::encode::cursor_message;
use crate::pipeline::pool::EncodePool;
use crate::pipeline::publish::{Published, publish};
use crate::sound::SoundEncoder;
use crate::source::{Buffered, FramebufferSource, PolledSource, SourceError, SourceEvent};
use crate::watermark::{Layer, Redrawn, Spec};

/// Updates writing more than this many bytes of framebuffer (not bytes on the wire: a copy of
/// the whole screen or a ZRLE fill is a few bytes) are decoded, compared and prepared on the
/// encode pool; smaller ones on the async runtime, where a thread hand-off would cost more
/// than the work.
const LARGE_UPDATE: usize = 256 * 1024;

/// The stages that turn a source's updates into frames (moved to the encode pool and back for
/// a large update).
struct Stages {
    source: Box<dyn FramebufferSource>,
    fb: Framebuffer,
    /// The watermark, drawn over the source's pixels before they are compared.
    layer: Layer,
    capture: Capture,
    metrics: Arc<Metrics>,
}

impl Stages {
    /// After a source reported `events` (its framebuffer is updated): the new frame, if the
    /// screen really changed, with the update of viewers in step prepared. Also brings the
    /// watermark up to date (the viewers' marks, the minute): when it changed, everything is
    /// compared, and a viewer waiting for it gets the last frame again, marked as carrying it,
    /// even if no pixel changed.
    fn compare(&mut self, events: &[SourceEvent]) -> Option<Arc<Published>> {
        let (fb, redrawn) = self.layer.apply(&self.fb, events, SystemTime::now());
        let more;
        let events = match redrawn {
            Redrawn::Nothing => events,
            Redrawn::All => {
                more = vec![SourceEvent::Damage(fb.bounds())];
                &more[..]
            }
            Redrawn::Area(r) => {
                // What the capture reads of the source's events: where pixels changed.
                let pixels = events
                    .iter()
                    .filter(|e| matches!(e, SourceEvent::Damage(_) | SourceEvent::Resized { .. }));
                more = pixels.cloned().chain([SourceEvent::Damage(r)]).collect::<Vec<_>>();
                &more[..]
            }
        };
        let Some(frame) = self.capture.process(fb, events) else {
            return (redrawn == Redrawn::All).then(|| {
                let mut p = Published::new(Arc::clone(self.capture.last()));
                p.watermark = self.layer.drawn();
                Arc::new(p)
            });
        };
        self.metrics.frames_captured.fetch_add(1, Ordering::Relaxed);
        // Viewers in step get this frame's update ready-made.
        let mut p = publish(frame, &self.metrics);
        p.watermark = self.layer.drawn();
        Some(Arc::new(p))
    }

    /// When the watermark next changes by itself (its clock).
    fn next_redraw(&self) -> Option<std::time::Instant> {
        self.layer.next_change(SystemTime::now()).map(|d| std::time::Instant::now() + d)
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

/// Why the polled loop woke.
enum Wake<'a> {
    Readable(tokio::io::unix::AsyncFdReadyGuard<'a, std::os::fd::OwnedFd>),
    /// Time to keep the source quick.
    Again,
    /// The watermark changed (viewers' marks, its clock).
    Redraw,
}

/// What a decoded message reported, and the frame it made.
type Decoded = Option<(Vec<SourceEvent>, Option<Arc<Published>>)>;

/// Where a desktop's captures go: frames, pointer shapes, the guest's clipboard and its sound.
pub(super) struct Outlets {
    pub(super) frames_tx: watch::Sender<Arc<Published>>,
    pub(super) cursor_tx: watch::Sender<Option<Arc<[u8]>>>,
    pub(super) clipboard_out: broadcast::Sender<super::Clip>,
    /// Encoded sound goes here; the encoder is made when the first sound arrives.
    pub(super) sound_out: Option<broadcast::Sender<Bytes>>,
    pub(super) sound: Option<SoundEncoder>,
    pub(super) metrics: Arc<Metrics>,
    /// What the desktop's viewers want watermarked (the polled loop wakes when it changes).
    pub(super) marks: watch::Receiver<Option<Arc<Spec>>>,
}

impl Outlets {
    fn side_events(&mut self, events: &[SourceEvent]) {
        for e in events {
            match e {
                SourceEvent::Cursor(c) => {
                    self.cursor_tx.send_replace(Some(Arc::from(cursor_message(c))));
                }
                SourceEvent::Clipboard(t) => {
                    let text = truncate_utf8(t, MAX_CLIPBOARD).to_owned();
                    let _ = self.clipboard_out.send(super::Clip::Text(text));
                }
                SourceEvent::Sound(samples) => {
                    if let Some(enc) = self.encoder() {
                        enc.push(samples);
                    }
                }
                SourceEvent::SoundEnded => {
                    if let Some(enc) = self.sound.as_mut() {
                        enc.end();
                    }
                }
                SourceEvent::Damage(_) | SourceEvent::Resized { .. } => {}
            }
        }
    }
}

impl Outlets {
    /// The sound encoder, made at the first sound (`None`: the desktop has no sound channel,
    /// or libopus failed, which is logged once).
    fn encoder(&mut self) -> Option<&mut SoundEncoder> {
        if self.sound.is_none() {
            let out = self.sound_out.take()?;
            match SoundEncoder::new(out, Arc::clone(&self.metrics)) {
                Ok(e) => self.sound = Some(e),
                Err(e) => tracing::warn!(error = %e, "the desktop's sound cannot be encoded"),
            }
        }
        self.sound.as_mut()
    }
}

/// A desktop's source, its stages and its outlets.
pub(super) struct CaptureLoop {
    pipe: Stages,
    out: Outlets,
}

impl CaptureLoop {
    /// Captures from `source`, whose framebuffer `fb` the first update filled and `capture`
    /// was made from, into `out`.
    pub(super) fn new(
        source: Box<dyn FramebufferSource>,
        fb: Framebuffer,
        capture: Capture,
        layer: Layer,
        metrics: Arc<Metrics>,
        out: Outlets,
    ) -> Self {
        Self { pipe: Stages { source, fb, layer, capture, metrics }, out }
    }

    /// Passes on what an update said besides pixels (pointer shape, clipboard, sound).
    pub(super) fn side_events(&mut self, events: &[SourceEvent]) {
        self.out.side_events(events);
    }

    /// Whether the source is driven from the async runtime (else it blocks on a thread).
    pub(super) fn is_polled(&mut self) -> bool {
        self.pipe.source.polled().is_some()
    }

    /// Drives a blocking source on its own thread.
    pub(super) fn run(&mut self) {
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
    pub(super) async fn run_polled(self, pool: EncodePool, span: &tracing::Span) {
        let Self { pipe, mut out } = self;
        match poll_loop(pipe, &mut out, &pool).await {
            Ok(()) | Err(SourceError::Stopped) => {}
            Err(e) => {
                tracing::warn!(parent: span, error = %e, "the desktop's display source ended");
            }
        }
    }
}

fn polled(pipe: &mut Stages) -> Result<&mut dyn PolledSource, SourceError> {
    pipe.source.polled().ok_or_else(|| SourceError::protocol("the source cannot be polled"))
}

async fn poll_loop(
    mut pipe: Stages,
    out: &mut Outlets,
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
            let redraw_at = pipe.next_redraw();
            let woken = tokio::select! {
                biased;
                g = ready.readable() => Wake::Readable(g?),
                r = out.marks.changed() => match r {
                    Ok(()) => Wake::Redraw,
                    // The desktop is gone.
                    Err(_) => return Ok(()),
                },
                () = tokio::time::sleep_until(redraw_at.unwrap_or_else(std::time::Instant::now).into()), if redraw_at.is_some() => Wake::Redraw,
                () = tokio::time::sleep_until(again.unwrap_or_else(std::time::Instant::now).into()), if again.is_some() => Wake::Again,
            };
            let mut guard = match woken {
                Wake::Readable(g) => g,
                Wake::Again => continue,
                Wake::Redraw => {
                    // A new watermark is drawn over the whole screen: on the encode pool.
                    let (back, frame) = pool
                        .run(move || {
                            let f = pipe.compare(&[]);
                            (pipe, f)
                        })
                        .await
                        .map_err(|_| SourceError::protocol("the encode pool stopped"))?;
                    pipe = back;
                    if let Some(frame) = frame {
                        out.frames_tx.send_replace(frame);
                    }
                    continue;
                }
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
        let heavy = work >= LARGE_UPDATE
            || len >= LARGE_UPDATE
            || pipe.layer.needs_redraw(SystemTime::now());
        let decoded = if heavy {
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
