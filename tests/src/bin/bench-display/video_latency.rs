//! Input-to-pixel with video on: a desktop whose screen keeps moving (the synthetic desktop,
//! 960x540 at 30 frames a second: a scrolling terminal and a moving photo-like box), served by
//! the display proxy in this process, watched by Atrium's viewer in headless Chromium, once
//! with video (WebCodecs VP8) and then, as the peer, without it (still images), in the same
//! run. Keys are typed at intervals; a key's latency is from its keydown in the page to the
//! drawing of the first frame the proxy captured after forwarding it
//! (`tests/browser/bench_video_latency.mjs`). That includes waiting for the desktop's next
//! frame (up to 33 ms here), encoding, the socket, decoding and drawing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::ensure;
use atrium_protocol::ticket::Capabilities;
use serde_json::{Map, Value, json};

use super::in_browser::Served;
use super::novnc::floats;
use super::{BenchOptions, round};
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticOpener};

const SCRIPT: &str = "bench_video_latency.mjs";
const KEYS: u32 = 40;

fn percentile(v: &[f64], q: usize) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get((s.len().checked_sub(1)?) * q / 100).copied()
}

pub async fn run(opts: &BenchOptions) -> anyhow::Result<Map<String, Value>> {
    let screen = SyntheticConfig { width: 960, height: 540, fps: 30, photo: true, ticks: None };
    let served = Served::start(opts, SCRIPT, Arc::new(SyntheticOpener::new(screen))).await?;
    // Two desktops, so the second run does not inherit the first's state.
    let cfg = json!({
        "video": served.page("moving-1", Capabilities::default(), ""),
        "stills": served.page("moving-2", Capabilities::default(), ""),
        "keys": KEYS,
    });
    let result = served.run(SCRIPT, cfg).await?;
    let lat = |k: &str| floats(&result[k]["latencies"]);
    let (video, stills) = (lat("video"), lat("stills"));
    let pictures = result["video"]["pictures"].as_u64().unwrap_or(0);
    ensure!(pictures > 0, "the viewer with video decoded no picture");
    ensure!(result["stills"]["pictures"].as_u64() == Some(0), "the stills viewer got video");
    let p50 = |v: &[f64]| percentile(v, 50).map(|x| round(x, 1));
    let frames = served.metrics.video_frames.load(Ordering::Relaxed);
    let encode_ns = served.metrics.video_encode_nanos.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let per_frame_ms = encode_ns as f64 / 1e6 / frames.max(1) as f64;
    let r = json!({
        "video_input_to_pixel_ms_p50": p50(&video),
        "video_input_to_pixel_ms_p90": percentile(&video, 90).map(|x| round(x, 1)),
        "video_input_to_pixel_peer_stills_ms_p50": p50(&stills),
        "video_input_to_pixel_keys": [video.len(), stills.len()],
        "video_pictures_decoded": pictures,
        "video_encode_ms_per_frame_960x540": round(per_frame_ms, 2),
    });
    eprintln!("bench: input-to-pixel on a moving desktop, video on and off: {r}");
    Ok(r.as_object().cloned().unwrap_or_default())
}
