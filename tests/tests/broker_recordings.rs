//! Session recordings through the real broker (real slapd, SQLite): opened by policy at
//! connect, chunks taken from the node whose VM is recorded (signed with its key) and chained,
//! listed and served to administrators who may review them, tampering shown, retention
//! enforced. The node is the in-process stand-in (`atrium_tests::fake_node`), signing as the
//! real node does; `recording_e2e.rs` records a real desktop through the real display proxy.

use std::time::Duration;

use atrium_protocol::recording::{ChunkWriter, Kind, parse_chunk, write_key_part};
use atrium_tests::broker::{
    Broker, BrokerOptions, policies_with, pool_json, verify_ticket, wait_ready_spares,
};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A chunk of `records` (time, kind, payload).
fn chunk(records: &[(u32, Kind, &[u8])]) -> Vec<u8> {
    let mut c = ChunkWriter::new();
    for (t, k, p) in records {
        c.record(*t, *k, p);
    }
    c.take()
}

const POLICY: &str = r#"@id("finance-record")
permit (principal, action == Atrium::Action::"record", resource)
when { resource is Atrium::Pool && resource.name == "finance" };

// Bob reviews recordings but is no administrator: the admin portal is not his.
@id("bob-reviews")
permit (principal == Atrium::User::"bob", action == Atrium::Action::"review_recordings", resource);
"#;

/// Runs SQL on the broker's SQLite database (what only time would do otherwise).
fn sqlite(db: &std::path::Path, sql: &str) {
    // The broker may be writing at that moment: wait for its lock rather than fail.
    let out = std::process::Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (the test command installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

async fn status(r: reqwest::Response) -> (StatusCode, String) {
    let s = r.status();
    (s, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_recorded_session_is_chained_listed_played_checked_and_expires() {
    let name = "a_recorded_session_is_chained_listed_played_checked_and_expires";
    if skip(Group::Ldap, name) {
        return;
    }
    let policies = policies_with("record", POLICY);
    let slapd = Slapd::start().unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.policies_dir = Some(policies.path().to_owned());
    opts.extra_toml = "[recordings]\nretention_days = 30\nmax_recording_mib = 1\n".into();
    let broker = Broker::start(opts).await.unwrap();
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    let other = FakeNode::enrolled(&broker, "node-b", 8192).await.unwrap();
    let a = broker.admin().await;
    for pool in ["general", "finance"] {
        a.post_json("/api/v1/admin/pools", pool_json(pool, "floating", 1, 2), StatusCode::CREATED)
            .await;
    }
    wait_ready_spares(&a, "general", 1).await;
    wait_ready_spares(&a, "finance", 1).await;

    // Outside finance nothing is recorded; in finance the ticket names a new recording.
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let general = alice.post_json("/api/v1/pools/general/connect", json!({}), StatusCode::OK).await;
    let claims = verify_ticket(&broker, general["ticket"].as_str().unwrap()).await;
    assert!(claims.get("record").is_none(), "{claims}");
    let finance = alice.post_json("/api/v1/pools/finance/connect", json!({}), StatusCode::OK).await;
    let claims = verify_ticket(&broker, finance["ticket"].as_str().unwrap()).await;
    assert_eq!(claims["aud"], "atrium-display-recorded", "a proxy that cannot record refuses it");
    assert_eq!(claims["record"]["input"], false, "keys are recorded only where policy says");
    let id = claims["record"]["id"].as_str().unwrap().to_owned();
    let chunk_path =
        |n: u64, last: bool| format!("/api/v1/nodes/recordings/{id}/chunks/{n}?last={last}");

    // The node whose VM it is sends chunks in order; others and bad chunks are refused.
    let mut key = Vec::new();
    write_key_part(&mut key, &[0x02, 0x20, 0x03, 0x58, 0x02]);
    let c0 = chunk(&[(0, Kind::Message, &[0x1f; 9]), (40, Kind::Key, &key)]);
    let c1 = chunk(&[(2_000, Kind::Message, &[0x30, b'h', b'i'])]);
    let (s, body) = status(other.post_signed(&chunk_path(0, false), c0.clone()).await).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another node's recording: {body}");
    let (s, body) =
        status(node.post_signed(&chunk_path(0, false), b"ATRC\x01junk".to_vec()).await).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("chunk 0"), "{body}");
    let (s, body) = status(node.post_signed(&chunk_path(1, false), c1.clone()).await).await;
    assert_eq!(s, StatusCode::CONFLICT, "out of order: {body}");
    let (s, _) = status(node.post_signed(&chunk_path(0, false), c0.clone()).await).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = status(node.post_signed(&chunk_path(0, false), c0.clone()).await).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "a retry is taken again");
    let (s, body) = status(node.post_signed(&chunk_path(1, true), c0.clone()).await).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a chunk going back in time: {body}");
    let big = chunk(&[(1_000, Kind::Message, &vec![0x11; 1_100_000])]);
    let (s, body) = status(node.post_signed(&chunk_path(1, false), big).await).await;
    assert_eq!(s, StatusCode::CONFLICT, "past recordings.max_recording_mib: {body}");
    assert!(body.contains("max_recording_mib"), "{body}");
    // Silent for recordings.close_after_secs (an idle screen): marked incomplete, and the next
    // chunk continues it.
    let db = broker.dir().join("broker.db");
    sqlite(&db, &format!("UPDATE recordings SET state = 'incomplete' WHERE id = '{id}'"));
    let (s, _) = status(node.post_signed(&chunk_path(1, true), c1.clone()).await).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = status(node.post_signed(&chunk_path(2, false), c1.clone()).await).await;
    assert_eq!(s, StatusCode::CONFLICT, "the recording has ended: {body}");

    // Alice is no reviewer; an API token never is; Bob reviews but is no administrator.
    for path in [
        "/api/v1/admin/recordings".to_owned(),
        format!("/api/v1/admin/recordings/{id}"),
        format!("/api/v1/admin/recordings/{id}/chunks/0"),
    ] {
        assert_eq!(alice.get(&path).await.unwrap().status(), StatusCode::FORBIDDEN, "{path}");
    }
    let token = a.admin_token("ci").await;
    let with_token = reqwest::Client::new()
        .get(format!("{}/api/v1/admin/recordings", broker.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), StatusCode::FORBIDDEN);
    let mut bob = broker.client();
    bob.login_ok("bob", "bob-pw").await;
    assert_eq!(bob.get("/api/v1/admin/recordings").await.unwrap().status(), StatusCode::FORBIDDEN);

    // Carol (an administrator, who reviews by the default policies) finds it by user.
    let list = a.get_json("/api/v1/admin/recordings?user=alice", StatusCode::OK).await;
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    let r = &rows[0];
    assert_eq!(
        (r["username"].as_str(), r["pool"].as_str(), r["state"].as_str()),
        (Some("alice"), Some("finance"), Some("complete"))
    );
    assert_eq!((r["chunks"].as_i64(), r["duration_ms"].as_i64()), (Some(2), Some(2_000)));
    let size = i64::try_from(c0.len() + c1.len()).unwrap();
    assert_eq!(r["bytes"].as_i64(), Some(size));
    assert_eq!(a.get_json("/api/v1/admin/recordings?user=bob", StatusCode::OK).await, json!([]));

    // Playing it: the index says where the key frame is; the chunks come back as sent.
    let index = a.get_json(&format!("/api/v1/admin/recordings/{id}"), StatusCode::OK).await;
    let chunks = index["chunks"].as_array().unwrap();
    let key_at = parse_chunk(&c0, 0).unwrap()[1].offset;
    assert_eq!(chunks[0]["keys"], json!([[40, key_at]]), "{index}");
    assert_eq!(chunks[1]["t_first"], 2_000);
    for (n, sent) in [&c0, &c1].into_iter().enumerate() {
        let got = a.get(&format!("/api/v1/admin/recordings/{id}/chunks/{n}")).await.unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.bytes().await.unwrap().as_ref(), sent.as_slice(), "chunk {n}");
    }
    let v = a.get_json(&format!("/api/v1/admin/recordings/{id}/verify"), StatusCode::OK).await;
    assert_eq!(v["intact"], true, "{v}");
    let audit = a.get_json("/api/v1/admin/audit?action=recording.", StatusCode::OK).await;
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    for want in [
        ("recording.start", "alice"),
        ("recording.end", "node:node-a"),
        ("recording.play", "carol"),
    ] {
        assert!(actions.contains(&want), "{want:?} not in {actions:?}");
    }

    // A chunk changed on the volume shows, as it is played and when the chain is checked.
    let folder = broker.dir().join("recordings").join(&id);
    let file = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("00000001-"))
        .expect("chunk 1's file");
    let mut bytes = std::fs::read(&file).unwrap();
    *bytes.last_mut().unwrap() = b'!';
    std::fs::write(&file, bytes).unwrap();
    let got = a.get(&format!("/api/v1/admin/recordings/{id}/chunks/1")).await.unwrap();
    assert_eq!(got.status(), StatusCode::CONFLICT);
    assert!(got.text().await.unwrap().contains("tampered"));
    let v: Value =
        a.get_json(&format!("/api/v1/admin/recordings/{id}/verify"), StatusCode::OK).await;
    assert_eq!(v["intact"], false, "{v}");
    assert!(v["problem"].as_str().unwrap().contains("chunk 1 was changed"), "{v}");
    std::fs::remove_file(&file).unwrap();
    let v = a.get_json(&format!("/api/v1/admin/recordings/{id}/verify"), StatusCode::OK).await;
    assert!(v["problem"].as_str().unwrap().contains("chunk 1 is missing"), "{v}");

    // Thirty-one days later it is gone, files and all.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let month_ago = i64::try_from(now.as_millis()).unwrap() - 31 * 86_400_000;
    sqlite(&db, &format!("UPDATE recordings SET started_at = {month_ago} WHERE id = '{id}'"));
    wait_for("the expired recording to be deleted", Duration::from_secs(20), || async {
        let list = a.get_json("/api/v1/admin/recordings?user=alice", StatusCode::OK).await;
        (list == json!([])).then_some(())
    })
    .await
    .unwrap();
    assert!(!folder.exists(), "its chunks are deleted too");
    let audit = a.get_json("/api/v1/admin/audit?action=recording.expire", StatusCode::OK).await;
    assert_eq!(audit[0]["target"], id.as_str());
}
