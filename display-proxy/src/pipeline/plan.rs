//! What to send one viewer to bring it from the frame it has to the newest one: a copy, then
//! rectangles, each classified (fill, lossless, lossy) and merged with its neighbours; and
//! which lossy areas to refine once they stop changing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_protocol::display::Rect;

use crate::framebuffer::{intersect, subtract, union};
use crate::pipeline::analyse::{Analysis, analyze};
use crate::pipeline::frame::{CopyOp, Frame, Grid, TILE};

/// Widest and tallest rectangle made by merging.
const MAX_MERGED_W: u16 = 512;
const MAX_MERGED_H: u16 = 256;
/// Rectangles closer than this horizontally are merged.
const MERGE_GAP: u16 = 16;

/// Photo-like rectangles smaller than this many pixels go lossless (a JPEG's headers would
/// outweigh its savings).
pub const MIN_JPEG_PIXELS: usize = 32 * 32;

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

/// What a viewer has on its canvas, as far as planning needs to know.
#[derive(Debug, Clone)]
pub struct ViewerTiles {
    /// The frame the viewer has (0: nothing yet).
    pub sent_seq: u64,
    pub width: u16,
    pub height: u16,
    /// Per tile: since when it shows lossy pixels.
    pub lossy: Vec<Option<Instant>>,
}

impl ViewerTiles {
    pub fn new() -> Self {
        Self { sent_seq: 0, width: 0, height: 0, lossy: Vec::new() }
    }
}

impl Default for ViewerTiles {
    fn default() -> Self {
        Self::new()
    }
}

/// One viewer's update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The canvas must change size first.
    pub resize: Option<(u16, u16)>,
    pub copy: Option<CopyOp>,
    pub rects: Vec<(Rect, Kind)>,
    /// For each of `rects` (the same length), what its pixels look like when planning found it
    /// (encoding then does not read them again); `None` for a rectangle merged from lossless
    /// areas side by side, which encoding analyses whole if no viewer has encoded it yet.
    pub analyses: Vec<Found>,
    /// Some area looks like a photograph: many colours, large enough for JPEG (whether or not
    /// this plan sends it as JPEG).
    pub photo: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.resize.is_none() && self.copy.is_none() && self.rects.is_empty()
    }
}

/// Plans the update from `view` to `frame`, photo-like areas at JPEG `quality` (`None`: all
/// lossless).
pub fn plan_update(frame: &Frame, view: &ViewerTiles, quality: Option<u8>) -> Plan {
    plan_update_except(frame, view, quality, None)
}

/// [`plan_update`] leaving out what lies in `except` (an area sent as video).
pub fn plan_update_except(
    frame: &Frame,
    view: &ViewerTiles,
    quality: Option<u8>,
    except: Option<Rect>,
) -> Plan {
    let grid = frame.grid;
    let mut plan = Plan::default();
    let areas: Vec<Rect> = if view.sent_seq == 0
        || view.sent_seq < frame.size_seq
        || (view.width, view.height) != (grid.width, grid.height)
    {
        if (view.width, view.height) != (grid.width, grid.height) {
            plan.resize = Some((grid.width, grid.height));
        }
        (0..grid.len()).map(|t| grid.rect(t)).collect()
    } else if view.sent_seq >= frame.seq {
        return plan;
    } else if view.sent_seq + 1 == frame.seq {
        plan.copy = frame.copy;
        frame.delta.iter().map(|d| d.bbox).collect()
    } else {
        (0..grid.len())
            .filter(|&t| frame.tile_seq[t] > view.sent_seq)
            .map(|t| grid.rect(t))
            .collect()
    };
    let areas = match except {
        Some(e) => areas.into_iter().flat_map(|a| subtract(a, e)).collect(),
        None => areas,
    };
    (plan.rects, plan.analyses, plan.photo) = classify_and_merge(frame, &areas, quality, except);
    plan
}

/// Plans lossless copies of the tiles that have shown lossy pixels for at least `after` and
/// did not change since (the viewer must have `frame`).
pub fn plan_refine(frame: &Frame, view: &ViewerTiles, now: Instant, after: Duration) -> Plan {
    let grid = frame.grid;
    if view.sent_seq != frame.seq || view.lossy.len() != grid.len() {
        return Plan::default();
    }
    let areas: Vec<Rect> = (0..grid.len())
        .filter(|&t| view.lossy[t].is_some_and(|since| now.duration_since(since) >= after))
        .map(|t| grid.rect(t))
        .collect();
    let (rects, analyses, photo) = classify_and_merge(frame, &areas, None, None);
    Plan { resize: None, copy: None, rects, analyses, photo }
}

/// When the next refinement is due, if any tile shows lossy pixels.
pub fn next_refine(view: &ViewerTiles, after: Duration) -> Option<Instant> {
    view.lossy.iter().flatten().min().map(|&t| t + after)
}

/// Records what `plan` did to the viewer's canvas, which now has `frame`.
pub fn apply(view: &mut ViewerTiles, frame: &Frame, plan: &Plan, now: Instant) {
    let grid = frame.grid;
    if view.lossy.len() != grid.len() || plan.resize.is_some() {
        view.lossy = vec![None; grid.len()];
    }
    view.width = grid.width;
    view.height = grid.height;
    view.sent_seq = frame.seq;
    if let Some(c) = plan.copy {
        copy_lossy(&mut view.lossy, &grid, c);
    }
    for &(r, kind) in &plan.rects {
        for t in grid.tiles_of(r) {
            match kind {
                Kind::Jpeg(_) => view.lossy[t] = Some(now),
                Kind::Fill | Kind::Png => {
                    if intersect(grid.rect(t), r) == Some(grid.rect(t)) {
                        view.lossy[t] = None;
                    }
                }
            }
        }
    }
}

/// After a copy, a destination tile is lossy when any source pixel it received was.
fn copy_lossy(lossy: &mut [Option<Instant>], grid: &Grid, c: CopyOp) {
    let before = lossy.to_vec();
    for t in grid.tiles_of(c.rect) {
        let Some(part) = intersect(grid.rect(t), c.rect) else { continue };
        let src = Rect {
            x: part.x - c.rect.x + c.src_x,
            y: part.y - c.rect.y + c.src_y,
            w: part.w,
            h: part.h,
        };
        let from = grid.tiles_of(src).filter_map(|s| before[s]).min();
        let whole = part == grid.rect(t);
        lossy[t] = match (from, whole) {
            (Some(since), _) => Some(lossy[t].map_or(since, |own| own.min(since))),
            (None, true) => None,
            (None, false) => lossy[t],
        };
    }
}

/// What planning found a rectangle's pixels to be, if it looked at them as a whole.
pub type Found = Option<Arc<Analysis>>;

/// An area on its way into a plan: its rectangle, how it is sent, its colour when it is one,
/// and what its pixels look like (`None` once merging made a rectangle not analysed yet).
struct Item {
    rect: Rect,
    kind: Kind,
    solid: Option<u32>,
    analysis: Option<Analysis>,
}

/// Classifies each area, then merges neighbours of the same kind; also says whether some
/// area looked like a photograph. Each area's pixels are read once, here; a rectangle merged
/// from areas stacked exactly has their analyses combined; one merged from lossless areas side
/// by side (which may take in pixels between them) is left to encoding to read whole. No merge
/// takes in pixels of `except` (an area sent as video).
fn classify_and_merge(
    frame: &Frame,
    areas: &[Rect],
    quality: Option<u8>,
    except: Option<Rect>,
) -> (Vec<(Rect, Kind)>, Vec<Found>, bool) {
    let mut photo = false;
    let mut items: Vec<Item> = areas
        .iter()
        .filter(|r| r.w > 0 && r.h > 0)
        .map(|&rect| {
            let analysis = analyze(&frame.fb, rect);
            let (kind, solid) = match analysis {
                Analysis::Solid(c) => (Kind::Fill, Some(c)),
                Analysis::Palette(_) => (Kind::Png, None),
                Analysis::Many if usize::from(rect.w) * usize::from(rect.h) >= MIN_JPEG_PIXELS => {
                    photo = true;
                    (quality.map_or(Kind::Png, Kind::Jpeg), None)
                }
                Analysis::Many => (Kind::Png, None),
            };
            Item { rect, kind, solid, analysis: Some(analysis) }
        })
        .collect();
    // Horizontal: within a tile row, left to right.
    items.sort_by_key(|it| (it.rect.y / TILE, it.rect.x));
    let mut row_merged: Vec<Item> = Vec::with_capacity(items.len());
    for it in items {
        if let Some(last) = row_merged.last_mut()
            && last.rect.y / TILE == it.rect.y / TILE
            && last.kind == it.kind
            && last.solid == it.solid
            && it.rect.x <= last.rect.x + last.rect.w + MERGE_GAP
            && it.rect.x + it.rect.w - last.rect.x <= MAX_MERGED_W
            && except.is_none_or(|e| intersect(union(last.rect, it.rect), e).is_none())
            && (it.kind != Kind::Fill
                || (it.rect.y == last.rect.y
                    && it.rect.h == last.rect.h
                    && it.rect.x == last.rect.x + last.rect.w))
        {
            last.rect = union(last.rect, it.rect);
            // Fills join only edge to edge in one colour; a JPEG's pixels are not analysed
            // to encode it; lossless areas may have taken in pixels between them.
            if last.kind == Kind::Png {
                last.analysis = None;
            }
            continue;
        }
        row_merged.push(it);
    }
    // Vertical: equal columns in consecutive rows.
    row_merged.sort_by_key(|it| (it.rect.x, it.rect.w, it.rect.y));
    let mut out: Vec<Item> = Vec::with_capacity(row_merged.len());
    for it in row_merged {
        if let Some(last) = out.last_mut()
            && last.rect.x == it.rect.x
            && last.rect.w == it.rect.w
            && last.kind == it.kind
            && last.solid == it.solid
            && last.rect.y + last.rect.h == it.rect.y
            && last.rect.h + it.rect.h <= MAX_MERGED_H
        {
            last.rect.h += it.rect.h;
            last.analysis = match (&last.analysis, &it.analysis) {
                (Some(top), Some(bottom)) => Some(top.stacked(bottom)),
                _ => None,
            };
            continue;
        }
        out.push(it);
    }
    out.sort_by_key(|it| (it.rect.y, it.rect.x));
    let analyses = out.iter_mut().map(|it| it.analysis.take().map(Arc::new)).collect();
    (out.into_iter().map(|it| (it.rect, it.kind)).collect(), analyses, photo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framebuffer::Framebuffer;
    use crate::pipeline::capture::Capture;
    use crate::source::SourceEvent;

    fn noisy(fb: &mut Framebuffer, r: Rect) {
        for y in r.y..r.y + r.h {
            for (i, p) in fb.span_mut(r.x, y, r.w).iter_mut().enumerate() {
                *p = (u32::try_from(i).unwrap().wrapping_mul(2_654_435_761)
                    ^ u32::from(y).wrapping_mul(40_503))
                    & 0xffffff;
            }
        }
    }

    #[test]
    fn first_frame_is_everything_merged_and_one_pixel_is_one_small_rect() {
        let mut fb = Framebuffer::new(1024, 256);
        fb.fill(fb.bounds(), 0x101010);
        fb.fill(Rect { x: 0, y: 0, w: 1024, h: 20 }, 0x0000ff); // a title bar
        let mut cap = Capture::new(&fb);
        let mut view = ViewerTiles::new();
        let p = plan_update(cap.last(), &view, Some(70));
        assert_eq!(p.resize, Some((1024, 256)));
        // Every tile is covered, by few rectangles.
        let area: u32 = p.rects.iter().map(|(r, _)| u32::from(r.w) * u32::from(r.h)).sum();
        assert_eq!(area, 1024 * 256);
        assert!(p.rects.len() <= 8, "{} rects", p.rects.len());
        apply(&mut view, cap.last(), &p, Instant::now());

        let mut next = fb.clone();
        next.span_mut(700, 100, 1)[0] = 0xffffff;
        let f = cap.process(&next, &[SourceEvent::Damage(next.bounds())]).unwrap();
        let p = plan_update(&f, &view, Some(70));
        assert_eq!(p.rects, vec![(Rect { x: 700, y: 100, w: 1, h: 1 }, Kind::Fill)]);
    }

    #[test]
    fn photos_go_lossy_then_refine_losslessly() {
        let mut fb = Framebuffer::new(256, 128);
        fb.fill(fb.bounds(), 0);
        let cap = Capture::new(&fb);
        let mut view = ViewerTiles::new();
        let p = plan_update(cap.last(), &view, Some(60));
        apply(&mut view, cap.last(), &p, Instant::now());

        let mut cap = cap;
        let mut next = fb.clone();
        noisy(&mut next, Rect { x: 0, y: 0, w: 128, h: 128 });
        let f = cap.process(&next, &[SourceEvent::Damage(next.bounds())]).unwrap();
        let p = plan_update(&f, &view, Some(60));
        assert!(p.rects.iter().all(|(_, k)| *k == Kind::Jpeg(60)), "{p:?}");
        let t0 = Instant::now();
        apply(&mut view, &f, &p, t0);
        assert_eq!(view.lossy.iter().flatten().count(), 4);
        let after = Duration::from_millis(300);
        assert_eq!(next_refine(&view, after), Some(t0 + after));
        assert!(plan_refine(&f, &view, t0, after).rects.is_empty(), "too early");
        let r = plan_refine(&f, &view, t0 + after, after);
        assert!(!r.rects.is_empty() && r.rects.iter().all(|(_, k)| *k == Kind::Png));
        apply(&mut view, &f, &r, t0 + after);
        assert!(view.lossy.iter().all(Option::is_none));
        assert_eq!(next_refine(&view, after), None);

        // Lossless only (quality None) never uses JPEG.
        let p = plan_update(&f, &ViewerTiles::new(), None);
        assert!(p.rects.iter().all(|(_, k)| *k != Kind::Jpeg(60)));
    }

    #[test]
    fn a_viewer_that_fell_behind_gets_whole_changed_tiles() {
        let mut fb = Framebuffer::new(256, 64);
        fb.fill(fb.bounds(), 0);
        let mut cap = Capture::new(&fb);
        let mut view = ViewerTiles::new();
        let p = plan_update(cap.last(), &view, None);
        apply(&mut view, cap.last(), &p, Instant::now());
        fb.span_mut(10, 10, 1)[0] = 5;
        cap.process(&fb, &[SourceEvent::Damage(fb.bounds())]).unwrap();
        fb.span_mut(200, 10, 1)[0] = 5;
        let f = cap.process(&fb, &[SourceEvent::Damage(fb.bounds())]).unwrap();
        let p = plan_update(&f, &view, None);
        let covered: Vec<Rect> = p.rects.iter().map(|(r, _)| *r).collect();
        assert_eq!(covered.len(), 2);
        assert!(covered.contains(&Rect { x: 0, y: 0, w: 64, h: 64 }));
        assert!(covered.contains(&Rect { x: 192, y: 0, w: 64, h: 64 }));
    }

    #[test]
    fn every_planned_rectangle_carries_the_analysis_of_its_pixels() {
        // Text-like stripes, fills, a photo and noise in small spots: merges of every kind.
        let mut fb = Framebuffer::new(640, 384);
        fb.fill(fb.bounds(), 0x202020);
        for y in (0..384u16).step_by(7) {
            let c = 0x0010_0000 * u32::from(y % 5) + 0x00ff;
            fb.fill(Rect { x: 0, y, w: 400, h: 2 }, c);
        }
        fb.fill(Rect { x: 64, y: 64, w: 128, h: 128 }, 0x00ff_0000);
        noisy(&mut fb, Rect { x: 448, y: 0, w: 192, h: 192 });
        for i in 0..40u16 {
            fb.span_mut(10 + i * 15, 300 + i % 3, 2).copy_from_slice(&[u32::from(i), 0xffffff]);
        }
        let check = |f: &Frame, p: &Plan| {
            assert_eq!(p.rects.len(), p.analyses.len());
            for ((r, _), a) in p.rects.iter().zip(&p.analyses) {
                if let Some(a) = a {
                    assert_eq!(**a, analyze(&f.fb, *r), "{r:?}");
                }
            }
        };
        let mut cap = Capture::new(&fb);
        let mut view = ViewerTiles::new();
        for quality in [None, Some(70)] {
            let p = plan_update(cap.last(), &view, quality);
            check(cap.last(), &p);
        }
        let p = plan_update(cap.last(), &view, Some(70));
        apply(&mut view, cap.last(), &p, Instant::now());
        // A change here and there: the viewer in step gets merged boxes.
        for i in 0..30u16 {
            fb.span_mut(5 + i * 20, 100 + i, 3).copy_from_slice(&[1, 2, u32::from(i)]);
        }
        let f = cap.process(&fb, &[SourceEvent::Damage(fb.bounds())]).unwrap();
        let p = plan_update(&f, &view, Some(70));
        assert!(!p.rects.is_empty());
        check(&f, &p);
        let t = Instant::now();
        apply(&mut view, &f, &p, t);
        let r = plan_refine(&f, &view, t + Duration::from_secs(1), Duration::from_millis(1));
        check(&f, &r);
    }
}
