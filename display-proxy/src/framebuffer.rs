//! A framebuffer in the proxy's one pixel format, and rectangles on it.
//!
//! Pixels are `u32` values `0x00RRGGBB` (in memory on little-endian: B, G, R, X, which is the
//! builtin VMM's `XRGB8888` and the RFB pixel format the proxy asks for).

use atrium_protocol::display::Rect;

/// Largest width or height the proxy handles (the node API's limits are below this).
pub const MAX_DIMENSION: u16 = 8192;

/// A screen image, row-major, `width * height` pixels with no padding.
#[derive(Clone, PartialEq, Eq)]
pub struct Framebuffer {
    width: u16,
    height: u16,
    pixels: Vec<u32>,
}

impl std::fmt::Debug for Framebuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Framebuffer({}x{})", self.width, self.height)
    }
}

impl Framebuffer {
    /// A black framebuffer.
    pub fn new(width: u16, height: u16) -> Self {
        Self { width, height, pixels: vec![0; usize::from(width) * usize::from(height)] }
    }

    pub fn width(&self) -> u16 {
        self.width
    }

    pub fn height(&self) -> u16 {
        self.height
    }

    /// The whole screen as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect { x: 0, y: 0, w: self.width, h: self.height }
    }

    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    pub fn pixels_mut(&mut self) -> &mut [u32] {
        &mut self.pixels
    }

    /// Changes the size; the content becomes black.
    pub fn resize(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
        self.pixels.clear();
        self.pixels.resize(usize::from(width) * usize::from(height), 0);
    }

    /// One row of the screen.
    pub fn row(&self, y: u16) -> &[u32] {
        let w = usize::from(self.width);
        let start = usize::from(y) * w;
        &self.pixels[start..start + w]
    }

    /// Part of one row: `w` pixels from `x`.
    pub fn span(&self, x: u16, y: u16, w: u16) -> &[u32] {
        let start = usize::from(y) * usize::from(self.width) + usize::from(x);
        &self.pixels[start..start + usize::from(w)]
    }

    /// Part of one row, mutable.
    pub fn span_mut(&mut self, x: u16, y: u16, w: u16) -> &mut [u32] {
        let start = usize::from(y) * usize::from(self.width) + usize::from(x);
        &mut self.pixels[start..start + usize::from(w)]
    }

    /// Whether `r` lies inside the screen.
    pub fn contains(&self, r: Rect) -> bool {
        u32::from(r.x) + u32::from(r.w) <= u32::from(self.width)
            && u32::from(r.y) + u32::from(r.h) <= u32::from(self.height)
    }

    /// Fills `r` (which must be inside) with one colour.
    pub fn fill(&mut self, r: Rect, color: u32) {
        for y in r.y..r.y + r.h {
            self.span_mut(r.x, y, r.w).fill(color);
        }
    }

    /// Copies the rectangle at `(src_x, src_y)` of `r`'s size to `r`, as if through a temporary
    /// buffer (overlapping areas are handled). Both rectangles must be inside.
    pub fn copy_within(&mut self, r: Rect, src_x: u16, src_y: u16) {
        let w = usize::from(self.width);
        let rows: Vec<u16> =
            if src_y < r.y { (0..r.h).rev().collect() } else { (0..r.h).collect() };
        for dy in rows {
            let src = usize::from(src_y + dy) * w + usize::from(src_x);
            let dst = usize::from(r.y + dy) * w + usize::from(r.x);
            self.pixels.copy_within(src..src + usize::from(r.w), dst);
        }
    }

    /// Copies the pixels of `r` into a new row-major buffer.
    pub fn extract(&self, r: Rect) -> Vec<u32> {
        let mut out = Vec::with_capacity(usize::from(r.w) * usize::from(r.h));
        for y in r.y..r.y + r.h {
            out.extend_from_slice(self.span(r.x, y, r.w));
        }
        out
    }

    /// Replaces the whole content with `other`'s (same size), reusing the allocation.
    pub fn copy_from(&mut self, other: &Framebuffer) {
        self.width = other.width;
        self.height = other.height;
        self.pixels.clear();
        self.pixels.extend_from_slice(&other.pixels);
    }
}

/// The smallest rectangle holding both.
pub fn union(a: Rect, b: Rect) -> Rect {
    if a.w == 0 || a.h == 0 {
        return b;
    }
    if b.w == 0 || b.h == 0 {
        return a;
    }
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = (u32::from(a.x) + u32::from(a.w)).max(u32::from(b.x) + u32::from(b.w));
    let y1 = (u32::from(a.y) + u32::from(a.h)).max(u32::from(b.y) + u32::from(b.h));
    Rect { x: x0, y: y0, w: clamp16(x1 - u32::from(x0)), h: clamp16(y1 - u32::from(y0)) }
}

/// The overlap of two rectangles, if any.
pub fn intersect(a: Rect, b: Rect) -> Option<Rect> {
    let x0 = a.x.max(b.x);
    let y0 = a.y.max(b.y);
    let x1 = (u32::from(a.x) + u32::from(a.w)).min(u32::from(b.x) + u32::from(b.w));
    let y1 = (u32::from(a.y) + u32::from(a.h)).min(u32::from(b.y) + u32::from(b.h));
    if x1 <= u32::from(x0) || y1 <= u32::from(y0) {
        return None;
    }
    Some(Rect { x: x0, y: y0, w: clamp16(x1 - u32::from(x0)), h: clamp16(y1 - u32::from(y0)) })
}

/// What of `a` lies outside `b`: up to four rectangles (bands above and below, then left and
/// right of the overlap).
pub fn subtract(a: Rect, b: Rect) -> Vec<Rect> {
    let Some(i) = intersect(a, b) else { return vec![a] };
    let (ax1, ay1) = (a.x + a.w, a.y + a.h);
    let (ix1, iy1) = (i.x + i.w, i.y + i.h);
    let parts = [
        Rect { x: a.x, y: a.y, w: a.w, h: i.y - a.y },
        Rect { x: a.x, y: iy1, w: a.w, h: ay1 - iy1 },
        Rect { x: a.x, y: i.y, w: i.x - a.x, h: i.h },
        Rect { x: ix1, y: i.y, w: ax1 - ix1, h: i.h },
    ];
    parts.into_iter().filter(|r| r.w > 0 && r.h > 0).collect()
}

fn clamp16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// `0x00RRGGBB` to RGBA bytes (opaque).
pub fn to_rgba(p: u32) -> [u8; 4] {
    let [b, g, r, _] = p.to_le_bytes();
    [r, g, b, 255]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_within_handles_overlap_both_ways() {
        let mut fb = Framebuffer::new(4, 4);
        for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
            *p = u32::try_from(i).unwrap();
        }
        let orig = fb.clone();
        // Scroll up by one row: rows 1..4 to 0..3.
        fb.copy_within(Rect { x: 0, y: 0, w: 4, h: 3 }, 0, 1);
        for y in 0..3 {
            assert_eq!(fb.row(y), orig.row(y + 1));
        }
        // Scroll down by one row.
        let mut fb = orig.clone();
        fb.copy_within(Rect { x: 0, y: 1, w: 4, h: 3 }, 0, 0);
        for y in 1..4 {
            assert_eq!(fb.row(y), orig.row(y - 1));
        }
    }

    #[test]
    fn rect_arithmetic() {
        let a = Rect { x: 0, y: 0, w: 10, h: 10 };
        let b = Rect { x: 5, y: 5, w: 10, h: 10 };
        assert_eq!(union(a, b), Rect { x: 0, y: 0, w: 15, h: 15 });
        assert_eq!(intersect(a, b), Some(Rect { x: 5, y: 5, w: 5, h: 5 }));
        assert_eq!(intersect(a, Rect { x: 10, y: 0, w: 1, h: 1 }), None);
        assert_eq!(union(Rect::default(), b), b);
        assert_eq!(to_rgba(0x00112233), [0x11, 0x22, 0x33, 255]);
    }
}
