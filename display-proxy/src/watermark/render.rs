//! Drawing a watermark: its lines rasterised once into a block of coverage (a TrueType font
//! from the host, anti-aliased), the block rotated and repeated over the screen in staggered
//! rows ([`Pattern`]), and the result kept as one byte of strength per pixel ([`Mask`]), which
//! scrolls with the screen. Blending darkens light pixels and lightens dark ones, so the text
//! shows on any background.

use std::path::Path;

use crate::framebuffer::Framebuffer;
use atrium_protocol::display::Rect;

/// A font to draw watermarks with.
pub struct Font(fontdue::Font);

impl std::fmt::Debug for Font {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Font")
    }
}

/// Largest font file read.
const MAX_FONT_BYTES: u64 = 32 * 1024 * 1024;

impl Font {
    /// Reads a TrueType or OpenType font file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let size = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        if size > MAX_FONT_BYTES {
            return Err(format!("{}: larger than {MAX_FONT_BYTES} bytes", path.display()));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let font = fontdue::Font::from_bytes(bytes, fontdue::FontSettings::default())
            .map_err(|e| format!("{}: not a font: {e}", path.display()))?;
        Ok(Self(font))
    }
}

/// How a watermark looks, besides its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Percent, 1-100.
    pub opacity: u8,
    /// Text height in pixels.
    pub size: u16,
    /// Degrees, counter-clockwise.
    pub angle: i16,
    /// Space between neighbouring copies, in text heights.
    pub spacing: u8,
}

/// Coverage of the text block: one byte per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    width: usize,
    height: usize,
    alpha: Vec<u8>,
}

/// Rasterises `lines`, left-aligned, one under the other.
fn block(font: &Font, lines: &[String], size: u16) -> Block {
    let px = f32::from(size);
    let (ascent, line_h) = font
        .0
        .horizontal_line_metrics(px)
        .map_or((px * 0.8, px * 1.2), |m| (m.ascent, m.new_line_size));
    let line_h = line_h.ceil().max(1.0);
    let widths: Vec<f32> = lines
        .iter()
        .map(|l| l.chars().map(|c| font.0.metrics(c, px).advance_width).sum())
        .collect();
    let width = to_len(widths.iter().copied().fold(0.0, f32::max).ceil()).max(1);
    let height = to_len(line_h * len_f32(lines.len())).max(1);
    let mut alpha = vec![0u8; width * height];
    for (i, line) in lines.iter().enumerate() {
        let baseline = line_h * len_f32(i) + ascent;
        let mut pen = 0.0f32;
        for c in line.chars() {
            let (m, bitmap) = font.0.rasterize(c, px);
            // Glyph rows run top to bottom; ymin is the bottom edge's offset from the baseline.
            let top = (baseline - len_f32(m.height) - m.ymin as f32).round();
            let left = (pen + m.xmin as f32).round();
            for gy in 0..m.height {
                let y = top + len_f32(gy);
                if y < 0.0 || y >= len_f32(height) {
                    continue;
                }
                for gx in 0..m.width {
                    let x = left + len_f32(gx);
                    if x < 0.0 || x >= len_f32(width) {
                        continue;
                    }
                    let at = to_len(y) * width + to_len(x);
                    alpha[at] = alpha[at].max(bitmap[gy * m.width + gx]);
                }
            }
            pen += m.advance_width;
        }
    }
    Block { width, height, alpha }
}

/// The watermark's pattern: the text block, rotated, on a lattice of screen positions (rows
/// `row` apart, each shifted half a `cell` from the one above), rendered once for one period.
/// It repeats every `cell` across and every [`Pattern::period`] down, so a region scrolled by
/// any amount can be continued from its own rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    cell: usize,
    period: usize,
    alpha: Vec<u8>,
}

impl Pattern {
    /// `lines` in `style`.
    pub fn new(font: &Font, lines: &[String], style: Style) -> Self {
        let b = block(font, lines, style.size);
        let theta = f32::from(style.angle).to_radians();
        let (sin, cos) = theta.sin_cos();
        let (bw, bh) = (len_f32(b.width), len_f32(b.height));
        // The rotated block's extent on screen, and room around it.
        let gap = f32::from(style.size) * f32::from(style.spacing.max(1));
        let across = bw * cos.abs() + bh * sin.abs();
        let down = bw * sin.abs() + bh * cos.abs();
        let cell = to_len((across + gap).ceil()).max(2) & !1;
        let row = to_len(((down + gap) / 2.0).ceil()).max(1);
        let period = row * 2;
        let strength = u32::from(style.opacity.clamp(1, 100));
        let strong = u8::try_from((strength * 255 + 50) / 100).unwrap_or(255);
        let mut alpha = vec![0u8; cell * period];
        // One period holds two blocks: one centred at (0, 0), one at (cell / 2, row). Each is
        // drawn over its rotated extent, wrapping around the period's edges (which is where
        // the neighbouring copies' ink lands).
        let (half_across, half_down) = (across / 2.0 + 1.0, down / 2.0 + 1.0);
        for (cx, cy) in [(0.0, 0.0), (len_f32(cell / 2), len_f32(row))] {
            let (x0, x1) = (floor_i64(cx - half_across), floor_i64(cx + half_across));
            let (y0, y1) = (floor_i64(cy - half_down), floor_i64(cy + half_down));
            for y in y0..=y1 {
                let ty = wrap(y, period);
                for x in x0..=x1 {
                    #[allow(clippy::cast_precision_loss)]
                    let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                    // Screen (y down) to the block's own axes: text runs along (cos, -sin).
                    let u = dx * cos - dy * sin + bw / 2.0;
                    let v = dx * sin + dy * cos + bh / 2.0;
                    // Ink or none (glyph edges not smoothed): each colour under the watermark
                    // gets one tint, which lossless encodings reward (bench-display: 1.40x the
                    // plain screen's bytes, against 2.17x with smooth edges at the same density).
                    if sample(&b, u, v) >= 128 {
                        alpha[ty * cell + wrap(x, cell)] = strong;
                    }
                }
            }
        }
        Self { cell, period, alpha }
    }

    /// Rows after which the pattern repeats.
    pub fn period(&self) -> usize {
        self.period
    }

    /// The strength at (x, y) of the screen, unscrolled.
    pub fn at(&self, x: usize, y: usize) -> u8 {
        self.alpha_of(self.index(x, y))
    }

    /// The place of (x, y) of the screen, unscrolled, in the pattern.
    fn index(&self, x: usize, y: usize) -> u32 {
        u32::try_from((y % self.period) * self.cell + x % self.cell).unwrap_or(0)
    }

    fn alpha_of(&self, i: u32) -> u8 {
        self.alpha.get(usize::try_from(i).unwrap_or(usize::MAX)).copied().unwrap_or(0)
    }
}

/// A watermark's strength at every pixel of a screen (0: none, 255: full ink): the pattern,
/// moved along with what scrolled. Each pixel keeps where in the pattern it is, so the same
/// arrangement can take a new pattern of the same shape (the next minute's time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    width: u16,
    height: u16,
    /// Per pixel: its place in the pattern (row * cell + column).
    index: Vec<u32>,
    alpha: Vec<u8>,
}

impl Mask {
    /// `pattern` over a `width` x `height` screen.
    pub fn new(pattern: &Pattern, width: u16, height: u16) -> Self {
        let (w, h) = (usize::from(width), usize::from(height));
        let mut index = vec![0u32; w * h];
        for y in 0..h {
            for x in 0..w {
                index[y * w + x] = pattern.index(x, y);
            }
        }
        let alpha = index.iter().map(|i| pattern.alpha_of(*i)).collect();
        Self { width, height, index, alpha }
    }

    /// Takes `pattern` where each pixel is, when it has the shape of the one the mask was made
    /// with (false: it has not, nothing changed).
    pub fn repattern(&mut self, old: &Pattern, pattern: &Pattern) -> bool {
        if (old.cell, old.period) != (pattern.cell, pattern.period) {
            return false;
        }
        for (a, i) in self.alpha.iter_mut().zip(&self.index) {
            *a = pattern.alpha_of(*i);
        }
        true
    }

    pub fn width(&self) -> u16 {
        self.width
    }

    pub fn height(&self) -> u16 {
        self.height
    }

    /// Pixels with any ink.
    pub fn inked(&self) -> usize {
        self.alpha.iter().filter(|a| **a > 0).count()
    }

    /// The strength at (x, y).
    pub fn at(&self, x: u16, y: u16) -> u8 {
        self.alpha[usize::from(y) * usize::from(self.width) + usize::from(x)]
    }

    /// Moves the watermark with a vertical scroll of the screen: `r` takes what was at
    /// (`r.x`, `src_y`), and the rows the scroll uncovered continue the moved watermark from
    /// one `pattern` period further in (from the pattern itself where the region is too short).
    /// `r` must lie within the screen, with its source.
    pub fn scroll(&mut self, r: Rect, src_y: u16, pattern: &Pattern) {
        let w = usize::from(self.width);
        let (x0, x1) = (usize::from(r.x), usize::from(r.x) + usize::from(r.w));
        let copy_row = |m: &mut Self, to: usize, from: usize| {
            m.alpha.copy_within(from * w + x0..from * w + x1, to * w + x0);
            m.index.copy_within(from * w + x0..from * w + x1, to * w + x0);
        };
        let (dst, src, h) = (usize::from(r.y), usize::from(src_y), usize::from(r.h));
        let height = usize::from(self.height);
        if x1 > w || dst + h > height || src + h > height {
            return;
        }
        let period = pattern.period();
        if src > dst {
            for i in 0..h {
                copy_row(self, dst + i, src + i);
            }
            // Uncovered at the bottom.
            for y in dst + h..src + h {
                if y >= dst + period {
                    copy_row(self, y, y - period);
                } else {
                    self.fill_row(y, x0, x1, pattern);
                }
            }
        } else if src < dst {
            for i in (0..h).rev() {
                copy_row(self, dst + i, src + i);
            }
            // Uncovered at the top.
            for y in (src..dst).rev() {
                if y + period < dst + h {
                    copy_row(self, y, y + period);
                } else {
                    self.fill_row(y, x0, x1, pattern);
                }
            }
        }
    }

    fn fill_row(&mut self, y: usize, x0: usize, x1: usize, pattern: &Pattern) {
        let w = usize::from(self.width);
        for x in x0..x1 {
            let i = pattern.index(x, y);
            self.index[y * w + x] = i;
            self.alpha[y * w + x] = pattern.alpha_of(i);
        }
    }

    /// Draws the mask into `fb` within `r` (the framebuffer has the mask's size).
    pub fn blend(&self, fb: &mut Framebuffer, r: Rect) {
        debug_assert_eq!((fb.width(), fb.height()), (self.width, self.height));
        let w = usize::from(self.width);
        for y in r.y..r.y + r.h {
            let row = &self.alpha[usize::from(y) * w + usize::from(r.x)..][..usize::from(r.w)];
            if row.iter().all(|a| *a == 0) {
                continue;
            }
            for (p, a) in fb.span_mut(r.x, y, r.w).iter_mut().zip(row) {
                if *a > 0 {
                    *p = ink(*p, *a);
                }
            }
        }
    }
}

/// `p` (0x00RRGGBB) moved towards black if it is light, towards white if it is dark, by `a`/255.
pub fn ink(p: u32, a: u8) -> u32 {
    let (r, g, b) = ((p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff);
    let luma = (r * 77 + g * 150 + b * 29) >> 8;
    let target = if luma > 140 { 0 } else { 255 };
    let a = u32::from(a);
    let mix = |c: u32| {
        if target == 0 { c - (c * a + 127) / 255 } else { c + ((255 - c) * a + 127) / 255 }
    };
    (mix(r) << 16) | (mix(g) << 8) | mix(b)
}

/// Bilinear coverage of the block at (u, v); 0 outside it.
fn sample(b: &Block, u: f32, v: f32) -> u8 {
    let (u, v) = (u - 0.5, v - 0.5);
    if u < -1.0 || v < -1.0 || u >= len_f32(b.width) || v >= len_f32(b.height) {
        return 0;
    }
    let (x0, y0) = (u.floor(), v.floor());
    let (tx, ty) = (u - x0, v - y0);
    let at = |x: f32, y: f32| -> f32 {
        if x < 0.0 || y < 0.0 || x >= len_f32(b.width) || y >= len_f32(b.height) {
            0.0
        } else {
            f32::from(b.alpha[to_len(y) * b.width + to_len(x)])
        }
    };
    let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1.0, y0) * tx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - tx) + at(x0 + 1.0, y0 + 1.0) * tx;
    let c = top * (1.0 - ty) + bottom * ty;
    to_u8(c)
}

/// `v` floored, as an integer (0 for anything not finite; the values here are a few thousand).
#[allow(clippy::cast_possible_truncation)]
fn floor_i64(v: f32) -> i64 {
    if v.is_finite() { v.floor() as i64 } else { 0 }
}

/// `v` modulo `n` (n > 0), non-negative.
fn wrap(v: i64, n: usize) -> usize {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    usize::try_from(v.rem_euclid(n)).unwrap_or(0)
}

#[allow(clippy::cast_precision_loss)]
fn len_f32(n: usize) -> f32 {
    n as f32
}

/// A non-negative, finite float to an index (0 for anything else).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn to_len(f: f32) -> usize {
    if f.is_finite() && f > 0.0 { f as usize } else { 0 }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn to_u8(f: f32) -> u8 {
    f.round().clamp(0.0, 255.0) as u8
}
