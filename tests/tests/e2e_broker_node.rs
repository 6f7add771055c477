//! The broker with a real node agent booting real console desktops (QEMU, TCG here): the node
//! registers by heartbeat, the broker keeps a ready spare, a user's connect takes it, the guest
//! agent is told who signed in, and sign-out destroys the floating desktop on the node.

use std::time::Duration;

use atrium_protocol::node::VmState;
use atrium_tests::broker::{Broker, BrokerOptions};
use atrium_tests::node::{NodeProcess, console_image, processes_with};
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip, wait_for};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_spare_boots_on_the_real_node_and_goes_to_the_user() {
    if skip(Group::Ldap, "a_spare_boots_on_the_real_node_and_goes_to_the_user")
        || skip(Group::Qemu, "a_spare_boots_on_the_real_node_and_goes_to_the_user")
    {
        return;
    }
    let image = console_image().unwrap();
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let node = NodeProcess::start(
        &image,
        &format!(
            "id = \"node-1\"\ndisplay_url = \"ws://127.0.0.1:1\"\n\n[broker]\nurl = \"{}\"\nheartbeat_secs = 1\nenrolment_token = {:?}\n",
            broker.url,
            broker.enrolment_token("node-1").unwrap()
        ),
    )
    .await
    .unwrap();
    let mut admin = broker.client();
    admin.login_ok("carol", "carol-pw").await;
    wait_for("the node to register", Duration::from_secs(20), || async {
        let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n[0]["id"] == "node-1" && n[0]["state"] == "up").then_some(())
    })
    .await
    .unwrap();
    let nodes = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
    assert_eq!(nodes[0]["capacity"]["images"][0]["name"], "console", "{nodes}");

    admin
        .post_json(
            "/api/v1/admin/pools",
            json!({"name":"console","image":"console","vcpus":1,"memory_mib":256,"display":"1024x768","kind":"floating",
                   "min_ready":1,"max_size":2,"idle_timeout_secs":600,"max_session_secs":3600,"clone":false}),
            StatusCode::CREATED,
        )
        .await;
    // A real boot under TCG: seconds.
    wait_for("a ready spare booted on the node", Duration::from_secs(240), || async {
        let p = admin.get_json("/api/v1/admin/pools/console", StatusCode::OK).await;
        (p["counts"]["ready"] == 1).then_some(())
    })
    .await
    .unwrap();

    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;
    let c = alice.post_json("/api/v1/pools/console/connect", json!({}), StatusCode::OK).await;
    assert_eq!(c["status"], "ready", "{c}");
    assert_eq!(c["source"], "spare");
    let ticket = c["ticket"].as_str().unwrap();
    let claims: serde_json::Value = {
        use base64::Engine;
        let part = ticket.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap(),
        )
        .unwrap()
    };
    let vm = claims["vm"].as_str().unwrap().to_owned();
    assert_eq!(c["ws_url"], format!("ws://127.0.0.1:1/ws/{vm}"));
    let info = node.vm(&vm).await.unwrap();
    assert_eq!(info.state, VmState::Ready);
    assert_eq!(info.user.as_deref(), Some("alice"), "the guest agent was told who signed in");
    assert!(!processes_with(&vm).is_empty(), "the VM runs");

    // The pool refills behind her.
    wait_for("the pool to refill", Duration::from_secs(240), || async {
        let p = admin.get_json("/api/v1/admin/pools/console", StatusCode::OK).await;
        (p["counts"]["ready"] == 1 && p["counts"]["in_use"] == 1).then_some(())
    })
    .await
    .unwrap();

    // Sign-out destroys her floating desktop on the node: no VM, no process.
    alice.post_json("/api/v1/auth/logout", json!({}), StatusCode::NO_CONTENT).await;
    wait_for("the VM to be deleted on the node", Duration::from_secs(60), || async {
        node.vm(&vm).await.is_err().then_some(())
    })
    .await
    .unwrap();
    wait_for("the VM's processes to end", Duration::from_secs(30), || async {
        processes_with(&vm).is_empty().then_some(())
    })
    .await
    .unwrap();
}
