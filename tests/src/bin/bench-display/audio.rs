//! Audio latency: how long the desktop's sound takes to be played by the browser. A desktop
//! source sounds a 1 kHz tone for 300 ms every second (`atrium_display_testkit::tone`: 10 ms
//! chunks at a sound card's pace, each tone's first sample timed as it leaves); the display
//! proxy (in this process, as served) encodes it with Opus; Atrium's viewer in headless
//! Chromium (`viewer-dev.html?audio=1`) decodes and plays it, and the page notes in wall-clock
//! time when each tone starts in what it plays (`tests/browser/bench_audio.mjs`). Latency per
//! tone: that moment, plus the output latency the browser reports, minus the tone's start. The
//! same clock on both sides: one machine.
//!
//! No peer: noVNC carries no sound.

use std::sync::Arc;
use std::time::Duration;

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
use atrium_display_testkit::tone::{ToneLog, ToneOpener};

const SECONDS: u64 = 12;

pub async fn run(opts: &BenchOptions) -> anyhow::Result<Map<String, Value>> {
    let root = match &opts.root {
        Some(r) => r.clone(),
        None => std::env::current_dir()?,
    };
    let script = root.join("tests/browser/bench_audio.mjs");
    ensure!(script.exists(), "{} is missing (run from the workspace root)", script.display());
    ensure!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is not installed: (cd tests/browser && npm ci)"
    );
    ensure!(std::path::Path::new(CHROMIUM).exists(), "Chromium is missing at {CHROMIUM}");
    let tmp = tempfile_dir()?;

    let issuer = TicketIssuer::generate("bench-audio");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let pages = static_files::serve(vec![("atrium".into(), root.join("web-client"))]).await?;
    let cfg = DisplayConfig {
        broker_url: jwks.url(),
        plain_http_loopback: true,
        allowed_origins: vec![format!("http://{pages}")],
        node_id: Some("node-1".into()),
        ..DisplayConfig::default()
    };
    let log = Arc::new(ToneLog::default());
    let opener = Arc::new(ToneOpener {
        on: Duration::from_millis(300),
        off: Duration::from_millis(700),
        log: Arc::clone(&log),
    });
    let state = AppState::with_opener(&cfg, opener as Arc<dyn SourceOpener>);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let door = Arc::clone(state.door());
    tokio::spawn(atrium_door::serve(listener, router(state), door, std::future::pending(), || {}));

    let ticket = issuer.ticket("tones", Capabilities { audio: true, ..Capabilities::default() });
    let ws = format!("ws://{addr}/ws/tones?ticket={ticket}");
    let url = format!("http://{pages}/atrium/viewer-dev.html?audio=1&ws={}", urlencode(&ws));
    let cfg = json!({ "url": url, "chromium": CHROMIUM, "tmp": tmp, "seconds": SECONDS });
    let out = Command::new("node")
        .arg(&script)
        .arg(cfg.to_string())
        .current_dir(root.join("tests/browser"))
        .kill_on_drop(true)
        .output()
        .await
        .context("starting node (install nodejs)")?;
    let _ = std::fs::remove_dir_all(&tmp);
    ensure!(
        out.status.success(),
        "the audio page failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(last.lines().last().unwrap_or_default())
        .context("the audio page's result")?;
    let onsets: Vec<f64> = result["onsets"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let output_ms = result["outputLatencyMs"].as_f64().unwrap_or(0.0);
    let mut ahead: Vec<f64> = result["scheduledAheadMs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    ahead.sort_by(f64::total_cmp);
    let ahead_p50 = ahead.get(ahead.len() / 2).copied().unwrap_or(f64::NAN);
    let starts = log.starts();
    // Each tone heard is matched with the latest tone started before it (tones are a second
    // apart; the latency is far below that).
    let mut latencies: Vec<f64> = onsets
        .iter()
        .filter_map(|&heard| {
            let start = starts
                .iter()
                .copied()
                .filter(|&s| s <= heard)
                .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))))?;
            let l = heard - start + output_ms;
            (l < 900.0).then_some(l)
        })
        .collect();
    ensure!(latencies.len() >= 5, "only {} tones were heard of {}", latencies.len(), starts.len());
    latencies.sort_by(f64::total_cmp);
    let pick = |q: usize| latencies[(latencies.len() - 1) * q / 100];
    let r = json!({
        "audio_latency_ms": round(pick(50), 1),
        "audio_latency_ms_p90": round(pick(90), 1),
        "audio_latency_output_ms": round(output_ms, 1),
        "audio_scheduled_ahead_ms_p50": round(ahead_p50, 1),
        "audio_scheduled_ahead_ms_range": [
            round(ahead.first().copied().unwrap_or(f64::NAN), 1),
            round(ahead.last().copied().unwrap_or(f64::NAN), 1),
        ],
        "audio_tones_heard": latencies.len(),
        "audio_tones_played": starts.len(),
    });
    eprintln!("bench: audio, desktop to the browser's output: {r}");
    Ok(r.as_object().cloned().unwrap_or_default())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("atrium-bench-audio-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
