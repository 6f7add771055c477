//! Fan-out: one synthetic 1920x1080 desktop scrolling text at 30 fps, watched by more and more
//! viewers (WebSocket clients in this process that acknowledge every frame) until one of them
//! falls under 27 fps. Reports the largest count that held 30 fps and the process's CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atrium_protocol::display::{ClientMessage, ServerMessage};
use atrium_protocol::ticket::Capabilities;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::round;
use atrium_display::config::DisplayConfig;
use atrium_display::http::{AppState, router};
use atrium_display::source::open::SourceOpener;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_display_testkit::synthetic::SyntheticConfig;
use atrium_display_testkit::synthetic::SyntheticOpener;
use atrium_tests::procstat;

const FPS: u32 = 30;

async fn viewer(url: String, frames: Arc<AtomicU64>, bytes: Arc<AtomicU64>) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    while let Some(m) = ws.next().await {
        let Message::Binary(b) = m? else { continue };
        bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        if let Ok(ServerMessage::FrameEnd { frame, .. }) = ServerMessage::decode(&b) {
            frames.fetch_add(1, Ordering::Relaxed);
            ws.send(Message::Binary(ClientMessage::FrameAck { frame }.encode().into())).await?;
        }
    }
    Ok(())
}

pub async fn run(secs: u64) -> anyhow::Result<Map<String, Value>> {
    let issuer = TicketIssuer::generate("bench");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let cfg = DisplayConfig {
        broker_url: jwks.url(),
        max_viewers_per_desktop: 4096,
        ..DisplayConfig::default()
    };
    let synth = SyntheticConfig { width: 1920, height: 1080, fps: FPS, photo: false, ticks: None };
    let opener = Arc::new(SyntheticOpener::new(synth));
    let state = AppState::with_opener(&cfg, opener as Arc<dyn SourceOpener>, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });

    let mut best: Option<(usize, f64, f64, f64)> = None;
    let mut steps = Vec::new();
    for n in [1usize, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
        let vm = format!("fanout-{n}");
        let counters: Vec<(Arc<AtomicU64>, Arc<AtomicU64>)> =
            (0..n).map(|_| (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)))).collect();
        let mut tasks = Vec::new();
        for (f, b) in &counters {
            let url = format!(
                "ws://{addr}/ws/{vm}?ticket={}",
                issuer.ticket(&vm, Capabilities::default())
            );
            tasks.push(tokio::spawn(viewer(url, Arc::clone(f), Arc::clone(b))));
        }
        // Warm up (first full frames), then measure.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let start: Vec<u64> = counters.iter().map(|(f, _)| f.load(Ordering::Relaxed)).collect();
        let bytes0: u64 = counters.iter().map(|(_, b)| b.load(Ordering::Relaxed)).sum();
        let cpu0 = procstat::process_secs(std::process::id());
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = (procstat::process_secs(std::process::id()) - cpu0) / elapsed;
        let fps: Vec<f64> = counters
            .iter()
            .zip(&start)
            .map(|((f, _), s)| (f.load(Ordering::Relaxed) - s) as f64 / elapsed)
            .collect();
        let bytes: u64 =
            counters.iter().map(|(_, b)| b.load(Ordering::Relaxed)).sum::<u64>() - bytes0;
        let min = fps.iter().copied().fold(f64::INFINITY, f64::min);
        let per_viewer_kbps = bytes as f64 / elapsed / n as f64 / 1024.0;
        eprintln!(
            "bench: fan-out {n} viewers: min {min:.1} fps, process CPU {:.0}% of one core, {per_viewer_kbps:.0} KiB/s per viewer",
            cpu * 100.0
        );
        steps.push(json!({ "viewers": n, "min_fps": round(min, 1), "cpu_cores": round(cpu, 2) }));
        for t in tasks {
            t.abort();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if min < f64::from(FPS) * 0.9 {
            break;
        }
        best = Some((n, min, cpu, per_viewer_kbps));
    }
    let (n, min, cpu, kbps) = best.unwrap_or((0, 0.0, 0.0, 0.0));
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    Ok(json!({
        "fanout_viewers_at_30fps": n,
        "fanout_min_fps": round(min, 1),
        "fanout_cpu_cores": round(cpu, 2),
        "fanout_kib_per_s_per_viewer": round(kbps, 1),
        "fanout_machine_cores": cores,
        "fanout_steps": steps,
    })
    .as_object()
    .cloned()
    .unwrap_or_default())
}
