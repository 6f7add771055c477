use std::sync::Arc;

use super::*;
use crate::framebuffer::{Framebuffer, intersect};
use crate::pipeline::capture::Capture;
use crate::pipeline::frame::Frame;
use crate::pipeline::plan::{apply, plan_update_except};
use crate::source::SourceEvent;

/// A viewer in step with a desktop, with video on.
struct Viewer {
    fb: Framebuffer,
    cap: Capture,
    view: ViewerTiles,
    video: Video,
    decoder: vp8::Decoder,
    now: Instant,
}

impl Viewer {
    fn new(w: u16, h: u16, max_fps: u32) -> Self {
        Self::with_slots(w, h, max_fps, Arc::new(tokio::sync::Semaphore::new(1)))
    }

    /// A viewer of a desktop whose streams take these slots.
    fn with_slots(w: u16, h: u16, max_fps: u32, slots: Arc<tokio::sync::Semaphore>) -> Self {
        let mut fb = Framebuffer::new(w, h);
        fb.fill(fb.bounds(), 0x0020_2020);
        let cap = Capture::new(&fb);
        let mut v = Self {
            fb,
            cap,
            view: ViewerTiles::new(),
            video: Video::new(max_fps, slots),
            decoder: vp8::Decoder::new().expect("decoder"),
            now: Instant::now(),
        };
        let first = Arc::clone(v.cap.last());
        assert_eq!(v.video.decide(&first, &v.view, v.now), Decision::Stills);
        let plan = plan_update_except(&first, &v.view, None, None);
        apply(&mut v.view, &first, &plan, v.now);
        v
    }

    /// Paints `r` with a pattern of `t`, captures, decides and sends: the decision, the
    /// still rectangles, and the video frame if one was made.
    fn step(&mut self, r: Rect, t: u32) -> (Decision, Vec<Rect>, Option<(Rect, bool)>) {
        self.step_many(&[r], t)
    }

    fn step_many(&mut self, rs: &[Rect], t: u32) -> (Decision, Vec<Rect>, Option<(Rect, bool)>) {
        for r in rs {
            for y in r.y..r.y + r.h {
                for (x, p) in self.fb.span_mut(r.x, y, r.w).iter_mut().enumerate() {
                    let x = u32::try_from(x).expect("small");
                    *p = ((((x + t * 7) * 3) ^ (u32::from(y) + t)) * 0x0001_0203) & 0x00ff_ffff;
                }
            }
        }
        self.now += Duration::from_millis(40);
        let frame =
            self.cap.process(&self.fb, &[SourceEvent::Damage(self.fb.bounds())]).expect("a change");
        self.send(&frame)
    }

    /// Nothing new on the screen, `after` later: what the viewer is sent of the last frame.
    fn idle(&mut self, after: Duration) -> (Decision, Vec<Rect>, Option<(Rect, bool)>) {
        self.now += after;
        let frame = Arc::clone(self.cap.last());
        self.send(&frame)
    }

    fn send(&mut self, frame: &Frame) -> (Decision, Vec<Rect>, Option<(Rect, bool)>) {
        let d = self.video.decide(frame, &self.view, self.now);
        let mut sent = None;
        if let Decision::Encode(rect) = d {
            let (msg, cost) = self.video.encode(frame, rect, None, self.now).expect("encode");
            let Ok(ServerMessage::Video { rect: got, key, data }) = ServerMessage::decode(&msg)
            else {
                panic!("not a video message");
            };
            assert_eq!((got, key, cost.key, cost.bytes), (rect, key, key, msg.len()));
            let (w, h, _) = self.decoder.decode(&data).expect("the frame decodes");
            assert_eq!((w, h), (rect.w, rect.h));
            sent = Some((rect, key));
        }
        let plan = plan_update_except(frame, &self.view, None, d.except());
        apply(&mut self.view, frame, &plan, self.now);
        mark_lossy(&mut self.view, frame, d, self.now);
        (d, plan.rects.iter().map(|(r, _)| *r).collect(), sent)
    }
}

#[test]
fn an_area_that_keeps_changing_becomes_a_stream_and_stills_leave_it_out() {
    let mut v = Viewer::new(512, 384, 30);
    let area = Rect { x: 70, y: 70, w: 180, h: 120 };
    for t in 0..2 {
        let (d, stills, _) = v.step(area, t);
        assert_eq!(d, Decision::Stills, "update {t}: too early for a stream");
        assert!(!stills.is_empty());
    }
    // Third update in a row: the tiles it touches (64..256 x 64..192) become a stream.
    let stream = Rect { x: 64, y: 64, w: 192, h: 128 };
    let (d, stills, sent) = v.step(area, 2);
    assert_eq!(d, Decision::Encode(stream));
    assert_eq!(sent, Some((stream, true)), "a stream starts with a key frame");
    assert!(stills.iter().all(|r| intersect(*r, stream).is_none()), "{stills:?}");
    let (d, _, sent) = v.step(area, 3);
    assert_eq!((d, sent), (Decision::Encode(stream), Some((stream, false))));
    // The viewer's tiles under the stream are lossy: refined once the motion stops.
    assert!(v.view.lossy[v.cap.last().grid.index(2, 2)].is_some());
    assert!(v.view.lossy[v.cap.last().grid.index(6, 5)].is_none());
    // Motion outside the stream goes as stills, and the stream stays open.
    let (d, stills, sent) = v.step(Rect { x: 400, y: 300, w: 20, h: 20 }, 4);
    assert_eq!((d, sent), (Decision::Stills, None));
    assert_eq!(stills, vec![Rect { x: 400, y: 300, w: 20, h: 20 }]);
    assert_eq!(v.video.stream_rect(), Some(stream));
}

#[test]
fn a_video_that_does_not_fill_its_tiles_takes_in_its_edges() {
    let mut v = Viewer::new(512, 384, 30);
    // 12 pixels into the tiles above and 8 into those on the left: too little to move.
    let area = Rect { x: 120, y: 116, w: 200, h: 140 };
    let mut last = (Decision::Stills, Vec::new());
    for t in 0..4 {
        let (d, stills, _) = v.step(area, t);
        last = (d, stills);
    }
    // Moving: 128..320 x 128..256; with the ring of tiles it touched: from 64, 64.
    assert_eq!(last.0, Decision::Encode(Rect { x: 64, y: 64, w: 256, h: 192 }));
    assert!(last.1.is_empty(), "nothing of the video goes as stills: {:?}", last.1);
}

#[test]
fn small_or_sparse_changes_stay_stills() {
    let mut v = Viewer::new(512, 384, 30);
    // Typing: one tile changing update after update.
    for t in 0..6 {
        let (d, _, _) = v.step(Rect { x: 10 + u16::try_from(t).unwrap(), y: 10, w: 8, h: 16 }, t);
        assert_eq!(d, Decision::Stills);
    }
    // Typing on a line that straddles two rows of tiles, in two columns: four tiles change
    // with every key, a sliver each.
    for t in 0..12 {
        let x = 56 + u16::try_from(t % 2).unwrap() * 8;
        let (d, _, _) = v.step(Rect { x, y: 120, w: 8, h: 17 }, t);
        assert_eq!(d, Decision::Stills, "key {t}");
    }
    // Two spots far apart changing together: a large box, mostly still.
    let spots = [Rect { x: 0, y: 0, w: 10, h: 10 }, Rect { x: 500, y: 370, w: 10, h: 10 }];
    for t in 6..12 {
        let (d, stills, _) = v.step_many(&spots, t);
        assert_eq!(d, Decision::Stills);
        assert_eq!(stills.len(), 2);
    }
}

#[test]
fn frames_beyond_the_rate_limit_are_left_for_the_next_one() {
    let mut v = Viewer::new(512, 384, 10);
    let area = Rect { x: 0, y: 0, w: 128, h: 128 };
    for t in 0..3 {
        v.step(area, t);
    }
    assert!(v.video.stream_rect().is_some());
    // 40 ms later, at about 10 frames a second: skipped, and not sent as stills either.
    let stream = Rect { x: 0, y: 0, w: 128, h: 128 };
    let (d, stills, sent) = v.step(area, 3);
    assert_eq!((d, sent), (Decision::Skip(stream), None));
    assert!(stills.is_empty(), "{stills:?}");
    // 80 ms after the last frame: more than three quarters of the 100 ms interval (captures
    // are not evenly spaced): sent.
    let (d, _, sent) = v.step(area, 4);
    assert_eq!(d, Decision::Encode(stream));
    assert_eq!(sent.map(|(_, key)| key), Some(false));
    let (d, _, _) = v.step(area, 5);
    assert_eq!(d, Decision::Skip(stream));
    // The motion stops there: the skipped frame is still sent, three quarters of a frame
    // after the last one, and nothing more after it.
    assert_eq!(
        v.video.catch_up_at(),
        Some(v.now - Duration::from_millis(40) + Duration::from_millis(75))
    );
    let (d, _, sent) = v.idle(Duration::from_millis(20));
    assert_eq!((d, sent), (Decision::Stills, None), "too early");
    let (d, stills, sent) = v.idle(Duration::from_millis(20));
    assert_eq!((d, sent), (Decision::Encode(stream), Some((stream, false))));
    assert!(stills.is_empty());
    assert_eq!(v.video.catch_up_at(), None);
    assert_eq!(v.idle(Duration::from_millis(100)).0, Decision::Stills);
}

#[test]
fn a_desktop_has_a_limited_number_of_streams() {
    let slots = Arc::new(tokio::sync::Semaphore::new(1));
    let mut first = Viewer::with_slots(512, 384, 30, Arc::clone(&slots));
    let mut second = Viewer::with_slots(512, 384, 30, Arc::clone(&slots));
    let area = Rect { x: 0, y: 0, w: 128, h: 128 };
    for t in 0..3 {
        first.step(area, t);
    }
    assert!(first.video.stream_rect().is_some());
    // The second viewer of the same desktop: stills, while the first holds the only slot.
    for t in 0..5 {
        assert_eq!(second.step(area, t).0, Decision::Stills);
    }
    first.video.end_stream();
    assert!(matches!(second.step(area, 5).0, Decision::Encode(_)));
    assert!(first.video.stream_rect().is_none());
}

#[test]
fn a_refined_stream_ends_and_motion_builds_up_again() {
    let mut v = Viewer::new(512, 384, 30);
    let area = Rect { x: 0, y: 0, w: 128, h: 128 };
    for t in 0..3 {
        v.step(area, t);
    }
    assert!(v.video.stream_rect().is_some());
    v.video.end_stream();
    assert_eq!(v.step(area, 3).0, Decision::Stills);
    assert_eq!(v.step(area, 4).0, Decision::Stills);
    let (d, _, sent) = v.step(area, 5);
    assert_eq!((d, sent.map(|(_, key)| key)), (Decision::Encode(area), Some(true)));
}

#[test]
fn motion_that_spreads_starts_a_larger_stream_and_a_new_size_ends_it() {
    let mut v = Viewer::new(512, 384, 30);
    for t in 0..3 {
        v.step(Rect { x: 0, y: 0, w: 128, h: 128 }, t);
    }
    assert_eq!(v.video.stream_rect(), Some(Rect { x: 0, y: 0, w: 128, h: 128 }));
    let wide = Rect { x: 0, y: 0, w: 256, h: 128 };
    let mut key_frames = 0;
    for t in 3..8 {
        let (_, _, sent) = v.step(wide, t);
        key_frames += usize::from(sent.is_some_and(|(_, key)| key));
    }
    assert_eq!(v.video.stream_rect(), Some(wide));
    // The changing tiles next to the stream join it at once (its ring), the rest once they
    // count as moving: two new streams.
    assert_eq!(key_frames, 2);
    // A viewer whose canvas was reset starts over.
    v.view = ViewerTiles::new();
    let (d, _, _) = v.step(wide, 9);
    assert_eq!(d, Decision::Stills);
    assert_eq!(v.video.stream_rect(), None);
}

#[test]
fn an_odd_screen_edge_is_left_to_stills() {
    let grid = Grid::new(201, 131);
    assert_eq!(
        even(Rect { x: 128, y: 64, w: 73, h: 67 }, &grid),
        Rect { x: 128, y: 64, w: 72, h: 66 }
    );
    assert_eq!(even(Rect { x: 0, y: 0, w: 64, h: 128 }, &grid), Rect { x: 0, y: 0, w: 64, h: 128 });
    let mut v = Viewer::new(201, 131, 30);
    let area = Rect { x: 64, y: 0, w: 137, h: 131 };
    let mut last = (Decision::Stills, Vec::new());
    for t in 0..4 {
        let (d, stills, _) = v.step(area, t);
        last = (d, stills);
    }
    let stream = Rect { x: 64, y: 0, w: 136, h: 130 };
    assert_eq!(last.0, Decision::Encode(stream));
    // The last column and row are stills, outside the stream.
    assert!(last.1.iter().all(|r| intersect(*r, stream).is_none()), "{:?}", last.1);
    assert!(last.1.iter().any(|r| r.x == 200) && last.1.iter().any(|r| r.y == 130));
}

#[test]
fn a_slow_video_is_not_refined_between_its_frames() {
    let base = Duration::from_millis(300);
    let area = Rect { x: 0, y: 0, w: 128, h: 128 };
    // A video drawn at two pictures a second: its first frame already waits for the next
    // picture (the updates that made the stream came half a second apart).
    let mut v = Viewer::new(512, 384, 30);
    let mut first = None;
    for t in 0..4 {
        v.now += Duration::from_millis(460);
        if let (_, _, Some(f)) = v.step(area, t) {
            first = Some(f);
            break;
        }
    }
    assert!(first.is_some_and(|(_, key)| key), "no stream began: {first:?}");
    let wait = v.video.refine_after(base);
    assert!(wait >= Duration::from_millis(1400), "the first frame is refined after {wait:?}");

    // A video that starts after a long still moment: the pause is not its frame interval.
    let mut v = Viewer::new(512, 384, 30);
    v.step(area, 0);
    v.now += Duration::from_secs(600);
    for t in 1..4 {
        v.step(area, t);
    }
    assert!(v.video.stream_rect().is_some(), "no stream began");
    assert!(v.video.kbps(area, None) >= 100, "{} kbit/s after a pause", v.video.kbps(area, None));

    let mut v = Viewer::new(512, 384, 30);
    assert_eq!(v.video.refine_after(base), base, "no stream: the usual wait");
    for t in 0..3 {
        v.step(area, t);
    }
    // Frames 40 ms apart: the usual wait is longer than three of them.
    v.step(area, 3);
    assert_eq!(v.video.refine_after(base), base);
    // A desktop that draws its video at four frames a second: three frames' time.
    for t in 4..40 {
        v.now += Duration::from_millis(210);
        v.step(area, t);
    }
    let wait = v.video.refine_after(base);
    assert!(wait > Duration::from_millis(700) && wait <= Duration::from_millis(750), "{wait:?}");
    // Its frames get the bits of a frame, not those of the seven a 30 fps stream would have
    // sent meanwhile: at most 6 kbit each (4.8 frames a second).
    let kbps = v.video.kbps(area, None);
    assert!(kbps <= 29, "a 4 fps stream at {kbps} kbit/s");
    // Slower still: never more than the cap.
    for t in 40..60 {
        v.now += Duration::from_secs(2);
        v.step(area, t);
    }
    assert_eq!(v.video.refine_after(base), MAX_REFINE_WAIT);
    v.video.end_stream();
    assert_eq!(v.video.refine_after(base), base, "the stream ended: the usual wait");
}
