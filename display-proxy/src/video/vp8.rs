//! The VP8 encoder: Debian's libvpx, linked in statically, through the C shim `vp8.c`, behind
//! a safe type. Real-time settings: one thread, no look-ahead, constant bitrate, key frames
//! when asked for.

use std::ffi::c_int;
use std::ptr::NonNull;

use atrium_protocol::display::MAX_VIDEO_FRAME;

use super::yuv::i420_len;

#[repr(C)]
struct RawEncoder {
    _private: [u8; 0],
}

#[repr(C)]
struct RawDecoder {
    _private: [u8; 0],
}

// Compiled and linked by build.rs.
unsafe extern "C" {
    fn atrium_vp8_new(
        width: u32,
        height: u32,
        kbps: u32,
        cpu_used: c_int,
        err: *mut c_int,
    ) -> *mut RawEncoder;
    fn atrium_vp8_set_speed(e: *mut RawEncoder, cpu_used: c_int) -> c_int;
    fn atrium_vp8_set_bitrate(e: *mut RawEncoder, kbps: u32) -> c_int;
    fn atrium_vp8_encode(
        e: *mut RawEncoder,
        i420: *const u8,
        pts_ms: i64,
        force_key: c_int,
        out: *mut u8,
        cap: usize,
        len: *mut usize,
        key: *mut c_int,
    ) -> c_int;
    fn atrium_vp8_free(e: *mut RawEncoder);
    fn atrium_vp8_decoder_new() -> *mut RawDecoder;
    fn atrium_vp8_decode(
        d: *mut RawDecoder,
        data: *const u8,
        len: usize,
        out: *mut u8,
        cap: usize,
        width: *mut u32,
        height: *mut u32,
    ) -> c_int;
    fn atrium_vp8_decoder_free(d: *mut RawDecoder);
}

/// Fastest `cpu_used` (VP8's speed setting for real time: higher is faster and coarser).
pub const FASTEST: i32 = 16;

/// A VP8 encoder for pictures of one size.
#[derive(Debug)]
pub struct Encoder {
    raw: NonNull<RawEncoder>,
    width: u16,
    height: u16,
    /// Where libvpx's frames are written, made once: a frame is at most the raw picture plus
    /// headers (checked by the shim), and no more than a viewer takes.
    out: Vec<u8>,
}

// SAFETY: the encoder's state is only reached through `&mut self` (one thread at a time);
// libvpx keeps no thread-local state.
unsafe impl Send for Encoder {}

/// One encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub data: Vec<u8>,
    pub key: bool,
}

impl Encoder {
    /// An encoder for `width` x `height` pictures at `kbps`, with speed `cpu_used` (0 to 16).
    /// Both sides even: libvpx lays out the chroma planes of odd sizes its own way, which
    /// differs between its versions.
    pub fn new(width: u16, height: u16, kbps: u32, cpu_used: i32) -> Result<Self, String> {
        if width == 0 || height == 0 || width % 2 == 1 || height % 2 == 1 {
            return Err(format!("not an even, non-empty picture size ({width}x{height})"));
        }
        let mut err: c_int = 0;
        // SAFETY: plain values in, a pointer to our `err` that outlives the call.
        let raw = unsafe {
            atrium_vp8_new(u32::from(width), u32::from(height), kbps.max(1), cpu_used, &mut err)
        };
        let raw = NonNull::new(raw).ok_or_else(|| format!("VP8 encoder setup failed ({err})"))?;
        let out = vec![0u8; (i420_len(width, height) + 4096).min(MAX_VIDEO_FRAME)];
        Ok(Self { raw, width, height, out })
    }

    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// Sets the speed (0 to 16; higher is faster and coarser).
    pub fn set_speed(&mut self, cpu_used: i32) -> Result<(), String> {
        // SAFETY: a live encoder.
        let r = unsafe { atrium_vp8_set_speed(self.raw.as_ptr(), cpu_used) };
        if r == 0 { Ok(()) } else { Err(format!("VP8 speed {cpu_used} refused ({r})")) }
    }

    /// Sets the target bitrate.
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<(), String> {
        // SAFETY: a live encoder.
        let r = unsafe { atrium_vp8_set_bitrate(self.raw.as_ptr(), kbps.max(1)) };
        if r == 0 { Ok(()) } else { Err(format!("VP8 bitrate {kbps} kbit/s refused ({r})")) }
    }

    /// Encodes one I420 picture of the encoder's size (see [`super::yuv`]) taken at `pts_ms`
    /// (growing); a key frame when `key` (else the encoder chooses, and only the first frame
    /// is one).
    pub fn encode(&mut self, i420: &[u8], pts_ms: i64, key: bool) -> Result<Packet, String> {
        if i420.len() != i420_len(self.width, self.height) {
            return Err(format!(
                "a {}-byte picture for a {}x{} encoder",
                i420.len(),
                self.width,
                self.height
            ));
        }
        let (mut len, mut is_key) = (0usize, 0 as c_int);
        // SAFETY: a live encoder; `i420` holds a whole picture of the encoder's size (checked
        // above) and `out` has `self.out.len()` bytes, both borrowed for the call.
        let r = unsafe {
            atrium_vp8_encode(
                self.raw.as_ptr(),
                i420.as_ptr(),
                pts_ms,
                c_int::from(key),
                self.out.as_mut_ptr(),
                self.out.len(),
                &mut len,
                &mut is_key,
            )
        };
        if r != 0 {
            return Err(format!("VP8 encode failed ({r})"));
        }
        // Frames are never dropped (the shim sets no drop threshold); an empty one would be a
        // message viewers refuse.
        if len == 0 {
            return Err("the VP8 encoder made no frame".into());
        }
        Ok(Packet { data: self.out[..len].to_vec(), key: is_key != 0 })
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: made by atrium_vp8_new, freed once.
        unsafe { atrium_vp8_free(self.raw.as_ptr()) }
    }
}

/// A VP8 decoder, for tests and the benchmark to see what was encoded.
#[derive(Debug)]
pub struct Decoder {
    raw: NonNull<RawDecoder>,
}

// SAFETY: as for the encoder.
unsafe impl Send for Decoder {}

impl Decoder {
    pub fn new() -> Result<Self, String> {
        // SAFETY: no arguments.
        let raw = unsafe { atrium_vp8_decoder_new() };
        Ok(Self { raw: NonNull::new(raw).ok_or("VP8 decoder setup failed")? })
    }

    /// Decodes one frame: its size and its I420 picture.
    pub fn decode(&mut self, data: &[u8]) -> Result<(u16, u16, Vec<u8>), String> {
        let mut out = vec![0u8; i420_len(u16::MAX, u16::MAX).min(64 << 20)];
        let (mut w, mut h) = (0u32, 0u32);
        // SAFETY: a live decoder; `data` and `out` borrowed for the call, with their lengths.
        let r = unsafe {
            atrium_vp8_decode(
                self.raw.as_ptr(),
                data.as_ptr(),
                data.len(),
                out.as_mut_ptr(),
                out.len(),
                &mut w,
                &mut h,
            )
        };
        if r != 0 {
            return Err(format!("VP8 decode failed ({r})"));
        }
        let (w, h) =
            (u16::try_from(w).map_err(|_| "width")?, u16::try_from(h).map_err(|_| "height")?);
        out.truncate(i420_len(w, h));
        Ok((w, h, out))
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: made by atrium_vp8_decoder_new, freed once.
        unsafe { atrium_vp8_decoder_free(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framebuffer::Framebuffer;
    use crate::video::yuv::{psnr_y, to_i420};
    use atrium_protocol::display::Rect;

    /// A photo-like picture that moves by `t` pixels.
    fn scene(fb: &mut Framebuffer, t: u16) {
        let (w, h) = (fb.width(), fb.height());
        for y in 0..h {
            for (x, p) in fb.span_mut(0, y, w).iter_mut().enumerate() {
                let x = u32::try_from(x).expect("small") + u32::from(t) * 3;
                let y = u32::from(y) + u32::from(t);
                let r = (x * 2 + y) & 0xff;
                let g = (x ^ y) & 0xff;
                let b = ((x / 4) * (y / 4)) & 0xff;
                *p = (r << 16) | (g << 8) | b;
            }
        }
    }

    #[test]
    fn frames_encode_small_and_decode_close_to_the_original() {
        let (w, h) = (320u16, 240u16);
        let mut fb = Framebuffer::new(w, h);
        let mut enc = Encoder::new(w, h, 800, 8).expect("encoder");
        let mut dec = Decoder::new().expect("decoder");
        let r = Rect { x: 0, y: 0, w, h };
        let mut total = 0;
        for t in 0..10u16 {
            scene(&mut fb, t);
            let pic = to_i420(&fb, r);
            let p = enc.encode(&pic, i64::from(t) * 33, false).expect("encode");
            assert_eq!(p.key, t == 0, "only the first frame is a key frame");
            total += p.data.len();
            let (dw, dh, out) = dec.decode(&p.data).expect("decode");
            assert_eq!((dw, dh), (w, h));
            let q = psnr_y(&pic, &out, w, h);
            assert!(q > 25.0, "frame {t}: PSNR {q:.1} dB");
        }
        // Raw, the ten frames are 1.1 MiB of I420; as video, a small fraction of that.
        assert!(total < 10 * i420_len(w, h) / 10, "{total} bytes");
        // A key frame on request.
        let p = enc.encode(&to_i420(&fb, r), 400, true).expect("encode");
        assert!(p.key);
        dec.decode(&p.data).expect("decode a key frame");
        assert!(enc.set_speed(FASTEST).is_ok() && enc.set_bitrate(300).is_ok());
        assert!(enc.encode(&to_i420(&fb, r), 433, false).is_ok());
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(Encoder::new(0, 10, 100, 8).is_err());
        assert!(Encoder::new(64, 63, 100, 8).is_err(), "odd sizes are refused");
        let mut enc = Encoder::new(64, 64, 100, 8).expect("encoder");
        assert!(enc.encode(&[0; 10], 0, false).is_err(), "a picture of the wrong size");
        let mut dec = Decoder::new().expect("decoder");
        assert!(dec.decode(b"not a VP8 frame").is_err());
        assert!(dec.decode(&[]).is_err());
    }
}
