//! What a watermark costs on the wire: the same frames (the synthetic desktop, deterministic)
//! planned and encoded for a viewer in step twice in one run, once as they are and once with
//! the watermark the broker draws by default (`{user} · {client}` and the time, 15%, 20 px,
//! 30 degrees, copies 16 text heights apart) drawn by the proxy's own layer; the whole ratio
//! also for denser tilings. Two workloads at 1920x1080: a terminal scrolling
//! text, and the same with a photo-like box moving over it. Then the desktop stands still for a
//! simulated minute: frames made (none is the target) and the bytes of the clock's change.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atrium_protocol::ticket::{DEFAULT_WATERMARK_SPACING, Watermark};
use serde_json::{Map, Value, json};

use super::encode::encode_all;
use super::round;
use atrium_display::framebuffer::Framebuffer;
use atrium_display::metrics::Metrics;
use atrium_display::pipeline::capture::Capture;
use atrium_display::pipeline::plan::{ViewerTiles, apply, plan_update};
use atrium_display::source::{FramebufferSource, SourceEvent};
use atrium_display::watermark::{Font, Layer, Marks, Redrawn};
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticSource};

const FRAMES: usize = 120;

/// One viewer in step with one capture: the bytes it is sent.
struct Viewer {
    capture: Capture,
    view: ViewerTiles,
    bytes: usize,
    frames: usize,
    /// The bytes of the first frame (the whole screen).
    first: usize,
}

impl Viewer {
    fn new(fb: &Framebuffer, metrics: &Metrics) -> Self {
        let capture = Capture::new(fb);
        let mut v = Self { capture, view: ViewerTiles::new(), bytes: 0, frames: 0, first: 0 };
        let first = Arc::clone(v.capture.last());
        v.send(&first, metrics);
        v.first = v.bytes;
        v
    }

    fn send(&mut self, frame: &atrium_display::pipeline::frame::Frame, metrics: &Metrics) {
        let plan = plan_update(frame, &self.view, Some(70));
        self.bytes += encode_all(frame, &self.view, metrics);
        apply(&mut self.view, frame, &plan, Instant::now());
        self.frames += 1;
    }

    fn update(&mut self, fb: &Framebuffer, events: &[SourceEvent], metrics: &Metrics) {
        if let Some(f) = self.capture.process(fb, events) {
            self.send(&f, metrics);
        }
    }
}

/// The broker's default watermark, for a user at 10.0.0.5, its copies `spacing` text heights
/// apart.
fn mark(spacing: u8) -> Watermark {
    Watermark {
        text: "alice · 10.0.0.5\n{time}".into(), opacity: 15, size: 20, angle: 30, spacing
    }
}

/// Denser tilings than the default, measured beside it.
const DENSER: [u8; 2] = [4, 8];

/// The source's events with what the layer redrew, as the proxy's capture loop passes them.
fn with_redrawn(events: &[SourceEvent], r: Redrawn, fb: &Framebuffer) -> Vec<SourceEvent> {
    match r {
        Redrawn::Nothing => events.to_vec(),
        Redrawn::Area(a) => events.iter().cloned().chain([SourceEvent::Damage(a)]).collect(),
        Redrawn::All => vec![SourceEvent::Damage(fb.bounds())],
    }
}

fn workload(
    photo: bool,
    spacing: u8,
    font: &Arc<Font>,
    now: SystemTime,
    metrics: &Metrics,
) -> anyhow::Result<(Viewer, Viewer, f64)> {
    let cfg = SyntheticConfig { width: 1920, height: 1080, fps: 1000, photo, ticks: None };
    let mut src = SyntheticSource::new(cfg);
    let mut fb = Framebuffer::new(1920, 1080);
    src.next_update(&mut fb)?;
    let (marks, rx) = Marks::new();
    let _mark = marks.add(mark(spacing)).map_err(anyhow::Error::msg)?;
    let mut layer = Layer::new(rx, Some(Arc::clone(font)));
    let mut plain = Viewer::new(&fb, metrics);
    let (drawn, _) = layer.apply(&fb, &[], now);
    let mut marked = Viewer::new(drawn, metrics);
    let mut layer_secs = 0.0;
    for _ in 0..FRAMES {
        let events = src.next_update(&mut fb)?;
        plain.update(&fb, &events, metrics);
        let t = Instant::now();
        let (drawn, redrawn) = layer.apply(&fb, &events, now);
        layer_secs += t.elapsed().as_secs_f64();
        let more = with_redrawn(&events, redrawn, drawn);
        marked.update(drawn, &more, metrics);
    }
    Ok((plain, marked, layer_secs * 1e3 / FRAMES as f64))
}

pub fn run() -> anyhow::Result<Map<String, Value>> {
    let metrics = Metrics::default();
    let font = Arc::new(
        Font::load(std::path::Path::new(atrium_display::config::DEFAULT_WATERMARK_FONT))
            .map_err(|e| anyhow::anyhow!("{e} (install fonts-dejavu-core)"))?,
    );
    // A fixed minute, 5 s in: the clock does not change during the workloads.
    let minute = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() / 60;
    let now = UNIX_EPOCH + Duration::from_secs(minute * 60 + 5);
    let spacing = DEFAULT_WATERMARK_SPACING;
    let (text_plain, text_marked, text_ms) = workload(false, spacing, &font, now, &metrics)?;
    let (photo_plain, photo_marked, photo_ms) = workload(true, spacing, &font, now, &metrics)?;
    #[allow(clippy::cast_precision_loss)]
    let ratio = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    let all_plain = text_plain.bytes + photo_plain.bytes;
    let all_marked = text_marked.bytes + photo_marked.bytes;
    let mut by_spacing = Map::new();
    for s in DENSER {
        let (_, text, _) = workload(false, s, &font, now, &metrics)?;
        let (_, photo, _) = workload(true, s, &font, now, &metrics)?;
        by_spacing
            .insert(s.to_string(), json!(round(ratio(text.bytes + photo.bytes, all_plain), 3)));
    }
    by_spacing.insert(spacing.to_string(), json!(round(ratio(all_marked, all_plain), 3)));

    // An idle desktop: nothing changes for a minute of apply calls, then the minute turns.
    let mut src = SyntheticSource::new(SyntheticConfig {
        width: 1920,
        height: 1080,
        fps: 1000,
        photo: false,
        ticks: Some(1),
    });
    let mut fb = Framebuffer::new(1920, 1080);
    src.next_update(&mut fb)?;
    let (marks, rx) = Marks::new();
    let _mark = marks.add(mark(spacing)).map_err(anyhow::Error::msg)?;
    let mut layer = Layer::new(rx, Some(Arc::clone(&font)));
    let (drawn, _) = layer.apply(&fb, &[], now);
    let mut idle = Viewer::new(drawn, &metrics);
    let settled = idle.bytes;
    for s in 6..60 {
        let at = UNIX_EPOCH + Duration::from_secs(minute * 60 + s);
        let (drawn, redrawn) = layer.apply(&fb, &[], at);
        let more = with_redrawn(&[], redrawn, drawn);
        idle.update(drawn, &more, &metrics);
    }
    let idle_frames = idle.frames - 1;
    let next = UNIX_EPOCH + Duration::from_secs((minute + 1) * 60);
    let (drawn, redrawn) = layer.apply(&fb, &[], next);
    let more = with_redrawn(&[], redrawn, drawn);
    idle.update(drawn, &more, &metrics);
    let clock_bytes = idle.bytes - settled;

    let r = json!({
        "watermark_bytes_ratio": round(ratio(all_marked, all_plain), 3),
        "watermark_text_bytes_ratio": round(ratio(text_marked.bytes, text_plain.bytes), 3),
        "watermark_photo_bytes_ratio": round(ratio(photo_marked.bytes, photo_plain.bytes), 3),
        "watermark_spacing": spacing,
        "watermark_bytes_ratio_by_spacing": by_spacing,
        "watermark_bytes": all_marked,
        "watermark_text_bytes": [text_marked.bytes, text_plain.bytes],
        "watermark_photo_bytes": [photo_marked.bytes, photo_plain.bytes],
        "watermark_first_frame_bytes": [text_marked.first, text_plain.first],
        "watermark_peer_plain_bytes": all_plain,
        "watermark_frames": [text_marked.frames + photo_marked.frames, text_plain.frames + photo_plain.frames],
        "watermark_layer_ms_per_frame": round((text_ms + photo_ms) / 2.0, 3),
        "watermark_idle_frames_in_a_minute": idle_frames,
        "watermark_clock_update_bytes": clock_bytes,
    });
    eprintln!("bench: watermark (1920x1080, {FRAMES} frames per workload, one thread): {r}");
    Ok(r.as_object().cloned().unwrap_or_default())
}
