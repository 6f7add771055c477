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

use anyhow::ensure;
use atrium_protocol::ticket::Capabilities;
use serde_json::{Map, Value, json};

use super::in_browser::Served;
use super::novnc::floats;
use super::{BenchOptions, round};
use atrium_display_testkit::tone::{ToneLog, ToneOpener};

const SCRIPT: &str = "bench_audio.mjs";
const SECONDS: u64 = 12;

pub async fn run(opts: &BenchOptions) -> anyhow::Result<Map<String, Value>> {
    let log = Arc::new(ToneLog::default());
    let opener = Arc::new(ToneOpener {
        on: Duration::from_millis(300),
        off: Duration::from_millis(700),
        log: Arc::clone(&log),
    });
    let served = Served::start(opts, SCRIPT, opener).await?;
    let caps = Capabilities { audio: true, ..Capabilities::default() };
    let url = served.page("tones", caps, "audio=1&");
    let result = served.run(SCRIPT, json!({ "url": url, "seconds": SECONDS })).await?;
    let onsets = floats(&result["onsets"]);
    let output_ms = result["outputLatencyMs"].as_f64().unwrap_or(0.0);
    let mut ahead = floats(&result["scheduledAheadMs"]);
    ahead.sort_by(f64::total_cmp);
    let ahead_p50 = ahead.get(ahead.len() / 2).copied().unwrap_or(f64::NAN);
    let starts = log.starts();
    // Each tone heard is matched with the latest tone started before it (tones are a second
    // apart; the latency is far below that).
    let mut latencies: Vec<f64> = onsets
        .iter()
        .filter_map(|&heard| {
            let start = starts.iter().copied().filter(|&s| s <= heard).reduce(f64::max)?;
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
