//! Change detection: compares what a source reports as damaged with the last frame, tile by
//! tile (a source's rectangles are hints, not truth), finds vertical scrolls as copies, and
//! makes the next [`Frame`]. A hash of every row's span in every tile column is kept for the
//! last frame and updated where tiles change, so looking for a scroll hashes only what changed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use atrium_protocol::display::Rect;

use crate::framebuffer::Framebuffer;
use crate::pipeline::frame::{CopyOp, Frame, Grid, TILE, TileDelta};
use crate::source::SourceEvent;

/// Scroll detection runs when at least this many tiles changed.
const SCROLL_MIN_TILES: usize = 6;
/// A copy must cover at least this many rows to be worth sending.
const SCROLL_MIN_ROWS: u16 = 32;

/// Makes frames from a source's framebuffer.
#[derive(Debug)]
pub struct Capture {
    last: Arc<Frame>,
    /// The frame before `last`: once no viewer holds it, its pixels are reused for the next
    /// frame (only the tiles changed since are copied, not the whole screen).
    older: Option<Arc<Frame>>,
    /// Span hashes of `last`.
    hashes: SpanHashes,
}

impl Capture {
    /// Starts from the source's first image: everything is new.
    pub fn new(fb: &Framebuffer) -> Self {
        let last = Arc::new(full_frame(1, fb.clone()));
        let hashes = SpanHashes::of(fb, &last.grid);
        Self { last, older: None, hashes }
    }

    /// The newest frame.
    pub fn last(&self) -> &Arc<Frame> {
        &self.last
    }

    /// Compares `fb` (the source's framebuffer after `events`) with the last frame; returns a
    /// new frame when something really changed.
    pub fn process(&mut self, fb: &Framebuffer, events: &[SourceEvent]) -> Option<Arc<Frame>> {
        let seq = self.last.seq + 1;
        let resized = events.iter().any(|e| matches!(e, SourceEvent::Resized { .. }))
            || fb.width() != self.last.fb.width()
            || fb.height() != self.last.fb.height();
        if resized {
            self.older = None;
            self.last = Arc::new(full_frame(seq, fb.clone()));
            self.hashes = SpanHashes::of(fb, &self.last.grid);
            return Some(Arc::clone(&self.last));
        }
        let prev = &self.last;
        let grid = prev.grid;
        let mut candidate = vec![false; grid.len()];
        for e in events {
            if let SourceEvent::Damage(r) = e {
                for t in grid.tiles_of(*r) {
                    candidate[t] = true;
                }
            }
        }
        let mut changed: Vec<TileDelta> = Vec::new();
        for (t, _) in candidate.iter().enumerate().filter(|(_, c)| **c) {
            let tile = grid.rect(t);
            if let Some(bbox) = diff_bbox(fb, tile, |y| prev.fb.span(tile.x, y, tile.w)) {
                changed.push(TileDelta { tile: u32::try_from(t).expect("tile index"), bbox });
            }
        }
        if changed.is_empty() {
            return None;
        }
        let mut tile_seq = prev.tile_seq.clone();
        for d in &changed {
            tile_seq[d.tile as usize] = seq;
        }
        let region = (changed.len() >= SCROLL_MIN_TILES).then(|| {
            changed
                .iter()
                .map(|d| grid.rect(d.tile as usize))
                .fold(Rect::default(), crate::framebuffer::union)
        });
        let before = region.map(|r| self.hashes.rows(r));
        for d in &changed {
            self.hashes.update(fb, &grid, d.tile as usize);
        }
        let mut copy = None;
        let mut delta = changed;
        if let (Some(region), Some(before)) = (region, before) {
            let after = self.hashes.rows(region);
            if let Some(c) = detect_vertical_scroll(&prev.fb, fb, region, &before, &after) {
                delta = residual(&prev.fb, fb, &grid, c, &delta);
                copy = Some(c);
            }
        }
        let size_seq = prev.size_seq;
        let pixels = self.snapshot(fb, &tile_seq);
        let next = Arc::new(Frame::new(seq, pixels, tile_seq, size_seq, copy, delta));
        self.older = Some(std::mem::replace(&mut self.last, Arc::clone(&next)));
        Some(next)
    }

    /// A copy of `fb` for the next frame: the older frame's pixels with the tiles changed since
    /// copied in, when no one holds that frame any more; else a whole copy.
    fn snapshot(&mut self, fb: &Framebuffer, tile_seq: &[u64]) -> Framebuffer {
        let reusable = self.older.take().and_then(|o| Arc::try_unwrap(o).ok());
        match reusable {
            Some(old) if old.fb.width() == fb.width() && old.fb.height() == fb.height() => {
                let (since, grid, mut pixels) = (old.seq, old.grid, old.fb);
                for (t, _) in tile_seq.iter().enumerate().filter(|(_, s)| **s > since) {
                    let r = grid.rect(t);
                    for y in r.y..r.y + r.h {
                        pixels.span_mut(r.x, y, r.w).copy_from_slice(fb.span(r.x, y, r.w));
                    }
                }
                pixels
            }
            _ => fb.clone(),
        }
    }
}

/// A frame in which every tile is new.
fn full_frame(seq: u64, fb: Framebuffer) -> Frame {
    let grid = Grid::new(fb.width(), fb.height());
    let delta = (0..grid.len())
        .map(|t| TileDelta { tile: u32::try_from(t).expect("tile index"), bbox: grid.rect(t) })
        .collect();
    Frame::new(seq, fb, vec![seq; grid.len()], seq, None, delta)
}

/// The bounding box of the pixels of `tile` in `cur` that differ from `reference(y)` (the
/// reference row for screen row `y`, over the tile's columns).
pub fn diff_bbox<'a>(
    cur: &Framebuffer,
    tile: Rect,
    reference: impl Fn(u16) -> &'a [u32],
) -> Option<Rect> {
    let mut y0 = None;
    let mut y1 = 0;
    let mut x0 = tile.w;
    let mut x1 = 0;
    for y in tile.y..tile.y + tile.h {
        let a = cur.span(tile.x, y, tile.w);
        let b = reference(y);
        if a == b {
            continue;
        }
        y0.get_or_insert(y);
        y1 = y + 1;
        let first = a.iter().zip(b).position(|(p, q)| p != q).expect("rows differ");
        let last = a.iter().zip(b).rposition(|(p, q)| p != q).expect("rows differ");
        x0 = x0.min(u16::try_from(first).expect("tile width"));
        x1 = x1.max(u16::try_from(last + 1).expect("tile width"));
    }
    let y0 = y0?;
    Some(Rect { x: tile.x + x0, y: y0, w: x1 - x0, h: y1 - y0 })
}

/// A hasher for keys that are hashes already.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// No colour: the span has several (pixels have a zero top byte, so this is never one).
const NOT_SOLID: u32 = u32::MAX;

/// A 64-bit hash of a span of pixels, and its colour when it has only one ([`NOT_SOLID`]
/// otherwise). Four independent lanes keep the multiplier busy.
fn hash_span(px: &[u32]) -> (u64, u32) {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let first = px.first().copied().unwrap_or(0);
    let mut lanes = [
        0x243f_6a88_85a3_08d3u64,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    let mut other = 0u32;
    let chunks = px.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (lane, &p) in lanes.iter_mut().zip(c) {
            *lane = (*lane ^ u64::from(p)).wrapping_mul(M);
            other |= p ^ first;
        }
    }
    for &p in rest {
        lanes[0] = (lanes[0] ^ u64::from(p)).wrapping_mul(M);
        other |= p ^ first;
    }
    let h =
        lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48);
    (h, if other == 0 { first } else { NOT_SOLID })
}

/// Per screen row and column of tiles: the hash of that span of pixels and its colour when it
/// has one.
#[derive(Debug, Clone)]
struct SpanHashes {
    cols: usize,
    hash: Vec<u64>,
    solid: Vec<u32>,
}

impl SpanHashes {
    fn of(fb: &Framebuffer, grid: &Grid) -> Self {
        let cols = usize::from(grid.cols);
        let n = cols * usize::from(fb.height());
        let mut h = Self { cols, hash: vec![0; n], solid: vec![NOT_SOLID; n] };
        for t in 0..grid.len() {
            h.update(fb, grid, t);
        }
        h
    }

    /// Hashes the rows of tile `t` again.
    fn update(&mut self, fb: &Framebuffer, grid: &Grid, t: usize) {
        let r = grid.rect(t);
        let col = usize::from(r.x / TILE);
        for y in r.y..r.y + r.h {
            let i = usize::from(y) * self.cols + col;
            (self.hash[i], self.solid[i]) = hash_span(fb.span(r.x, y, r.w));
        }
    }

    /// For each row of `region` (whole tile columns): a hash of the row across the region, and
    /// whether it is one colour.
    fn rows(&self, region: Rect) -> Vec<(u64, bool)> {
        let c0 = usize::from(region.x / TILE);
        let c1 = (usize::from(region.x) + usize::from(region.w)).div_ceil(usize::from(TILE));
        (region.y..region.y + region.h)
            .map(|y| {
                let base = usize::from(y) * self.cols;
                let solid = &self.solid[base + c0..base + c1];
                let uniform = solid[0] != NOT_SOLID && solid.iter().all(|&c| c == solid[0]);
                let h = self.hash[base + c0..base + c1]
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, &s| {
                        (h.rotate_left(23) ^ s).wrapping_mul(0x0100_0000_01b3)
                    });
                (h, uniform)
            })
            .collect()
    }
}

/// Finds a vertical scroll inside `region`: the largest band of rows of `cur` that equal rows
/// of `prev` shifted by one offset. Row hashes (`ph` of `prev`, `ch` of `cur`, one per row of
/// the region, with whether the row is one colour) vote for the offset; rows are then compared.
fn detect_vertical_scroll(
    prev: &Framebuffer,
    cur: &Framebuffer,
    region: Rect,
    ph: &[(u64, bool)],
    ch: &[(u64, bool)],
) -> Option<CopyOp> {
    if region.h < SCROLL_MIN_ROWS * 2 {
        return None;
    }
    // The keys are hashes already: a pass-through hasher is enough.
    let mut index: HashMap<u64, Vec<u16>, BuildHasherDefault<PassThrough>> = HashMap::default();
    for (i, (h, uniform)) in ph.iter().enumerate() {
        if !uniform {
            let v = index.entry(*h).or_default();
            if v.len() < 4 {
                v.push(u16::try_from(i).expect("row index"));
            }
        }
    }
    // Votes per offset dy (-h < dy < h), at index dy + h.
    let len = i32::from(region.h);
    let mut votes = vec![0u32; usize::from(region.h) * 2];
    for (i, (h, uniform)) in ch.iter().enumerate() {
        if *uniform || ph[i].0 == *h {
            continue;
        }
        if let Some(rows) = index.get(h) {
            for &p in rows {
                votes[usize::from(p) + usize::from(region.h) - i] += 1;
            }
        }
    }
    let (slot, &n) = votes
        .iter()
        .enumerate()
        .max_by_key(|&(slot, n)| (*n, -(i32::try_from(slot).expect("few rows") - len).abs()))?;
    if n < 4 {
        return None;
    }
    let dy = i32::try_from(slot).expect("few rows") - len;
    // The longest run of rows y (relative to the region) with cur[y] == prev[y + dy].
    let (mut best, mut run_start, mut best_start) = (0i32, None::<i32>, 0i32);
    for y in 0..len {
        let src = y + dy;
        let equal = (0..len).contains(&src) && {
            let (yi, si) = (usize::try_from(y).expect("row"), usize::try_from(src).expect("row"));
            ch[yi].0 == ph[si].0
                && cur.span(region.x, region.y + to_u16(y), region.w)
                    == prev.span(region.x, region.y + to_u16(src), region.w)
        };
        if equal {
            let s = *run_start.get_or_insert(y);
            if y + 1 - s > best {
                best = y + 1 - s;
                best_start = s;
            }
        } else {
            run_start = None;
        }
    }
    if best < i32::from(SCROLL_MIN_ROWS) {
        return None;
    }
    let dest_y = region.y + to_u16(best_start);
    Some(CopyOp {
        rect: Rect { x: region.x, y: dest_y, w: region.w, h: to_u16(best) },
        src_x: region.x,
        src_y: to_u16(i32::from(dest_y) + dy),
    })
}

fn to_u16(v: i32) -> u16 {
    u16::try_from(v).expect("screen coordinate")
}

/// What still differs after `copy` is applied to `prev`: every tile the copy lands on, plus the
/// other changed tiles as they were.
fn residual(
    prev: &Framebuffer,
    cur: &Framebuffer,
    grid: &Grid,
    copy: CopyOp,
    changed: &[TileDelta],
) -> Vec<TileDelta> {
    let dy = i32::from(copy.src_y) - i32::from(copy.rect.y);
    let (d0, d1) = (copy.rect.y, copy.rect.y + copy.rect.h);
    let mut out = Vec::new();
    let mut seen = vec![false; grid.len()];
    for t in grid.tiles_of(copy.rect) {
        seen[t] = true;
        let tile = grid.rect(t);
        let reference = |y: u16| {
            let src = if (d0..d1).contains(&y) { to_u16(i32::from(y) + dy) } else { y };
            prev.span(tile.x, src, tile.w)
        };
        if let Some(bbox) = diff_bbox(cur, tile, reference) {
            out.push(TileDelta { tile: u32::try_from(t).expect("tile index"), bbox });
        }
    }
    out.extend(changed.iter().filter(|d| !seen[d.tile as usize]).copied());
    out.sort_by_key(|d| d.tile);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damage_all(fb: &Framebuffer) -> Vec<SourceEvent> {
        vec![SourceEvent::Damage(fb.bounds())]
    }

    /// A screen of distinct text-like rows.
    fn text_screen(w: u16, h: u16, seed: u32) -> Framebuffer {
        let mut fb = Framebuffer::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let v =
                    (u32::from(y) + seed).wrapping_mul(2_654_435_761) ^ (u32::from(x / 8) * 40_503);
                fb.span_mut(x, y, 1)[0] = if (v >> 7).is_multiple_of(3) { 0x00ffffff } else { 0 };
            }
        }
        fb
    }

    #[test]
    fn one_changed_pixel_gives_one_tile_with_its_bounding_box() {
        let fb = text_screen(320, 200, 1);
        let mut cap = Capture::new(&fb);
        let mut next = fb.clone();
        next.span_mut(100, 70, 1)[0] ^= 0x00ff00;
        let f = cap.process(&next, &damage_all(&next)).expect("a change");
        assert_eq!(f.seq, 2);
        assert_eq!(f.delta, vec![TileDelta { tile: 6, bbox: Rect { x: 100, y: 70, w: 1, h: 1 } }]);
        assert!(f.copy.is_none());
        let changed: Vec<_> = (0..f.grid.len()).filter(|&t| f.tile_seq[t] == 2).collect();
        assert_eq!(changed, vec![6]);
    }

    #[test]
    fn damage_without_change_makes_no_frame_and_change_outside_damage_waits() {
        let fb = text_screen(128, 128, 2);
        let mut cap = Capture::new(&fb);
        assert!(cap.process(&fb, &damage_all(&fb)).is_none(), "source said damaged; nothing was");
        let mut next = fb.clone();
        next.span_mut(100, 100, 1)[0] ^= 1;
        let only_first_tile = vec![SourceEvent::Damage(Rect { x: 0, y: 0, w: 10, h: 10 })];
        assert!(cap.process(&next, &only_first_tile).is_none());
        assert!(cap.process(&next, &damage_all(&next)).is_some());
    }

    #[test]
    fn a_scroll_becomes_a_copy_and_a_new_line() {
        let (w, h) = (640u16, 480u16);
        let fb = text_screen(w, h, 3);
        let mut cap = Capture::new(&fb);
        // Scroll up by 16 rows and write a new last line.
        let mut next = fb.clone();
        scroll_in(&mut next, 16, 99);
        let f = cap.process(&next, &damage_all(&next)).expect("a change");
        let copy = f.copy.expect("scroll detected");
        assert_eq!(copy, CopyOp { rect: Rect { x: 0, y: 0, w, h: h - 16 }, src_x: 0, src_y: 16 });
        // Only the bottom line remains to send.
        assert!(!f.delta.is_empty());
        for d in &f.delta {
            assert!(d.bbox.y >= h - 16, "{d:?} above the new line");
        }
        // Applying copy + delta to the old screen gives the new one.
        assert_eq!(replay(fb.clone(), &f, &next), next);
    }

    /// Scrolls `fb` up by `rows` and writes new text (from `seed`) in the rows freed below.
    fn scroll_in(fb: &mut Framebuffer, rows: u16, seed: u32) {
        let (w, h) = (fb.width(), fb.height());
        fb.copy_within(Rect { x: 0, y: 0, w, h: h - rows }, 0, rows);
        let fresh = text_screen(w, rows, seed);
        for y in 0..rows {
            fb.span_mut(0, h - rows + y, w).copy_from_slice(fresh.row(y));
        }
    }

    /// What a viewer of `old` shows after `f`: its copy, then its changed tiles taken from `new`.
    fn replay(mut old: Framebuffer, f: &Frame, new: &Framebuffer) -> Framebuffer {
        if let Some(copy) = &f.copy {
            old.copy_within(copy.rect, copy.src_x, copy.src_y);
        }
        for d in &f.delta {
            for y in d.bbox.y..d.bbox.y + d.bbox.h {
                old.span_mut(d.bbox.x, y, d.bbox.w)
                    .copy_from_slice(new.span(d.bbox.x, y, d.bbox.w));
            }
        }
        old
    }

    #[test]
    fn reused_pixels_match_the_source_frame_after_frame() {
        let mut fb = text_screen(300, 200, 5);
        let mut cap = Capture::new(&fb);
        let mut held = None;
        for i in 0..12u16 {
            fb.span_mut((i * 37) % 300, (i * 53) % 200, 1)[0] ^= 0x00ff_00ff;
            let f = cap.process(&fb, &damage_all(&fb)).expect("a change");
            assert_eq!(f.fb, fb, "frame {i}");
            // Hold every third frame, as a slow viewer would: its pixels cannot be reused.
            if i % 3 == 0 {
                held = Some(f);
            }
        }
        assert!(held.is_some());
    }

    #[test]
    fn kept_hashes_follow_the_frames_and_a_later_scroll_is_still_found() {
        let (w, h) = (640u16, 480u16);
        let mut fb = text_screen(w, h, 7);
        let mut cap = Capture::new(&fb);
        // A few changes here and there (typing), each compared and hashed where it changed.
        for i in 0..5u16 {
            fb.span_mut(100 + i * 9, 40 + i * 70, 7)[0] ^= 0x0011_2233;
            cap.process(&fb, &damage_all(&fb)).expect("a change");
            let fresh = SpanHashes::of(&fb, &cap.last().grid);
            assert_eq!(cap.hashes.hash, fresh.hash, "after change {i}");
            assert_eq!(cap.hashes.solid, fresh.solid, "after change {i}");
        }
        // Then a scroll by two text lines: found from the kept hashes of the frame before.
        let before = fb.clone();
        scroll_in(&mut fb, 32, 123);
        let f = cap.process(&fb, &damage_all(&fb)).expect("a change");
        let copy = f.copy.expect("scroll detected");
        assert_eq!((copy.src_y - copy.rect.y, copy.rect.h), (32, h - 32));
        assert_eq!(replay(before, &f, &fb), fb);
        assert_eq!(cap.hashes.hash, SpanHashes::of(&fb, &f.grid).hash);
    }

    #[test]
    fn resize_makes_a_full_frame() {
        let fb = text_screen(128, 64, 4);
        let mut cap = Capture::new(&fb);
        let big = text_screen(256, 64, 4);
        let f = cap.process(&big, &[SourceEvent::Resized { width: 256, height: 64 }]).unwrap();
        assert_eq!(f.size_seq, f.seq);
        assert_eq!(f.delta.len(), 4);
    }
}
