//! ZRLE (RFC 6143 §7.7.6) decoding for the proxy's pixel format (32 bits per pixel, depth 24,
//! little-endian, so a CPIXEL is 3 bytes: B, G, R). One zlib stream spans the connection.

use atrium_protocol::display::Rect;
use flate2::{Decompress, FlushDecompress, Status};

use crate::framebuffer::Framebuffer;
use crate::source::SourceError;

const TILE: u16 = 64;

/// The connection's ZRLE state.
pub struct ZrleDecoder {
    z: Decompress,
    out: Vec<u8>,
}

impl std::fmt::Debug for ZrleDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZrleDecoder")
    }
}

impl Default for ZrleDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ZrleDecoder {
    pub fn new() -> Self {
        Self { z: Decompress::new(true), out: Vec::new() }
    }

    /// Largest decompressed size a rectangle of this size can honestly need.
    fn max_output(r: Rect) -> usize {
        let tiles = usize::from(r.w.div_ceil(TILE)) * usize::from(r.h.div_ceil(TILE));
        // Per tile: the sub-encoding byte, a palette of up to 127 CPIXELs, then at worst a
        // CPIXEL and a run-length byte per pixel (plus 255-runs, bounded by the pixel count).
        tiles * (1 + 127 * 3) + usize::from(r.w) * usize::from(r.h) * 5
    }

    /// Inflates `compressed` and draws the tiles into `rect` of `fb` (checked inside).
    pub fn decode(
        &mut self,
        compressed: &[u8],
        rect: Rect,
        fb: &mut Framebuffer,
    ) -> Result<(), SourceError> {
        self.inflate(compressed, Self::max_output(rect))?;
        let mut c = Cursor { buf: &self.out, pos: 0 };
        let mut ty = rect.y;
        while ty < rect.y + rect.h {
            let th = TILE.min(rect.y + rect.h - ty);
            let mut tx = rect.x;
            while tx < rect.x + rect.w {
                let tw = TILE.min(rect.x + rect.w - tx);
                decode_tile(&mut c, Rect { x: tx, y: ty, w: tw, h: th }, fb)?;
                tx += tw;
            }
            ty += th;
        }
        if c.pos != self.out.len() {
            return Err(SourceError::protocol("ZRLE: data left over after the last tile"));
        }
        Ok(())
    }

    fn inflate(&mut self, input: &[u8], max: usize) -> Result<(), SourceError> {
        self.out.clear();
        let mut consumed = 0usize;
        loop {
            if self.out.capacity() - self.out.len() < 64 * 1024 {
                self.out.reserve(64 * 1024);
            }
            let before_in = self.z.total_in();
            let before_out = self.out.len();
            let status = self
                .z
                .decompress_vec(&input[consumed..], &mut self.out, FlushDecompress::Sync)
                .map_err(|e| SourceError::protocol(format!("ZRLE zlib: {e}")))?;
            let used = usize::try_from(self.z.total_in() - before_in)
                .map_err(|_| SourceError::protocol("ZRLE: zlib position overflow"))?;
            consumed += used;
            if self.out.len() > max {
                return Err(SourceError::protocol("ZRLE: more data than the rectangle can hold"));
            }
            let progressed = used > 0 || self.out.len() > before_out;
            match status {
                Status::StreamEnd => break,
                _ if consumed >= input.len() && self.out.len() < self.out.capacity() => break,
                _ if !progressed => {
                    if consumed >= input.len() {
                        break;
                    }
                    return Err(SourceError::protocol("ZRLE: zlib made no progress"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Result<u8, SourceError> {
        let b = *self.buf.get(self.pos).ok_or_else(truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn cpixel(&mut self) -> Result<u32, SourceError> {
        let s = self.buf.get(self.pos..self.pos + 3).ok_or_else(truncated)?;
        self.pos += 3;
        Ok(u32::from(s[0]) | (u32::from(s[1]) << 8) | (u32::from(s[2]) << 16))
    }

    fn run_length(&mut self) -> Result<usize, SourceError> {
        let mut n = 1usize;
        loop {
            let b = self.u8()?;
            n += usize::from(b);
            if b != 255 {
                return Ok(n);
            }
        }
    }
}

fn truncated() -> SourceError {
    SourceError::protocol("ZRLE: tile data truncated")
}

fn decode_tile(c: &mut Cursor<'_>, t: Rect, fb: &mut Framebuffer) -> Result<(), SourceError> {
    let sub = c.u8()?;
    let n = usize::from(t.w) * usize::from(t.h);
    match sub {
        0 => {
            for y in t.y..t.y + t.h {
                for p in fb.span_mut(t.x, y, t.w) {
                    *p = c.cpixel()?;
                }
            }
        }
        1 => {
            let color = c.cpixel()?;
            fb.fill(t, color);
        }
        2..=16 => {
            let size = usize::from(sub);
            let mut palette = [0u32; 16];
            for p in palette.iter_mut().take(size) {
                *p = c.cpixel()?;
            }
            let bits: u16 = match size {
                2 => 1,
                3..=4 => 2,
                _ => 4,
            };
            let row_bytes = (usize::from(t.w) * usize::from(bits)).div_ceil(8);
            for y in t.y..t.y + t.h {
                let row = c.buf.get(c.pos..c.pos + row_bytes).ok_or_else(truncated)?;
                c.pos += row_bytes;
                for (i, p) in fb.span_mut(t.x, y, t.w).iter_mut().enumerate() {
                    let bit = i * usize::from(bits);
                    let byte = row[bit / 8];
                    let shift = 8 - usize::from(bits) - (bit % 8);
                    let idx = usize::from((byte >> shift) & ((1u8 << bits) - 1));
                    if idx >= size {
                        return Err(SourceError::protocol("ZRLE: palette index out of range"));
                    }
                    *p = palette[idx];
                }
            }
        }
        128 => {
            let mut pixels = Vec::with_capacity(n);
            while pixels.len() < n {
                let color = c.cpixel()?;
                let run = c.run_length()?;
                if pixels.len() + run > n {
                    return Err(SourceError::protocol("ZRLE: run past the end of the tile"));
                }
                pixels.resize(pixels.len() + run, color);
            }
            put_tile(fb, t, &pixels);
        }
        130..=255 => {
            let size = usize::from(sub - 128);
            let mut palette = [0u32; 127];
            for p in palette.iter_mut().take(size) {
                *p = c.cpixel()?;
            }
            let mut pixels = Vec::with_capacity(n);
            while pixels.len() < n {
                let b = c.u8()?;
                let idx = usize::from(b & 0x7f);
                if idx >= size {
                    return Err(SourceError::protocol("ZRLE: palette index out of range"));
                }
                let run = if b & 0x80 != 0 { c.run_length()? } else { 1 };
                if pixels.len() + run > n {
                    return Err(SourceError::protocol("ZRLE: run past the end of the tile"));
                }
                pixels.resize(pixels.len() + run, palette[idx]);
            }
            put_tile(fb, t, &pixels);
        }
        other => {
            return Err(SourceError::protocol(format!("ZRLE: invalid sub-encoding {other}")));
        }
    }
    Ok(())
}

fn put_tile(fb: &mut Framebuffer, t: Rect, pixels: &[u32]) {
    for (row, y) in pixels.chunks_exact(usize::from(t.w)).zip(t.y..t.y + t.h) {
        fb.span_mut(t.x, y, t.w).copy_from_slice(row);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::ZlibEncoder;

    use super::*;

    fn cpixel(p: u32) -> [u8; 3] {
        let b = p.to_le_bytes();
        [b[0], b[1], b[2]]
    }

    /// Compresses tile data the way a server does: one stream, sync-flushed per rectangle.
    struct Server {
        z: ZlibEncoder<Vec<u8>>,
    }

    impl Server {
        fn new() -> Self {
            Self { z: ZlibEncoder::new(Vec::new(), Compression::default()) }
        }
        fn rect(&mut self, data: &[u8]) -> Vec<u8> {
            self.z.write_all(data).unwrap();
            self.z.flush().unwrap();
            std::mem::take(self.z.get_mut())
        }
    }

    #[test]
    fn decodes_every_sub_encoding_across_rectangles() {
        let mut server = Server::new();
        let mut dec = ZrleDecoder::new();
        let mut fb = Framebuffer::new(80, 70);

        // Rect 1: 80x70 = tiles 64x64, 16x64, 64x6, 16x6.
        let (a, b, c) = (0x00ff0000u32, 0x0000ff00u32, 0x000000ffu32);
        let mut data = Vec::new();
        // Tile 1 (64x64): solid a.
        data.push(1);
        data.extend_from_slice(&cpixel(a));
        // Tile 2 (16x64): packed palette of 2 colours, alternating columns (1 bit each).
        data.push(2);
        data.extend_from_slice(&cpixel(b));
        data.extend_from_slice(&cpixel(c));
        for _ in 0..64 {
            data.extend_from_slice(&[0b0101_0101, 0b0101_0101]);
        }
        // Tile 3 (64x6): plain RLE: 100 pixels of b, then 284 of c (284 = 1 + 255 + 28).
        data.push(128);
        data.extend_from_slice(&cpixel(b));
        data.push(99);
        data.extend_from_slice(&cpixel(c));
        data.extend_from_slice(&[255, 28]);
        // Tile 4 (16x6): palette RLE with 2 colours: a run of 90 of index 1, then 6 singles of 0.
        data.push(130);
        data.extend_from_slice(&cpixel(a));
        data.extend_from_slice(&cpixel(c));
        data.extend_from_slice(&[0x81, 89]);
        data.extend_from_slice(&[0; 6]);
        let z = server.rect(&data);
        dec.decode(&z, fb.bounds(), &mut fb).unwrap();

        assert!(fb.span(0, 0, 64).iter().all(|&p| p == a));
        assert_eq!(fb.span(64, 10, 4), &[b, c, b, c]);
        assert_eq!(fb.span(0, 64, 64)[..64], [b; 64]);
        assert_eq!(fb.span(35, 65, 1), &[b]);
        assert_eq!(fb.span(36, 65, 1), &[c]);
        assert_eq!(fb.span(64, 64, 16), &[c; 16]);
        assert_eq!(fb.span(64, 69, 16)[10..], [a; 6]);

        // Rect 2 on the same stream: a 2x2 raw tile.
        let mut data = vec![0];
        for p in [a, b, c, a] {
            data.extend_from_slice(&cpixel(p));
        }
        let z = server.rect(&data);
        dec.decode(&z, Rect { x: 10, y: 10, w: 2, h: 2 }, &mut fb).unwrap();
        assert_eq!(fb.span(10, 10, 2), &[a, b]);
        assert_eq!(fb.span(10, 11, 2), &[c, a]);
    }

    #[test]
    fn bad_tiles_are_errors_not_panics() {
        let rect = Rect { x: 0, y: 0, w: 4, h: 4 };
        let cases: Vec<Vec<u8>> = vec![
            vec![],                                                     // no sub-encoding byte
            vec![1, 0],                                                 // truncated CPIXEL
            vec![129],                                                  // invalid sub-encoding
            vec![3, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0xff, 0xff, 0xff, 0xff], // index 3 of 3 colours
            vec![128, 0, 0, 0, 255, 255],                               // run past the end
            vec![1, 0, 0, 0, 7],                                        // data left over
        ];
        for data in cases {
            let mut server = Server::new();
            let mut dec = ZrleDecoder::new();
            let mut fb = Framebuffer::new(4, 4);
            let z = server.rect(&data);
            assert!(dec.decode(&z, rect, &mut fb).is_err(), "{data:?} decoded");
        }
        // Garbage that is not zlib at all.
        let mut dec = ZrleDecoder::new();
        let mut fb = Framebuffer::new(4, 4);
        assert!(dec.decode(&[1, 2, 3, 4, 5], rect, &mut fb).is_err());
    }

    #[test]
    fn a_zip_bomb_is_refused() {
        let mut server = Server::new();
        let mut dec = ZrleDecoder::new();
        let mut fb = Framebuffer::new(4, 4);
        let z = server.rect(&vec![0u8; 10_000_000]);
        assert!(dec.decode(&z, Rect { x: 0, y: 0, w: 4, h: 4 }, &mut fb).is_err());
    }
}
