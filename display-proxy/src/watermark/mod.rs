//! Watermarks: text naming who is looking (the broker writes it into a viewer's ticket when
//! policy says so), drawn into a desktop's pixels before they are compared or encoded. Every
//! encoding a viewer receives (stills, video, a recording) carries it; the browser cannot take
//! it off because it is not an overlay.
//!
//! A desktop draws one watermark for all its viewers: the lines of every connected viewer's
//! ticket, merged ([`Marks`]), so a shadowing administrator's name shows to the user watched
//! too. [`Layer`] keeps a watermarked copy of the source's framebuffer, redrawn where the source
//! reports damage, in full when the viewers' marks change and at every minute when the text
//! shows the time. A scroll moves the watermark with the content (found in the source's own
//! pixels), so it still goes as a copy and not as the whole scrolled area again. A viewer whose
//! ticket asks for a watermark is sent only frames that carry its lines ([`Spec::carries`]).

pub mod render;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atrium_protocol::display::Rect;
use atrium_protocol::ticket::{WATERMARK_TIME, Watermark};
use tokio::sync::watch;

use crate::framebuffer::Framebuffer;
use crate::pipeline::capture::Capture;
use crate::source::SourceEvent;
pub use render::{Font, Mask, Pattern, Style};

/// What a desktop draws: its viewers' lines (each once, in the order viewers came) in the
/// style of the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub lines: Vec<String>,
    pub style: Style,
}

impl Spec {
    /// Whether frames drawn with this carry every line of `w`.
    pub fn carries(&self, w: &Watermark) -> bool {
        w.text.split('\n').all(|l| self.lines.iter().any(|x| x == l))
    }

    /// Whether the text shows the time (and so changes every minute).
    pub fn has_time(&self) -> bool {
        self.lines.iter().any(|l| l.contains(WATERMARK_TIME))
    }

    /// The lines as drawn at `minute` (minutes since the Unix epoch).
    pub fn lines_at(&self, minute: i64) -> Vec<String> {
        let when = utc_minute(minute);
        self.lines.iter().map(|l| l.replace(WATERMARK_TIME, &when)).collect()
    }
}

/// `YYYY-MM-DD HH:MM UTC` for `minute` minutes since the Unix epoch.
pub fn utc_minute(minute: i64) -> String {
    let (days, mins) = (minute.div_euclid(1440), minute.rem_euclid(1440));
    let (year, month, day) = atrium_protocol::calendar::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", mins / 60, mins % 60)
}

/// Minutes since the Unix epoch at `t`.
fn minute_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs() / 60).unwrap_or(0))
}

/// Different lines a desktop's watermark may have in all (viewers from several addresses, a
/// shadowing administrator's line): the text is drawn as one block, whose size bounds the work.
pub const MAX_LINES: usize = 8;

/// The watermarks a desktop's viewers ask for.
#[derive(Debug)]
pub struct Marks {
    entries: Mutex<(u64, Vec<(u64, Watermark)>)>,
    tx: watch::Sender<Option<Arc<Spec>>>,
}

impl Marks {
    /// No marks yet; the receiver follows what is to be drawn.
    pub fn new() -> (Arc<Self>, watch::Receiver<Option<Arc<Spec>>>) {
        let (tx, rx) = watch::channel(None);
        (Arc::new(Self { entries: Mutex::new((0, Vec::new())), tx }), rx)
    }

    /// Another receiver of what is to be drawn.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Spec>>> {
        self.tx.subscribe()
    }

    /// Adds a viewer's watermark while the guard lives; refused when the desktop's watermark
    /// would have more than [`MAX_LINES`] different lines.
    pub fn add(self: &Arc<Self>, w: Watermark) -> Result<MarkGuard, String> {
        let id = {
            let mut e = self.entries.lock().expect("marks lock");
            let mut lines: Vec<&str> = Vec::new();
            for l in e.1.iter().flat_map(|(_, m)| m.text.split('\n')).chain(w.text.split('\n')) {
                if !lines.contains(&l) {
                    lines.push(l);
                }
            }
            if lines.len() > MAX_LINES {
                return Err(format!(
                    "this desktop's watermark would have more than {MAX_LINES} different lines"
                ));
            }
            e.0 += 1;
            let id = e.0;
            e.1.push((id, w));
            self.publish(&e.1);
            id
        };
        Ok(MarkGuard { marks: Arc::clone(self), id })
    }

    fn remove(&self, id: u64) {
        let mut e = self.entries.lock().expect("marks lock");
        e.1.retain(|(i, _)| *i != id);
        self.publish(&e.1);
    }

    fn publish(&self, entries: &[(u64, Watermark)]) {
        let spec = entries.first().map(|(_, first)| {
            let mut lines: Vec<String> = Vec::new();
            for (_, w) in entries {
                for l in w.text.split('\n') {
                    if !lines.iter().any(|x| x == l) {
                        lines.push(l.to_owned());
                    }
                }
            }
            let style = Style {
                opacity: first.opacity,
                size: first.size,
                angle: first.angle,
                spacing: first.spacing,
            };
            Arc::new(Spec { lines, style })
        });
        self.tx.send_if_modified(|now| {
            if now.as_deref() == spec.as_deref() {
                return false;
            }
            *now = spec;
            true
        });
    }
}

/// A viewer's watermark on its desktop; removed when dropped.
#[derive(Debug)]
pub struct MarkGuard {
    marks: Arc<Marks>,
    id: u64,
}

impl Drop for MarkGuard {
    fn drop(&mut self) {
        self.marks.remove(self.id);
    }
}

/// What has been drawn: for which spec, minute and screen size.
#[derive(Debug)]
struct Drawn {
    spec: Arc<Spec>,
    minute: Option<i64>,
    pattern: Pattern,
    mask: Mask,
    composite: Framebuffer,
    /// Scrolls are found in the source's own pixels (in the composite the fixed watermark
    /// would hide them), so the watermark can move with what scrolled.
    source: Capture,
}

impl Drawn {
    /// Follows the source after `events`: a scroll moves the watermark with it; whatever
    /// changed is drawn again. The scrolled region, if there was a scroll (the rest of what
    /// changed is where the source reported damage).
    fn follow(&mut self, fb: &Framebuffer, events: &[SourceEvent]) -> Option<Rect> {
        let frame = self.source.process(fb, events)?;
        let mut uncovered = None;
        let scrolled = frame.copy.map(|c| {
            self.mask.scroll(c.rect, c.src_y, &self.pattern);
            // What moved is what was drawn, moved; only the rows it uncovered are new.
            self.composite.copy_within(c.rect, c.src_x, c.src_y);
            let (top, bottom) = if c.src_y > c.rect.y {
                (c.rect.y + c.rect.h, c.src_y + c.rect.h)
            } else {
                (c.src_y, c.rect.y)
            };
            uncovered = Some(Rect { x: c.rect.x, y: top, w: c.rect.w, h: bottom - top });
            let top = c.rect.y.min(c.src_y);
            let bottom = (c.rect.y + c.rect.h).max(c.src_y + c.rect.h);
            Rect { x: c.rect.x, y: top, w: c.rect.w, h: bottom - top }
        });
        for r in uncovered.iter().chain(frame.delta.iter().map(|d| &d.bbox)) {
            for y in r.y..r.y + r.h {
                self.composite.span_mut(r.x, y, r.w).copy_from_slice(fb.span(r.x, y, r.w));
            }
            self.mask.blend(&mut self.composite, *r);
        }
        scrolled
    }
}

/// What [`Layer::apply`] says beyond the framebuffer to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redrawn {
    /// Only what the source reported changed.
    Nothing,
    /// This area changed too (the watermark moved with a scroll).
    Area(Rect),
    /// All of it (the watermark itself changed, came or went).
    All,
}

/// The watermarked copy of a source's framebuffer, kept up to date.
#[derive(Debug)]
pub struct Layer {
    marks: watch::Receiver<Option<Arc<Spec>>>,
    font: Option<Arc<Font>>,
    drawn: Option<Drawn>,
}

impl Layer {
    /// Draws what `marks` asks for with `font` (without a font nothing can be drawn: viewers
    /// whose tickets ask for a watermark are refused before they join).
    pub fn new(marks: watch::Receiver<Option<Arc<Spec>>>, font: Option<Arc<Font>>) -> Self {
        Self { marks, font, drawn: None }
    }

    /// What the framebuffer returned by the last [`Layer::apply`] carries.
    pub fn drawn(&self) -> Option<Arc<Spec>> {
        self.drawn.as_ref().map(|d| Arc::clone(&d.spec))
    }

    /// Whether the next [`Layer::apply`] draws the watermark afresh over the whole screen (its
    /// marks or its minute changed): work for the encode pool rather than the async runtime.
    pub fn needs_redraw(&self, now: SystemTime) -> bool {
        self.marks.has_changed().unwrap_or(false)
            || self.drawn.as_ref().is_some_and(|d| d.minute.is_some_and(|m| m != minute_of(now)))
    }

    /// How long until the drawn text changes by itself (its time, at the next minute).
    pub fn next_change(&self, now: SystemTime) -> Option<Duration> {
        let d = self.drawn.as_ref()?;
        d.minute?;
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let left = 60_000 - (secs % 60_000);
        Some(Duration::from_millis(u64::try_from(left).unwrap_or(60_000)))
    }

    /// The framebuffer to compare after the source wrote `events` into `fb`, and what else
    /// changed in it (the watermark: its marks, its minute, the screen's size, a scroll).
    pub fn apply<'a>(
        &'a mut self,
        fb: &'a Framebuffer,
        events: &[SourceEvent],
        now: SystemTime,
    ) -> (&'a Framebuffer, Redrawn) {
        let want = self.marks.borrow_and_update().clone();
        let Some(want) = want else {
            let gone = self.drawn.take().is_some();
            return (fb, if gone { Redrawn::All } else { Redrawn::Nothing });
        };
        let minute = want.has_time().then(|| minute_of(now));
        let current = self.drawn.as_ref().is_some_and(|d| {
            *d.spec == *want
                && d.minute == minute
                && (d.composite.width(), d.composite.height()) == (fb.width(), fb.height())
        });
        if current {
            let d = self.drawn.as_mut().expect("current");
            let area = d.follow(fb, events);
            return (&d.composite, area.map_or(Redrawn::Nothing, Redrawn::Area));
        }
        let Some(font) = self.font.as_ref() else {
            return (fb, Redrawn::Nothing);
        };
        let lines = want.lines_at(minute.unwrap_or_else(|| minute_of(now)));
        let pattern = Pattern::new(font, &lines, want.style);
        // A pattern of the same shape on a screen of the same size (the next minute: the time's
        // digits are all as wide) keeps where a scroll moved each part of the watermark, so
        // only the digits change.
        let kept = self.drawn.take().and_then(|mut d| {
            let same_screen = (d.mask.width(), d.mask.height()) == (fb.width(), fb.height());
            (same_screen && d.mask.repattern(&d.pattern, &pattern)).then_some(d.mask)
        });
        let mask = kept.unwrap_or_else(|| Mask::new(&pattern, fb.width(), fb.height()));
        let mut composite = fb.clone();
        mask.blend(&mut composite, fb.bounds());
        let source = Capture::new(fb);
        let d = self.drawn.insert(Drawn { spec: want, minute, pattern, mask, composite, source });
        (&d.composite, Redrawn::All)
    }
}

#[cfg(test)]
mod tests;
