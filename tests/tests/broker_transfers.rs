//! File transfers in the broker's audit log, against a real slapd and a stand-in node whose
//! heartbeats carry what a display proxy reports of uploads and downloads: each becomes a
//! `file.upload` or `file.download` event of the session's user on the session's desktop, with
//! the file's name, size, SHA-256 and verdict. A node cannot report transfers in another node's
//! sessions, and a malformed report is refused whole. (The transfers themselves, against a
//! real desktop and clamd: `file_transfer`.)

use std::time::Duration;

use atrium_protocol::session::TransferRecord;
use atrium_tests::broker::{ApiClient, Broker, BrokerOptions, pool_json};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn ready_session(c: &ApiClient, pool: &str) -> String {
    let r = wait_for("a ready desktop", Duration::from_secs(20), || async {
        let r =
            c.post_json(&format!("/api/v1/pools/{pool}/connect"), json!({}), StatusCode::OK).await;
        (r["status"] == "ready").then_some(r)
    })
    .await
    .unwrap();
    r["session_id"].as_str().unwrap().to_owned()
}

fn record(sid: &str, name: &str, verdict: &str) -> TransferRecord {
    TransferRecord {
        sid: sid.into(),
        direction: "upload".into(),
        name: name.into(),
        size: 68,
        sha256: (verdict == "saved").then(|| "0f".repeat(32)),
        verdict: verdict.into(),
        detail: (verdict == "infected").then(|| "Eicar-Test-Signature".into()),
        at_ms: 1,
    }
}

async fn uploads(admin: &ApiClient) -> Vec<Value> {
    let all = admin.get_json("/api/v1/admin/audit?action=file.upload", StatusCode::OK).await;
    all.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn transfers_are_audited_for_the_sessions_user_and_only_from_its_node() {
    if skip(Group::Ldap, "transfers_are_audited_for_the_sessions_user_and_only_from_its_node") {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let admin = broker.admin().await;
    let node_a = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    admin
        .post_json(
            "/api/v1/admin/pools",
            pool_json("general", "floating", 0, 4),
            StatusCode::CREATED,
        )
        .await;
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let sid = ready_session(&alice, "general").await;
    let node_b = FakeNode::enrolled(&broker, "node-b", 8192).await.unwrap();

    // node-b speaks of alice's session on node-a: ignored. node-a reports a saved file, a
    // flagged one, and clipboard text copied out.
    node_b.with(|s| s.transfers = vec![record(&sid, "forged.txt", "saved")]);
    let mut copied = record(&sid, "clipboard text", "saved");
    copied.direction = "clipboard_out".into();
    let mut taken = record(&sid, "quarterly.xlsx", "saved");
    taken.direction = "download".into();
    node_a.with(|s| {
        s.transfers = vec![
            record(&sid, "report.pdf", "saved"),
            record(&sid, "notes.txt", "infected"),
            copied,
            taken,
        ];
    });
    wait_for("two file.upload events", Duration::from_secs(20), || async {
        (uploads(&admin).await.len() >= 2).then_some(())
    })
    .await
    .unwrap();
    // A few more heartbeats: nothing more arrives (node-b's claim stays out).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = uploads(&admin).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let by_name = |n: &str| {
        events
            .iter()
            .find(|e| e["details"].as_str().is_some_and(|d| d.contains(n)))
            .unwrap_or_else(|| panic!("no event for {n}: {events:?}"))
            .clone()
    };
    let saved = by_name("report.pdf");
    assert_eq!(saved["actor"], "alice");
    assert_eq!(saved["outcome"], "success");
    let details: Value = serde_json::from_str(saved["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["sha256"], "0f".repeat(32));
    assert_eq!(details["size"], 68);
    assert_eq!(details["node"], "node-a");
    let flagged = by_name("notes.txt");
    assert_eq!(flagged["outcome"], "infected");
    assert!(flagged["details"].as_str().unwrap().contains("Eicar-Test-Signature"));
    assert!(!events.iter().any(|e| e["details"].as_str().unwrap().contains("forged.txt")));

    // Clipboard text is audited by its size and hash, as what it is.
    let copies =
        admin.get_json("/api/v1/admin/audit?action=clipboard.copy_out", StatusCode::OK).await;
    let copies = copies.as_array().unwrap();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0]["actor"], "alice");
    assert!(copies[0]["details"].as_str().unwrap().contains(&"0f".repeat(32)));

    // A download is audited as one, with what it moved.
    let downloads =
        admin.get_json("/api/v1/admin/audit?action=file.download", StatusCode::OK).await;
    let downloads = downloads.as_array().unwrap();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(
        (&downloads[0]["actor"], &downloads[0]["outcome"]),
        (&json!("alice"), &json!("success"))
    );
    assert!(downloads[0]["details"].as_str().unwrap().contains("quarterly.xlsx"));

    // A malformed report (a name that could forge a log line) is refused whole: nothing of it
    // is audited.
    node_a.with(|s| s.transfers = vec![record(&sid, "a\nb", "saved")]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(uploads(&admin).await.len(), 2);
}
