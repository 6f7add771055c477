//! Encode cost at 1920x1080, single-threaded: a full redraw (everything new) and a text-scroll
//! diff (one line scrolled in), each beside a peer in the same run: a whole-frame PNG (what a
//! simple lossless encoder sends) for the full redraw, and the same diff without scroll
//! detection (a viewer that must be sent every changed tile) for the scroll.

use std::time::Instant;

use atrium_protocol::display::Rect;
use serde_json::{Map, Value, json};

use super::round;
use atrium_display::framebuffer::Framebuffer;
use atrium_display::metrics::Metrics;
use atrium_display::pipeline::capture::Capture;
use atrium_display::pipeline::encode::{Encodings, encode_rect, png};
use atrium_display::pipeline::frame::{Frame, TileDelta};
use atrium_display::pipeline::plan::{ViewerTiles, apply, plan_update};
use atrium_display::source::FramebufferSource;
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticSource};

const RUNS: usize = 5;

/// Plans and encodes everything `view` needs of `frame`, nothing encoded before; returns the
/// bytes.
pub(super) fn encode_all(frame: &Frame, view: &ViewerTiles, metrics: &Metrics) -> usize {
    let plan = plan_update(frame, view, Some(70));
    let done = Encodings::default();
    let mut bytes = 0;
    if plan.copy.is_some() {
        bytes += 17;
    }
    for ((r, k), a) in plan.rects.into_iter().zip(&plan.analyses) {
        bytes += encode_rect(frame, &done, r, k, a.as_deref(), metrics).len();
    }
    bytes
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run() -> anyhow::Result<Map<String, Value>> {
    let metrics = Metrics::default();
    let cfg = SyntheticConfig { width: 1920, height: 1080, fps: 1000, photo: false, ticks: None };
    let mut src = SyntheticSource::new(cfg);
    let mut fb = Framebuffer::new(1920, 1080);
    src.next_update(&mut fb)?;

    // Full redraw: a new viewer of a full screen of text.
    let (mut full_ms, mut full_bytes) = (Vec::new(), 0);
    for _ in 0..RUNS {
        let cap = Capture::new(&fb); // a fresh frame: nothing cached
        let t = Instant::now();
        full_bytes = encode_all(cap.last(), &ViewerTiles::new(), &metrics);
        full_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut peer_ms = Vec::new();
    let mut peer_bytes = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        peer_bytes = png(&fb, Rect { x: 0, y: 0, w: 1920, h: 1080 }, None).len();
        peer_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // Text scroll: the viewer has the previous frame; one line scrolls in.
    let (mut scroll_ms, mut scroll_bytes) = (Vec::new(), 0);
    let (mut noscroll_ms, mut noscroll_bytes) = (Vec::new(), 0);
    let mut copies = 0;
    for _ in 0..RUNS {
        let mut cap = Capture::new(&fb);
        let mut view = ViewerTiles::new();
        let first = std::sync::Arc::clone(cap.last());
        let p = plan_update(&first, &view, Some(70));
        apply(&mut view, &first, &p, Instant::now());
        let events = src.next_update(&mut fb)?;
        let t = Instant::now();
        let Some(frame) = cap.process(&fb, &events) else {
            anyhow::bail!("the scroll changed nothing")
        };
        scroll_bytes = encode_all(&frame, &view, &metrics);
        scroll_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if frame.copy.is_some() {
            copies += 1;
        }
        // The same change without scroll detection: every changed tile, whole, from a frame
        // nothing has encoded yet.
        let t = Instant::now();
        let whole: Vec<TileDelta> = (0..frame.grid.len())
            .filter(|&i| frame.tile_seq[i] == frame.seq)
            .map(|i| TileDelta {
                tile: u32::try_from(i).expect("tile index"),
                bbox: frame.grid.rect(i),
            })
            .collect();
        let fresh = Frame::new(
            frame.seq,
            frame.fb.clone(),
            frame.tile_seq.clone(),
            frame.size_seq,
            None,
            whole,
        );
        noscroll_bytes = encode_all(&fresh, &view, &metrics);
        noscroll_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let r = json!({
        "encode_full_1080p_ms": round(median(full_ms), 2),
        "encode_full_1080p_bytes": full_bytes,
        "encode_full_1080p_peer_whole_png_ms": round(median(peer_ms), 2),
        "encode_full_1080p_peer_whole_png_bytes": peer_bytes,
        "encode_scroll_1080p_ms": round(median(scroll_ms), 2),
        "encode_scroll_1080p_bytes": scroll_bytes,
        "encode_scroll_1080p_copies_detected": copies,
        "encode_scroll_1080p_peer_no_scroll_detection_ms": round(median(noscroll_ms), 2),
        "encode_scroll_1080p_peer_no_scroll_detection_bytes": noscroll_bytes,
    });
    eprintln!("bench: encode 1920x1080 (one thread): {r}");
    Ok(r.as_object().cloned().unwrap_or_default())
}
