//! Reading text from a screenshot without OCR: a monospace font draws each character as the same
//! bitmap wherever it appears on a cell grid (the framebuffer console's 8x16 cells, a terminal
//! window's, a panel label's), so a line of text can be recognised by which cells are alike and
//! by glyphs learned from a line whose text is known.

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

/// The desktop image's panel colour (JWM's tray background, `desktop/jwmrc`).
pub const PANEL: [u8; 3] = [0x1c, 0x27, 0x33];

/// The task list's button of a window that has the focus, and of one that has not
/// (`desktop/jwmrc`).
pub const TASK_ACTIVE: [u8; 3] = [0x2d, 0x6c, 0xb0];
pub const TASK_INACTIVE: [u8; 3] = [0x2a, 0x37, 0x46];

/// The panel's height at the bottom of the screen (`desktop/jwmrc`).
pub const PANEL_HEIGHT: u32 = 30;

/// The task list's buttons along the panel's middle row, left to right: true for the window
/// that has the focus. Windows are listed in the order they opened.
pub fn tasks(s: &Screen) -> Vec<bool> {
    let y = s.height.saturating_sub(PANEL_HEIGHT / 2);
    let mut out = Vec::new();
    let mut last = None;
    for x in 0..s.width {
        let here = match s.pixel(x, y) {
            TASK_ACTIVE => Some(true),
            TASK_INACTIVE => Some(false),
            // Text and icons inside a button do not end it; the panel's own colour does.
            PANEL => None,
            _ => continue,
        };
        if here.is_some() && here != last {
            out.push(here == Some(true));
        }
        last = here;
    }
    out
}

/// The desktop's panel: the band of rows mostly in the panel's colour, at the bottom of the
/// screen. `(first row, last row + 1)`.
pub fn panel_rows(s: &Screen) -> Option<(u32, u32)> {
    let rows: Vec<u32> = (0..s.height)
        .filter(|&y| {
            let n = (0..s.width).filter(|&x| s.pixel(x, y) == PANEL).count();
            u32::try_from(n).unwrap_or(u32::MAX) * 10 >= s.width * 6
        })
        .collect();
    let (first, last) = (*rows.first()?, *rows.last()?);
    (last + 1 >= s.height - 2 && last - first >= 15).then_some((first, last + 1))
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

    /// The grid of text cells of the framebuffer console (rows of columns).
    pub fn cells(&self) -> Vec<Vec<Cell>> {
        let bg = self.pixel(self.width - 1, self.height - 1);
        let grid = Grid {
            x: 0,
            y: 0,
            cell_w: CELL_W,
            cell_h: CELL_H,
            cols: self.width / CELL_W,
            rows: self.height / CELL_H,
        };
        self.cells_in(&grid, bg)
    }

    /// One cell: `None` when every pixel is `bg`, else a hash of which pixels are not.
    pub fn cell(&self, x: u32, y: u32, w: u32, h: u32, bg: [u8; 3]) -> Cell {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut lit = false;
        for dy in 0..h {
            for dx in 0..w {
                let on = self.pixel(x + dx, y + dy) != bg;
                lit |= on;
                hash = (hash ^ u64::from(on)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        lit.then_some(hash)
    }

    /// The cells of `grid` (rows of columns), on background `bg`.
    pub fn cells_in(&self, grid: &Grid, bg: [u8; 3]) -> Vec<Vec<Cell>> {
        (0..grid.rows)
            .map(|row| {
                (0..grid.cols)
                    .map(|col| {
                        let x = grid.x + col * grid.cell_w;
                        let y = grid.y + row * grid.cell_h;
                        self.cell(x, y, grid.cell_w, grid.cell_h, bg)
                    })
                    .collect()
            })
            .collect()
    }

    /// The bounding box of the rows that have at least `min_per_row` pixels of `color` (a
    /// window's background, say): `(x0, y0, x1, y1)`, exclusive ends.
    pub fn region_of(&self, color: [u8; 3], min_per_row: u32) -> Option<(u32, u32, u32, u32)> {
        let mut b: Option<(u32, u32, u32, u32)> = None;
        for y in 0..self.height {
            let xs: Vec<u32> = (0..self.width).filter(|&x| self.pixel(x, y) == color).collect();
            if u32::try_from(xs.len()).unwrap_or(u32::MAX) < min_per_row {
                continue;
            }
            let (first, last) = (xs[0], xs[xs.len() - 1]);
            b = Some(match b {
                None => (first, y, last + 1, y + 1),
                Some((x0, y0, x1, _)) => (x0.min(first), y0, x1.max(last + 1), y + 1),
            });
        }
        b
    }

    /// Where a line of monospace `text` is drawn in rows `y0..y1` on background `bg`: the left
    /// edge of its first cell and the cell width, found by trying every cell width and offset
    /// from each column with ink, left to right, until the cells are consistent with the text
    /// (same character, same cell; different characters, different cells; spaces blank).
    pub fn find_monospace(
        &self,
        y0: u32,
        y1: u32,
        text: &str,
        bg: [u8; 3],
        glyphs: &Glyphs,
    ) -> Option<(u32, u32)> {
        let n = u32::try_from(text.chars().count()).ok()?;
        let h = y1.checked_sub(y0)?;
        let ink = (0..self.width).filter(|&x| (y0..y1).any(|y| self.pixel(x, y) != bg));
        for start in ink {
            for cell_w in 4..=24u32 {
                for dx in 0..cell_w {
                    let Some(x0) = start.checked_sub(dx) else { continue };
                    if x0 + n * cell_w > self.width {
                        continue;
                    }
                    let cells: Vec<Cell> =
                        (0..n).map(|i| self.cell(x0 + i * cell_w, y0, cell_w, h, bg)).collect();
                    if glyphs.consistent(&cells, text) {
                        return Some((x0, cell_w));
                    }
                }
            }
        }
        None
    }
}

/// A grid of text cells on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// The top-left corner of the first cell.
    pub x: u32,
    pub y: u32,
    pub cell_w: u32,
    pub cell_h: u32,
    pub cols: u32,
    pub rows: u32,
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
            // A space is a blank cell.
            if *c == ' ' {
                if cell.is_some() {
                    return false;
                }
                continue;
            }
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
        assert!(g.consistent(&[a, None, b], "x y"));
        assert!(!g.consistent(&[a, c, b], "x y"), "a space must be blank");
    }

    #[test]
    fn task_buttons_are_read_left_to_right_with_the_focused_one() {
        let (width, height) = (40u32, PANEL_HEIGHT);
        let mut rgb = Vec::new();
        for _ in 0..height {
            for x in 0..width {
                rgb.extend(match x {
                    // A button's text does not split it; the panel between buttons does.
                    5..=9 | 11..=12 => TASK_INACTIVE,
                    10 => [0xff, 0xff, 0xff],
                    14..=20 => TASK_ACTIVE,
                    21..=25 => TASK_INACTIVE,
                    _ => PANEL,
                });
            }
        }
        let s = Screen { width, height, rgb };
        assert_eq!(tasks(&s), vec![false, true, false]);
    }

    /// A screen with a two-colour "font": each character is a 3x4 block with its own pattern.
    fn screen_with(text: &str, x0: u32, cell_w: u32) -> Screen {
        let (width, height) = (200u32, 10u32);
        let mut rgb = vec![0u8; usize::try_from(width * height * 3).expect("small")];
        for (i, c) in (0u32..).zip(text.chars()) {
            if c == ' ' {
                continue;
            }
            let bits = u32::from(c);
            for dy in 0..4u32 {
                for dx in 0..3u32 {
                    if (bits >> ((dy * 3 + dx) % 7)) & 1 == 1 || (dx == 0 && dy == 0) {
                        let x = x0 + i * cell_w + dx;
                        let p = usize::try_from(((3 + dy) * width + x) * 3).expect("small");
                        rgb[p..p + 3].copy_from_slice(&[255, 255, 255]);
                    }
                }
            }
        }
        Screen { width, height, rgb }
    }

    #[test]
    fn finds_a_monospace_line_and_its_grid() {
        let s = screen_with("Alice Example (alice)", 17, 6);
        let g = Glyphs::default();
        assert_eq!(s.find_monospace(0, 10, "Alice Example (alice)", [0, 0, 0], &g), Some((17, 6)));
        assert_eq!(s.find_monospace(0, 10, "Alice Example (bob)", [0, 0, 0], &g), None);
        let grid = Grid { x: 17, y: 0, cell_w: 6, cell_h: 10, cols: 3, rows: 1 };
        let cells = s.cells_in(&grid, [0, 0, 0]);
        assert!(cells[0].iter().all(Option::is_some));
        assert_eq!(s.region_of([255, 255, 255], 1).map(|r| r.1), Some(3));
    }
}
