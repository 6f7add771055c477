//! Seeking in a recording, in the browser: the terminal workload's recording (made by the real
//! proxy and recorder in `recording.rs`) is stored twice through the real broker, as the node
//! sends chunks (signed with a node's key): once as it is, and once repeated to one hour (each
//! repeat starts as the recording does, with the whole screen; its times moved on). An
//! administrator then opens each in the admin portal's player in headless Chromium and seeks:
//! into the middle, a quarter and three quarters in, and to just before a key frame (the most
//! to replay). The figure is the time from the seek to the screen drawn; the peer in the same
//! run is the same seeks into the short recording: a seek that costs what the recording's
//! length costs would show there. The photo workload's recording (pictures and VP8 video, some
//! ten gigabytes an hour, so only its own length) is sought in too.

use std::time::Duration;

use anyhow::{Context, bail};
use atrium_protocol::recording::{CHUNK_HEADER, parse_chunk};
use atrium_tests::broker::{Broker, BrokerOptions, policies_with, pool_json, wait_ready_spares};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::util::TempDir;
use axum::body::Bytes;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use super::round;

/// Every pool's sessions are recorded.
const POLICY: &str = r#"@id("record-all")
permit (principal, action == Atrium::Action::"record", resource);
"#;

/// The length of the long recording.
const HOUR_MS: u32 = 3_600_000;

/// `chunks` (one recording, in order) repeated until they span an hour: each repeat's times
/// moved on by the recording's length. Returns the chunks and the last record's time.
fn to_an_hour(chunks: &[Bytes]) -> anyhow::Result<(Vec<Vec<u8>>, u32)> {
    let mut last = 0;
    for c in chunks {
        let recs = parse_chunk(c, last).context("a recorded chunk")?;
        last = recs.last().map_or(last, |r| r.t_ms);
    }
    if chunks.is_empty() {
        bail!("no chunks were recorded");
    }
    // One more frame's time between repeats, so time never goes back.
    let span = last + 40;
    let mut out = Vec::new();
    let mut end = 0;
    for i in 0.. {
        let shift = span * i;
        if shift >= HOUR_MS {
            break;
        }
        for c in chunks {
            let mut c = c.to_vec();
            let t0 = u32::from_le_bytes(c[5..CHUNK_HEADER].try_into()?) + shift;
            c[5..CHUNK_HEADER].copy_from_slice(&t0.to_le_bytes());
            out.push(c);
        }
        end = shift + last;
    }
    Ok((out, end))
}

/// Sends `chunks` as recording `id`'s, as its node does.
async fn upload(node: &FakeNode, id: &str, chunks: &[Vec<u8>]) -> anyhow::Result<()> {
    for (n, c) in chunks.iter().enumerate() {
        let last = n + 1 == chunks.len();
        let path = format!("/api/v1/nodes/recordings/{id}/chunks/{n}?last={last}");
        let r = node.post_signed(&path, c.clone()).await;
        if r.status() != StatusCode::OK && r.status() != StatusCode::NO_CONTENT {
            bail!("chunk {n} of {id}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
    }
    Ok(())
}

/// Alice connects to `pool`: the recording her ticket names.
async fn recording_of(broker: &Broker, pool: &str) -> anyhow::Result<String> {
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c =
        alice.post_json(&format!("/api/v1/pools/{pool}/connect"), json!({}), StatusCode::OK).await;
    let ticket = c["ticket"].as_str().context("a ticket")?;
    let claims = atrium_tests::broker::verify_ticket(broker, ticket).await;
    Ok(claims["record"]["id"].as_str().context("the ticket names no recording")?.to_owned())
}

pub async fn run(terminal: &[Bytes], photo: &[Bytes]) -> anyhow::Result<Map<String, Value>> {
    let (hour, hour_ms) = to_an_hour(terminal)?;
    let policies = policies_with("record", POLICY);
    let slapd = Slapd::start()?;
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.policies_dir = Some(policies.path().to_owned());
    let broker = Broker::start(opts).await?;
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await?;
    let admin = broker.admin().await;
    for pool in ["short", "hour", "photo"] {
        admin
            .post_json(
                "/api/v1/admin/pools",
                pool_json(pool, "floating", 1, 2),
                StatusCode::CREATED,
            )
            .await;
        wait_ready_spares(&admin, pool, 1).await;
    }
    let short_id = recording_of(&broker, "short").await?;
    let short: Vec<Vec<u8>> = terminal.iter().map(|c| c.to_vec()).collect();
    upload(&node, &short_id, &short).await?;
    let photo_id = recording_of(&broker, "photo").await?;
    let photo: Vec<Vec<u8>> = photo.iter().map(|c| c.to_vec()).collect();
    upload(&node, &photo_id, &photo).await?;
    let hour_id = recording_of(&broker, "hour").await?;
    let bytes: usize = hour.iter().map(Vec::len).sum();
    let t = std::time::Instant::now();
    upload(&node, &hour_id, &hour).await?;
    eprintln!(
        "bench: seek: stored a {} min recording of {} chunks, {:.0} MB, in {:.1} s",
        hour_ms / 60_000,
        hour.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let tmp = TempDir::new("bench-seek");
    let cfg = json!({
        "broker": broker.url,
        "chromium": CHROMIUM,
        "artifacts": artifacts(),
        "tmp": tmp.path(),
        "recordings": [short_id, hour_id, photo_id],
    });
    let mut driver = Driver::start("bench_seek.mjs", &cfg)?;
    let mut result = None;
    let drive = async {
        while let Some(msg) = driver.next().await? {
            if msg.get("done").is_some() {
                result = Some(msg);
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(600), drive)
        .await
        .context("the seek benchmark took over 10 minutes")??;
    driver.finish().await.map_err(|e| anyhow::anyhow!("{e}\nbroker log:\n{}", broker.log()))?;
    let r = result.context("the browser said nothing")?;
    let (short_ms, hour_ms_seek, photo_ms) = (&r["seeks"][0], &r["seeks"][1], &r["seeks"][2]);
    let middle = |v: &Value| v["middle"].as_f64().unwrap_or(f64::NAN);
    let worst = |v: &Value| v["worst"].as_f64().unwrap_or(f64::NAN);
    let out = json!({
        "recording_seek_middle_of_an_hour_ms": middle(hour_ms_seek),
        "recording_seek_worst_of_an_hour_ms": worst(hour_ms_seek),
        "recording_seek_peer_middle_of_a_short_one_ms": middle(short_ms),
        "recording_seek_hour_to_short_ratio": round(middle(hour_ms_seek) / middle(short_ms).max(1.0), 2),
        "recording_seek_middle_photo_ms": middle(photo_ms),
        "recording_seek_worst_photo_ms": worst(photo_ms),
        "recording_seek": r["seeks"],
        "recording_seek_hour_bytes": bytes,
    });
    eprintln!("bench: seek: {out}");
    Ok(out.as_object().cloned().unwrap_or_default())
}
