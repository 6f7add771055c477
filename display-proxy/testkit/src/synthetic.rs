//! A generated desktop: a terminal that scrolls one line of text-like glyphs per tick, and
//! optionally a moving photo-like box. It stands in for a guest where the benchmark needs a
//! source whose rate and content it controls (fan-out, encode cost) and in tests of the
//! pipeline; it is not used to serve real desktops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::display::Rect;

use futures_util::future::BoxFuture;

use atrium_display::framebuffer::Framebuffer;
use atrium_display::source::open::{OpenError, OpenedSource, SourceOpener};
use atrium_display::source::{
    FramebufferSource, InputError, InputEvent, InputSink, SourceError, SourceEvent, Stopper,
};

const CELL_W: u16 = 8;
const CELL_H: u16 = 16;
const BG: u32 = 0x0020_2020;
const FG: u32 = 0x00d0_d0d0;
const PROMPT: u32 = 0x0040_c040;

/// What the synthetic desktop shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticConfig {
    pub width: u16,
    pub height: u16,
    /// Ticks per second (each tick scrolls one line).
    pub fps: u32,
    /// Draw a 256x192 photo-like box that moves each tick.
    pub photo: bool,
    /// Stop changing after this many ticks (`None`: never).
    pub ticks: Option<u64>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self { width: 1280, height: 800, fps: 30, photo: false, ticks: None }
    }
}

/// Counts the input events a synthetic desktop received.
#[derive(Debug, Default)]
pub struct SyntheticInput {
    events: AtomicU64,
    last: Mutex<Option<InputEvent>>,
}

impl SyntheticInput {
    /// How many input events arrived.
    pub fn count(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }

    /// The last input event.
    pub fn last(&self) -> Option<InputEvent> {
        *self.last.lock().expect("input lock")
    }
}

impl InputSink for SyntheticInput {
    fn send(&self, event: InputEvent) -> Result<(), InputError> {
        self.events.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().expect("input lock") = Some(event);
        Ok(())
    }
}

#[derive(Debug, Default)]
struct SynthStopper {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Stopper for SynthStopper {
    fn stop(&self) {
        *self.stopped.lock().expect("stop lock") = true;
        self.cv.notify_all();
    }
}

/// The generated desktop.
#[derive(Debug)]
pub struct SyntheticSource {
    cfg: SyntheticConfig,
    input: Arc<SyntheticInput>,
    stopper: Arc<SynthStopper>,
    tick: u64,
    next: Instant,
    rng: u64,
    box_pos: (u16, u16),
}

impl SyntheticSource {
    pub fn new(cfg: SyntheticConfig) -> Self {
        Self {
            cfg,
            input: Arc::new(SyntheticInput::default()),
            stopper: Arc::new(SynthStopper::default()),
            tick: 0,
            next: Instant::now(),
            rng: 0x9e37_79b9_7f4a_7c15,
            box_pos: (0, 0),
        }
    }

    /// The counter of input events this desktop received.
    pub fn input_counter(&self) -> Arc<SyntheticInput> {
        Arc::clone(&self.input)
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The rows of the terminal (whole text lines).
    fn terminal(&self) -> Rect {
        let lines = self.cfg.height / CELL_H;
        Rect { x: 0, y: 0, w: self.cfg.width, h: lines * CELL_H }
    }

    /// Draws one line of glyphs with its top at `y`.
    fn draw_line(&mut self, fb: &mut Framebuffer, y: u16) {
        let cols = self.cfg.width / CELL_W;
        let len = u16::try_from(self.random() % u64::from(cols)).expect("below cols");
        fb.fill(Rect { x: 0, y, w: self.cfg.width, h: CELL_H }, BG);
        for col in 0..len {
            let glyph = self.random();
            let color = if col < 2 { PROMPT } else { FG };
            if glyph.is_multiple_of(7) {
                continue; // a space
            }
            for gy in 2..CELL_H - 2 {
                let bits = (glyph >> ((gy % 8) * 8)) & 0x7e;
                for gx in 0..CELL_W {
                    if bits & (1 << gx) != 0 {
                        fb.span_mut(col * CELL_W + gx, y + gy, 1)[0] = color;
                    }
                }
            }
        }
    }

    fn draw_photo(&mut self, fb: &mut Framebuffer) -> Option<Rect> {
        let (bw, bh) = (256u16, 192u16);
        if self.cfg.width < bw + 8 || self.cfg.height < bh + 8 {
            return None;
        }
        let old = Rect { x: self.box_pos.0, y: self.box_pos.1, w: bw, h: bh };
        let max_x = self.cfg.width - bw;
        let max_y = self.cfg.height - bh;
        let t = u16::try_from(self.tick % 4096).expect("small");
        let x = (t * 7) % max_x;
        let y = (t * 3) % max_y;
        self.box_pos = (x, y);
        for yy in 0..bh {
            for (xx, p) in fb.span_mut(x, y + yy, bw).iter_mut().enumerate() {
                let xx = u32::try_from(xx).expect("small");
                let yy = u32::from(yy);
                let noise = u32::try_from(self.rng.rotate_left(xx + yy) & 0x0f).expect("4 bits");
                let r = (xx + u32::from(t)) & 0xff;
                let g = (yy * 2 + noise) & 0xff;
                let b = (xx + yy + noise * 3) & 0xff;
                *p = (r << 16) | (g << 8) | b;
            }
        }
        Some(atrium_display::framebuffer::union(old, Rect { x, y, w: bw, h: bh }))
    }

    fn wait_tick(&mut self) -> Result<(), SourceError> {
        let interval = Duration::from_secs(1) / self.cfg.fps.max(1);
        let mut stopped = self.stopper.stopped.lock().expect("stop lock");
        loop {
            if *stopped {
                return Err(SourceError::Stopped);
            }
            let now = Instant::now();
            if now >= self.next {
                break;
            }
            let (s, _) = self.stopper.cv.wait_timeout(stopped, self.next - now).expect("stop lock");
            stopped = s;
        }
        self.next = (self.next + interval).max(Instant::now());
        Ok(())
    }
}

impl FramebufferSource for SyntheticSource {
    fn name(&self) -> &str {
        "synthetic"
    }

    fn size(&self) -> (u16, u16) {
        (self.cfg.width, self.cfg.height)
    }

    fn input(&self) -> Arc<dyn InputSink> {
        Arc::clone(&self.input) as Arc<dyn InputSink>
    }

    fn stopper(&self) -> Arc<dyn Stopper> {
        Arc::clone(&self.stopper) as Arc<dyn Stopper>
    }

    fn next_update(&mut self, fb: &mut Framebuffer) -> Result<Vec<SourceEvent>, SourceError> {
        if fb.width() != self.cfg.width || fb.height() != self.cfg.height {
            fb.resize(self.cfg.width, self.cfg.height);
        }
        if self.tick == 0 {
            fb.fill(fb.bounds(), BG);
            let term = self.terminal();
            let mut y = 0;
            while y < term.h {
                self.draw_line(fb, y);
                y += CELL_H;
            }
            self.tick = 1;
            if self.cfg.photo {
                self.draw_photo(fb);
            }
            return Ok(vec![SourceEvent::Damage(fb.bounds())]);
        }
        if self.cfg.ticks.is_some_and(|n| self.tick > n) {
            // Nothing changes any more: wait until stopped.
            let mut stopped = self.stopper.stopped.lock().expect("stop lock");
            while !*stopped {
                stopped = self.stopper.cv.wait(stopped).expect("stop lock");
            }
            return Err(SourceError::Stopped);
        }
        self.wait_tick()?;
        self.tick += 1;
        let term = self.terminal();
        // Scroll the terminal up one line and write a new bottom line.
        fb.copy_within(Rect { x: 0, y: 0, w: term.w, h: term.h - CELL_H }, 0, CELL_H);
        self.draw_line(fb, term.h - CELL_H);
        let mut events = vec![SourceEvent::Damage(term)];
        if self.cfg.photo
            && let Some(r) = self.draw_photo(fb)
        {
            events.push(SourceEvent::Damage(r));
        }
        Ok(events)
    }
}

/// Opens a [`SyntheticSource`] for any VM id: the benchmark's fan-out measurement and the
/// proxy's tests use it. Keeps each desktop's input counter so tests can see what reached the
/// desktop.
#[derive(Debug)]
pub struct SyntheticOpener {
    pub config: SyntheticConfig,
    inputs: Mutex<HashMap<String, Arc<SyntheticInput>>>,
}

impl SyntheticOpener {
    pub fn new(config: SyntheticConfig) -> Self {
        Self { config, inputs: Mutex::new(HashMap::new()) }
    }

    /// The input counter of the desktop opened for `vm`.
    pub fn input_of(&self, vm: &str) -> Option<Arc<SyntheticInput>> {
        self.inputs.lock().expect("inputs lock").get(vm).cloned()
    }
}

impl SourceOpener for SyntheticOpener {
    fn open<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<OpenedSource, OpenError>> {
        Box::pin(async move {
            let src = SyntheticSource::new(self.config);
            self.inputs.lock().expect("inputs lock").insert(vm.to_owned(), src.input_counter());
            Ok(OpenedSource { source: Box::new(src), guest: None })
        })
    }
}
