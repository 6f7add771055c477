use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atrium_protocol::display::Rect;
use atrium_protocol::ticket::Watermark;

use super::render::ink;
use super::*;
use super::{Pattern, Redrawn};
use crate::pipeline::capture::Capture;

/// The font the proxy draws with by default (Debian's fonts-dejavu-core, which
/// scripts/lib/deps.sh installs): the tests fail without it, they do not skip.
pub(crate) fn font() -> Arc<Font> {
    let path = Path::new(crate::config::DEFAULT_WATERMARK_FONT);
    Arc::new(Font::load(path).unwrap_or_else(|e| panic!("{e} (install fonts-dejavu-core)")))
}

fn mark(text: &str) -> Watermark {
    Watermark { text: text.into(), opacity: 30, size: 16, angle: 30, spacing: 4 }
}

const STYLE: Style = Style { opacity: 30, size: 16, angle: 30, spacing: 4 };

/// 2026-12-03 09:31 UTC, in minutes and as a time.
const MINUTE: i64 = 29_938_171;

fn at_minute(m: i64, secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(m).unwrap() * 60 + secs)
}

/// A screen of two halves: white on the left, near black on the right.
fn screen(w: u16, h: u16) -> Framebuffer {
    let mut fb = Framebuffer::new(w, h);
    fb.fill(Rect { x: 0, y: 0, w: w / 2, h }, 0x00ff_ffff);
    fb.fill(Rect { x: w / 2, y: 0, w: w - w / 2, h }, 0x0010_1010);
    fb
}

#[test]
fn the_time_is_utc_to_the_minute() {
    assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
    assert_eq!(utc_minute(MINUTE), "2026-12-03 09:31 UTC");
    assert_eq!(utc_minute(15_864_479), "2000-02-29 23:59 UTC");
    let spec = Spec { lines: vec!["alice".into(), "{time}".into()], style: STYLE };
    assert!(spec.has_time());
    assert_eq!(spec.lines_at(MINUTE), ["alice", "2026-12-03 09:31 UTC"]);
}

#[test]
fn ink_darkens_light_pixels_and_lightens_dark_ones() {
    assert_eq!(ink(0x00ff_ffff, 0), 0x00ff_ffff);
    assert_eq!(ink(0x00ff_ffff, 255), 0);
    assert_eq!(ink(0x0000_0000, 255), 0x00ff_ffff);
    let light = ink(0x00c0_c0c0, 64);
    assert!(light & 0xff < 0xc0 && light & 0xff > 0x80, "{light:x}");
    let dark = ink(0x0020_2020, 64);
    assert!(dark & 0xff > 0x20 && dark & 0xff < 0x80, "{dark:x}");
}

#[test]
fn viewers_marks_are_merged_and_leave_with_their_viewers() {
    let (marks, rx) = Marks::new();
    assert!(rx.borrow().is_none());
    let alice = marks.add(mark("alice · 10.0.0.5\n{time}"));
    let carol = marks.add(Watermark { opacity: 90, ..mark("alice · 10.0.0.5\nwatched by carol") });
    let spec = rx.borrow().clone().expect("a spec");
    assert_eq!(spec.lines, ["alice · 10.0.0.5", "{time}", "watched by carol"]);
    assert_eq!(spec.style.opacity, 30, "the first viewer's style");
    assert!(spec.carries(&mark("alice · 10.0.0.5\n{time}")));
    assert!(spec.carries(&mark("watched by carol")));
    assert!(!spec.carries(&mark("bob")));
    drop(carol);
    let spec = rx.borrow().clone().expect("a spec");
    assert_eq!(spec.lines, ["alice · 10.0.0.5", "{time}"]);
    assert!(!spec.carries(&mark("watched by carol")));
    drop(alice);
    assert!(rx.borrow().is_none());
    // At most MAX_LINES different lines: a viewer that would add more is refused, and the
    // desktop's watermark stays as it was.
    let four = marks.add(mark("a\nb\nc\nd")).expect("four lines");
    let eight = marks.add(mark("e\nf\ng\nh")).expect("eight lines");
    let again = marks.add(mark("a\nh")).expect("lines already there");
    let before = rx.borrow().clone();
    assert!(marks.add(mark("i")).is_err(), "a ninth line");
    assert_eq!(*rx.borrow(), before);
    drop((four, eight, again));
}

#[test]
fn the_text_is_tiled_over_the_whole_screen_at_its_strength() {
    let font = font();
    let lines = vec!["alice · 10.0.0.5".to_owned(), utc_minute(MINUTE)];
    let mask = Mask::new(&Pattern::new(&font, &lines, STYLE), 640, 400);
    let inked = mask.inked();
    let all = 640 * 400;
    assert!(inked > all / 50 && inked < all / 3, "{inked} of {all} pixels inked");
    // Every quarter of the screen has some of it.
    for (x0, y0) in [(0, 0), (320, 0), (0, 200), (320, 200)] {
        let n = (y0..y0 + 200)
            .flat_map(|y| (x0..x0 + 320).map(move |x| (x, y)))
            .filter(|&(x, y)| mask.at(x, y) > 0)
            .count();
        assert!(n > 0, "nothing in the quarter at {x0},{y0}");
    }
    // At most the opacity: 30% of full ink.
    let max = (0..400).flat_map(|y| (0..640).map(move |x| (x, y))).map(|(x, y)| mask.at(x, y));
    let max = max.max().unwrap();
    assert!((60..=77).contains(&max), "strongest pixel {max}");
    // Other text, other angle: another mask.
    let other = Mask::new(&Pattern::new(&font, &lines, Style { angle: -20, ..STYLE }), 640, 400);
    assert_ne!(mask, other);
    let bob = Mask::new(&Pattern::new(&font, &["bob".to_owned()], STYLE), 640, 400);
    assert!(bob.inked() > 0 && bob != mask, "another text, another mask");
}

#[test]
fn the_default_spacing_draws_fewer_copies_and_still_marks_every_ninth_of_the_screen() {
    let font = font();
    let lines = vec!["alice · 10.0.0.5".to_owned(), utc_minute(MINUTE)];
    let style = |spacing| Style { opacity: 15, size: 20, angle: 30, spacing };
    let mask = |spacing| Mask::new(&Pattern::new(&font, &lines, style(spacing)), 1920, 1080);
    let (dense, sparse) = (mask(4), mask(atrium_protocol::ticket::DEFAULT_WATERMARK_SPACING));
    assert!(sparse.inked() * 3 < dense.inked(), "{} against {}", sparse.inked(), dense.inked());
    for (x0, y0) in (0..3).flat_map(|i| (0..3).map(move |j| (i * 640, j * 360))) {
        let n = (y0..y0 + 360)
            .flat_map(|y| (x0..x0 + 640).map(move |x| (x, y)))
            .filter(|&(x, y)| sparse.at(x, y) > 0)
            .count();
        assert!(n > 200, "{n} pixels inked in the ninth at {x0},{y0}");
    }
}

#[test]
fn the_layer_draws_where_the_source_changed_and_redraws_all_when_the_marks_or_minute_change() {
    let (marks, rx) = Marks::new();
    let mut layer = Layer::new(rx, Some(font()));
    let mut fb = screen(320, 200);
    let t0 = at_minute(MINUTE, 5);
    // No marks: the source's own pixels.
    let (out, r) = layer.apply(&fb, &[], t0);
    assert!(std::ptr::eq(out, &fb) && r == Redrawn::Nothing);

    let guard = marks.add(mark("alice\n{time}"));
    let (out, r) = layer.apply(&fb, &[], t0);
    assert_eq!(r, Redrawn::All, "a new watermark: everything to compare");
    let drawn = out.clone();
    assert_ne!(drawn.pixels(), fb.pixels());
    assert!(layer.drawn().is_some_and(|s| s.carries(&mark("alice\n{time}"))));
    assert_eq!(layer.next_change(t0), Some(Duration::from_secs(55)));

    // Nothing new, same minute: the same pixels, nothing to compare.
    let (out, r) = layer.apply(&fb, &[], at_minute(MINUTE, 59));
    assert_eq!(r, Redrawn::Nothing);
    assert_eq!(out.pixels(), drawn.pixels());

    // The source draws a grey square: it is watermarked there too, the rest untouched.
    let square = Rect { x: 100, y: 50, w: 80, h: 60 };
    fb.fill(square, 0x0080_8080);
    let (out, r) = layer.apply(&fb, &[SourceEvent::Damage(square)], at_minute(MINUTE, 59));
    assert_eq!(r, Redrawn::Nothing, "no scroll: only where the source changed");
    let mut want = fb.clone();
    let pattern = Pattern::new(&font(), &["alice".into(), utc_minute(MINUTE)], STYLE);
    let mask = Mask::new(&pattern, 320, 200);
    mask.blend(&mut want, fb.bounds());
    assert_eq!(out.pixels(), want.pixels(), "as if drawn over the whole new screen");

    // The next minute: all of it again, differing only where the time's text is.
    let (out, r) = layer.apply(&fb, &[], at_minute(MINUTE + 1, 0));
    assert_eq!(r, Redrawn::All);
    let next = Mask::new(
        &Pattern::new(&font(), &["alice".into(), utc_minute(MINUTE + 1)], STYLE),
        320,
        200,
    );
    let mut want_next = fb.clone();
    next.blend(&mut want_next, fb.bounds());
    assert_eq!(out.pixels(), want_next.pixels());
    let changed = want.pixels().iter().zip(want_next.pixels()).filter(|(a, b)| a != b).count();
    assert!(changed > 0 && changed < mask.inked() / 2, "{changed} pixels changed");

    // The last viewer with a watermark left: the source's own pixels, all to compare.
    drop(guard);
    let (out, r) = layer.apply(&fb, &[], at_minute(MINUTE + 1, 1));
    assert!(std::ptr::eq(out, &fb) && r == Redrawn::All);
    assert!(layer.drawn().is_none());
}

#[test]
fn an_idle_watermarked_desktop_makes_no_frames_until_the_minute_changes() {
    let (marks, rx) = Marks::new();
    let mut layer = Layer::new(rx, Some(font()));
    let fb = screen(256, 128);
    let mut cap = Capture::new(&fb);
    let _g = marks.add(mark("alice · {time}"));
    let (out, r) = layer.apply(&fb, &[], at_minute(MINUTE, 1));
    let full = [SourceEvent::Damage(out.bounds())];
    assert_eq!(r, Redrawn::All);
    let first = cap.process(out, &full).expect("the watermark is a change");
    assert!(!first.delta.is_empty());
    for s in 2..60 {
        let (out, r) = layer.apply(&fb, &[], at_minute(MINUTE, s));
        assert_eq!(r, Redrawn::Nothing);
        assert!(cap.process(out, &[]).is_none(), "a frame at second {s}");
    }
    let (out, r) = layer.apply(&fb, &[], at_minute(MINUTE + 1, 0));
    assert_eq!(r, Redrawn::All);
    let f = cap.process(out, &[SourceEvent::Damage(out.bounds())]).expect("the clock moved");
    let tiles = f.delta.len();
    assert!(tiles < f.grid.len(), "only tiles under the time change: {tiles} of {}", f.grid.len());
}

#[test]
fn without_a_font_nothing_is_drawn() {
    let (marks, rx) = Marks::new();
    let mut layer = Layer::new(rx, None);
    let fb = screen(64, 64);
    let _g = marks.add(mark("alice"));
    let (out, r) = layer.apply(&fb, &[], at_minute(MINUTE, 0));
    assert!(std::ptr::eq(out, &fb) && r == Redrawn::Nothing);
    assert!(layer.drawn().is_none(), "no frame claims to carry a watermark");
}

#[test]
fn damage_outside_the_screen_is_clipped() {
    let (marks, rx) = Marks::new();
    let mut layer = Layer::new(rx, Some(font()));
    let fb = screen(64, 64);
    let _g = marks.add(mark("alice"));
    layer.apply(&fb, &[], at_minute(MINUTE, 0));
    let odd = [
        SourceEvent::Damage(Rect { x: 60, y: 60, w: 100, h: 100 }),
        SourceEvent::Damage(Rect { x: 200, y: 0, w: 10, h: 10 }),
        SourceEvent::Damage(Rect { x: u16::MAX, y: u16::MAX, w: u16::MAX, h: u16::MAX }),
    ];
    let (out, _) = layer.apply(&fb, &odd, at_minute(MINUTE, 0));
    assert_eq!((out.width(), out.height()), (64, 64));
}

#[test]
fn a_scrolled_watermark_continues_its_pattern_exactly() {
    let pattern = Pattern::new(&font(), &["alice".into(), utc_minute(MINUTE)], STYLE);
    let period = pattern.period();
    let (w, h) = (320u16, u16::try_from(period * 3).unwrap());
    let mut mask = Mask::new(&pattern, w, h);
    // The whole screen scrolls up 16 rows, three times: the pattern, moved 48 rows.
    for _ in 0..3 {
        mask.scroll(Rect { x: 0, y: 0, w, h: h - 16 }, 16, &pattern);
    }
    for y in 0..h {
        for x in 0..w {
            let want = pattern.at(usize::from(x), usize::from(y) + 48);
            assert_eq!(mask.at(x, y), want, "at {x},{y}");
        }
    }
    // The next minute's pattern has the same shape: the moved arrangement takes it.
    let next = Pattern::new(&font(), &["alice".into(), utc_minute(MINUTE + 1)], STYLE);
    let mut moved = mask.clone();
    assert!(moved.repattern(&pattern, &next));
    for y in 0..h {
        for x in 0..w {
            assert_eq!(moved.at(x, y), next.at(usize::from(x), usize::from(y) + 48));
        }
    }
    let other = Pattern::new(&font(), &["alice and bob".into()], STYLE);
    assert!(!moved.clone().repattern(&next, &other), "another shape");
    // And down again.
    for _ in 0..3 {
        mask.scroll(Rect { x: 0, y: 16, w, h: h - 16 }, 0, &pattern);
    }
    assert_eq!(mask, Mask::new(&pattern, w, h));
    // A source beyond the screen is ignored, not a panic.
    mask.scroll(Rect { x: 0, y: 0, w, h }, 16, &pattern);
    mask.scroll(Rect { x: 300, y: 0, w: 64, h: 10 }, 5, &pattern);
}
