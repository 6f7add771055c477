//! An RFB 3.8 client (RFC 6143): QEMU's VNC socket, or any VNC server with security type None.
//!
//! The capture thread reads and decodes updates (Raw, CopyRect, ZRLE; DesktopSize, QEMU
//! extended key event, cursor and LastRect pseudo-encodings). Update requests, keys and
//! pointer events go through an [`Outbox`]: written at once by the thread that has them, so
//! input never waits behind a large update nor for a thread hand-off.

mod message;
mod outbox;
mod stream;
pub mod zrle;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::display::{AUDIO_RATE, Rect};
use atrium_protocol::keymap;

use self::message::{Cursor, scan, scan_work};
use self::outbox::{Outbox, OutboxError};
use self::stream::Reader;
pub use self::stream::Stream;
use self::zrle::ZrleDecoder;
use crate::framebuffer::{Framebuffer, MAX_DIMENSION};
use crate::source::{
    Buffered, CursorShape, FramebufferSource, InputError, InputEvent, InputSink, PolledSource,
    SourceError, SourceEvent, Stopper,
};

const ENC_RAW: i32 = 0;
const ENC_COPYRECT: i32 = 1;
const ENC_ZRLE: i32 = 16;
const ENC_CURSOR: i32 = -239;
const ENC_DESKTOP_SIZE: i32 = -223;
const ENC_LAST_RECT: i32 = -224;
const ENC_QEMU_EXT_KEY: i32 = -258;
/// QEMU's audio extension: the server acknowledges it with an empty rectangle.
const ENC_QEMU_AUDIO: i32 = -259;
/// QEMU's client and server message type, and its audio sub-type.
const MSG_QEMU: u8 = 255;
const QEMU_AUDIO: u8 = 1;
/// Audio operations: from the client enable (0) and set the format (2); from the server the
/// sound ends (0), begins (1), or data (2).
const AUDIO_ENABLE: u16 = 0;
const AUDIO_SET_FORMAT: u16 = 2;
const AUDIO_END: u16 = 0;
const AUDIO_DATA: u16 = 2;
/// QEMU's sample format number for signed 16-bit samples.
const AUDIO_S16: u8 = 3;
/// Largest audio data message taken (QEMU sends one per audio timer tick: a few KiB).
const MAX_AUDIO_DATA: usize = 256 * 1024;
const ENC_EXT_DESKTOP_SIZE: i32 = -308;

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest pointer image accepted (larger ones are skipped).
const MAX_CURSOR: u16 = 256;
/// Bytes asked of the socket at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Where the VNC server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RfbTarget {
    /// A unix socket (QEMU `-vnc unix:PATH`): Raw is cheapest there.
    Unix(PathBuf),
    /// `host:port`: ZRLE first, to save bandwidth to a remote server.
    Tcp(String),
}

/// State shared with input senders.
#[derive(Debug)]
struct Shared {
    ext_keys: AtomicBool,
    /// `width << 16 | height`.
    size: AtomicU32,
    /// When input last went to the server, in milliseconds since `base` (0: never).
    last_input_ms: AtomicU64,
    base: Instant,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            ext_keys: AtomicBool::new(false),
            size: AtomicU32::new(0),
            last_input_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }
}

impl Shared {
    fn note_input(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.last_input_ms.store(ms, Ordering::Relaxed);
    }

    /// When input last went to the server.
    fn last_input(&self) -> Option<Instant> {
        match self.last_input_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms)),
        }
    }

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
    outbox: Arc<Outbox>,
}

impl Stopper for RfbStopper {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.outbox.close();
        if let Some(s) = self.stream.lock().expect("stopper lock").take() {
            s.shutdown();
        }
    }
}

/// Input for an RFB desktop: each event is written to the socket by the caller's thread.
#[derive(Debug)]
struct RfbInput {
    outbox: Arc<Outbox>,
    shared: Arc<Shared>,
}

impl InputSink for RfbInput {
    fn send(&self, event: InputEvent) -> Result<(), InputError> {
        let Some(msg) = input_message(event, &self.shared) else { return Ok(()) };
        self.outbox.send(&msg, true).map_err(|e| match e {
            OutboxError::Full => InputError::Full,
            OutboxError::Closed => InputError::Closed,
        })?;
        self.shared.note_input();
        Ok(())
    }
}

/// Receive buffer capacity kept between messages.
const KEEP_BUFFER: usize = 1 << 20;

/// How often the refresh is nudged: under QEMU's 30 ms refresh interval, with room for timer
/// jitter.
const NUDGE_EVERY: Duration = Duration::from_millis(25);

/// When the first nudge is due after an update with pixels. That update came from a refresh
/// that found changes, after which QEMU keeps its 30 ms interval by itself; a refresh that
/// finds nothing lengthens it, so the nudge belongs after the next refresh (30 ms on) and
/// before the one after (60 ms on).
const NUDGE_AFTER_UPDATE: Duration = Duration::from_millis(35);

/// A client message that QEMU's VNC server takes and ignores: the release of a key that is
/// not pressed (QEMU's extended key event, key number 0; QEMU drops the release of a key it
/// has not seen pressed). Any client message of type 4 or more resets QEMU's refresh interval
/// to 30 ms.
const NUDGE: [u8; 12] = [255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A connected RFB session.
#[derive(Debug)]
pub struct RfbSource {
    name: String,
    width: u16,
    height: u16,
    /// The read side of the connection.
    stream: Stream,
    /// Received bytes; those before `head` are consumed.
    inbuf: Vec<u8>,
    head: usize,
    /// Where update requests (and input) are written.
    outbox: Arc<Outbox>,
    input: Arc<RfbInput>,
    shared: Arc<Shared>,
    stopper: Arc<RfbStopper>,
    outstanding: bool,
    need_full: bool,
    zrle: ZrleDecoder,
    /// For how long after input the server's refresh is kept fast (`None`: never).
    keep_refresh: Option<Duration>,
    next_nudge: Option<Instant>,
    /// When an update with pixels was last decoded.
    last_pixels: Option<Instant>,
    /// ZRLE before Raw in the encodings we ask for (over TCP).
    prefer_zrle: bool,
    /// The desktop's sound was asked for ([`RfbSource::enable_sound`]).
    sound: bool,
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
        Self::handshake_within(stream, prefer_zrle, HANDSHAKE_TIMEOUT)
    }

    /// The handshake, all of it within `limit`: a server sending a byte now and then must not
    /// hold the desktop's opening (and the viewers waiting for it) for long.
    fn handshake_within(
        mut stream: Stream,
        prefer_zrle: bool,
        limit: Duration,
    ) -> Result<Self, SourceError> {
        stream.set_read_timeout(Some(limit));
        let mut w = stream.try_clone()?;
        let stop_handle = stream.try_clone()?;
        stream.set_deadline(Some(Instant::now() + limit));
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
        msg.extend(set_encodings(prefer_zrle, false));
        w.write_all(&msg)?;
        let (mut stream, inbuf) = r.into_parts();
        stream.set_read_timeout(None);
        stream.set_deadline(None);

        let shared = Arc::new(Shared::default());
        shared.set_size(width, height);
        let for_thread = w.try_clone()?;
        let outbox = Outbox::start(w, for_thread)?;
        Ok(Self {
            name,
            width,
            height,
            stream,
            inbuf,
            head: 0,
            input: Arc::new(RfbInput { outbox: Arc::clone(&outbox), shared: Arc::clone(&shared) }),
            outbox: Arc::clone(&outbox),
            shared,
            stopper: Arc::new(RfbStopper {
                stream: Mutex::new(Some(stop_handle)),
                stopped: AtomicBool::new(false),
                outbox,
            }),
            outstanding: false,
            need_full: true,
            zrle: ZrleDecoder::new(),
            keep_refresh: None,
            next_nudge: None,
            last_pixels: None,
            prefer_zrle,
            sound: false,
        })
    }

    /// Asks the server for the desktop's sound (QEMU's audio extension): once it acknowledges
    /// the extension, sound is enabled as 16-bit stereo at 48 kHz and arrives as
    /// [`SourceEvent::Sound`]. Only for a QEMU whose VNC server has an audio backend: QEMU makes
    /// one up (and complains) for a VM without.
    pub fn enable_sound(&mut self) -> Result<(), SourceError> {
        self.sound = true;
        self.outbox
            .send(&set_encodings(self.prefer_zrle, true), false)
            .map_err(|e| SourceError::protocol(format!("asking for sound: {e:?}")))
    }

    /// Keeps QEMU's VNC refresh at its fastest for `window` after each input event.
    ///
    /// QEMU checks for screen changes on a timer that slows down (by 50 ms a step, to 2 s)
    /// while nothing changes, and a client message of type 4 or more (a key, a pointer event)
    /// resets it to 30 ms, checking at once when 30 ms have passed since the last check. So a
    /// keystroke after a pause is checked for at once, before the guest has drawn its echo,
    /// and then again 30 ms later: its echo is sent 30 ms after the key. With a message every
    /// 25 ms while the user is typing, the checks keep a steady 30 ms cadence, and an echo is
    /// sent at the first check after it is drawn (15 ms later on average). The price is one
    /// message to QEMU, and one refresh in QEMU, every 25 ms for `window` after each input.
    pub fn set_keep_refresh(&mut self, window: Option<Duration>) {
        self.keep_refresh = window.filter(|w| !w.is_zero());
    }

    /// Whether the server offered QEMU's extended key event (scancodes).
    pub fn has_extended_keys(&self) -> bool {
        self.shared.ext_keys.load(Ordering::Relaxed)
    }

    fn stopped_or(&self, e: SourceError) -> SourceError {
        if self.stopper.stopped.load(Ordering::SeqCst) { SourceError::Stopped } else { e }
    }

    /// Asks for the next update.
    fn request(&mut self) -> Result<(), SourceError> {
        let [w0, w1] = self.width.to_be_bytes();
        let [h0, h1] = self.height.to_be_bytes();
        let buf = [3, u8::from(!self.need_full), 0, 0, 0, 0, w0, w1, h0, h1];
        match self.outbox.send(&buf, false) {
            Ok(()) => self.need_full = false,
            // The server is not reading and hundreds of requests wait for it already: one
            // more asks for nothing new.
            Err(OutboxError::Full) => {}
            Err(OutboxError::Closed) => {
                return Err(self.stopped_or(SourceError::Io(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the VNC connection is closed",
                ))));
            }
        }
        self.outstanding = true;
        Ok(())
    }

    /// Asks for the next update unless one is asked for already.
    fn ensure_requested(&mut self) -> Result<(), SourceError> {
        if self.outstanding { Ok(()) } else { self.request() }
    }

    /// The bytes received and not yet consumed.
    fn pending(&self) -> &[u8] {
        &self.inbuf[self.head..]
    }

    /// Reads once from the socket without blocking (`Ok(0)`: the server closed).
    fn fill(&mut self) -> std::io::Result<usize> {
        if self.head > 0 && (self.head == self.inbuf.len() || self.head >= READ_CHUNK) {
            self.inbuf.drain(..self.head);
            self.head = 0;
        }
        self.stream.read_nonblocking(&mut self.inbuf, READ_CHUNK)
    }

    /// Waits for bytes and reads them.
    fn fill_blocking(&mut self) -> Result<(), SourceError> {
        loop {
            match self.fill() {
                Ok(0) => return Err(self.stopped_or(closed())),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.stream.wait_readable().map_err(|e| self.stopped_or(e.into()))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stopped_or(e.into())),
            }
        }
    }

    /// The length of the next message if all of it has been received.
    fn complete_message(&self) -> Result<Option<usize>, SourceError> {
        scan(self.pending(), self.width, self.height)
    }

    /// Decodes the complete message of `len` bytes at the front of the buffer, and asks for
    /// the next update after an update. `None`: a message with nothing to report.
    fn decode(
        &mut self,
        len: usize,
        fb: &mut Framebuffer,
    ) -> Result<Option<Vec<SourceEvent>>, SourceError> {
        let start = self.head;
        self.head += len;
        let buf = std::mem::take(&mut self.inbuf);
        let out = self.decode_message(&buf[start..start + len], fb);
        self.inbuf = buf;
        let out = out?;
        if self.head == self.inbuf.len() {
            self.inbuf.clear();
            self.head = 0;
            // A full-screen update needs a big buffer once; an idle desktop does not keep it.
            if self.inbuf.capacity() > KEEP_BUFFER {
                self.inbuf.shrink_to(KEEP_BUFFER);
            }
        }
        if !self.outstanding {
            self.request()?;
        }
        Ok(out)
    }

    fn decode_message(
        &mut self,
        msg: &[u8],
        fb: &mut Framebuffer,
    ) -> Result<Option<Vec<SourceEvent>>, SourceError> {
        let mut c = Cursor::new(msg);
        match c.u8()? {
            0 => {
                let events = self.read_update(&mut c, fb)?;
                self.outstanding = false;
                Ok(Some(events))
            }
            3 => {
                c.bytes(3)?;
                let len = c.i32()?;
                let n = usize::try_from(len.unsigned_abs()).unwrap_or(usize::MAX);
                let bytes = c.bytes(n)?;
                if len < 0 {
                    // Extended clipboard message (not negotiated): ignore.
                    return Ok(None);
                }
                // Latin-1 by the RFB specification.
                let text: String = bytes.iter().map(|&b| char::from(b)).collect();
                Ok(Some(vec![SourceEvent::Clipboard(text)]))
            }
            MSG_QEMU => {
                c.u8()?;
                match c.u16()? {
                    AUDIO_DATA => {
                        let n = usize::try_from(c.u32()?).unwrap_or(usize::MAX);
                        let data = c.bytes(n)?;
                        Ok(self.sound.then(|| vec![SourceEvent::Sound(data.to_vec())]))
                    }
                    AUDIO_END => Ok(self.sound.then(|| vec![SourceEvent::SoundEnded])),
                    _ => Ok(None),
                }
            }
            // SetColourMapEntries (we asked for true colour), Bell, EndOfContinuousUpdates.
            _ => Ok(None),
        }
    }

    fn read_update(
        &mut self,
        c: &mut Cursor<'_>,
        fb: &mut Framebuffer,
    ) -> Result<Vec<SourceEvent>, SourceError> {
        if fb.width() != self.width || fb.height() != self.height {
            fb.resize(self.width, self.height);
        }
        c.u8()?;
        let count = c.u16()?;
        let mut events = Vec::new();
        for _ in 0..count {
            let r = Rect { x: c.u16()?, y: c.u16()?, w: c.u16()?, h: c.u16()? };
            let enc = c.i32()?;
            match enc {
                ENC_RAW | ENC_COPYRECT | ENC_ZRLE => {
                    if !fb.contains(r) {
                        return Err(SourceError::protocol(format!(
                            "rectangle {r:?} outside the {}x{} screen",
                            self.width, self.height
                        )));
                    }
                    self.read_pixels(c, enc, r, fb)?;
                    if r.w > 0 && r.h > 0 {
                        events.push(SourceEvent::Damage(r));
                        self.last_pixels = Some(Instant::now());
                    }
                }
                ENC_DESKTOP_SIZE => self.resize(r.w, r.h, fb, &mut events)?,
                ENC_EXT_DESKTOP_SIZE => {
                    let screens = c.u8()?;
                    c.bytes(3 + usize::from(screens) * 16)?;
                    // y is a status code; non-zero answers a request we never make.
                    if r.y == 0 {
                        self.resize(r.w, r.h, fb, &mut events)?;
                    }
                }
                ENC_QEMU_EXT_KEY => self.shared.ext_keys.store(true, Ordering::Relaxed),
                ENC_QEMU_AUDIO if self.sound => {
                    let mut m = vec![MSG_QEMU, QEMU_AUDIO];
                    m.extend_from_slice(&AUDIO_SET_FORMAT.to_be_bytes());
                    m.push(AUDIO_S16);
                    m.push(2);
                    m.extend_from_slice(&AUDIO_RATE.to_be_bytes());
                    m.extend_from_slice(&[MSG_QEMU, QEMU_AUDIO]);
                    m.extend_from_slice(&AUDIO_ENABLE.to_be_bytes());
                    self.outbox
                        .send(&m, false)
                        .map_err(|e| SourceError::protocol(format!("enabling sound: {e:?}")))?;
                }
                ENC_QEMU_AUDIO => {}
                ENC_CURSOR => {
                    if let Some(cursor) = read_cursor(c, r)? {
                        events.push(SourceEvent::Cursor(cursor));
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

    fn read_pixels(
        &mut self,
        c: &mut Cursor<'_>,
        enc: i32,
        r: Rect,
        fb: &mut Framebuffer,
    ) -> Result<(), SourceError> {
        match enc {
            ENC_RAW => {
                let row_bytes = usize::from(r.w) * 4;
                for y in r.y..r.y + r.h {
                    copy_pixels(c.bytes(row_bytes)?, fb.span_mut(r.x, y, r.w));
                }
            }
            ENC_COPYRECT => {
                let sx = c.u16()?;
                let sy = c.u16()?;
                if !fb.contains(Rect { x: sx, y: sy, w: r.w, h: r.h }) {
                    return Err(SourceError::protocol("CopyRect source outside the screen"));
                }
                fb.copy_within(r, sx, sy);
            }
            _ => {
                let len = usize::try_from(c.u32()?).unwrap_or(usize::MAX);
                let limit = usize::from(r.w) * usize::from(r.h) * 5 + 4096;
                if len > limit {
                    return Err(SourceError::protocol(
                        "ZRLE data larger than its rectangle allows",
                    ));
                }
                let data = c.bytes(len)?;
                self.zrle.decode(data, r, fb)?;
            }
        }
        Ok(())
    }
}

/// A pointer shape (RFB Cursor pseudo-encoding), or `None` when it is too large to use.
fn read_cursor(c: &mut Cursor<'_>, r: Rect) -> Result<Option<CursorShape>, SourceError> {
    let pixels = usize::from(r.w) * usize::from(r.h) * 4;
    let mask_row = usize::from(r.w).div_ceil(8);
    let px = c.bytes(pixels)?;
    let bits = c.bytes(mask_row * usize::from(r.h))?;
    if r.w > MAX_CURSOR || r.h > MAX_CURSOR {
        return Ok(None);
    }
    let mut rgba = Vec::with_capacity(pixels);
    for y in 0..usize::from(r.h) {
        for x in 0..usize::from(r.w) {
            let i = (y * usize::from(r.w) + x) * 4;
            let visible = bits[y * mask_row + x / 8] & (0x80 >> (x % 8)) != 0;
            rgba.extend_from_slice(&[px[i + 2], px[i + 1], px[i], if visible { 255 } else { 0 }]);
        }
    }
    Ok(Some(CursorShape { width: r.w, height: r.h, hot_x: r.x, hot_y: r.y, rgba }))
}

/// Copies little-endian 32-bit pixels into `row`, dropping the unused top byte.
fn copy_pixels(bytes: &[u8], row: &mut [u32]) {
    for (p, b) in row.iter_mut().zip(bytes.chunks_exact(4)) {
        *p = u32::from_le_bytes([b[0], b[1], b[2], 0]);
    }
}

/// A SetEncodings message: Raw first on a unix socket (cheapest there), ZRLE first over TCP;
/// QEMU's audio extension when sound is wanted.
fn set_encodings(prefer_zrle: bool, sound: bool) -> Vec<u8> {
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
    if sound {
        encodings.push(ENC_QEMU_AUDIO);
    }
    let mut msg = vec![2, 0];
    msg.extend_from_slice(&u16::try_from(encodings.len()).expect("few").to_be_bytes());
    for e in encodings {
        msg.extend_from_slice(&e.to_be_bytes());
    }
    msg
}

fn closed() -> SourceError {
    SourceError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the VNC server closed the connection",
    ))
}

impl FramebufferSource for RfbSource {
    fn has_sound(&self) -> bool {
        self.sound
    }

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
        loop {
            if self.stopper.stopped.load(Ordering::SeqCst) {
                return Err(SourceError::Stopped);
            }
            if let Some(len) = self.complete_message()? {
                if let Some(events) = self.decode(len, fb)? {
                    return Ok(events);
                }
                continue;
            }
            self.ensure_requested()?;
            self.fill_blocking()?;
        }
    }

    fn polled(&mut self) -> Option<&mut dyn PolledSource> {
        Some(self)
    }
}

impl PolledSource for RfbSource {
    fn readiness(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.stream.dup_fd()
    }

    fn buffered_message(&mut self) -> Result<Option<Buffered>, SourceError> {
        if self.stopper.stopped.load(Ordering::SeqCst) {
            return Err(SourceError::Stopped);
        }
        let found = scan_work(self.pending(), self.width, self.height)?;
        if found.is_none() {
            self.ensure_requested()?;
        }
        Ok(found.map(|(len, work)| Buffered { len, work }))
    }

    fn read_available(&mut self) -> std::io::Result<usize> {
        self.fill()
    }

    fn keep_alive(&mut self, now: Instant) -> Option<Instant> {
        let window = self.keep_refresh?;
        if !self.shared.ext_keys.load(Ordering::Relaxed) {
            return None;
        }
        let last_input = self.shared.last_input()?;
        let until = last_input + window;
        if now >= until {
            self.next_nudge = None;
            return None;
        }
        // Each input message resets QEMU's interval as a nudge does, and an update with pixels
        // shows the interval is short: nudges are due only a period after the later of them,
        // so none go out while the pointer moves or the screen keeps changing.
        let mut due = *self.next_nudge.get_or_insert(now + NUDGE_EVERY);
        due = due.max(last_input + NUDGE_EVERY);
        if let Some(p) = self.last_pixels {
            due = due.max(p + NUDGE_AFTER_UPDATE);
        }
        self.next_nudge = Some(due);
        if now < due {
            return Some(due);
        }
        // A message that cannot go out now is not worth queueing: the next one follows.
        let _ = self.outbox.send(&NUDGE, true);
        let next = now + NUDGE_EVERY;
        self.next_nudge = Some(next);
        Some(next.min(until))
    }

    fn decode_message(
        &mut self,
        len: usize,
        fb: &mut Framebuffer,
    ) -> Result<Option<Vec<SourceEvent>>, SourceError> {
        self.decode(len, fb)
    }
}

impl Drop for RfbSource {
    fn drop(&mut self) {
        self.stopper.stop();
    }
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

/// The RFB message for an input event (`None`: nothing to send).
fn input_message(event: InputEvent, shared: &Shared) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(16);
    match event {
        InputEvent::Key { down, keysym, evdev } => {
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
                _ => return None,
            }
        }
        InputEvent::Pointer { x, y, buttons: b, wheel_x, wheel_y } => {
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
    Some(buf)
}

fn pointer(buf: &mut Vec<u8>, mask: u8, x: u16, y: u16) {
    buf.extend_from_slice(&[5, mask]);
    buf.extend_from_slice(&x.to_be_bytes());
    buf.extend_from_slice(&y.to_be_bytes());
}

#[cfg(test)]
mod tests;
