//! Motion as video, for one viewer. Areas that change update after update (a video, a window
//! dragged, an animation) are found tile by tile; their bounding box, once large and dense
//! enough, becomes a stream: each update encodes the box whole as one VP8 frame
//! ([`ServerMessage::Video`]) instead of still images, and the rest of the screen stays
//! lossless. The viewer's tiles under the stream count as lossy, so once the motion stops the
//! usual refinement sends them losslessly.
//!
//! Each viewer that asked for video (its browser decodes VP8) has its own encoder: its frames
//! follow what that viewer was sent, whatever flow control skipped. CPU is bounded per stream:
//! about `max_fps` frames a second (an update that comes sooner leaves the box for the next
//! frame, sent at the latest three quarters of a frame later even if the motion stopped), and
//! when encoding takes more than half a frame's time the
//! encoder gets faster, then coarser (lower bitrate), then the frame rate falls: quality
//! degrades before latency.

pub mod vp8;
pub mod yuv;

use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_protocol::display::{Rect, ServerMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::framebuffer::union;
use crate::pipeline::frame::{Frame, Grid, TILE};
use crate::pipeline::plan::ViewerTiles;

/// A tile's motion score: each update that changes it adds [`SCORE_UP`] (up to
/// [`MAX_SCORE`]), each that does not takes one away; at [`MOVING`] it counts as moving. Three
/// changes in a row make it, and so does changing in most updates (a program that draws more
/// slowly than the screen is captured leaves some updates without a change).
const SCORE_UP: u8 = 2;
const MAX_SCORE: u8 = 12;
const MOVING: u8 = 5;
/// A tile counts as changed for motion when at least 1/this of it changed.
const MIN_CHANGED_SHARE: u32 = 4;
/// Smallest stream, in tiles each way (128x128 pixels): smaller motion (a cursor, a spinner)
/// costs little as stills.
const MIN_TILES: u16 = 2;
/// Share of a stream's tiles that must be moving when it starts (percent).
const MIN_DENSITY_PCT: usize = 40;
/// Encoder speed to start with (0 to 16).
const START_SPEED: i32 = 10;
/// Bits per pixel per frame aimed at, before the viewer's throughput lowers it. The bitrate is
/// this at the stream's own frame rate: the encoder gives each frame the bitrate times the time
/// since the last, so a video drawn at one picture a second at a bitrate made for 30 would get
/// 30 frames' bits in each.
const BITS_PER_PIXEL: f64 = 0.08;
/// Least bits a frame is given (a small stream still looks right), and the most a second.
const MIN_FRAME_BITS: f64 = 5_000.0;
const MAX_KBPS: u32 = 20_000;
/// A stream's area is refined once it has not changed for this many of the stream's frame
/// intervals (when that is longer than the viewer's usual wait), and at most
/// [`MAX_REFINE_WAIT`] later: a video a desktop draws at a few frames a second must not be
/// refined losslessly (and its stream ended) between two of its frames.
const REFINE_FRAMES: u32 = 3;
const MAX_REFINE_WAIT: Duration = Duration::from_secs(3);

/// What to do with an update's moving area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No stream: stills everywhere.
    Stills,
    /// Encode this rectangle as the stream's next frame; plan stills elsewhere.
    Encode(Rect),
    /// Too soon after the last frame: leave this rectangle out of the update (the next frame,
    /// or refinement, brings it).
    Skip(Rect),
}

impl Decision {
    /// The rectangle stills must leave out.
    pub fn except(&self) -> Option<Rect> {
        match *self {
            Self::Stills => None,
            Self::Encode(r) | Self::Skip(r) => Some(r),
        }
    }
}

struct Stream {
    rect: Rect,
    encoder: vp8::Encoder,
    started: Instant,
    last_pts: i64,
    last_frame: Option<Instant>,
    /// Moving average of the time between the stream's frames.
    gap: Option<Duration>,
    /// An update left the rectangle for the next frame since the last one was sent.
    skipped: bool,
    picture: Vec<u8>,
    kbps: u32,
}

/// What encoding has cost so far on a stream, for the viewer's metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Encoded {
    pub bytes: usize,
    pub encode: Duration,
    pub key: bool,
}

/// One viewer's motion tracking and video stream.
pub struct Video {
    max_fps: u32,
    grid: Option<Grid>,
    /// Per tile: how much it has been changing lately (see [`MOVING`]).
    score: Vec<u8>,
    /// When an update last moved tiles, and the moving average of the time between such
    /// updates: a new stream's frame interval until it has frames of its own.
    last_motion: Option<Instant>,
    motion_gap: Option<Duration>,
    stream: Option<Stream>,
    speed: i32,
    /// Moving average of the encode time, in milliseconds.
    encode_ms: f64,
    /// Least time between frames (grows when encoding is slow).
    interval: Duration,
    /// Bitrate factor (falls when encoding is slow at the fastest speed).
    quality: f64,
    /// The desktop's slots for streams, and the one this viewer holds while it has a stream.
    slots: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Video {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Video")
            .field("stream", &self.stream.as_ref().map(|s| s.rect))
            .field("speed", &self.speed)
            .field("encode_ms", &self.encode_ms)
            .finish_non_exhaustive()
    }
}

impl Video {
    /// Video for a viewer, at most `max_fps` frames a second (at least 1), with a stream only
    /// while it holds one of the desktop's `slots`.
    pub fn new(max_fps: u32, slots: Arc<Semaphore>) -> Self {
        let max_fps = max_fps.max(1);
        Self {
            max_fps,
            grid: None,
            score: Vec::new(),
            last_motion: None,
            motion_gap: None,
            stream: None,
            speed: START_SPEED,
            encode_ms: 0.0,
            interval: Duration::from_secs(1) / max_fps,
            quality: 1.0,
            slots,
            permit: None,
        }
    }

    /// The stream's rectangle, if one is open.
    pub fn stream_rect(&self) -> Option<Rect> {
        self.stream.as_ref().map(|s| s.rect)
    }

    /// Forgets the history and closes the stream (the viewer's canvas was reset, or the
    /// screen changed size).
    pub fn reset(&mut self) {
        self.grid = None;
        self.score.clear();
        self.last_motion = None;
        self.motion_gap = None;
        self.stream = None;
        self.permit = None;
    }

    /// How long lossy areas wait before they are refined, for a viewer that usually waits
    /// `base`: longer while a stream's frames come further apart (see [`REFINE_FRAMES`]).
    pub fn refine_after(&self, base: Duration) -> Duration {
        match self.stream.as_ref().and_then(|s| s.gap) {
            Some(gap) => base.max((gap * REFINE_FRAMES).min(MAX_REFINE_WAIT)),
            None => base,
        }
    }

    /// Ends the stream (its area was refined losslessly); motion must build up again.
    pub fn end_stream(&mut self) {
        if let (Some(s), Some(grid)) = (self.stream.take(), self.grid) {
            for t in grid.tiles_of(s.rect) {
                self.score[t] = 0;
            }
        }
        self.permit = None;
    }

    /// A quarter of a frame's leeway on the frame rate: captures are not evenly spaced, and a
    /// frame a little early must not halve the rate.
    fn least_interval(&self) -> Duration {
        self.interval * 3 / 4
    }

    /// When the stream's rectangle, left out of an update for the rate limit, is due as a
    /// frame of its own if no newer update brings it first (the motion may have stopped).
    pub fn catch_up_at(&self) -> Option<Instant> {
        let s = self.stream.as_ref().filter(|s| s.skipped)?;
        Some(s.last_frame? + self.least_interval())
    }

    /// Decides, before an update from `view` to `frame` is planned, what of it goes as video.
    pub fn decide(&mut self, frame: &Frame, view: &ViewerTiles, now: Instant) -> Decision {
        let grid = frame.grid;
        if view.sent_seq == 0
            || view.sent_seq < frame.size_seq
            || (view.width, view.height) != (grid.width, grid.height)
            || self.grid != Some(grid)
        {
            self.reset();
            self.grid = Some(grid);
            self.score = vec![0; grid.len()];
            return Decision::Stills;
        }
        if view.sent_seq >= frame.seq {
            // Nothing new, unless the stream owes this frame's rectangle (see catch_up_at).
            return match (self.catch_up_at(), &self.stream) {
                (Some(t), Some(s)) if view.sent_seq == frame.seq && now >= t => {
                    Decision::Encode(s.rect)
                }
                _ => Decision::Stills,
            };
        }
        let mut changed = vec![false; grid.len()];
        // Tiles with any change at all.
        let mut touched = vec![false; grid.len()];
        if view.sent_seq + 1 == frame.seq {
            // A tile moves when much of it changed: a typed character or a blinking cursor
            // changes a sliver, and stays lossless.
            for d in &frame.delta {
                let Ok(t) = usize::try_from(d.tile) else { continue };
                let Some(c) = changed.get_mut(t) else { continue };
                touched[t] = true;
                let whole = grid.rect(t);
                let area = |r: Rect| u32::from(r.w) * u32::from(r.h);
                *c = area(d.bbox) * MIN_CHANGED_SHARE >= area(whole);
            }
        } else {
            for (c, &s) in changed.iter_mut().zip(&frame.tile_seq) {
                *c = s > view.sent_seq;
            }
            touched.clone_from(&changed);
        }
        for (s, &c) in self.score.iter_mut().zip(&changed) {
            *s = if c { (*s + SCORE_UP).min(MAX_SCORE) } else { s.saturating_sub(1) };
        }
        if changed.iter().any(|&c| c) {
            // Motion after a pause longer than any refinement wait starts a new average: the
            // pause is not a frame interval.
            let since = self.last_motion.map(|t| now.saturating_duration_since(t));
            self.motion_gap =
                since.filter(|g| *g <= MAX_REFINE_WAIT).map(|g| ewma(self.motion_gap, g));
            self.last_motion = Some(now);
        }
        // A video rarely fills its tiles exactly: the tiles along its edges change only in
        // part, maybe too little to count as moving, and would go as stills beside it frame
        // after frame. The box takes in the ring of tiles around it that changed too.
        let moving = self.moving_box(&grid).map(|m| with_edges(m, &grid, &touched));
        let open = self.stream.as_ref().map(|s| (s.rect, s.last_frame));
        let rect = match (open, moving) {
            (None, None) => return Decision::Stills,
            (None, Some(m)) => {
                // A new stream needs one of the desktop's slots.
                if self.permit.is_none() {
                    self.permit = Arc::clone(&self.slots).try_acquire_owned().ok();
                }
                if self.permit.is_none() {
                    return Decision::Stills;
                }
                even(m, &grid)
            }
            (Some((s, _)), Some(m)) if even(union(s, m), &grid) != s => {
                // The motion spread: a new stream over both (a key frame).
                self.stream = None;
                even(union(s, m), &grid)
            }
            (Some((s, last)), _) => {
                // Once a stream is open, any change in it is its next frame.
                if !grid.tiles_of(s).any(|t| touched[t]) {
                    return Decision::Stills;
                }
                if last.is_some_and(|t| now.saturating_duration_since(t) < self.least_interval()) {
                    if let Some(st) = &mut self.stream {
                        st.skipped = true;
                    }
                    return Decision::Skip(s);
                }
                s
            }
        };
        Decision::Encode(rect)
    }

    /// The bounding box of the moving tiles, if it is large and dense enough for a stream.
    fn moving_box(&self, grid: &Grid) -> Option<Rect> {
        let (mut c0, mut r0, mut c1, mut r1) = (u16::MAX, u16::MAX, 0u16, 0u16);
        let mut n = 0usize;
        for (i, _) in self.score.iter().enumerate().filter(|(_, s)| **s >= MOVING) {
            let (col, row) = (i % usize::from(grid.cols), i / usize::from(grid.cols));
            let (col, row) = (u16::try_from(col).ok()?, u16::try_from(row).ok()?);
            (c0, r0, c1, r1) = (c0.min(col), r0.min(row), c1.max(col), r1.max(row));
            n += 1;
        }
        if n == 0 {
            return None;
        }
        let (cols, rows) = (c1 - c0 + 1, r1 - r0 + 1);
        if cols < MIN_TILES || rows < MIN_TILES {
            return None;
        }
        if n * 100 < usize::from(cols) * usize::from(rows) * MIN_DENSITY_PCT {
            return None;
        }
        let x = c0 * TILE;
        let y = r0 * TILE;
        Some(Rect {
            x,
            y,
            w: (cols * TILE).min(grid.width - x),
            h: (rows * TILE).min(grid.height - y),
        })
    }

    /// Encodes `rect` of `frame` as the stream's next frame (the first of a new stream is a
    /// key frame): the message, and what it cost. `bandwidth` is the viewer's measured
    /// throughput in bytes per second.
    pub fn encode(
        &mut self,
        frame: &Frame,
        rect: Rect,
        bandwidth: Option<f64>,
        now: Instant,
    ) -> Result<(Vec<u8>, Encoded), String> {
        let kbps = self.kbps(rect, bandwidth);
        if self.stream.as_ref().is_some_and(|s| s.rect != rect) {
            self.stream = None;
        }
        let stream = match &mut self.stream {
            Some(s) => s,
            None => self.stream.insert(Stream {
                rect,
                encoder: vp8::Encoder::new(rect.w, rect.h, kbps, self.speed)?,
                started: now,
                last_pts: -1,
                last_frame: None,
                // Until the stream has two frames: how far apart the updates that made it came
                // (its first frame must not be refined before the video's next picture).
                gap: self.motion_gap,
                skipped: false,
                picture: vec![0; yuv::i420_len(rect.w, rect.h)],
                kbps,
            }),
        };
        if stream.kbps.abs_diff(kbps) * 5 > stream.kbps {
            stream.encoder.set_bitrate(kbps)?;
            stream.kbps = kbps;
        }
        let t0 = Instant::now();
        yuv::to_i420_into(&frame.fb, rect, &mut stream.picture);
        let pts = i64::try_from(now.saturating_duration_since(stream.started).as_millis())
            .unwrap_or(i64::MAX)
            .max(stream.last_pts + 1);
        let packet = stream.encoder.encode(&stream.picture, pts, false)?;
        stream.last_pts = pts;
        if let Some(last) = stream.last_frame {
            let g = now.saturating_duration_since(last);
            stream.gap = Some(ewma(stream.gap, g));
        }
        stream.last_frame = Some(now);
        stream.skipped = false;
        let took = t0.elapsed();
        self.adapt(took);
        let key = packet.key;
        let msg = ServerMessage::Video { rect, key, data: packet.data }.encode();
        let bytes = msg.len();
        Ok((msg, Encoded { bytes, encode: took, key }))
    }

    /// The bitrate for a stream over `rect`: bits per pixel at the stream's frame rate, at
    /// most half the viewer's throughput, lowered while encoding is too slow.
    fn kbps(&self, rect: Rect, bandwidth: Option<f64>) -> u32 {
        let fps = self.frame_rate();
        let pixels = f64::from(rect.w) * f64::from(rect.h);
        let mut bps = pixels * BITS_PER_PIXEL * self.quality * fps;
        if let Some(b) = bandwidth {
            bps = bps.min(b * 8.0 * 0.5);
        }
        bps = bps.max(MIN_FRAME_BITS * fps);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let kbps = (bps / 1000.0) as u32;
        kbps.clamp(1, MAX_KBPS)
    }

    /// Frames a second the stream runs at: from the moving average of its frames' interval
    /// (before it has two frames, of the motion that made it), at most `max_fps`.
    fn frame_rate(&self) -> f64 {
        let max = f64::from(self.max_fps);
        let gap = self.stream.as_ref().and_then(|s| s.gap).or(self.motion_gap);
        gap.map_or(max, |g| (1.0 / g.min(MAX_REFINE_WAIT).as_secs_f64().max(1e-3)).min(max))
    }

    /// Keeps encoding within half a frame's time: faster first, then coarser, then fewer
    /// frames; and back when there is room.
    fn adapt(&mut self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        self.encode_ms = if self.encode_ms == 0.0 { ms } else { self.encode_ms * 0.8 + ms * 0.2 };
        let budget = 500.0 / f64::from(self.max_fps);
        let base = Duration::from_secs(1) / self.max_fps;
        if self.encode_ms > budget {
            if self.speed < vp8::FASTEST {
                self.speed = (self.speed + 2).min(vp8::FASTEST);
                if let Some(s) = &mut self.stream {
                    let _ = s.encoder.set_speed(self.speed);
                }
            } else if self.quality > 0.3 {
                self.quality *= 0.8;
            } else {
                self.interval = (self.interval * 5 / 4).min(Duration::from_millis(250));
            }
        } else if self.encode_ms < budget / 3.0 {
            if self.interval > base {
                self.interval = (self.interval * 4 / 5).max(base);
            } else if self.quality < 1.0 {
                self.quality = (self.quality * 1.1).min(1.0);
            } else if self.speed > START_SPEED {
                self.speed -= 1;
                if let Some(s) = &mut self.stream {
                    let _ = s.encoder.set_speed(self.speed);
                }
            }
        }
    }
}

/// A moving average of intervals: three quarters of the last average, a quarter of `g`.
fn ewma(average: Option<Duration>, g: Duration) -> Duration {
    average.map_or(g, |a| a * 3 / 4 + g / 4)
}

/// `m` (whole tiles) grown by one tile on each side where a tile next to it changed.
fn with_edges(m: Rect, grid: &Grid, touched: &[bool]) -> Rect {
    let (mut c0, mut r0) = (m.x / TILE, m.y / TILE);
    let (mut c1, mut r1) = ((m.x + m.w - 1) / TILE, (m.y + m.h - 1) / TILE);
    let any = |cols: std::ops::RangeInclusive<u16>, rows: std::ops::RangeInclusive<u16>| {
        rows.into_iter().any(|r| cols.clone().any(|c| touched[grid.index(c, r)]))
    };
    let (top, bottom) = (
        r0 > 0 && any(c0..=c1, r0 - 1..=r0 - 1),
        r1 + 1 < grid.rows && any(c0..=c1, r1 + 1..=r1 + 1),
    );
    let (left, right) = (
        c0 > 0 && any(c0 - 1..=c0 - 1, r0..=r1),
        c1 + 1 < grid.cols && any(c1 + 1..=c1 + 1, r0..=r1),
    );
    (r0, r1, c0, c1) =
        (r0 - u16::from(top), r1 + u16::from(bottom), c0 - u16::from(left), c1 + u16::from(right));
    let (x, y) = (c0 * TILE, r0 * TILE);
    Rect {
        x,
        y,
        w: ((c1 - c0 + 1) * TILE).min(grid.width - x),
        h: ((r1 - r0 + 1) * TILE).min(grid.height - y),
    }
}

/// After an update with `decision` was applied to `view`: the viewer's tiles under video
/// (sent, or left for the next frame) count as lossy, so once the motion stops they are refined
/// losslessly.
pub fn mark_lossy(view: &mut ViewerTiles, frame: &Frame, decision: Decision, now: Instant) {
    if let Some(r) = decision.except()
        && view.lossy.len() == frame.grid.len()
    {
        for t in frame.grid.tiles_of(r) {
            view.lossy[t] = Some(now);
        }
    }
}

/// `r` with an even width and height (chroma is sampled in 2x2 blocks): one pixel more, or at
/// an odd screen edge one less (that line is left to stills).
fn even(r: Rect, grid: &Grid) -> Rect {
    let fit = |at: u16, len: u16, max: u16| match len % 2 {
        0 => len,
        _ if at + len < max => len + 1,
        _ => len - 1,
    };
    Rect { w: fit(r.x, r.w, grid.width), h: fit(r.y, r.h, grid.height), ..r }
}

#[cfg(test)]
mod tests;
