//! The watermark layer with the pipeline it feeds: a desktop scrolling text under a watermark
//! still goes as copies, as it does without one.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use atrium_display::framebuffer::Framebuffer;
use atrium_display::pipeline::capture::Capture;
use atrium_display::source::{FramebufferSource, SourceEvent};
use atrium_display::watermark::{Font, Layer, Marks, Redrawn};
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticSource};
use atrium_protocol::ticket::Watermark;

fn font() -> Arc<Font> {
    let path = Path::new(atrium_display::config::DEFAULT_WATERMARK_FONT);
    Arc::new(Font::load(path).unwrap_or_else(|e| panic!("{e} (install fonts-dejavu-core)")))
}

fn mark(text: &str) -> Watermark {
    Watermark { text: text.into(), opacity: 30, size: 16, angle: 30, spacing: 4 }
}

#[test]
fn a_scroll_under_a_watermark_still_goes_as_a_copy() {
    let (marks, rx) = Marks::new();
    let mut layer = Layer::new(rx, Some(font()));
    // The synthetic desktop: a terminal scrolling a line of text at each update.
    let cfg = SyntheticConfig { width: 640, height: 384, fps: 1000, photo: false, ticks: None };
    let mut src = SyntheticSource::new(cfg);
    let mut fb = Framebuffer::new(640, 384);
    src.next_update(&mut fb).expect("a first image");
    let _g = marks.add(mark("alice · 10.0.0.5\n{time}"));
    let t = UNIX_EPOCH + Duration::from_secs(29_938_171 * 60 + 1);
    let (out, _) = layer.apply(&fb, &[], t);
    let mut cap = Capture::new(out);
    let mut plain = Capture::new(&fb);
    for _ in 0..5 {
        let events = src.next_update(&mut fb).expect("an update");
        let p = plain.process(&fb, &events).expect("a change");
        assert!(p.copy.is_some(), "the test's scroll is found without a watermark");
        let (out, r) = layer.apply(&fb, &events, t);
        assert!(matches!(r, Redrawn::Area(_)), "{r:?}");
        let more = [SourceEvent::Damage(fb.bounds())];
        let f = cap.process(out, &more).expect("a change");
        assert_eq!(f.copy, p.copy, "the same copy as without a watermark");
        assert!(f.copy.is_some(), "found as a scroll");
        let tiles = f.delta.len();
        assert!(
            tiles <= p.delta.len() + 10,
            "{tiles} tiles besides the copy, {} without",
            p.delta.len()
        );
    }
}
