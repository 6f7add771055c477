//! The portal's administration pages in Chromium, as an administrator uses them, against a
//! real slapd: the Nodes page lists the node; ending a session on the Sessions page disconnects
//! its viewer; signing a user out everywhere on the Users page ends their sign-ins; a token
//! created on the API tokens page (shown once) works with its scope, its uses are audited under
//! its name and paged through on the Audit page and exported as CSV; the administrator's own
//! page on the Users page lists it, and once revoked there it is refused.

use anyhow::Context;
use atrium_tests::broker::{Broker, BrokerOptions};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, TempDir, skip};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn administrators_work_in_the_portal_pages() {
    if skip(Group::Ldap, "administrators_work_in_the_portal_pages")
        || skip(Group::Browser, "administrators_work_in_the_portal_pages")
    {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let carol = broker.admin().await;
    let node = FakeNode::with_general_pool(&broker, &carol).await.unwrap();
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let connected =
        alice.post_json("/api/v1/pools/general/connect", json!({}), StatusCode::OK).await;
    let sid = connected["session_id"].as_str().unwrap().to_owned();
    // More uses of the token than one page of the Audit page holds (100).
    const USES: usize = 130;

    let tmp = TempDir::new("portal");
    let cfg = json!({
        "broker": broker.url, "chromium": CHROMIUM, "tmp": tmp.path(), "artifacts": artifacts(),
        "admin": ["carol", "carol-pw"], "user": "alice",
    });
    let mut d = Driver::start("portal.mjs", &cfg).unwrap();
    let http = reqwest::Client::new();
    let mut token = String::new();
    let mut done = false;
    while let Some(msg) = d.next().await.unwrap() {
        if msg["done"] == true {
            done = true;
        } else if let Some(nodes) = msg["nodes"].as_array() {
            assert_eq!(nodes, &[json!("node-a")], "{msg}");
            d.answer("ok").await.unwrap();
        } else if msg["ended"] == "alice" {
            assert!(
                node.with(|s| s.ended_display_sessions.contains(&sid)),
                "the viewer is disconnected"
            );
            d.answer("ok").await.unwrap();
        } else if let Some(pages) = msg["audit"].as_array() {
            assert_eq!(pages[0], format!("100 events (more older)"), "{msg}");
            assert_eq!(pages[1], format!("{USES} events"), "{msg}");
            assert_eq!(msg["csv_lines"], USES + 1, "a header and every use: {msg}");
            d.answer("ok").await.unwrap();
        } else if msg["signed_out"] == "alice" {
            assert!(msg["status"].as_str().unwrap().contains("1 sign-in ended"), "{msg}");
            assert_eq!(
                node.with(|s| s.ended_display_sessions.len()),
                1,
                "ended once, on the Sessions page"
            );
            let r = alice.get("/api/v1/me").await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "alice is signed out");
            d.answer("ok").await.unwrap();
        } else if let Some(t) = msg["token"].as_str() {
            token = t.to_owned();
            let pools = http
                .get(format!("{}/api/v1/admin/pools", broker.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(pools.status(), StatusCode::OK);
            let write = http
                .delete(format!("{}/api/v1/admin/pools/x", broker.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(write.status(), StatusCode::FORBIDDEN, "a read-only token");
            for _ in 2..USES {
                let r = http
                    .get(format!("{}/api/v1/admin/nodes", broker.url))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
            d.answer("ok").await.unwrap();
        } else if msg["revoked"] == "ci-reader" {
            assert_ne!(msg["last_used"], "never", "the page shows the use: {msg}");
            let r = http
                .get(format!("{}/api/v1/admin/pools", broker.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "revoked");
            d.answer("ok").await.unwrap();
        } else {
            panic!("unexpected message {msg}");
        }
    }
    d.finish().await.context("the portal driver").unwrap();
    assert!(done);
    let uses = carol
        .get_json("/api/v1/admin/audit?actor=token:ci-reader&action=token.use", StatusCode::OK)
        .await;
    assert_eq!(uses.as_array().unwrap().len(), USES, "{uses}");
    let created = carol.get_json("/api/v1/admin/audit?action=token.", StatusCode::OK).await;
    let actions: Vec<&str> =
        created.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"token.create") && actions.contains(&"token.revoke"), "{actions:?}");
    // The attempt after revocation is audited too, under the token's name.
    assert!(actions.contains(&"token.refused"), "{actions:?}");
}
