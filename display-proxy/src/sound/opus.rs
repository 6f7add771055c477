//! The Opus encoder: Debian's libopus (`libopus-dev`), linked in statically, behind a safe
//! type. Only what the proxy uses is bound: an encoder for 48 kHz stereo, its bitrate and
//! complexity, and encoding one frame of 16-bit samples.

use std::ffi::c_int;
use std::ptr::NonNull;

/// `OPUS_APPLICATION_AUDIO`: music and other sound, not only speech.
const APPLICATION_AUDIO: c_int = 2049;
const SET_BITRATE_REQUEST: c_int = 4002;
const SET_COMPLEXITY_REQUEST: c_int = 4010;
const OK: c_int = 0;

#[repr(C)]
struct RawEncoder {
    _private: [u8; 0],
}

// Linked by build.rs (`libopus.a`).
unsafe extern "C" {
    fn opus_encoder_create(
        fs: i32,
        channels: c_int,
        application: c_int,
        error: *mut c_int,
    ) -> *mut RawEncoder;
    fn opus_encode(
        st: *mut RawEncoder,
        pcm: *const i16,
        frame_size: c_int,
        data: *mut u8,
        max_data_bytes: i32,
    ) -> i32;
    fn opus_encoder_ctl(st: *mut RawEncoder, request: c_int, ...) -> c_int;
    fn opus_encoder_destroy(st: *mut RawEncoder);
}

/// An Opus encoder for interleaved stereo 16-bit samples.
#[derive(Debug)]
pub struct Encoder {
    raw: NonNull<RawEncoder>,
}

// SAFETY: the encoder's state is only reached through `&mut self` (one thread at a time); libopus
// keeps no thread-local state.
unsafe impl Send for Encoder {}

impl Encoder {
    /// A stereo encoder at `rate` Hz (8000, 12000, 16000, 24000 or 48000) with this bitrate
    /// and complexity (0 to 10: CPU against quality).
    pub fn new(rate: u32, bitrate: u32, complexity: u8) -> Result<Self, String> {
        let rate = i32::try_from(rate).map_err(|_| format!("sample rate {rate}"))?;
        let mut error: c_int = 0;
        // SAFETY: plain values in, a pointer to our `error` that outlives the call.
        let raw = unsafe { opus_encoder_create(rate, 2, APPLICATION_AUDIO, &mut error) };
        let raw = NonNull::new(raw)
            .filter(|_| error == OK)
            .ok_or_else(|| format!("opus_encoder_create failed ({error})"))?;
        let enc = Self { raw };
        let bitrate = i32::try_from(bitrate).map_err(|_| format!("bitrate {bitrate}"))?;
        // SAFETY: a live encoder; these requests take one `opus_int32` argument.
        let set = unsafe {
            [
                opus_encoder_ctl(enc.raw.as_ptr(), SET_BITRATE_REQUEST, bitrate),
                opus_encoder_ctl(enc.raw.as_ptr(), SET_COMPLEXITY_REQUEST, i32::from(complexity)),
            ]
        };
        if let Some(e) = set.iter().find(|&&r| r != OK) {
            return Err(format!("opus_encoder_ctl failed ({e})"));
        }
        Ok(enc)
    }

    /// Encodes one frame: `pcm` is interleaved stereo (left, right, ...) of a length Opus takes
    /// (2.5 to 60 ms of samples). Returns the packet's length in `out`.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, String> {
        let frame = c_int::try_from(pcm.len() / 2).map_err(|_| "frame too long".to_owned())?;
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: a live encoder; `pcm` holds `frame` stereo samples and `out` has `max` bytes,
        // both borrowed for the call.
        let n =
            unsafe { opus_encode(self.raw.as_ptr(), pcm.as_ptr(), frame, out.as_mut_ptr(), max) };
        usize::try_from(n).map_err(|_| format!("opus_encode failed ({n})"))
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: made by opus_encoder_create, destroyed once.
        unsafe { opus_encoder_destroy(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
pub(crate) mod decode {
    //! A decoder, for tests to hear what was encoded.
    use std::ffi::c_int;

    #[repr(C)]
    struct RawDecoder {
        _private: [u8; 0],
    }

    unsafe extern "C" {
        fn opus_decoder_create(fs: i32, channels: c_int, error: *mut c_int) -> *mut RawDecoder;
        fn opus_decode(
            st: *mut RawDecoder,
            data: *const u8,
            len: i32,
            pcm: *mut i16,
            frame_size: c_int,
            decode_fec: c_int,
        ) -> c_int;
        fn opus_decoder_destroy(st: *mut RawDecoder);
    }

    /// Decodes `packets` (48 kHz stereo) into interleaved samples.
    pub fn decode_all(packets: &[Vec<u8>]) -> Vec<i16> {
        let mut error = 0;
        // SAFETY: plain values in; checked below.
        let dec = unsafe { opus_decoder_create(48_000, 2, &mut error) };
        assert!(!dec.is_null() && error == 0, "opus_decoder_create: {error}");
        let mut out = Vec::new();
        let mut buf = vec![0i16; 5760 * 2];
        for p in packets {
            // SAFETY: a live decoder, a packet and a buffer of 5760 stereo samples.
            let n = unsafe {
                opus_decode(
                    dec,
                    p.as_ptr(),
                    i32::try_from(p.len()).unwrap(),
                    buf.as_mut_ptr(),
                    5760,
                    0,
                )
            };
            assert!(n > 0, "opus_decode: {n}");
            out.extend_from_slice(&buf[..usize::try_from(n).unwrap() * 2]);
        }
        // SAFETY: made above, destroyed once.
        unsafe { opus_decoder_destroy(dec) };
        out
    }
}
