//! Publishing a frame to a desktop's viewers: the frame, the messages viewers make of it (each
//! made once, shared), and the update of viewers in step (those that have the frame before,
//! the usual case with flow control), planned and encoded by the capture before it publishes,
//! so they only send it.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::pipeline::encode::{Encodings, encode_plan};
use crate::pipeline::frame::Frame;
use crate::pipeline::plan::{Plan, ViewerTiles, plan_update};
use crate::watermark::Spec;

/// The update of a viewer that has the frame before, planned and encoded ahead of time.
#[derive(Debug)]
pub struct Prepared {
    pub plan: Plan,
    pub messages: Vec<Arc<[u8]>>,
}

/// A frame as a desktop's viewers receive it.
#[derive(Debug)]
pub struct Published {
    pub frame: Arc<Frame>,
    /// The messages made of this frame so far.
    pub encodings: Encodings,
    in_step: Option<Prepared>,
    /// The watermark drawn into this frame's pixels, if any.
    pub watermark: Option<Arc<Spec>>,
}

impl Published {
    /// `frame` with nothing encoded and nothing prepared (a first frame).
    pub fn new(frame: Arc<Frame>) -> Self {
        Self { frame, encodings: Encodings::default(), in_step: None, watermark: None }
    }

    /// The update prepared for viewers that have the frame before, if there is one.
    pub fn in_step(&self) -> Option<&Prepared> {
        self.in_step.as_ref()
    }
}

/// Publishes `frame`, with the update of viewers in step planned and encoded on the calling
/// thread. Nothing is prepared for a first frame, a new screen size, or when some area looks
/// like a photograph: its JPEG quality follows each viewer's throughput, so each viewer plans
/// it.
pub fn publish(frame: Arc<Frame>, metrics: &Metrics) -> Published {
    let mut p = Published::new(frame);
    let f = &p.frame;
    if f.seq <= 1 || f.size_seq == f.seq {
        return p;
    }
    let view = ViewerTiles {
        sent_seq: f.seq - 1,
        width: f.grid.width,
        height: f.grid.height,
        lossy: Vec::new(),
    };
    let plan = plan_update(f, &view, None);
    if plan.photo {
        return p;
    }
    let messages = encode_plan(f, &p.encodings, &plan, metrics);
    p.in_step = Some(Prepared { plan, messages });
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framebuffer::Framebuffer;
    use crate::pipeline::plan::Kind;
    use atrium_protocol::display::Rect;

    #[test]
    fn the_prepared_update_is_what_a_viewer_in_step_would_plan() {
        use crate::pipeline::capture::Capture;
        use crate::source::SourceEvent;

        let metrics = Metrics::default();
        let mut fb = Framebuffer::new(256, 128);
        fb.fill(fb.bounds(), 0x0010_1010);
        let mut cap = Capture::new(&fb);
        let first = publish(Arc::clone(cap.last()), &metrics);
        assert!(first.in_step().is_none(), "nobody is in step with a first frame");
        // Text-like: prepared, and the same as planning and encoding for the viewer.
        for x in 10..60 {
            fb.span_mut(x, 20, 1)[0] = if x % 3 == 0 { 0x00ff_ffff } else { 0x0000_00ff };
        }
        let f = cap.process(&fb, &[SourceEvent::Damage(fb.bounds())]).expect("a change");
        let p = publish(Arc::clone(&f), &metrics);
        let prepared = p.in_step().expect("prepared");
        let view = ViewerTiles { sent_seq: f.seq - 1, width: 256, height: 128, lossy: Vec::new() };
        let plan = plan_update(&f, &view, Some(70));
        assert_eq!(prepared.plan.rects, plan.rects);
        assert_eq!(prepared.messages, encode_plan(&f, &Encodings::default(), &plan, &metrics));
        // Photo-like: left to each viewer (its JPEG quality follows its throughput).
        for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
            *p = u32::try_from(i).expect("small").wrapping_mul(2_654_435_761) & 0x00ff_ffff;
        }
        let f = cap.process(&fb, &[SourceEvent::Damage(fb.bounds())]).expect("a change");
        assert!(publish(f, &metrics).in_step().is_none());
    }

    #[test]
    fn encodings_are_shared() {
        let f = Frame::new(1, Framebuffer::new(64, 64), vec![1], 1, None, vec![]);
        let p = Published::new(Arc::new(f));
        let r = Rect { x: 0, y: 0, w: 64, h: 64 };
        let a = p.encodings.get_or_make(r, Kind::Png, || vec![1, 2, 3]);
        let b = p.encodings.get_or_make(r, Kind::Png, || unreachable!("made once"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = p.encodings.get_or_make(r, Kind::Jpeg(50), || vec![4]);
        assert_eq!(&*c, &[4]);
    }
}
