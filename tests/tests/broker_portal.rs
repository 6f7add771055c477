//! The portal's Users and API tokens pages in Chromium, as an administrator uses them, against
//! a real slapd: signing a user out everywhere ends their sessions; a token created on the page
//! (shown once) works with its scope through the API, its uses are audited under its name, and
//! once revoked on the page it is refused.

use anyhow::Context;
use atrium_tests::broker::{Broker, BrokerOptions};
use atrium_tests::browser::{CHROMIUM, Driver, artifacts};
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, TempDir, skip};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn administrators_sign_users_out_and_manage_tokens_in_the_portal() {
    if skip(Group::Ldap, "administrators_sign_users_out_and_manage_tokens_in_the_portal")
        || skip(Group::Browser, "administrators_sign_users_out_and_manage_tokens_in_the_portal")
    {
        return;
    }
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let carol = broker.admin().await;
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;

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
        } else if msg["signed_out"] == "alice" {
            assert!(msg["status"].as_str().unwrap().contains("1 sign-in ended"), "{msg}");
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
    assert_eq!(uses.as_array().unwrap().len(), 2, "{uses}");
    let created = carol.get_json("/api/v1/admin/audit?action=token.", StatusCode::OK).await;
    let actions: Vec<&str> =
        created.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"token.create") && actions.contains(&"token.revoke"), "{actions:?}");
    // The attempt after revocation is audited too, under the token's name.
    assert!(actions.contains(&"token.refused"), "{actions:?}");
}
