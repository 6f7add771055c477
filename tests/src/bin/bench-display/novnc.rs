//! Atrium against noVNC on one desktop. One QEMU guest (started by `atrium-node serve` from an
//! image, as in production) is watched at once by Atrium's web client through
//! `atrium-display serve` and by Debian's noVNC through Debian's websockify, each in its own
//! headless Chromium. A Node script (tests/browser/bench_vs_novnc.mjs, playwright-core) runs
//! the workload. On the console image ([`run`]): typing through each client (input-to-pixel
//! latency measured in each page), scrolling text, full-screen redraws, then 10 s idle. On the
//! desktop image, signed in ([`run_video`]): a video playing. Bytes are counted on the wire by a
//! relay in front of each WebSocket server; CPU seconds are read from /proc: the proxy process
//! for Atrium; websockify (and its per-connection children) plus QEMU's `vnc_worker` thread for
//! noVNC.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Map, Value, json};

use super::rig::{Guest, Rig};
use super::{BenchOptions, round};
use atrium_tests::procstat;

/// The value at `per_mille`/1000 of the sorted samples (lower rank).
fn percentile(v: &[f64], per_mille: usize) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (s.len() - 1) * per_mille / 1000;
    s.get(rank).copied()
}

pub(super) fn floats(v: &Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}
pub async fn run(opts: &BenchOptions) -> anyhow::Result<Map<String, Value>> {
    let mut rig = Rig::start(opts, Guest::Console).await?;
    let (samples, _marks, result) = rig.run_script("console").await?;
    let get = |k: &str| samples.get(k).copied().with_context(|| format!("no {k} mark"));
    let (s, e) = (get("measure_start")?, get("measure_end")?);
    let (is, ie) = (get("idle_start")?, get("idle_end")?);
    let (bs, be) = (get("blink_start")?, get("blink_end")?);
    let blink_secs = be.at.duration_since(bs.at).as_secs_f64();

    let atrium_bytes = e.atrium_bytes - s.atrium_bytes;
    let novnc_bytes = e.novnc_bytes - s.novnc_bytes;
    let atrium = e.atrium - s.atrium;
    let ws_usage = e.websockify - s.websockify;
    let worker_usage = e.vnc_worker - s.vnc_worker;
    let novnc = ws_usage + worker_usage;
    let (atrium_cpu, websockify_cpu, vnc_worker_cpu, novnc_cpu) =
        (atrium.secs, ws_usage.secs, worker_usage.secs, novnc.secs);
    let idle_secs = ie.at.duration_since(is.at).as_secs_f64();
    let a_lat = floats(&result["atrium_latencies_ms"]);
    let n_lat = floats(&result["novnc_latencies_ms"]);
    #[allow(clippy::cast_precision_loss)]
    let ratio = |a: u64, b: u64| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    #[allow(clippy::cast_precision_loss)]
    let per_s = |b: u64| b as f64 / idle_secs;
    // What a wake-up from a 25 ms sleep costs here: most of both paths' CPU is wake-ups.
    let wake_us =
        tokio::task::spawn_blocking(|| procstat::wake_cost_us(Duration::from_millis(25), 40))
            .await?;
    let mut per_phase = Map::new();
    for name in ["typing_atrium", "typing_novnc", "scroll", "redraw"] {
        if let (Some(a), Some(b)) =
            (samples.get(&format!("{name}_start")), samples.get(&format!("{name}_end")))
        {
            per_phase.insert(
                name.to_owned(),
                json!({
                    "atrium_bytes": b.atrium_bytes - a.atrium_bytes,
                    "novnc_bytes": b.novnc_bytes - a.novnc_bytes,
                    "atrium_cpu_s": round((b.atrium - a.atrium).secs, 3),
                    "novnc_cpu_s": round((b.websockify - a.websockify + b.vnc_worker - a.vnc_worker).secs, 3),
                    "atrium_wakeups": (b.atrium - a.atrium).runs,
                    "novnc_wakeups": (b.websockify - a.websockify + b.vnc_worker - a.vnc_worker).runs,
                }),
            );
        }
    }
    let out = json!({
        "bytes_ratio": round(ratio(atrium_bytes, novnc_bytes), 3),
        "cpu_ratio": round(atrium_cpu / novnc_cpu, 3),
        "cpu_ratio_vs_websockify_only": round(atrium_cpu / websockify_cpu, 3),
        "idle_bytes_per_s": round(per_s(ie.atrium_bytes - is.atrium_bytes), 1),
        "novnc_idle_bytes_per_s": round(per_s(ie.novnc_bytes - is.novnc_bytes), 1),
        "blinking_cursor_bytes_per_s": round((be.atrium_bytes - bs.atrium_bytes) as f64 / blink_secs, 1),
        "novnc_blinking_cursor_bytes_per_s": round((be.novnc_bytes - bs.novnc_bytes) as f64 / blink_secs, 1),
        "input_to_pixel_ms_p50": percentile(&a_lat, 500).map(|v| round(v, 1)),
        "input_to_pixel_ms_p90": percentile(&a_lat, 900).map(|v| round(v, 1)),
        "novnc_input_to_pixel_ms_p50": percentile(&n_lat, 500).map(|v| round(v, 1)),
        "novnc_input_to_pixel_ms_p90": percentile(&n_lat, 900).map(|v| round(v, 1)),
        "atrium_bytes": atrium_bytes,
        "novnc_bytes": novnc_bytes,
        "atrium_cpu_s": round(atrium_cpu, 3),
        "novnc_cpu_s": round(novnc_cpu, 3),
        "websockify_cpu_s": round(websockify_cpu, 3),
        "qemu_vnc_worker_cpu_s": round(vnc_worker_cpu, 3),
        "atrium_wakeups": atrium.runs,
        "novnc_wakeups": novnc.runs,
        "wakeup_ratio": round(ratio(atrium.runs, novnc.runs), 3),
        "host_wake_cost_us_at_25ms": round(wake_us, 1),
        "atrium_frames": result["atrium_frames"],
        "novnc_frames": result["novnc_frames"],
        "phases": result["phases"],
        "per_phase": per_phase,
        "workload_secs": round(e.at.duration_since(s.at).as_secs_f64(), 1),
        "latency_samples": [a_lat.len(), n_lat.len()],
    });
    eprintln!("bench: vs noVNC: {out}");
    rig.stop_clients();
    let mut out = out.as_object().cloned().unwrap_or_default();
    // The browsers have left: measure what QEMU's VNC server allows on its own.
    let socket = PathBuf::from(&rig.vnc);
    match tokio::task::spawn_blocking(move || super::qemu_floor::run(&socket)).await? {
        Ok(floor) => out.extend(floor),
        Err(e) => {
            eprintln!("bench: the QEMU probe failed: {e:#}");
            out.insert("qemu_probe_error".into(), Value::String(format!("{e:#}")));
        }
    }
    Ok(out)
}

/// Motion against noVNC: a video plays in the desktop guest (GStreamer's moving zone plate,
/// 480x360 at 25 frames a second, started from the session's terminal), watched at once by
/// Atrium's viewer (which decodes it as VP8 video) and by noVNC (QEMU's tight encoding, JPEG at
/// noVNC's default quality); bytes on the wire and CPU over the same 20 s.
pub async fn run_video(opts: &BenchOptions) -> anyhow::Result<Map<String, Value>> {
    let rig = Rig::start(opts, Guest::Desktop).await?;
    let (samples, _marks, result) = rig.run_script("video").await?;
    let get = |k: &str| samples.get(k).copied().with_context(|| format!("no {k} mark"));
    let (s, e) = (get("video_start")?, get("video_end")?);
    let pictures = result["atrium_video_pictures"].as_u64().unwrap_or(0);
    ensure!(pictures > 0, "Atrium's viewer decoded no video while the video played");
    let atrium_bytes = e.atrium_bytes - s.atrium_bytes;
    let novnc_bytes = e.novnc_bytes - s.novnc_bytes;
    let atrium_cpu = (e.atrium - s.atrium).secs;
    let novnc_cpu = (e.websockify - s.websockify + e.vnc_worker - s.vnc_worker).secs;
    let secs = e.at.duration_since(s.at).as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let (ratio, per_s) =
        (atrium_bytes as f64 / novnc_bytes.max(1) as f64, |n: u64| n as f64 / secs);
    let out = json!({
        "video_bytes_ratio_vs_novnc": round(ratio, 3),
        "video_vs_novnc_cpu_ratio": round(atrium_cpu / novnc_cpu, 3),
        "video_vs_novnc_atrium_bytes": atrium_bytes,
        "video_vs_novnc_novnc_bytes": novnc_bytes,
        "video_vs_novnc_atrium_cpu_s": round(atrium_cpu, 3),
        "video_vs_novnc_novnc_cpu_s": round(novnc_cpu, 3),
        "video_vs_novnc_atrium_pictures_per_s": round(per_s(pictures), 1),
        "video_vs_novnc_atrium_frames_per_s": round(per_s(result["atrium_frames"].as_u64().unwrap_or(0)), 1),
        "video_vs_novnc_novnc_frames_per_s": round(per_s(result["novnc_frames"].as_u64().unwrap_or(0)), 1),
        "video_vs_novnc_secs": round(secs, 1),
        "video_vs_novnc_atrium_video_frames": e.video[0] - s.video[0],
        "video_vs_novnc_atrium_key_frames": e.video[1] - s.video[1],
        "video_vs_novnc_atrium_video_bytes": e.video[2] - s.video[2],
    });
    eprintln!("bench: a video in the desktop, vs noVNC: {out}");
    Ok(out.as_object().cloned().unwrap_or_default())
}
