//! Motion: the same moving content sent as Atrium's still images and as VP8 video, one thread,
//! in the same run. A 1280x720 desktop with a 640x360 "video" in a window: a landscape-like
//! picture (sky, hills, fine texture) panning two pixels a frame with a ball crossing it, 90
//! frames (3 s at 30 fps). A viewer in step is planned and encoded each frame both ways:
//!
//! - stills: what the proxy sends today (JPEG at quality 70 for photo-like areas, lossless
//!   elsewhere);
//! - video: the moving area as VP8 once it is found (the first frames go as stills, as they
//!   would), everything else as stills.
//!
//! Reported: bytes of each and their ratio, encode time per frame of each, and the video's
//! luma PSNR against the source (what the viewer sees).

use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_protocol::display::{Rect, ServerMessage};
use serde_json::{Map, Value, json};

use super::round;
use atrium_display::framebuffer::Framebuffer;
use atrium_display::metrics::Metrics;
use atrium_display::pipeline::capture::Capture;
use atrium_display::pipeline::encode::{Encodings, encode_plan};
use atrium_display::pipeline::plan::{ViewerTiles, apply, plan_update_except};
use atrium_display::source::SourceEvent;
use atrium_display::video::vp8::Decoder;
use atrium_display::video::yuv::{psnr_y, to_i420};
use atrium_display::video::{Decision, Video, mark_lossy};

const W: u16 = 1280;
const H: u16 = 720;
const VIDEO: Rect = Rect { x: 320, y: 180, w: 640, h: 360 };
const FRAMES: u32 = 90;
const FPS: u32 = 30;

/// The landscape the video pans over: twice the video's width, made once.
struct Scene {
    texture: Vec<u32>,
    width: usize,
}

impl Scene {
    fn new() -> Self {
        let width = usize::from(VIDEO.w) * 2;
        let h = usize::from(VIDEO.h);
        let mut texture = vec![0u32; width * h];
        for y in 0..h {
            for x in 0..width {
                #[allow(clippy::cast_precision_loss)]
                let (fx, fy) = (x as f64, y as f64);
                let hill = 200.0 + 40.0 * (fx / 97.0).sin() + 25.0 * (fx / 31.0 + 1.3).sin();
                let grain = 6.0 * ((fx * 0.9).sin() * (fy * 1.1).cos());
                let (r, g, b) = if fy < hill {
                    // Sky: a gradient with soft clouds.
                    let cloud = 30.0 * ((fx / 53.0).sin() * (fy / 21.0).cos()).max(0.0);
                    (90.0 + fy * 0.3 + cloud, 140.0 + fy * 0.25 + cloud, 230.0 - fy * 0.1 + cloud)
                } else {
                    // Hills: greens and browns with texture.
                    let t = (fx / 13.0).sin() * (fy / 7.0).cos();
                    (70.0 + 30.0 * t + grain, 120.0 + 40.0 * t + grain, 40.0 + 15.0 * t + grain)
                };
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let c = |v: f64| v.clamp(0.0, 255.0) as u32;
                texture[y * width + x] = (c(r) << 16) | (c(g) << 8) | c(b);
            }
        }
        Self { texture, width }
    }

    /// Draws frame `t` into the video's rectangle of `fb`.
    fn draw(&self, fb: &mut Framebuffer, t: u32) {
        let pan = usize::try_from(t * 2).expect("small") % (self.width - usize::from(VIDEO.w));
        for y in 0..VIDEO.h {
            let row = &self.texture[usize::from(y) * self.width + pan..][..usize::from(VIDEO.w)];
            fb.span_mut(VIDEO.x, VIDEO.y + y, VIDEO.w).copy_from_slice(row);
        }
        // A ball crossing the picture.
        let (cx, cy, radius) = (40 + i32::try_from(t * 6).expect("small"), 200, 28i32);
        for dy in -radius..=radius {
            for dx in -radius..=radius {
                let (x, y) = (cx + dx, cy + dy);
                if dx * dx + dy * dy <= radius * radius
                    && (0..i32::from(VIDEO.w)).contains(&x)
                    && (0..i32::from(VIDEO.h)).contains(&y)
                {
                    let x = VIDEO.x + u16::try_from(x).expect("inside");
                    let y = VIDEO.y + u16::try_from(y).expect("inside");
                    fb.span_mut(x, y, 1)[0] =
                        0x00e0_3020 + u32::try_from(dy + radius).expect("positive");
                }
            }
        }
    }
}

/// Bytes and encode time of one way of sending the workload.
#[derive(Default)]
struct Way {
    bytes: usize,
    encode: Duration,
}

pub fn run() -> anyhow::Result<Map<String, Value>> {
    let metrics = Metrics::default();
    let scene = Scene::new();
    let mut fb = Framebuffer::new(W, H);
    fb.fill(fb.bounds(), 0x0030_3848);
    // A window frame around the video, and some text-like lines beside it.
    fb.fill(Rect { x: VIDEO.x - 4, y: VIDEO.y - 24, w: VIDEO.w + 8, h: VIDEO.h + 28 }, 0x00d0_d0d0);
    scene.draw(&mut fb, 0);

    let mut cap = Capture::new(&fb);
    let first = Arc::clone(cap.last());
    let start = Instant::now();
    let mut stills_view = ViewerTiles::new();
    let mut video_view = ViewerTiles::new();
    for view in [&mut stills_view, &mut video_view] {
        let p = plan_update_except(&first, view, Some(70), None);
        apply(view, &first, &p, start);
    }
    let mut video = Video::new(FPS, Arc::new(tokio::sync::Semaphore::new(1)));
    assert_eq!(video.decide(&first, &video_view, start), Decision::Stills);
    let mut decoder = Decoder::new().map_err(anyhow::Error::msg)?;
    let (mut stills, mut moving) = (Way::default(), Way::default());
    let (mut video_frames, mut video_encode, mut psnr) = (0u32, Duration::ZERO, Vec::new());
    for t in 1..=FRAMES {
        scene.draw(&mut fb, t);
        let now = start + Duration::from_secs(u64::from(t)) / FPS;
        let frame = cap
            .process(&fb, &[SourceEvent::Damage(VIDEO)])
            .ok_or_else(|| anyhow::anyhow!("frame {t} changed nothing"))?;

        let t0 = Instant::now();
        let plan = plan_update_except(&frame, &stills_view, Some(70), None);
        let msgs = encode_plan(&frame, &Encodings::default(), &plan, &metrics);
        stills.encode += t0.elapsed();
        stills.bytes += msgs.iter().map(|m| m.len()).sum::<usize>();
        apply(&mut stills_view, &frame, &plan, now);

        let t0 = Instant::now();
        let d = video.decide(&frame, &video_view, now);
        let mut sent = None;
        if let Decision::Encode(rect) = d {
            let t1 = Instant::now();
            let (msg, _) = video.encode(&frame, rect, None, now).map_err(anyhow::Error::msg)?;
            video_encode += t1.elapsed();
            video_frames += 1;
            moving.bytes += msg.len();
            sent = Some((rect, msg));
        }
        let plan = plan_update_except(&frame, &video_view, Some(70), d.except());
        let msgs = encode_plan(&frame, &Encodings::default(), &plan, &metrics);
        moving.encode += t0.elapsed();
        moving.bytes += msgs.iter().map(|m| m.len()).sum::<usize>();
        apply(&mut video_view, &frame, &plan, now);
        mark_lossy(&mut video_view, &frame, d, now);
        if let Some((rect, msg)) = sent {
            let Ok(ServerMessage::Video { data, .. }) = ServerMessage::decode(&msg) else {
                anyhow::bail!("not a video message");
            };
            let (w, h, picture) = decoder.decode(&data).map_err(anyhow::Error::msg)?;
            anyhow::ensure!((w, h) == (rect.w, rect.h), "decoded {w}x{h} for {rect:?}");
            psnr.push(psnr_y(&to_i420(&frame.fb, rect), &picture, w, h));
        }
    }
    anyhow::ensure!(video_frames > 0, "the moving area never became video");
    let per_frame = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(FRAMES);
    #[allow(clippy::cast_precision_loss)]
    let ratio = moving.bytes as f64 / stills.bytes.max(1) as f64;
    #[allow(clippy::cast_precision_loss)]
    let mean_psnr = psnr.iter().sum::<f64>() / psnr.len().max(1) as f64;
    let r = json!({
        "motion_frames": FRAMES,
        "motion_video_frames": video_frames,
        "motion_stills_bytes": stills.bytes,
        "motion_video_bytes": moving.bytes,
        "video_bytes_ratio_vs_stills": round(ratio, 3),
        "motion_stills_encode_ms_per_frame": round(per_frame(stills.encode), 2),
        "motion_video_encode_ms_per_frame": round(per_frame(moving.encode), 2),
        "video_encode_ms_per_video_frame": round(video_encode.as_secs_f64() * 1e3 / f64::from(video_frames), 2),
        "video_psnr_db": round(mean_psnr, 1),
    });
    eprintln!("bench: motion 640x360 in 1280x720, {FRAMES} frames (one thread): {r}");
    Ok(r.as_object().cloned().unwrap_or_default())
}
