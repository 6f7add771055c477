//! Pools of an operator's own image through the real broker: a node reports which of its images
//! run Atrium's agent; a desktop of one without says so to its viewer, and its tickets carry no
//! clipboard or file rights. The node is the in-process stand-in (`atrium_tests::fake_node`);
//! `imported_images.rs` boots such images on the real node.

use atrium_protocol::node::ImageInfo;
use atrium_tests::broker::{Broker, BrokerOptions, pool_json, verify_ticket, wait_ready_spares};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_desktop_without_an_agent_tells_its_viewer_and_gets_no_clipboard_or_files() {
    if skip(
        Group::Ldap,
        "a_desktop_without_an_agent_tells_its_viewer_and_gets_no_clipboard_or_files",
    ) {
        return;
    }
    // Files allowed to everyone, so that their absence below is the missing agent's doing.
    let policies = atrium_tests::broker::policies_with(
        "files",
        r#"@id("files-for-all")
permit (principal, action in [Atrium::Action::"file_upload", Atrium::Action::"file_download"], resource);
"#,
    );
    let slapd = Slapd::start().unwrap();
    let mut opts = BrokerOptions::new(&slapd.url());
    opts.policies_dir = Some(policies.path().to_owned());
    let broker = Broker::start(opts).await.unwrap();
    let node = FakeNode::enrolled(&broker, "node-a", 16384).await.unwrap();
    node.with(|s| {
        s.images.push(ImageInfo {
            name: "winlike".into(),
            version: "2026-12".into(),
            kind: "imported".into(),
            agent: false,
            firmware: Some("uefi".into()),
            sha256: None,
        });
    });
    let a = broker.admin().await;
    let mut win = pool_json("win", "floating", 1, 2);
    win["image"] = json!("winlike");
    // The node's next heartbeat carries the image: until then no node holds it.
    atrium_tests::wait_for(
        "the imported image on the node",
        std::time::Duration::from_secs(10),
        || {
            let a = &a;
            let win = win.clone();
            async move {
                a.post("/api/v1/admin/pools", win)
                    .await
                    .ok()
                    .filter(|r| r.status() == StatusCode::CREATED)
            }
        },
    )
    .await
    .unwrap();
    a.post_json("/api/v1/admin/pools", pool_json("general", "floating", 1, 2), StatusCode::CREATED)
        .await;
    wait_ready_spares(&a, "win", 1).await;
    wait_ready_spares(&a, "general", 1).await;

    // The node's images, as administrators see them.
    let nodes = a.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
    let images = &nodes[0]["capacity"]["images"];
    let listed = images.as_array().unwrap().iter().find(|i| i["name"] == "winlike").unwrap();
    assert_eq!((&listed["agent"], &listed["firmware"]), (&json!(false), &json!("uefi")));

    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c = alice.post_json("/api/v1/pools/win/connect", json!({}), StatusCode::OK).await;
    assert_eq!((&c["status"], &c["agent"]), (&json!("ready"), &json!(false)), "{c}");
    for cap in ["clipboard_copy_out", "clipboard_paste_in", "file_upload", "file_download"] {
        assert_eq!(c["capabilities"][cap], false, "{cap} in {c}");
    }
    let claims = verify_ticket(&broker, c["ticket"].as_str().unwrap()).await;
    for cap in ["clipboard_copy_out", "clipboard_paste_in", "file_upload", "file_download"] {
        assert_eq!(claims["caps"][cap], false, "{cap} in the ticket: {claims}");
    }
    // A desktop of a built image keeps them.
    let g = alice.post_json("/api/v1/pools/general/connect", json!({}), StatusCode::OK).await;
    assert_eq!(g["agent"], true, "{g}");
    let claims = verify_ticket(&broker, g["ticket"].as_str().unwrap()).await;
    for cap in ["clipboard_copy_out", "clipboard_paste_in", "file_upload", "file_download"] {
        assert_eq!(claims["caps"][cap], true, "{cap} in the ticket: {claims}");
    }
}
