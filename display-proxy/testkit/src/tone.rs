//! A desktop that plays test tones: a still grey screen whose sound is silence, then a 1 kHz
//! tone for `on`, then silence for `off`, again and again, in 10 ms chunks at the pace a guest
//! plays them. It notes the wall-clock time at which each tone's first sample left it, so a
//! benchmark can tell how long sound takes from the desktop to a listener.

use std::f64::consts::TAU;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use atrium_display::framebuffer::Framebuffer;
use atrium_display::source::open::{OpenError, OpenedSource, SourceOpener};
use atrium_display::source::{
    FramebufferSource, InputError, InputEvent, InputSink, SourceError, SourceEvent, Stopper,
};

/// Samples per second (per channel), as QEMU hands them over.
const RATE: u32 = 48_000;
/// Samples per chunk: 10 ms.
const CHUNK: u32 = RATE / 100;
const HZ: f64 = 1000.0;

/// When each tone started: milliseconds since the Unix epoch.
#[derive(Debug, Default)]
pub struct ToneLog {
    starts: Mutex<Vec<f64>>,
}

impl ToneLog {
    pub fn starts(&self) -> Vec<f64> {
        self.starts.lock().expect("tone log lock").clone()
    }
}

#[derive(Debug, Default)]
struct ToneStopper {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Stopper for ToneStopper {
    fn stop(&self) {
        *self.stopped.lock().expect("stop lock") = true;
        self.cv.notify_all();
    }
}

#[derive(Debug)]
struct NoInput;

impl InputSink for NoInput {
    fn send(&self, _: InputEvent) -> Result<(), InputError> {
        Ok(())
    }
}

/// The tone desktop's source.
#[derive(Debug)]
pub struct ToneSource {
    on: u32,
    period: u32,
    /// Chunks played so far.
    chunk: u64,
    started: Option<Instant>,
    log: Arc<ToneLog>,
    stopper: Arc<ToneStopper>,
}

impl ToneSource {
    /// Tones of `on` every `on + off`, logged in `log`.
    pub fn new(on: Duration, off: Duration, log: Arc<ToneLog>) -> Self {
        let chunks = |d: Duration| u32::try_from(d.as_millis() / 10).unwrap_or(u32::MAX).max(1);
        Self {
            on: chunks(on),
            period: chunks(on) + chunks(off),
            chunk: 0,
            started: None,
            log,
            stopper: Arc::new(ToneStopper::default()),
        }
    }

    /// The samples of chunk `n`: 16-bit little-endian stereo.
    fn samples(&self, n: u64) -> Vec<u8> {
        let phase = u32::try_from(n % u64::from(self.period)).expect("below the period");
        let mut out = Vec::with_capacity(usize::try_from(CHUNK * 4).expect("small"));
        for i in 0..u64::from(CHUNK) {
            let v = if phase < self.on {
                #[allow(clippy::cast_precision_loss)]
                let t = (n * u64::from(CHUNK) + i) as f64 / f64::from(RATE);
                #[allow(clippy::cast_possible_truncation)]
                let s = ((t * HZ * TAU).sin() * 12_000.0) as i16;
                s
            } else {
                0
            };
            out.extend_from_slice(&v.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

impl FramebufferSource for ToneSource {
    fn name(&self) -> &str {
        "tones"
    }

    fn size(&self) -> (u16, u16) {
        (320, 200)
    }

    fn has_sound(&self) -> bool {
        true
    }

    fn input(&self) -> Arc<dyn InputSink> {
        Arc::new(NoInput)
    }

    fn stopper(&self) -> Arc<dyn Stopper> {
        Arc::clone(&self.stopper) as Arc<dyn Stopper>
    }

    fn next_update(&mut self, fb: &mut Framebuffer) -> Result<Vec<SourceEvent>, SourceError> {
        let Some(started) = self.started else {
            if (fb.width(), fb.height()) != (320, 200) {
                fb.resize(320, 200);
            }
            fb.fill(fb.bounds(), 0x0060_6060);
            self.started = Some(Instant::now());
            return Ok(vec![SourceEvent::Damage(fb.bounds())]);
        };
        // Chunk n leaves at started + n * 10 ms, as a guest's sound card would play it.
        let due =
            started + Duration::from_millis(10) * u32::try_from(self.chunk).unwrap_or(u32::MAX);
        let mut stopped = self.stopper.stopped.lock().expect("stop lock");
        loop {
            if *stopped {
                return Err(SourceError::Stopped);
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            stopped = self.stopper.cv.wait_timeout(stopped, due - now).expect("stop lock").0;
        }
        drop(stopped);
        let n = self.chunk;
        self.chunk += 1;
        if n.is_multiple_of(u64::from(self.period)) {
            let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            self.log.starts.lock().expect("tone log lock").push(at.as_secs_f64() * 1000.0);
        }
        Ok(vec![SourceEvent::Sound(self.samples(n))])
    }
}

/// Opens a [`ToneSource`] for any VM id, all logging to one [`ToneLog`].
#[derive(Debug)]
pub struct ToneOpener {
    pub on: Duration,
    pub off: Duration,
    pub log: Arc<ToneLog>,
}

impl SourceOpener for ToneOpener {
    fn open<'a>(&'a self, _vm: &'a str) -> BoxFuture<'a, Result<OpenedSource, OpenError>> {
        Box::pin(async move {
            let src = ToneSource::new(self.on, self.off, Arc::clone(&self.log));
            Ok(OpenedSource { source: Box::new(src), guest: None })
        })
    }
}
