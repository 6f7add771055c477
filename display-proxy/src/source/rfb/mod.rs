//! An RFB 3.8 client (RFC 6143): QEMU's VNC socket, or any VNC server with security type None.
//!
//! The capture thread reads and decodes updates (Raw, CopyRect, ZRLE; DesktopSize, QEMU
//! extended key event, cursor and LastRect pseudo-encodings); a writer thread sends update
//! requests, keys and pointer events, so input never waits behind a large update.

mod stream;
pub mod zrle;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrium_protocol::display::{MAX_CLIPBOARD, Rect};
use atrium_protocol::keymap;

use self::stream::Reader;
pub use self::stream::Stream;
use self::zrle::ZrleDecoder;
use crate::framebuffer::{Framebuffer, MAX_DIMENSION};
use crate::source::{
    ChannelInput, CursorShape, FramebufferSource, InputEvent, InputSink, SourceError, SourceEvent,
    Stopper,
};

const ENC_RAW: i32 = 0;
const ENC_COPYRECT: i32 = 1;
const ENC_ZRLE: i32 = 16;
const ENC_CURSOR: i32 = -239;
const ENC_DESKTOP_SIZE: i32 = -223;
const ENC_LAST_RECT: i32 = -224;
const ENC_QEMU_EXT_KEY: i32 = -258;
const ENC_EXT_DESKTOP_SIZE: i32 = -308;

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest pointer image accepted (larger ones are skipped).
const MAX_CURSOR: u16 = 256;
/// Input events queued for the writer thread.
const INPUT_QUEUE: usize = 1024;

/// Where the VNC server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RfbTarget {
    /// A unix socket (QEMU `-vnc unix:PATH`): Raw is cheapest there.
    Unix(PathBuf),
    /// `host:port`: ZRLE first, to save bandwidth to a remote server.
    Tcp(String),
}

#[derive(Debug)]
enum Out {
    Input(InputEvent),
}

/// State shared with the writer thread.
#[derive(Debug, Default)]
struct Shared {
    ext_keys: AtomicBool,
    /// `width << 16 | height`.
    size: AtomicU32,
}

impl Shared {
    fn set_size(&self, w: u16, h: u16) {
        self.size.store((u32::from(w) << 16) | u32::from(h), Ordering::Relaxed);
    }
    fn size(&self) -> (u16, u16) {
        let v = self.size.load(Ordering::Relaxed);
        let w = u16::try_from(v >> 16).expect("16 bits");
        let h = u16::try_from(v & 0xffff).expect("16 bits");
        (w, h)
    }
}

#[derive(Debug)]
struct RfbStopper {
    stream: Mutex<Option<Stream>>,
    stopped: AtomicBool,
}

impl Stopper for RfbStopper {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(s) = self.stream.lock().expect("stopper lock").take() {
            s.shutdown();
        }
    }
}

/// A connected RFB session.
#[derive(Debug)]
pub struct RfbSource {
    name: String,
    width: u16,
    height: u16,
    reader: Reader<Stream>,
    /// The write half, shared with the writer thread (whole messages under the lock).
    writer: Arc<Mutex<Stream>>,
    input: Arc<ChannelInput<Out>>,
    shared: Arc<Shared>,
    stopper: Arc<RfbStopper>,
    outstanding: bool,
    need_full: bool,
    zrle: ZrleDecoder,
    rowbuf: Vec<u8>,
}

impl RfbSource {
    /// Connects and completes the handshake (security None, shared session).
    pub fn connect(target: &RfbTarget) -> Result<Self, SourceError> {
        let (stream, prefer_zrle) = match target {
            RfbTarget::Unix(p) => (Stream::connect_unix(p)?, false),
            RfbTarget::Tcp(a) => (Stream::connect_tcp(a, HANDSHAKE_TIMEOUT)?, true),
        };
        Self::handshake(stream, prefer_zrle)
    }

    /// Runs the handshake over an already connected stream.
    pub fn handshake(stream: Stream, prefer_zrle: bool) -> Result<Self, SourceError> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut w = stream.try_clone()?;
        let stop_handle = stream.try_clone()?;
        let mut r = Reader::new(stream);

        let mut version = [0u8; 12];
        r.exact(&mut version)?;
        let minor = parse_version(&version)?;
        let reply: &[u8; 12] = if minor >= 8 { b"RFB 003.008\n" } else { b"RFB 003.007\n" };
        w.write_all(reply)?;

        let n = r.u8()?;
        if n == 0 {
            let reason = read_reason(&mut r)?;
            return Err(SourceError::protocol(format!("the VNC server refused us: {reason}")));
        }
        let mut types = vec![0u8; usize::from(n)];
        r.exact(&mut types)?;
        if !types.contains(&1) {
            return Err(SourceError::Unsupported(format!(
                "the VNC server wants authentication (security types {types:?}); only None is supported"
            )));
        }
        w.write_all(&[1])?;
        if minor >= 8 {
            let result = r.u32()?;
            if result != 0 {
                let reason = read_reason(&mut r)?;
                return Err(SourceError::protocol(format!("security handshake failed: {reason}")));
            }
        }
        // ClientInit: shared, so other viewers (and noVNC in the benchmark) keep their sessions.
        w.write_all(&[1])?;
        let width = r.u16()?;
        let height = r.u16()?;
        check_size(width, height)?;
        let mut _server_format = [0u8; 16];
        r.exact(&mut _server_format)?;
        let name_len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if name_len > 64 * 1024 {
            return Err(SourceError::protocol("desktop name longer than 64 KiB"));
        }
        let name = String::from_utf8_lossy(&r.vec(name_len)?).chars().take(255).collect();

        // Our pixel format: 32 bpp, depth 24, little-endian, true colour, R at 16, G 8, B 0.
        let mut msg = vec![0u8, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
        let mut encodings = if prefer_zrle {
            vec![ENC_ZRLE, ENC_COPYRECT, ENC_RAW]
        } else {
            vec![ENC_RAW, ENC_COPYRECT, ENC_ZRLE]
        };
        encodings.extend([
            ENC_DESKTOP_SIZE,
            ENC_EXT_DESKTOP_SIZE,
            ENC_QEMU_EXT_KEY,
            ENC_CURSOR,
            ENC_LAST_RECT,
        ]);
        msg.extend_from_slice(&[2, 0]);
        msg.extend_from_slice(&u16::try_from(encodings.len()).expect("few").to_be_bytes());
        for e in encodings {
            msg.extend_from_slice(&e.to_be_bytes());
        }
        w.write_all(&msg)?;
        r.get_ref().set_read_timeout(None)?;

        let shared = Arc::new(Shared::default());
        shared.set_size(width, height);
        let (tx, rx) = sync_channel(INPUT_QUEUE);
        let writer_shared = Arc::clone(&shared);
        let writer = Arc::new(Mutex::new(w));
        let thread_writer = Arc::clone(&writer);
        std::thread::Builder::new()
            .name("rfb-writer".into())
            .spawn(move || writer_loop(&thread_writer, &rx, &writer_shared))?;
        Ok(Self {
            name,
            width,
            height,
            reader: r,
            input: Arc::new(ChannelInput::new(tx, Out::Input)),
            writer,
            shared,
            stopper: Arc::new(RfbStopper {
                stream: Mutex::new(Some(stop_handle)),
                stopped: AtomicBool::new(false),
            }),
            outstanding: false,
            need_full: true,
            zrle: ZrleDecoder::new(),
            rowbuf: Vec::new(),
        })
    }

    /// Whether the server offered QEMU's extended key event (scancodes).
    pub fn has_extended_keys(&self) -> bool {
        self.shared.ext_keys.load(Ordering::Relaxed)
    }

    fn stopped_or(&self, e: SourceError) -> SourceError {
        if self.stopper.stopped.load(Ordering::SeqCst) { SourceError::Stopped } else { e }
    }

    /// Asks for the next update (written here, not through the writer thread: one thread
    /// hand-off less per frame).
    fn request(&mut self) -> Result<(), SourceError> {
        let mut buf = vec![3, u8::from(!self.need_full), 0, 0, 0, 0];
        buf.extend_from_slice(&self.width.to_be_bytes());
        buf.extend_from_slice(&self.height.to_be_bytes());
        self.writer.lock().expect("RFB writer lock").write_all(&buf)?;
        self.need_full = false;
        self.outstanding = true;
        Ok(())
    }

    fn read_message(
        &mut self,
        fb: &mut Framebuffer,
    ) -> Result<Option<Vec<SourceEvent>>, SourceError> {
        let ty = self.reader.u8()?;
        match ty {
            0 => {
                let events = self.read_update(fb)?;
                self.outstanding = false;
                Ok(Some(events))
            }
            1 => {
                // SetColourMapEntries (we asked for true colour; skip it).
                self.reader.u8()?;
                self.reader.u16()?;
                let n = self.reader.u16()?;
                self.reader.skip(usize::from(n) * 6)?;
                Ok(None)
            }
            2 => Ok(None), // Bell
            3 => {
                let mut pad = [0u8; 3];
                self.reader.exact(&mut pad)?;
                let len = self.reader.i32()?;
                let n = usize::try_from(len.unsigned_abs()).unwrap_or(usize::MAX);
                if n > MAX_CLIPBOARD {
                    return Err(SourceError::protocol("server cut text over the clipboard limit"));
                }
                let bytes = self.reader.vec(n)?;
                if len < 0 {
                    // Extended clipboard message (not negotiated): ignore.
                    return Ok(None);
                }
                // Latin-1 by the RFB specification.
                let text: String = bytes.iter().map(|&b| char::from(b)).collect();
                Ok(Some(vec![SourceEvent::Clipboard(text)]))
            }
            150 => Ok(None), // EndOfContinuousUpdates
            other => Err(SourceError::protocol(format!("unknown server message type {other}"))),
        }
    }

    fn read_update(&mut self, fb: &mut Framebuffer) -> Result<Vec<SourceEvent>, SourceError> {
        if fb.width() != self.width || fb.height() != self.height {
            fb.resize(self.width, self.height);
        }
        self.reader.u8()?;
        let count = self.reader.u16()?;
        let mut events = Vec::new();
        for _ in 0..count {
            let r = Rect {
                x: self.reader.u16()?,
                y: self.reader.u16()?,
                w: self.reader.u16()?,
                h: self.reader.u16()?,
            };
            let enc = self.reader.i32()?;
            match enc {
                ENC_RAW | ENC_COPYRECT | ENC_ZRLE => {
                    if !fb.contains(r) {
                        return Err(SourceError::protocol(format!(
                            "rectangle {r:?} outside the {}x{} screen",
                            self.width, self.height
                        )));
                    }
                    self.read_pixels(enc, r, fb)?;
                    if r.w > 0 && r.h > 0 {
                        events.push(SourceEvent::Damage(r));
                    }
                }
                ENC_DESKTOP_SIZE => self.resize(r.w, r.h, fb, &mut events)?,
                ENC_EXT_DESKTOP_SIZE => {
                    let screens = self.reader.u8()?;
                    self.reader.skip(3 + usize::from(screens) * 16)?;
                    // y is a status code; non-zero answers a request we never make.
                    if r.y == 0 {
                        self.resize(r.w, r.h, fb, &mut events)?;
                    }
                }
                ENC_QEMU_EXT_KEY => self.shared.ext_keys.store(true, Ordering::Relaxed),
                ENC_CURSOR => {
                    if let Some(c) = self.read_cursor(r)? {
                        events.push(SourceEvent::Cursor(c));
                    }
                }
                ENC_LAST_RECT => break,
                other => {
                    return Err(SourceError::protocol(format!("unexpected encoding {other}")));
                }
            }
        }
        Ok(events)
    }

    fn resize(
        &mut self,
        w: u16,
        h: u16,
        fb: &mut Framebuffer,
        events: &mut Vec<SourceEvent>,
    ) -> Result<(), SourceError> {
        check_size(w, h)?;
        if (w, h) == (self.width, self.height) && (fb.width(), fb.height()) == (w, h) {
            // Servers announce the size again after every full update request (QEMU does with
            // ExtendedDesktopSize); the same size changes nothing.
            return Ok(());
        }
        self.width = w;
        self.height = h;
        self.shared.set_size(w, h);
        fb.resize(w, h);
        self.need_full = true;
        events.retain(|e| !matches!(e, SourceEvent::Damage(_)));
        events.push(SourceEvent::Resized { width: w, height: h });
        Ok(())
    }

    fn read_pixels(&mut self, enc: i32, r: Rect, fb: &mut Framebuffer) -> Result<(), SourceError> {
        match enc {
            ENC_RAW => {
                for y in r.y..r.y + r.h {
                    let row = fb.span_mut(r.x, y, r.w);
                    read_pixels_into(&mut self.reader, row, &mut self.rowbuf)?;
                }
            }
            ENC_COPYRECT => {
                let sx = self.reader.u16()?;
                let sy = self.reader.u16()?;
                if !fb.contains(Rect { x: sx, y: sy, w: r.w, h: r.h }) {
                    return Err(SourceError::protocol("CopyRect source outside the screen"));
                }
                fb.copy_within(r, sx, sy);
            }
            _ => {
                let len = usize::try_from(self.reader.u32()?).unwrap_or(usize::MAX);
                let limit = usize::from(r.w) * usize::from(r.h) * 5 + 4096;
                if len > limit {
                    return Err(SourceError::protocol(
                        "ZRLE data larger than its rectangle allows",
                    ));
                }
                let data = self.reader.vec(len)?;
                self.zrle.decode(&data, r, fb)?;
            }
        }
        Ok(())
    }

    fn read_cursor(&mut self, r: Rect) -> Result<Option<CursorShape>, SourceError> {
        let pixels = usize::from(r.w) * usize::from(r.h) * 4;
        let mask_row = usize::from(r.w).div_ceil(8);
        let mask = mask_row * usize::from(r.h);
        if r.w > MAX_CURSOR || r.h > MAX_CURSOR {
            self.reader.skip(pixels + mask)?;
            return Ok(None);
        }
        let px = self.reader.vec(pixels)?;
        let bits = self.reader.vec(mask)?;
        let mut rgba = Vec::with_capacity(pixels);
        for y in 0..usize::from(r.h) {
            for x in 0..usize::from(r.w) {
                let i = (y * usize::from(r.w) + x) * 4;
                let visible = bits[y * mask_row + x / 8] & (0x80 >> (x % 8)) != 0;
                rgba.extend_from_slice(&[
                    px[i + 2],
                    px[i + 1],
                    px[i],
                    if visible { 255 } else { 0 },
                ]);
            }
        }
        Ok(Some(CursorShape { width: r.w, height: r.h, hot_x: r.x, hot_y: r.y, rgba }))
    }
}

impl FramebufferSource for RfbSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    fn input(&self) -> Arc<dyn InputSink> {
        Arc::clone(&self.input) as Arc<dyn InputSink>
    }

    fn stopper(&self) -> Arc<dyn Stopper> {
        Arc::clone(&self.stopper) as Arc<dyn Stopper>
    }

    fn next_update(&mut self, fb: &mut Framebuffer) -> Result<Vec<SourceEvent>, SourceError> {
        if self.stopper.stopped.load(Ordering::SeqCst) {
            return Err(SourceError::Stopped);
        }
        if !self.outstanding {
            self.request()?;
        }
        loop {
            match self.read_message(fb) {
                Ok(Some(events)) => return Ok(events),
                Ok(None) => {}
                Err(e) => return Err(self.stopped_or(e)),
            }
        }
    }
}

impl Drop for RfbSource {
    fn drop(&mut self) {
        self.stopper.stop();
    }
}

/// Reads little-endian 32-bit pixels straight into `row`, dropping the unused top byte.
#[cfg(target_endian = "little")]
fn read_pixels_into(
    r: &mut Reader<Stream>,
    row: &mut [u32],
    _scratch: &mut Vec<u8>,
) -> Result<(), SourceError> {
    let len = std::mem::size_of_val(row);
    // SAFETY: the byte slice covers exactly the memory of `row` (len bytes, u32 has no padding
    // and every bit pattern is a valid u32), is the only view of it while it lives, and ends
    // before `row` is used again. On a little-endian host the bytes are the pixels' own.
    let bytes = unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast::<u8>(), len) };
    r.exact(bytes)?;
    for p in row {
        *p &= 0x00ff_ffff;
    }
    Ok(())
}

/// Reads little-endian 32-bit pixels into `row` (big-endian hosts convert each pixel).
#[cfg(not(target_endian = "little"))]
fn read_pixels_into(
    r: &mut Reader<Stream>,
    row: &mut [u32],
    scratch: &mut Vec<u8>,
) -> Result<(), SourceError> {
    scratch.resize(row.len() * 4, 0);
    r.exact(scratch)?;
    for (p, b) in row.iter_mut().zip(scratch.chunks_exact(4)) {
        *p = u32::from_le_bytes([b[0], b[1], b[2], 0]);
    }
    Ok(())
}

fn parse_version(v: &[u8; 12]) -> Result<u32, SourceError> {
    let s = std::str::from_utf8(v).map_err(|_| SourceError::protocol("not an RFB server"))?;
    let rest = s.strip_prefix("RFB ").ok_or_else(|| SourceError::protocol("not an RFB server"))?;
    let (major, minor) = rest
        .trim_end_matches('\n')
        .split_once('.')
        .ok_or_else(|| SourceError::protocol("bad RFB version"))?;
    let major: u32 = major.parse().map_err(|_| SourceError::protocol("bad RFB version"))?;
    let minor: u32 = minor.parse().map_err(|_| SourceError::protocol("bad RFB version"))?;
    if major != 3 || minor < 7 {
        return Err(SourceError::Unsupported(format!(
            "RFB version {major}.{minor} (need 3.7 or 3.8)"
        )));
    }
    Ok(minor.min(8))
}

fn read_reason(r: &mut Reader<Stream>) -> Result<String, SourceError> {
    let n = usize::try_from(r.u32()?).unwrap_or(usize::MAX).min(4096);
    Ok(String::from_utf8_lossy(&r.vec(n)?).into_owned())
}

fn check_size(w: u16, h: u16) -> Result<(), SourceError> {
    if w == 0 || h == 0 || w > MAX_DIMENSION || h > MAX_DIMENSION {
        return Err(SourceError::protocol(format!("screen size {w}x{h} out of range")));
    }
    Ok(())
}

/// Sends requests and input to the server until the channel or the socket closes.
fn writer_loop(w: &Mutex<Stream>, rx: &Receiver<Out>, shared: &Shared) {
    while let Ok(msg) = rx.recv() {
        let mut buf = Vec::with_capacity(32);
        match msg {
            Out::Input(InputEvent::Key { down, keysym, evdev }) => {
                let qnum = evdev.and_then(keymap::evdev_to_qnum);
                match qnum {
                    Some(q) if shared.ext_keys.load(Ordering::Relaxed) => {
                        buf.extend_from_slice(&[255, 0]);
                        buf.extend_from_slice(&u16::from(down).to_be_bytes());
                        buf.extend_from_slice(&keysym.to_be_bytes());
                        buf.extend_from_slice(&u32::from(q).to_be_bytes());
                    }
                    _ if keysym != 0 => {
                        buf.extend_from_slice(&[4, u8::from(down), 0, 0]);
                        buf.extend_from_slice(&keysym.to_be_bytes());
                    }
                    _ => continue,
                }
            }
            Out::Input(InputEvent::Pointer { x, y, buttons: b, wheel_x, wheel_y }) => {
                let (w, h) = shared.size();
                let x = x.min(w.saturating_sub(1));
                let y = y.min(h.saturating_sub(1));
                let buttons = b & 0x07;
                pointer(&mut buf, buttons, x, y);
                for (steps, neg_bit, pos_bit) in [(wheel_y, 3, 4), (wheel_x, 5, 6)] {
                    let bit = if steps < 0 { neg_bit } else { pos_bit };
                    for _ in 0..steps.unsigned_abs().min(16) {
                        pointer(&mut buf, buttons | (1 << bit), x, y);
                        pointer(&mut buf, buttons, x, y);
                    }
                }
            }
        }
        if w.lock().expect("RFB writer lock").write_all(&buf).is_err() {
            return;
        }
    }
}

fn pointer(buf: &mut Vec<u8>, mask: u8, x: u16, y: u16) {
    buf.extend_from_slice(&[5, mask]);
    buf.extend_from_slice(&x.to_be_bytes());
    buf.extend_from_slice(&y.to_be_bytes());
}

#[cfg(test)]
mod tests;
