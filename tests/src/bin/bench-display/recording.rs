//! What recording a session costs: one viewer of the synthetic 1920x1080 desktop (a terminal
//! scrolling text; then the same with a photo-like box moving over it), its ticket asking for
//! a recording, served by the real proxy with its real recorder; the chunks are kept in memory
//! here instead of going through a node to a broker. Reports the bytes stored against the bytes
//! the viewer received (as WebSocket messages) (`recording_to_stream_ratio`, key frames included), the bytes an hour of
//! such work stores, and what a seek into the middle has to replay (from the key frame before).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrium_display::config::DisplayConfig;
use atrium_display::http::{AppState, router};
use atrium_display::recording::{Sink, SinkError};
use atrium_display::source::open::SourceOpener;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticOpener};
use atrium_protocol::display::{ClientMessage, ServerMessage};
use atrium_protocol::recording::{Kind, parse_chunk};
use atrium_protocol::ticket::{Capabilities, DISPLAY_AUDIENCE_RECORDED, Record};
use axum::body::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::round;

/// Keeps the chunks it is sent.
#[derive(Debug, Default)]
struct Kept(Mutex<Vec<Bytes>>);

impl Sink for Kept {
    fn put<'a>(
        &'a self,
        _vm: &'a str,
        _id: &'a str,
        _n: u64,
        _last: bool,
        chunk: Bytes,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.0.lock().expect("lock").push(chunk);
            Ok(())
        })
    }

    fn end<'a>(&'a self, _vm: &'a str, _id: &'a str) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A viewer that acknowledges every frame and counts the bytes of what it receives.
async fn viewer(url: String, bytes: Arc<AtomicU64>) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    while let Some(m) = ws.next().await {
        let Message::Binary(b) = m? else { continue };
        bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        if let Ok(ServerMessage::FrameEnd { frame, .. }) = ServerMessage::decode(&b) {
            ws.send(Message::Binary(ClientMessage::FrameAck { frame }.encode().into())).await?;
        }
    }
    Ok(())
}

/// One workload for `secs`: its figures and the recording's chunks.
async fn workload(photo: bool, secs: u64) -> anyhow::Result<(Value, Vec<Bytes>)> {
    let issuer = TicketIssuer::generate("bench");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let cfg = DisplayConfig { broker_url: jwks.url(), ..DisplayConfig::default() };
    let synth = SyntheticConfig { width: 1920, height: 1080, fps: 30, photo, ticks: None };
    let opener = Arc::new(SyntheticOpener::new(synth)) as Arc<dyn SourceOpener>;
    let kept = Arc::new(Kept::default());
    let state = AppState::with_opener(&cfg, opener, Some(Arc::clone(&kept) as Arc<dyn Sink>));
    let metrics = Arc::clone(state.metrics());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    let vm = "recorded";
    let mut claims = TicketIssuer::claims(vm, Capabilities::default(), 30);
    claims.aud = DISPLAY_AUDIENCE_RECORDED.into();
    claims.record = Some(Record { id: "0b5e55ed".into(), input: false });
    let url = format!("ws://{addr}/ws/{vm}?ticket={}", issuer.sign(&claims));
    let received = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(viewer(url, Arc::clone(&received)));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    task.abort();
    // The viewer's end sends the last chunk.
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.abort();
    let chunks = kept.0.lock().expect("lock").clone();
    let stored: usize = chunks.iter().map(Bytes::len).sum();
    let sent = metrics.bytes_sent.load(Ordering::Relaxed);
    let got = received.load(Ordering::Relaxed);
    // Records, with their sizes, to find what a seek to the middle replays.
    let mut records: Vec<(u32, Kind, usize)> = Vec::new();
    let mut last = 0;
    for c in &chunks {
        let recs = parse_chunk(c, last)?;
        last = recs.last().map_or(last, |r| r.t_ms);
        records.extend(recs.iter().map(|r| (r.t_ms, r.kind, r.payload.len())));
    }
    let keys: Vec<usize> = records.iter().filter(|r| r.1 == Kind::Key).map(|r| r.2).collect();
    let middle = last / 2;
    let from = records.iter().rposition(|r| r.1 == Kind::Key && r.0 <= middle).unwrap_or(0);
    let replay: usize = records[from..].iter().take_while(|r| r.0 <= middle).map(|r| r.2).sum();
    #[allow(clippy::cast_precision_loss)]
    let (ratio, per_hour) =
        (stored as f64 / got.max(1) as f64, stored as f64 / (secs as f64) * 3600.0);
    eprintln!(
        "bench: recording {}: viewer received {got} B (proxy sent {sent} B), stored {stored} B in {} chunks: {ratio:.3}x; {} key frames ({} B); {:.0} MB an hour; a seek to the middle replays {replay} B",
        if photo { "terminal + photo" } else { "terminal" },
        chunks.len(),
        keys.len(),
        keys.iter().sum::<usize>(),
        per_hour / 1e6,
    );
    let figures = json!({
        "ratio": round(ratio, 3),
        "bytes_per_hour": round(per_hour, 0),
        "sent_bytes": sent,
        "stored_bytes": stored,
        "key_frames": keys.len(),
        "key_frame_bytes": keys.iter().sum::<usize>(),
        "seek_middle_replay_bytes": replay,
    });
    Ok((figures, chunks))
}

/// The figures, and the two workloads' recordings, terminal then photo (what `seek.rs` seeks
/// in).
pub async fn run(secs: u64) -> anyhow::Result<(Map<String, Value>, [Vec<Bytes>; 2])> {
    let (terminal, chunks) = workload(false, secs).await?;
    let (photo, photo_chunks) = workload(true, secs).await?;
    let figures = json!({
        "recording_to_stream_ratio": terminal["ratio"],
        "recording_bytes_per_hour": terminal["bytes_per_hour"],
        "recording_to_stream_ratio_photo": photo["ratio"],
        "recording_bytes_per_hour_photo": photo["bytes_per_hour"],
        "recording_terminal": terminal,
        "recording_photo": photo,
    });
    Ok((figures.as_object().cloned().unwrap_or_default(), [chunks, photo_chunks]))
}
