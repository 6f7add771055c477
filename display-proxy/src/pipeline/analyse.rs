//! What a rectangle's pixels look like: one colour, a few (a palette for text-like content), or
//! many (photo-like). Planning chooses how to send a rectangle by it; encoding writes it.

use atrium_protocol::display::Rect;

use crate::framebuffer::Framebuffer;

/// Largest palette; more colours make a rectangle photo-like.
pub const MAX_PALETTE: usize = 256;

/// What a rectangle's pixels look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Analysis {
    Solid(u32),
    /// At most [`MAX_PALETTE`] colours.
    Palette(ColorTable),
    /// More colours than that.
    Many,
}

/// A small open-addressing set of colours, each with its palette index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorTable {
    keys: Vec<u32>,
    idx: Vec<u8>,
    colors: Vec<u32>,
}

const EMPTY: u32 = u32::MAX; // pixels have a zero top byte, so this is never a colour
const SLOTS: usize = 1024;

impl ColorTable {
    fn new() -> Self {
        Self { keys: vec![EMPTY; SLOTS], idx: vec![0; SLOTS], colors: Vec::new() }
    }

    fn slot(&self, c: u32) -> usize {
        let mut s = (c.wrapping_mul(0x9e37_79b1) >> 22) as usize;
        loop {
            let k = self.keys[s];
            if k == c || k == EMPTY {
                return s;
            }
            s = (s + 1) & (SLOTS - 1);
        }
    }

    /// Adds `c`; false when the table is full.
    fn insert(&mut self, c: u32) -> bool {
        let s = self.slot(c);
        if self.keys[s] == c {
            return true;
        }
        if self.colors.len() >= MAX_PALETTE {
            return false;
        }
        self.keys[s] = c;
        self.idx[s] = u8::try_from(self.colors.len()).expect("at most 256 colours");
        self.colors.push(c);
        true
    }

    /// The palette index of a colour that was inserted.
    pub(crate) fn index(&self, c: u32) -> u8 {
        self.idx[self.slot(c)]
    }

    pub fn colors(&self) -> &[u32] {
        &self.colors
    }
}

impl Analysis {
    /// The analysis of two rectangles stacked exactly (`self` above `below`, same columns),
    /// as [`analyze`] would find it for their union, without reading a pixel: the colours of
    /// the union in row-major first-seen order are those of the top, then the new ones of the
    /// bottom, in order.
    pub fn stacked(&self, below: &Self) -> Self {
        let colors = |a: &Self| -> Option<Vec<u32>> {
            match a {
                Self::Solid(c) => Some(vec![*c]),
                Self::Palette(t) => Some(t.colors.clone()),
                Self::Many => None,
            }
        };
        let (Some(top), Some(bottom)) = (colors(self), colors(below)) else { return Self::Many };
        let mut t = ColorTable::new();
        for c in top.into_iter().chain(bottom) {
            if !t.insert(c) {
                return Self::Many;
            }
        }
        if t.colors.len() == 1 { Self::Solid(t.colors[0]) } else { Self::Palette(t) }
    }
}

/// Counts the colours of `r` (stopping past [`MAX_PALETTE`]).
pub fn analyze(fb: &Framebuffer, r: Rect) -> Analysis {
    let first = fb.span(r.x, r.y, 1)[0];
    let mut table: Option<ColorTable> = None;
    let mut last = first;
    for y in r.y..r.y + r.h {
        for &p in fb.span(r.x, y, r.w) {
            if p == last {
                continue;
            }
            last = p;
            let t = table.get_or_insert_with(|| {
                let mut t = ColorTable::new();
                t.insert(first);
                t
            });
            if !t.insert(p) {
                return Analysis::Many;
            }
        }
    }
    match table {
        None => Analysis::Solid(first),
        Some(t) => Analysis::Palette(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_tells_solid_palette_and_many() {
        let mut fb = Framebuffer::new(64, 64);
        fb.fill(fb.bounds(), 0x123456);
        assert_eq!(analyze(&fb, fb.bounds()), Analysis::Solid(0x123456));
        fb.span_mut(5, 5, 3).copy_from_slice(&[1, 2, 3]);
        let Analysis::Palette(t) = analyze(&fb, fb.bounds()) else { panic!() };
        assert_eq!(t.colors(), &[0x123456, 1, 2, 3]);
        for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
            *p = u32::try_from(i).unwrap() * 77;
        }
        assert_eq!(analyze(&fb, fb.bounds()), Analysis::Many);
    }

    #[test]
    fn stacked_analyses_are_the_analysis_of_the_union() {
        let mut fb = Framebuffer::new(40, 40);
        let mut seed = 7u32;
        for round in 0..200 {
            // A few colours per round, sometimes many; a random split into top and bottom.
            let colors = [1u32, 2, 3, 5, 300][round % 5];
            for p in fb.pixels_mut() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *p = (seed >> 8) % colors;
            }
            let split = 1 + u16::try_from(round % 38).unwrap();
            let x = u16::try_from(round % 7).unwrap();
            let top = Rect { x, y: 0, w: 30, h: split };
            let bottom = Rect { x, y: split, w: 30, h: 40 - split };
            let union = Rect { x, y: 0, w: 30, h: 40 };
            assert_eq!(
                analyze(&fb, top).stacked(&analyze(&fb, bottom)),
                analyze(&fb, union),
                "round {round}"
            );
        }
    }
}
