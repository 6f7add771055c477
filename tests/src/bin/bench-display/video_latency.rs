//! Input-to-pixel with video on: a desktop whose screen keeps moving (the synthetic desktop,
//! 960x540 at 30 frames a second: a scrolling terminal and a moving photo-like box), served by
//! the display proxy in this process, watched by Atrium's viewer in headless Chromium, once
//! with video (WebCodecs VP8) and then, as the peer, without it (still images), in the same
//! run. Keys are typed at intervals; a key's latency is from its keydown in the page to the
//! drawing of the first frame the proxy captured after forwarding it
//! (`tests/browser/bench_video_latency.mjs`). That includes waiting for the desktop's next
//! frame (up to 33 ms here), encoding, the socket, decoding and drawing.

use std::sync::Arc;

use anyhow::{Context, ensure};
use atrium_protocol::ticket::Capabilities;
use serde_json::{Map, Value, json};
use tokio::process::Command;

use super::novnc::{CHROMIUM, urlencode};
use super::{BenchOptions, round, static_files};
use atrium_display::config::DisplayConfig;
use atrium_display::http::{AppState, router};
use atrium_display::source::open::SourceOpener;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticOpener};

const KEYS: u32 = 40;

fn percentile(v: &[f64], q: usize) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get((s.len().checked_sub(1)?) * q / 100).copied()
}

pub async fn run(opts: &BenchOptions) -> anyhow::Result<Map<String, Value>> {
    let root = match &opts.root {
        Some(r) => r.clone(),
        None => std::env::current_dir()?,
    };
    let script = root.join("tests/browser/bench_video_latency.mjs");
    ensure!(script.exists(), "{} is missing (run from the workspace root)", script.display());
    ensure!(std::path::Path::new(CHROMIUM).exists(), "Chromium is missing at {CHROMIUM}");
    let tmp = std::env::temp_dir().join(format!("atrium-bench-video-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;

    let issuer = TicketIssuer::generate("bench-video");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let pages = static_files::serve(vec![("atrium".into(), root.join("web-client"))]).await?;
    let cfg = DisplayConfig {
        broker_url: jwks.url(),
        plain_http_loopback: true,
        allowed_origins: vec![format!("http://{pages}")],
        node_id: Some("node-1".into()),
        ..DisplayConfig::default()
    };
    let screen = SyntheticConfig { width: 960, height: 540, fps: 30, photo: true, ticks: None };
    let opener = Arc::new(SyntheticOpener::new(screen));
    let state = AppState::with_opener(&cfg, opener as Arc<dyn SourceOpener>);
    let metrics = Arc::clone(state.metrics());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let door = Arc::clone(state.door());
    tokio::spawn(atrium_door::serve(listener, router(state), door, std::future::pending(), || {}));

    let page = |vm: &str| {
        let ticket = issuer.ticket(vm, Capabilities::default());
        let ws = format!("ws://{addr}/ws/{vm}?ticket={ticket}");
        format!("http://{pages}/atrium/viewer-dev.html?ws={}", urlencode(&ws))
    };
    // Two desktops, so the second run does not inherit the first's state.
    let cfg = json!({
        "video": page("moving-1"),
        "stills": page("moving-2"),
        "chromium": CHROMIUM,
        "tmp": tmp,
        "keys": KEYS,
    });
    let out = Command::new("node")
        .arg(&script)
        .arg(cfg.to_string())
        .current_dir(root.join("tests/browser"))
        .kill_on_drop(true)
        .output()
        .await
        .context("starting node (install nodejs)")?;
    let _ = std::fs::remove_dir_all(&tmp);
    ensure!(out.status.success(), "the page failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .context("the page's result")?;
    let lat = |k: &str| -> Vec<f64> {
        result[k]["latencies"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (video, stills) = (lat("video"), lat("stills"));
    let pictures = result["video"]["pictures"].as_u64().unwrap_or(0);
    ensure!(pictures > 0, "the viewer with video decoded no picture");
    ensure!(result["stills"]["pictures"].as_u64() == Some(0), "the stills viewer got video");
    let p50 = |v: &[f64]| percentile(v, 50).map(|x| round(x, 1));
    let frames = metrics.video_frames.load(std::sync::atomic::Ordering::Relaxed);
    let encode_ns = metrics.video_encode_nanos.load(std::sync::atomic::Ordering::Relaxed);
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
