//! What to send one viewer to bring it from the frame it has to the newest one: a copy, then
//! rectangles, each classified (fill, lossless, lossy) and merged with its neighbours; and
//! which lossy areas to refine once they stop changing.

use std::time::{Duration, Instant};

use atrium_protocol::display::Rect;

use crate::framebuffer::{intersect, union};
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
    (plan.rects, plan.photo) = classify_and_merge(frame, &areas, quality);
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
    let (rects, photo) = classify_and_merge(frame, &areas, None);
    Plan { resize: None, copy: None, rects, photo }
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

/// Classifies each area, then merges neighbours of the same kind; also says whether some
/// area looked like a photograph.
fn classify_and_merge(
    frame: &Frame,
    areas: &[Rect],
    quality: Option<u8>,
) -> (Vec<(Rect, Kind)>, bool) {
    let mut photo = false;
    let mut items: Vec<(Rect, Kind, Option<u32>)> = areas
        .iter()
        .filter(|r| r.w > 0 && r.h > 0)
        .map(|&r| match analyze(&frame.fb, r) {
            Analysis::Solid(c) => (r, Kind::Fill, Some(c)),
            Analysis::Palette(_) => (r, Kind::Png, None),
            Analysis::Many if usize::from(r.w) * usize::from(r.h) >= MIN_JPEG_PIXELS => {
                photo = true;
                match quality {
                    Some(q) => (r, Kind::Jpeg(q), None),
                    None => (r, Kind::Png, None),
                }
            }
            Analysis::Many => (r, Kind::Png, None),
        })
        .collect();
    // Horizontal: within a tile row, left to right.
    items.sort_by_key(|(r, _, _)| (r.y / TILE, r.x));
    let mut row_merged: Vec<(Rect, Kind, Option<u32>)> = Vec::with_capacity(items.len());
    for it in items {
        if let Some(last) = row_merged.last_mut()
            && last.0.y / TILE == it.0.y / TILE
            && last.1 == it.1
            && last.2 == it.2
            && it.0.x <= last.0.x + last.0.w + MERGE_GAP
            && it.0.x + it.0.w - last.0.x <= MAX_MERGED_W
            && (it.1 != Kind::Fill
                || (it.0.y == last.0.y && it.0.h == last.0.h && it.0.x == last.0.x + last.0.w))
        {
            last.0 = union(last.0, it.0);
            continue;
        }
        row_merged.push(it);
    }
    // Vertical: equal columns in consecutive rows.
    row_merged.sort_by_key(|(r, _, _)| (r.x, r.w, r.y));
    let mut out: Vec<(Rect, Kind, Option<u32>)> = Vec::with_capacity(row_merged.len());
    for it in row_merged {
        if let Some(last) = out.last_mut()
            && last.0.x == it.0.x
            && last.0.w == it.0.w
            && last.1 == it.1
            && last.2 == it.2
            && last.0.y + last.0.h == it.0.y
            && last.0.h + it.0.h <= MAX_MERGED_H
        {
            last.0.h += it.0.h;
            continue;
        }
        out.push(it);
    }
    out.sort_by_key(|(r, _, _)| (r.y, r.x));
    (out.into_iter().map(|(r, k, _)| (r, k)).collect(), photo)
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
}
