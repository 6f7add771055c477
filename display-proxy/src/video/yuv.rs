//! Screen pixels (0x00RRGGBB) to I420, the picture format the VP8 encoder takes: a full-size
//! luma plane, then two chroma planes of half width and height (rounded up), back to back, in
//! BT.601 limited range (what browsers assume for VP8).

use atrium_protocol::display::Rect;

use crate::framebuffer::Framebuffer;

/// Bytes of an I420 picture of `w` x `h`.
pub fn i420_len(w: u16, h: u16) -> usize {
    let (w, h) = (usize::from(w), usize::from(h));
    w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
}

fn rgb(p: u32) -> (i32, i32, i32) {
    let p = p.cast_signed();
    ((p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff)
}

/// The I420 picture of `r` (inside `fb`).
pub fn to_i420(fb: &Framebuffer, r: Rect) -> Vec<u8> {
    let mut out = vec![0u8; i420_len(r.w, r.h)];
    to_i420_into(fb, r, &mut out);
    out
}

/// Writes the I420 picture of `r` into `out` (of [`i420_len`] bytes).
pub fn to_i420_into(fb: &Framebuffer, r: Rect, out: &mut [u8]) {
    let (w, h) = (usize::from(r.w), usize::from(r.h));
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    assert_eq!(out.len(), i420_len(r.w, r.h), "an I420 buffer of the rectangle's size");
    let (luma, chroma) = out.split_at_mut(w * h);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    for (row, y) in luma.chunks_exact_mut(w).zip(r.y..r.y + r.h) {
        for (o, &p) in row.iter_mut().zip(fb.span(r.x, y, r.w)) {
            let (r, g, b) = rgb(p);
            *o = u8::try_from(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16).unwrap_or(235);
        }
    }
    for cy in 0..ch {
        let y0 = r.y + u16::try_from(cy * 2).expect("inside the rectangle");
        let y1 = (y0 + 1).min(r.y + r.h - 1);
        let (top, bottom) = (fb.span(r.x, y0, r.w), fb.span(r.x, y1, r.w));
        for cx in 0..cw {
            let (x0, x1) = (cx * 2, (cx * 2 + 1).min(w - 1));
            let (mut sr, mut sg, mut sb) = (0, 0, 0);
            for p in [top[x0], top[x1], bottom[x0], bottom[x1]] {
                let (r, g, b) = rgb(p);
                (sr, sg, sb) = (sr + r, sg + g, sb + b);
            }
            let (r, g, b) = ((sr + 2) >> 2, (sg + 2) >> 2, (sb + 2) >> 2);
            let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
            let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
            u_plane[cy * cw + cx] = u8::try_from(u).unwrap_or(128);
            v_plane[cy * cw + cx] = u8::try_from(v).unwrap_or(128);
        }
    }
}

/// Luma PSNR in dB between two I420 pictures of `w` x `h` (infinite when equal).
pub fn psnr_y(a: &[u8], b: &[u8], w: u16, h: u16) -> f64 {
    let n = usize::from(w) * usize::from(h);
    let se: u64 = a[..n].iter().zip(&b[..n]).map(|(&x, &y)| u64::from(x.abs_diff(y)).pow(2)).sum();
    if se == 0 {
        return f64::INFINITY;
    }
    #[allow(clippy::cast_precision_loss)]
    let mse = se as f64 / n as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_land_where_bt601_puts_them() {
        let mut fb = Framebuffer::new(4, 3);
        fb.fill(fb.bounds(), 0x00ff_ffff);
        fb.fill(Rect { x: 0, y: 0, w: 2, h: 2 }, 0);
        fb.fill(Rect { x: 2, y: 0, w: 2, h: 2 }, 0x00ff_0000);
        let pic = to_i420(&fb, Rect { x: 0, y: 0, w: 4, h: 3 });
        assert_eq!(pic.len(), 4 * 3 + 2 * 2 * 2);
        assert_eq!(pic[0], 16, "black");
        assert_eq!(pic[2], 82, "red");
        assert_eq!(pic[8], 235, "white");
        let (u, v) = (&pic[12..16], &pic[16..20]);
        assert_eq!((u[0], v[0]), (128, 128), "black has no colour");
        assert_eq!((u[1], v[1]), (90, 240), "red");
        assert_eq!((u[2], v[2]), (128, 128), "white has no colour");
        // A rectangle inside the screen reads its own pixels.
        let part = to_i420(&fb, Rect { x: 2, y: 2, w: 2, h: 1 });
        assert_eq!(&part[..2], &[235, 235]);
    }

    #[test]
    fn psnr_is_infinite_for_equal_pictures_and_falls_with_error() {
        let a = vec![100u8; i420_len(8, 8)];
        let mut b = a.clone();
        assert!(psnr_y(&a, &b, 8, 8).is_infinite());
        b[0] = 110;
        let close = psnr_y(&a, &b, 8, 8);
        b[1..20].fill(150);
        assert!(psnr_y(&a, &b, 8, 8) < close);
    }
}
