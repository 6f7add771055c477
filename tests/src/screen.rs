//! Reading a text console from a screenshot without OCR: the framebuffer console draws each
//! character as the same 8x16 bitmap wherever it appears, so a line of text can be recognised
//! by which cells are alike and by glyphs learned from a line whose text is known.

use std::collections::HashMap;

use anyhow::{Context, bail};

pub const CELL_W: u32 = 8;
pub const CELL_H: u32 = 16;

/// A decoded RGB screenshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// A cell's look: `None` when blank (all background), else a hash of its lit pixels.
pub type Cell = Option<u64>;

impl Screen {
    pub fn from_png(bytes: &[u8]) -> anyhow::Result<Self> {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().context("not a PNG")?;
        let mut buf = vec![0; reader.output_buffer_size().context("PNG size")?];
        let info = reader.next_frame(&mut buf).context("decoding the PNG")?;
        if info.bit_depth != png::BitDepth::Eight {
            bail!("expected 8-bit samples, got {:?}", info.bit_depth);
        }
        buf.truncate(info.buffer_size());
        let rgb = match info.color_type {
            png::ColorType::Rgb => buf,
            // A browser canvas (toDataURL) is RGBA: the alpha is opaque and dropped.
            png::ColorType::Rgba => buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
            other => bail!("expected RGB or RGBA, got {other:?}"),
        };
        Ok(Self { width: info.width, height: info.height, rgb })
    }

    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = usize::try_from((y * self.width + x) * 3).expect("fits");
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// How many pixels have exactly this colour.
    pub fn count(&self, color: [u8; 3]) -> usize {
        self.rgb.chunks_exact(3).filter(|p| *p == color).count()
    }

    /// The grid of text cells (rows of columns).
    pub fn cells(&self) -> Vec<Vec<Cell>> {
        let bg = self.pixel(self.width - 1, self.height - 1);
        (0..self.height / CELL_H)
            .map(|row| {
                (0..self.width / CELL_W)
                    .map(|col| {
                        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                        let mut lit = false;
                        for dy in 0..CELL_H {
                            for dx in 0..CELL_W {
                                let on = self.pixel(col * CELL_W + dx, row * CELL_H + dy) != bg;
                                lit |= on;
                                h = (h ^ u64::from(on)).wrapping_mul(0x0100_0000_01b3);
                            }
                        }
                        lit.then_some(h)
                    })
                    .collect()
            })
            .collect()
    }
}

/// Glyphs learned from lines whose text is known.
#[derive(Debug, Default, Clone)]
pub struct Glyphs(HashMap<char, u64>);

impl Glyphs {
    /// Whether `cells` can show `text`: the same character is the same cell, different
    /// characters different cells, and known characters their known glyph.
    pub fn consistent(&self, cells: &[Cell], text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        if cells.len() != chars.len() {
            return false;
        }
        let mut seen: HashMap<char, u64> = HashMap::new();
        let mut owner: HashMap<u64, char> = self.0.iter().map(|(c, g)| (*g, *c)).collect();
        for (cell, c) in cells.iter().zip(&chars) {
            let Some(g) = *cell else { return false };
            if self.0.get(c).or(seen.get(c)).is_some_and(|known| *known != g) {
                return false;
            }
            if owner.get(&g).is_some_and(|o| o != c) {
                return false;
            }
            seen.insert(*c, g);
            owner.insert(g, *c);
        }
        true
    }

    pub fn learn(&mut self, cells: &[Cell], text: &str) {
        for (cell, c) in cells.iter().zip(text.chars()) {
            if let Some(g) = cell {
                self.0.insert(c, *g);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Rows that show exactly `text` from the first column (and nothing after it).
pub fn rows_showing(grid: &[Vec<Cell>], text: &str, glyphs: &Glyphs) -> Vec<usize> {
    let n = text.chars().count();
    grid.iter()
        .enumerate()
        .filter(|(_, row)| {
            row.len() >= n
                && row[n..].iter().all(Option::is_none)
                && glyphs.consistent(&row[..n], text)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Where in `row` the cells `needle` appear.
pub fn find_cells(row: &[Cell], needle: &[Cell]) -> Option<usize> {
    row.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyph_consistency() {
        let a = Some(1);
        let b = Some(2);
        let c = Some(3);
        let g = Glyphs::default();
        assert!(g.consistent(&[a, b, a], "xyx"));
        assert!(!g.consistent(&[a, b, b], "xyx"), "same cell for different characters");
        assert!(!g.consistent(&[a, b, c], "xyx"), "different cells for the same character");
        assert!(!g.consistent(&[a, None, a], "xyx"));
        let mut g = Glyphs::default();
        g.learn(&[a, b], "xy");
        assert!(g.consistent(&[b, c], "yz"));
        assert!(!g.consistent(&[c, b], "xy"), "x is known to look like a");
        assert!(!g.consistent(&[a, c], "zw"), "a is x's glyph, not z's");
        let grid = vec![vec![a, b, None], vec![c, a, b], vec![b, a, None]];
        assert_eq!(rows_showing(&grid, "xy", &g), vec![0]);
        assert_eq!(find_cells(&grid[1], &[a, b]), Some(1));
    }
}
