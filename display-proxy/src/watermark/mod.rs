//! Watermarks: text naming who is looking (the broker writes it into a viewer's ticket when
//! policy says so), drawn into a desktop's pixels before they are compared or encoded. Every
//! encoding a viewer receives (stills, video, a recording) carries it; the browser cannot take
//! it off because it is not an overlay.
//!
//! A desktop draws one watermark for all its viewers: the lines of every connected viewer's
//! ticket, merged ([`Marks`]), so a shadowing administrator's name shows to the user watched
//! too. [`Layer`] keeps a watermarked copy of the source's framebuffer, redrawn where the source
//! reports damage, in full when the viewers' marks change and at every minute when the text
//! shows the time. A viewer whose ticket asks for a watermark is sent only frames that carry
//! its lines ([`Spec::carries`]).

pub mod render;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atrium_protocol::display::Rect;
use atrium_protocol::ticket::{WATERMARK_TIME, Watermark};
use tokio::sync::watch;

use crate::framebuffer::Framebuffer;
use crate::source::SourceEvent;
pub use render::{Font, Mask, Style};

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
    // Civil date from days since 1970-01-01 (proleptic Gregorian; Howard Hinnant's method).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", mins / 60, mins % 60)
}

/// Minutes since the Unix epoch at `t`.
fn minute_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs() / 60).unwrap_or(0))
}

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

    /// Adds a viewer's watermark while the guard lives.
    pub fn add(self: &Arc<Self>, w: Watermark) -> MarkGuard {
        let id = {
            let mut e = self.entries.lock().expect("marks lock");
            e.0 += 1;
            let id = e.0;
            e.1.push((id, w));
            self.publish(&e.1);
            id
        };
        MarkGuard { marks: Arc::clone(self), id }
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
            let style = Style { opacity: first.opacity, size: first.size, angle: first.angle };
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
    mask: Mask,
    composite: Framebuffer,
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

    /// How long until the drawn text changes by itself (its time, at the next minute).
    pub fn next_change(&self, now: SystemTime) -> Option<Duration> {
        let d = self.drawn.as_ref()?;
        d.minute?;
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let left = 60_000 - (secs % 60_000);
        Some(Duration::from_millis(u64::try_from(left).unwrap_or(60_000)))
    }

    /// The framebuffer to compare after the source wrote `events` into `fb`, and whether all of
    /// it must be compared (the watermark changed: its marks, its minute, the screen's size).
    pub fn apply<'a>(
        &'a mut self,
        fb: &'a Framebuffer,
        events: &[SourceEvent],
        now: SystemTime,
    ) -> (&'a Framebuffer, bool) {
        let want = self.marks.borrow_and_update().clone();
        let Some(want) = want else {
            return (fb, self.drawn.take().is_some());
        };
        let minute = want.has_time().then(|| minute_of(now));
        let current = self.drawn.as_ref().is_some_and(|d| {
            *d.spec == *want
                && d.minute == minute
                && (d.composite.width(), d.composite.height()) == (fb.width(), fb.height())
        });
        let Some(font) = self.font.as_ref().filter(|_| !current) else {
            let Some(d) = self.drawn.as_mut() else { return (fb, false) };
            for e in events {
                if let SourceEvent::Damage(r) = e
                    && let Some(r) = clip(*r, fb)
                {
                    for y in r.y..r.y + r.h {
                        d.composite.span_mut(r.x, y, r.w).copy_from_slice(fb.span(r.x, y, r.w));
                    }
                    d.mask.blend(&mut d.composite, r);
                }
            }
            return (&self.drawn.as_ref().expect("drawn").composite, false);
        };
        let lines = want.lines_at(minute.unwrap_or_else(|| minute_of(now)));
        let mask = Mask::new(font, &lines, want.style, fb.width(), fb.height());
        let mut composite = fb.clone();
        mask.blend(&mut composite, fb.bounds());
        let d = self.drawn.insert(Drawn { spec: want, minute, mask, composite });
        (&d.composite, true)
    }
}

/// `r` within `fb`'s bounds (`None` when nothing is left).
fn clip(r: Rect, fb: &Framebuffer) -> Option<Rect> {
    let x1 = (u32::from(r.x) + u32::from(r.w)).min(u32::from(fb.width()));
    let y1 = (u32::from(r.y) + u32::from(r.h)).min(u32::from(fb.height()));
    let w = u16::try_from(x1.checked_sub(u32::from(r.x))?).ok()?;
    let h = u16::try_from(y1.checked_sub(u32::from(r.y))?).ok()?;
    (w > 0 && h > 0).then_some(Rect { x: r.x, y: r.y, w, h })
}

#[cfg(test)]
mod tests;
