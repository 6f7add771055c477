//! A session recorded end to end: a real console desktop (QEMU) in a pool that policy records,
//! a user's viewer through the real display proxy, the chunks through the real node agent to
//! the real broker. The recording is the viewer's own stream (the same messages, in order),
//! with the keys typed (input recording on) and key frames from which playing reaches the same
//! screen as playing from the start.

use std::time::Duration;

use anyhow::{Context, ensure};
use atrium_protocol::display::caps;
use atrium_protocol::recording::{Kind, key_parts, parse_chunk};
use atrium_tests::broker::{policies_with, pool_policy};
use atrium_tests::display::{DisplayViewer, count_color, keep_artifact};
use atrium_tests::screen::{Glyphs, rows_showing};
use atrium_tests::stack::Stack;
use atrium_tests::{Group, skip, wait_for};
use reqwest::StatusCode;
use serde_json::json;

/// The console's text colour.
const GREY: [u8; 3] = [0xaa, 0xaa, 0xaa];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_is_the_viewers_own_stream_with_its_keys_and_key_frames()
-> anyhow::Result<()> {
    let name = "a_recorded_session_is_the_viewers_own_stream_with_its_keys_and_key_frames";
    if skip(Group::Qemu, name) || skip(Group::Ldap, name) {
        return Ok(());
    }
    let policies = policies_with("record", &pool_policy("rec", &["record", "record_input"]));
    let dir = policies.path().to_owned();
    let stack = Stack::start_with(|o| o.policies_dir = Some(dir), None).await?;
    stack.pool("rec", "console", 1, "1024x768").await?;
    let mut alice = stack.broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c = alice.post_json("/api/v1/pools/rec/connect", json!({}), StatusCode::OK).await;
    let url = format!(
        "{}?ticket={}",
        c["ws_url"].as_str().context("ws_url")?,
        c["ticket"].as_str().context("ticket")?
    );
    let mut viewer = DisplayViewer::connect(&url).await?;
    ensure!(viewer.caps & caps::RECORDED != 0, "the viewer is told its stream is recorded");
    ensure!(viewer.caps & caps::RECORDED_INPUT != 0, "... and its keys");
    viewer.kept = Some(Vec::new());
    viewer
        .wait_until("console text", Duration::from_secs(60), |v| count_color(&v.rgb, GREY) > 2_000)
        .await?;
    // Enough output for key frames (each comes once the stream is fifteen times the last one).
    let word = format!("rec-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    viewer
        .type_text(&format!("for i in 1 2 3 4 5 6 7 8 9 10; do ls -l /bin; done; echo {word}\n"))
        .await?;
    // Its output line is the word alone, from column 0.
    let shown = viewer
        .wait_until("the word after the listing", Duration::from_secs(120), |v| {
            !rows_showing(&v.screen().cells(), &word, &Glyphs::default()).is_empty()
        })
        .await;
    keep_artifact("display-recording-typed.png", &viewer.png());
    shown.context("see display-recording-typed.png")?;
    // A little more of the session (the cursor blinks on), then she leaves.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        viewer.pump(left).await?;
    }
    let sent = viewer.kept.take().context("kept")?;
    let last_screen = viewer.rgb.clone();
    keep_artifact("display-recording-viewer.png", &viewer.png());
    drop(viewer);

    let admin = stack.admin().await;
    let rows = wait_for("the recording to be complete", Duration::from_secs(30), || async {
        let list = admin.get_json("/api/v1/admin/recordings?user=alice", StatusCode::OK).await;
        (list[0]["state"] == "complete").then_some(list)
    })
    .await?;
    let id = rows[0]["id"].as_str().context("id")?;
    ensure!(rows[0]["input"] == true && rows[0]["pool"] == "rec", "{rows}");
    let index = admin.get_json(&format!("/api/v1/admin/recordings/{id}"), StatusCode::OK).await;
    let mut chunks = Vec::new();
    for n in 0..index["chunks"].as_array().context("chunks")?.len() {
        let r = admin.get(&format!("/api/v1/admin/recordings/{id}/chunks/{n}")).await?;
        ensure!(r.status() == StatusCode::OK, "chunk {n}: {}", r.status());
        chunks.push(r.bytes().await?.to_vec());
    }
    let v = admin.get_json(&format!("/api/v1/admin/recordings/{id}/verify"), StatusCode::OK).await;
    ensure!(v["intact"] == true, "{v}");

    // The viewer's own stream: the same messages, in the same order.
    let mut records = Vec::new();
    let mut last_t = 0;
    for (n, c) in chunks.iter().enumerate() {
        let recs = parse_chunk(c, last_t).with_context(|| format!("chunk {n}"))?;
        last_t = recs.last().map_or(last_t, |r| r.t_ms);
        records.extend(recs.into_iter().map(|r| (r.kind, r.payload.to_vec())));
    }
    let all_keys = records.iter().filter(|(k, _)| *k == Kind::Key).count();
    let messages: Vec<&Vec<u8>> =
        records.iter().filter(|(k, _)| *k == Kind::Message).map(|(_, p)| p).collect();
    // What was on its way when she left is recorded too: the recording starts with exactly
    // what she received.
    ensure!(messages.len() >= sent.len(), "{} recorded, {} received", messages.len(), sent.len());
    ensure!(messages.iter().zip(&sent).all(|(a, b)| *a == b), "the recorded messages differ");
    // The records up to her last received message.
    let mut seen = 0;
    let end = records
        .iter()
        .position(|(k, _)| {
            seen += usize::from(*k == Kind::Message);
            seen == sent.len()
        })
        .context("her last message in the recording")?
        + 1;
    let records = &records[..end];
    let keys_typed = records.iter().filter(|(k, p)| *k == Kind::Input && p.first() == Some(&0x81));
    ensure!(keys_typed.count() >= 2 * word.len(), "the keys she typed are recorded");

    // Played from the start, and from the last key frame on, it ends on her last screen.
    let play = |from: usize| -> anyhow::Result<Vec<u8>> {
        let mut p = DisplayViewer::player();
        for (k, payload) in &records[from..] {
            match k {
                Kind::Message => {
                    p.apply(payload)?;
                }
                Kind::Key => {
                    for m in key_parts(payload).context("a key frame's messages")? {
                        p.apply(m)?;
                    }
                }
                Kind::Input => {}
            }
        }
        Ok(p.rgb)
    };
    ensure!(play(0)? == last_screen, "playing the recording does not end on her screen");
    let key = records.iter().rposition(|(k, _)| *k == Kind::Key).context("no key frame")?;
    ensure!(
        play(key)? == last_screen,
        "playing from the last key frame does not end on her screen"
    );
    let listed: usize = index["chunks"]
        .as_array()
        .context("chunks")?
        .iter()
        .map(|c| c["keys"].as_array().map_or(0, Vec::len))
        .sum();
    ensure!(listed == all_keys, "the index lists {listed} key frames, the chunks have {all_keys}");
    Ok(())
}
