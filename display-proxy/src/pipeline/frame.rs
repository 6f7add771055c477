//! A captured frame: an immutable snapshot of the screen, with what changed since the frame
//! before, tile by tile. Plain data: planning and encoding read it ([`super::publish`] shares
//! it, with its encodings, among a desktop's viewers).

use std::time::Instant;

use atrium_protocol::display::Rect;

use crate::framebuffer::Framebuffer;

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
        Self { seq, fb, grid, tile_seq, size_seq, copy, delta, captured_at: Instant::now() }
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
}
