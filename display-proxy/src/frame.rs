//! A captured frame: an immutable snapshot of the screen shared by every viewer of a desktop,
//! with what changed since the frame before, tile by tile, and the encodings viewers have
//! already made of it (so viewers in step share one encode). The capture thread prepares the
//! update for viewers in step before it publishes the frame, so they only send it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use atrium_protocol::display::Rect;

use crate::encode::encode_plan;
use crate::framebuffer::Framebuffer;
use crate::metrics::Metrics;
use crate::plan::{Plan, ViewerTiles, plan_update};

/// Tile edge in pixels.
pub const TILE: u16 = 64;

/// A rectangle to copy from elsewhere on the screen (a scroll or a move).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOp {
    pub rect: Rect,
    pub src_x: u16,
    pub src_y: u16,
}

/// A changed tile: its index and the bounding box of what changed in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileDelta {
    pub tile: u32,
    pub bbox: Rect,
}

/// The tile grid of a screen size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub width: u16,
    pub height: u16,
    pub cols: u16,
    pub rows: u16,
}

impl Grid {
    pub fn new(width: u16, height: u16) -> Self {
        Self { width, height, cols: width.div_ceil(TILE), rows: height.div_ceil(TILE) }
    }

    pub fn len(&self) -> usize {
        usize::from(self.cols) * usize::from(self.rows)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rectangle of tile `i` (clipped to the screen).
    pub fn rect(&self, i: usize) -> Rect {
        let cols = usize::from(self.cols);
        let x = u16::try_from(i % cols).expect("column fits") * TILE;
        let y = u16::try_from(i / cols).expect("row fits") * TILE;
        Rect { x, y, w: TILE.min(self.width - x), h: TILE.min(self.height - y) }
    }

    pub fn index(&self, col: u16, row: u16) -> usize {
        usize::from(row) * usize::from(self.cols) + usize::from(col)
    }

    /// Indices of the tiles a rectangle touches.
    pub fn tiles_of(&self, r: Rect) -> impl Iterator<Item = usize> + '_ {
        let (c0, r0) = (r.x / TILE, r.y / TILE);
        let c1 =
            (u32::from(r.x) + u32::from(r.w)).div_ceil(u32::from(TILE)).min(u32::from(self.cols));
        let r1 =
            (u32::from(r.y) + u32::from(r.h)).div_ceil(u32::from(TILE)).min(u32::from(self.rows));
        let c1 = u16::try_from(c1).expect("below cols");
        let r1 = u16::try_from(r1).expect("below rows");
        (r0..r1).flat_map(move |row| (c0..c1).map(move |col| self.index(col, row)))
    }
}

/// How a rectangle is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One colour.
    Fill,
    /// Lossless PNG (palette when it has at most 256 colours).
    Png,
    /// Lossy JPEG at this quality.
    Jpeg(u8),
}

/// The update of a viewer that has the frame before, planned and encoded ahead of time.
#[derive(Debug)]
pub struct Prepared {
    pub plan: Plan,
    pub messages: Vec<Arc<[u8]>>,
}

type CacheKey = ([u16; 4], Kind);
type Encoded = Arc<OnceLock<Arc<[u8]>>>;

/// A snapshot of the screen and what changed since the frame before.
#[derive(Debug)]
pub struct Frame {
    /// Grows by one per captured change; 1 is the first frame.
    pub seq: u64,
    pub fb: Framebuffer,
    pub grid: Grid,
    /// Per tile, the `seq` of the frame in which it last changed.
    pub tile_seq: Vec<u64>,
    /// The `seq` at which the screen took its current size.
    pub size_seq: u64,
    /// For a viewer that has frame `seq - 1`: a copy to apply first...
    pub copy: Option<CopyOp>,
    /// ...then these changed areas.
    pub delta: Vec<TileDelta>,
    pub captured_at: Instant,
    cache: Mutex<HashMap<CacheKey, Encoded>>,
    in_step: OnceLock<Prepared>,
}

impl Frame {
    pub fn new(
        seq: u64,
        fb: Framebuffer,
        tile_seq: Vec<u64>,
        size_seq: u64,
        copy: Option<CopyOp>,
        delta: Vec<TileDelta>,
    ) -> Self {
        let grid = Grid::new(fb.width(), fb.height());
        debug_assert_eq!(tile_seq.len(), grid.len());
        Self {
            seq,
            fb,
            grid,
            tile_seq,
            size_seq,
            copy,
            delta,
            captured_at: Instant::now(),
            cache: Mutex::new(HashMap::new()),
            in_step: OnceLock::new(),
        }
    }

    /// Plans and encodes the update of a viewer that has the frame before (the usual case,
    /// with flow control keeping viewers in step), on the calling thread. Skipped for a new
    /// screen size and when some area looks like a photograph: its JPEG quality follows each
    /// viewer's throughput, so each viewer plans it.
    pub fn prepare_in_step(&self, metrics: &Metrics) {
        if self.seq <= 1 || self.size_seq == self.seq {
            return;
        }
        let view = ViewerTiles {
            sent_seq: self.seq - 1,
            width: self.grid.width,
            height: self.grid.height,
            lossy: Vec::new(),
        };
        let plan = plan_update(self, &view, None);
        if plan.photo {
            return;
        }
        let messages = encode_plan(self, &plan, metrics);
        let _ = self.in_step.set(Prepared { plan, messages });
    }

    /// The update prepared for viewers that have the frame before, if there is one.
    pub fn in_step(&self) -> Option<&Prepared> {
        self.in_step.get()
    }

    /// The encoded message for `rect` as `kind`, made once per frame whoever asks first.
    pub fn encoded(&self, rect: Rect, kind: Kind, make: impl FnOnce() -> Vec<u8>) -> Arc<[u8]> {
        let cell = {
            let mut cache = self.cache.lock().expect("frame cache lock");
            Arc::clone(cache.entry(([rect.x, rect.y, rect.w, rect.h], kind)).or_default())
        };
        Arc::clone(cell.get_or_init(|| Arc::from(make())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_the_screen_with_clipped_edge_tiles() {
        let g = Grid::new(130, 70);
        assert_eq!((g.cols, g.rows, g.len()), (3, 2, 6));
        assert_eq!(g.rect(2), Rect { x: 128, y: 0, w: 2, h: 64 });
        assert_eq!(g.rect(5), Rect { x: 128, y: 64, w: 2, h: 6 });
        let t: Vec<_> = g.tiles_of(Rect { x: 63, y: 10, w: 2, h: 60 }).collect();
        assert_eq!(t, vec![0, 1, 3, 4]);
        let t: Vec<_> = g.tiles_of(Rect { x: 0, y: 0, w: 130, h: 70 }).collect();
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn the_prepared_update_is_what_a_viewer_in_step_would_plan() {
        use crate::capture::Capture;
        use crate::encode::encode_plan;
        use crate::source::SourceEvent;

        let metrics = Metrics::default();
        let mut fb = Framebuffer::new(256, 128);
        fb.fill(fb.bounds(), 0x0010_1010);
        let mut cap = Capture::new(&fb);
        cap.last().prepare_in_step(&metrics);
        assert!(cap.last().in_step().is_none(), "nobody is in step with a first frame");
        // Text-like: prepared, and the same as planning and encoding for the viewer.
        for x in 10..60 {
            fb.span_mut(x, 20, 1)[0] = if x % 3 == 0 { 0x00ff_ffff } else { 0x0000_00ff };
        }
        let f = cap.process(&fb, &[SourceEvent::Damage(fb.bounds())]).expect("a change");
        f.prepare_in_step(&metrics);
        let prepared = f.in_step().expect("prepared");
        let view = ViewerTiles { sent_seq: f.seq - 1, width: 256, height: 128, lossy: Vec::new() };
        let plan = plan_update(&f, &view, Some(70));
        assert_eq!(prepared.plan.rects, plan.rects);
        assert_eq!(prepared.messages, encode_plan(&f, &plan, &metrics));
        // Photo-like: left to each viewer (its JPEG quality follows its throughput).
        for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
            *p = u32::try_from(i).expect("small").wrapping_mul(2_654_435_761) & 0x00ff_ffff;
        }
        let f = cap.process(&fb, &[SourceEvent::Damage(fb.bounds())]).expect("a change");
        f.prepare_in_step(&metrics);
        assert!(f.in_step().is_none());
    }

    #[test]
    fn encodings_are_shared() {
        let f = Frame::new(1, Framebuffer::new(64, 64), vec![1], 1, None, vec![]);
        let r = Rect { x: 0, y: 0, w: 64, h: 64 };
        let a = f.encoded(r, Kind::Png, || vec![1, 2, 3]);
        let b = f.encoded(r, Kind::Png, || unreachable!("made once"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = f.encoded(r, Kind::Jpeg(50), || vec![4]);
        assert_eq!(&*c, &[4]);
    }
}
