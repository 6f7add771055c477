//! Encoding one rectangle of a frame into a wire message: a fill for one colour, a palette PNG
//! for text-like content (few colours; small and fast), an RGB PNG for lossless refinement of
//! photo-like content, and JPEG for photo-like content while it changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use atrium_protocol::display::{ImageFormat, Rect, ServerMessage};

use crate::framebuffer::{Framebuffer, to_rgba};
use crate::metrics::Metrics;
use crate::pipeline::analyse::{Analysis, ColorTable, analyze};
use crate::pipeline::frame::Frame;
use crate::pipeline::plan::{Kind, Plan};
use crate::source::CursorShape;

/// The message for a one-colour rectangle.
pub fn fill_message(r: Rect, color: u32) -> Vec<u8> {
    ServerMessage::Fill { rect: r, rgba: to_rgba(color) }.encode()
}

fn image_message(r: Rect, format: ImageFormat, data: Vec<u8>) -> Vec<u8> {
    ServerMessage::Image { rect: r, format, data }.encode()
}

/// A lossless PNG of `r`: indexed when `table` is given, else RGB.
pub fn png(fb: &Framebuffer, r: Rect, table: Option<&ColorTable>) -> Vec<u8> {
    match table {
        Some(t) => palette_png(fb, r, t),
        None => rgb_png(fb, r),
    }
}

/// Deflate level of palette PNGs (zlib's default: lines of text repeat, and LZ77 finds it).
const PALETTE_DEFLATE_LEVEL: u32 = 6;

thread_local! {
    /// One deflate state per thread, reset between images: making a new one allocates and
    /// zeroes some 300 KiB, far more than a glyph or a line of text costs to compress.
    static DEFLATE: std::cell::RefCell<flate2::Compress> = std::cell::RefCell::new(
        flate2::Compress::new(flate2::Compression::new(PALETTE_DEFLATE_LEVEL), true),
    );
}

/// Appends one PNG chunk: length, type, data, and the CRC of type and data.
fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).expect("a PNG chunk of a rectangle is below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(&out[start..]);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// zlib-compresses `data` with this thread's deflate state.
fn zlib(data: &[u8]) -> Vec<u8> {
    DEFLATE.with(|cell| {
        let mut c = cell.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 4 + 64);
        loop {
            let consumed = usize::try_from(c.total_in()).expect("input below usize");
            let status = c
                .compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Finish)
                .expect("deflate into a Vec with room");
            if status == flate2::Status::StreamEnd {
                break;
            }
            out.reserve(out.capacity().max(256));
        }
        out
    })
}

/// A palette PNG of `r` (filter None on every row, as suits indices).
fn palette_png(fb: &Framebuffer, r: Rect, t: &ColorTable) -> Vec<u8> {
    let n = t.colors().len();
    let bits: u8 = match n {
        0..=2 => 1,
        3..=4 => 2,
        5..=16 => 4,
        _ => 8,
    };
    let row_bytes = usize::from(r.w).div_ceil(8 / usize::from(bits));
    // Each row is its filter type (0, None) then the packed indices.
    let mut raw = vec![0u8; (row_bytes + 1) * usize::from(r.h)];
    for (row, y) in raw.chunks_exact_mut(row_bytes + 1).zip(r.y..r.y + r.h) {
        pack_row(fb.span(r.x, y, r.w), t, bits, &mut row[1..]);
    }
    let idat = zlib(&raw);
    let mut out = Vec::with_capacity(idat.len() + n * 3 + 64);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = [0u8; 13];
    ihdr[..4].copy_from_slice(&u32::from(r.w).to_be_bytes());
    ihdr[4..8].copy_from_slice(&u32::from(r.h).to_be_bytes());
    ihdr[8] = bits;
    ihdr[9] = 3; // indexed colour; compression, filter and interlace methods 0
    png_chunk(&mut out, b"IHDR", &ihdr);
    let mut plte = Vec::with_capacity(n * 3);
    for &c in t.colors() {
        plte.extend_from_slice(&to_rgba(c)[..3]);
    }
    png_chunk(&mut out, b"PLTE", &plte);
    png_chunk(&mut out, b"IDAT", &idat);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// An RGB PNG of `r` (photo-like areas refined to lossless).
fn rgb_png(fb: &Framebuffer, r: Rect) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut enc = png::Encoder::new(&mut out, u32::from(r.w), u32::from(r.h));
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_filter(png::Filter::Paeth);
    enc.set_compression(png::Compression::Fast);
    let mut v = Vec::with_capacity(usize::from(r.w) * usize::from(r.h) * 3);
    for y in r.y..r.y + r.h {
        for &p in fb.span(r.x, y, r.w) {
            let [r, g, b, _] = to_rgba(p);
            v.extend_from_slice(&[r, g, b]);
        }
    }
    let mut w = enc.write_header().expect("PNG header into a Vec");
    w.write_image_data(&v).expect("PNG data of the declared size into a Vec");
    w.finish().expect("PNG end into a Vec");
    out
}

/// Rectangles of at most this many pixels and 16 colours may go as [`ImageFormat::Indexed`].
pub const MAX_INDEXED_PIXELS: usize = 64 * 64;

/// The `Indexed` image data of `r` (at most 16 colours in `t`).
pub fn indexed(fb: &Framebuffer, r: Rect, t: &ColorTable) -> Vec<u8> {
    let n = t.colors().len();
    let bits: u8 = match n {
        0..=2 => 1,
        3..=4 => 2,
        _ => 4,
    };
    let mut out = Vec::with_capacity(1 + n * 3 + usize::from(r.h) * usize::from(r.w).div_ceil(2));
    out.push(u8::try_from(n.max(2)).expect("at most 16 colours"));
    for &c in t.colors() {
        out.extend_from_slice(&to_rgba(c)[..3]);
    }
    if n < 2 {
        out.extend_from_slice(&[0, 0, 0]); // a palette has at least two entries
    }
    out.extend_from_slice(&pack_indices(fb, r, t, bits));
    out
}

fn pack_indices(fb: &Framebuffer, r: Rect, t: &ColorTable, bits: u8) -> Vec<u8> {
    let row_bytes = usize::from(r.w).div_ceil(8 / usize::from(bits));
    let mut v = vec![0u8; row_bytes * usize::from(r.h)];
    for (row, y) in v.chunks_exact_mut(row_bytes).zip(r.y..r.y + r.h) {
        pack_row(fb.span(r.x, y, r.w), t, bits, row);
    }
    v
}

/// Packs one row of pixels as palette indices of `bits` each, most significant bits first,
/// into `row` (zeroed, of the packed length).
fn pack_row(pixels: &[u32], t: &ColorTable, bits: u8, row: &mut [u8]) {
    let per_byte = 8 / usize::from(bits);
    let mut last = (u32::MAX, 0u8);
    for (i, &p) in pixels.iter().enumerate() {
        if p != last.0 {
            last = (p, t.index(p));
        }
        let shift = 8 - usize::from(bits) * (i % per_byte + 1);
        row[i / per_byte] |= last.1 << shift;
    }
}

/// A JPEG of `r` at `quality` (1..=100).
pub fn jpeg(fb: &Framebuffer, r: Rect, quality: u8) -> Vec<u8> {
    let mut bgra = Vec::with_capacity(usize::from(r.w) * usize::from(r.h) * 4);
    for y in r.y..r.y + r.h {
        for &p in fb.span(r.x, y, r.w) {
            bgra.extend_from_slice(&p.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(bgra.len() / 8);
    let enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    enc.encode(&bgra, r.w, r.h, jpeg_encoder::ColorType::Bgra)
        .expect("JPEG of a rectangle with matching data into a Vec");
    out
}

/// The messages made of one frame, by rectangle and kind: each made once, whoever asks first,
/// and shared by every viewer of the frame.
#[derive(Debug, Default)]
pub struct Encodings {
    cache: Mutex<HashMap<([u16; 4], Kind), Made>>,
}

/// A message, once made.
type Made = Arc<OnceLock<Arc<[u8]>>>;

impl Encodings {
    /// The message for `rect` as `kind`: made by `make` the first time only.
    pub fn get_or_make(&self, rect: Rect, kind: Kind, make: impl FnOnce() -> Vec<u8>) -> Arc<[u8]> {
        let cell = {
            let mut cache = self.cache.lock().expect("encodings lock");
            Arc::clone(cache.entry(([rect.x, rect.y, rect.w, rect.h], kind)).or_default())
        };
        Arc::clone(cell.get_or_init(|| Arc::from(make())))
    }
}

/// The wire message for `r` of `frame` as `kind`, made once per frame (in `done`) and shared.
/// Lossless kinds choose between fill, palette PNG and RGB PNG by `analysis` (what planning
/// found the pixels to be; `None`: they are analysed here).
pub fn encode_rect(
    frame: &Frame,
    done: &Encodings,
    r: Rect,
    kind: Kind,
    analysis: Option<&Analysis>,
    metrics: &Metrics,
) -> Arc<[u8]> {
    done.get_or_make(r, kind, || {
        let start = Instant::now();
        let msg = match kind {
            Kind::Jpeg(q) => image_message(r, ImageFormat::Jpeg, jpeg(&frame.fb, r, q)),
            Kind::Fill | Kind::Png => {
                let found;
                let a = match analysis {
                    Some(a) => a,
                    None => {
                        found = analyze(&frame.fb, r);
                        &found
                    }
                };
                match a {
                    Analysis::Solid(c) => fill_message(r, *c),
                    Analysis::Palette(t) => palette_message(&frame.fb, r, t),
                    Analysis::Many => image_message(r, ImageFormat::Png, png(&frame.fb, r, None)),
                }
            }
        };
        metrics.record_encode(start.elapsed());
        msg
    })
}

/// The messages of every rectangle of `plan`, in order.
pub fn encode_plan(
    frame: &Frame,
    done: &Encodings,
    plan: &Plan,
    metrics: &Metrics,
) -> Vec<Arc<[u8]>> {
    debug_assert_eq!(plan.rects.len(), plan.analyses.len(), "one analysis per rectangle");
    plan.rects
        .iter()
        .zip(&plan.analyses)
        .map(|(&(r, kind), a)| encode_rect(frame, done, r, kind, a.as_deref(), metrics))
        .collect()
}

/// `Indexed` data this small is sent without trying a PNG: a PNG's signature and chunks alone
/// take 57 bytes, so it could save little, and compressing would cost more than sending.
const INDEXED_WITHOUT_PNG: usize = 160;

/// A few-colour rectangle as a palette PNG, or as `Indexed` when that is smaller (tiny areas
/// such as a typed character, where a PNG's own overhead dominates).
fn palette_message(fb: &Framebuffer, r: Rect, t: &ColorTable) -> Vec<u8> {
    if usize::from(r.w) * usize::from(r.h) <= MAX_INDEXED_PIXELS && t.colors().len() <= 16 {
        let raw = indexed(fb, r, t);
        if raw.len() <= INDEXED_WITHOUT_PNG {
            return image_message(r, ImageFormat::Indexed, raw);
        }
        let png = palette_png(fb, r, t);
        if raw.len() < png.len() {
            return image_message(r, ImageFormat::Indexed, raw);
        }
        return image_message(r, ImageFormat::Png, png);
    }
    image_message(r, ImageFormat::Png, palette_png(fb, r, t))
}

/// The Cursor message for a pointer shape (PNG with alpha; empty hides the pointer).
pub fn cursor_message(c: &CursorShape) -> Vec<u8> {
    let png = if c.width == 0 || c.height == 0 || c.rgba.is_empty() {
        Vec::new()
    } else {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, u32::from(c.width), u32::from(c.height));
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        match enc
            .write_header()
            .and_then(|mut w| w.write_image_data(&c.rgba).and_then(|()| w.finish()))
        {
            Ok(()) => out,
            Err(e) => {
                tracing::debug!(error = %e, "cannot encode a pointer shape");
                Vec::new()
            }
        }
    };
    ServerMessage::Cursor { hot_x: c.hot_x, hot_y: c.hot_y, png }.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_png(data: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut dec = png::Decoder::new(std::io::Cursor::new(data));
        dec.set_transformations(png::Transformations::EXPAND);
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn rgb_of(fb: &Framebuffer, r: Rect) -> Vec<u8> {
        let mut v = Vec::new();
        for y in r.y..r.y + r.h {
            for &p in fb.span(r.x, y, r.w) {
                v.extend_from_slice(&to_rgba(p)[..3]);
            }
        }
        v
    }

    #[test]
    fn png_round_trips_losslessly_at_every_palette_depth() {
        for colors in [2u32, 3, 5, 17, 256, 1000] {
            let mut fb = Framebuffer::new(37, 23); // odd sizes exercise row padding
            for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
                *p = (u32::try_from(i).unwrap() * 7919 % colors) * 0x010305;
            }
            let r = Rect { x: 3, y: 2, w: 30, h: 20 };
            let table = match analyze(&fb, r) {
                Analysis::Palette(t) => Some(t),
                Analysis::Many => None,
                Analysis::Solid(_) => panic!("not solid"),
            };
            let data = png(&fb, r, table.as_ref());
            let (w, h, pixels) = decode_png(&data);
            assert_eq!((w, h), (30, 20));
            assert_eq!(pixels, rgb_of(&fb, r), "{colors} colours");
        }
    }

    /// Decodes `Indexed` data the way the browser does.
    fn decode_indexed(d: &[u8], w: usize, h: usize) -> Vec<u8> {
        let n = usize::from(d[0]);
        let palette = &d[1..1 + n * 3];
        let bits = if n <= 2 {
            1
        } else if n <= 4 {
            2
        } else {
            4
        };
        let row = (w * bits).div_ceil(8);
        let idx = &d[1 + n * 3..];
        assert_eq!(idx.len(), row * h);
        let mut out = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let b = idx[y * row + x * bits / 8];
                let i = usize::from((b >> (8 - bits - (x * bits) % 8)) & ((1 << bits) - 1));
                out.extend_from_slice(&palette[i * 3..i * 3 + 3]);
            }
        }
        out
    }

    #[test]
    fn indexed_round_trips_and_beats_png_on_a_glyph() {
        for colors in [2u32, 3, 4, 9, 16] {
            let mut fb = Framebuffer::new(13, 16);
            for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
                *p = (u32::try_from(i).unwrap() * 7 % colors) * 0x0a0b0c;
            }
            let r = Rect { x: 1, y: 0, w: 11, h: 16 };
            let Analysis::Palette(t) = analyze(&fb, r) else { panic!("few colours") };
            let d = indexed(&fb, r, &t);
            assert_eq!(decode_indexed(&d, 11, 16), rgb_of(&fb, r), "{colors} colours");
        }
        // An 8x16 glyph: grey on black.
        let mut fb = Framebuffer::new(8, 16);
        for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
            *p = if i % 3 == 0 { 0xaaaaaa } else { 0 };
        }
        let Analysis::Palette(t) = analyze(&fb, fb.bounds()) else { panic!() };
        assert!(indexed(&fb, fb.bounds(), &t).len() < png(&fb, fb.bounds(), Some(&t)).len() / 2);
        let m = palette_message(&fb, fb.bounds(), &t);
        assert_eq!(m[9], ImageFormat::Indexed as u8);
    }

    #[test]
    fn jpeg_is_a_jpeg_of_the_right_size() {
        let mut fb = Framebuffer::new(64, 48);
        for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
            *p = u32::try_from(i).unwrap() * 40_503;
        }
        let j = jpeg(&fb, Rect { x: 0, y: 0, w: 64, h: 48 }, 70);
        assert_eq!(&j[..2], &[0xff, 0xd8]);
        // SOF0 carries height then width.
        let sof = j.windows(2).position(|w| w == [0xff, 0xc0]).expect("baseline SOF");
        assert_eq!(&j[sof + 5..sof + 9], &[0, 48, 0, 64]);
    }
}
