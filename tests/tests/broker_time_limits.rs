//! Session time limits as the broker enforces them, against a real slapd and a stand-in node
//! whose heartbeats carry what a display proxy reports (the user's viewers and how long since
//! their last input): idle means no input, whatever the browser does; a session without its
//! user's viewers ends as disconnected and its desktop waits the pool's disconnect time before
//! it is logged off; the maximum length ends a session from its start. Each end is told to the
//! display proxy with its reason and audited. A node cannot speak for sessions on another node.
//! (The viewer's warnings, against a real desktop in Chromium: `e2e_time_limits`.)

use std::time::Duration;

use atrium_protocol::session::{EndReason, SessionActivity};
use atrium_tests::broker::{ApiClient, Broker, BrokerOptions, pool_json};
use atrium_tests::fake_node::FakeNode;
use atrium_tests::slapd::Slapd;
use atrium_tests::{Group, skip, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long a test waits for the broker to act on a limit: the longest limit here (a minute),
/// and heartbeats and reconcile passes a second apart, the disconnect grace of 30 s.
const WITHIN: Duration = Duration::from_secs(90);

async fn ready_connect(c: &ApiClient, pool: &str) -> Value {
    wait_for("a ready desktop", Duration::from_secs(20), || async {
        let r =
            c.post_json(&format!("/api/v1/pools/{pool}/connect"), json!({}), StatusCode::OK).await;
        (r["status"] == "ready").then_some(r)
    })
    .await
    .unwrap()
}

fn activity(sid: &str, idle_ms: u64) -> Option<Vec<SessionActivity>> {
    Some(vec![SessionActivity { sid: sid.into(), viewers: 1, idle_ms }])
}

/// Waits until the display proxy of `node` is told that `sid` ended, and returns why.
async fn ended_because(node: &FakeNode, sid: &str) -> EndReason {
    wait_for(&format!("session {sid} to end"), WITHIN, || async {
        node.with(|s| s.end_reasons.iter().find(|(id, _)| id == sid).map(|(_, r)| *r))
    })
    .await
    .unwrap()
}

/// The `session.end` audit event of `sid`.
async fn end_audited(admin: &ApiClient, sid: &str) -> Value {
    let ended = admin.get_json("/api/v1/admin/audit?action=session.end", StatusCode::OK).await;
    let found = ended
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["details"].as_str().is_some_and(|d| d.contains(sid)));
    found.unwrap_or_else(|| panic!("no session.end for {sid}: {ended}")).clone()
}

/// The directory, a broker, its administrator, a stand-in node `node-a`, and a pool `name` of
/// `kind` with these limits (idle, maximum, disconnect, in seconds).
async fn with_pool(
    name: &str,
    kind: &str,
    limits: [u64; 3],
) -> (Slapd, Broker, ApiClient, FakeNode) {
    let slapd = Slapd::start().unwrap();
    let broker = Broker::start(BrokerOptions::new(&slapd.url())).await.unwrap();
    let admin = broker.admin().await;
    let node = FakeNode::enrolled(&broker, "node-a", 8192).await.unwrap();
    let mut pool = pool_json(name, kind, 0, 4);
    pool["idle_timeout_secs"] = json!(limits[0]);
    pool["max_session_secs"] = json!(limits[1]);
    pool["disconnect_timeout_secs"] = json!(limits[2]);
    admin.post_json("/api/v1/admin/pools", pool, StatusCode::CREATED).await;
    (slapd, broker, admin, node)
}

#[tokio::test]
async fn idle_means_no_input_and_a_disconnected_desktop_waits_its_disconnect_time() {
    if skip(Group::Ldap, "idle_means_no_input_and_a_disconnected_desktop_waits_its_disconnect_time")
    {
        return;
    }
    let (_slapd, broker, admin, node) = with_pool("general", "floating", [60, 3600, 10]).await;
    let mut alice = broker.client();
    alice.login_ok("alice", "alice-pw").await;

    // Her viewer says when the limits come and how long before them it warns.
    let c = ready_connect(&alice, "general").await;
    let limits = &c["limits"];
    assert_eq!(limits["idle_timeout_secs"], 60, "{c}");
    assert_eq!(limits["idle_warning_secs"], 30, "half a short idle time");
    assert_eq!(limits["end_warning_secs"], 600);
    assert_eq!(limits["disconnect_timeout_secs"], 10);
    let ends_in = limits["ends_in_secs"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ends_in), "{ends_in}");
    let sid = c["session_id"].as_str().unwrap().to_owned();
    let desktop = c["desktop_id"].as_str().unwrap().to_owned();
    // A second node, enrolled once her desktop is on the first.
    let other = FakeNode::enrolled(&broker, "node-b", 8192).await.unwrap();

    // She types (input 2 s ago, in every report) for longer than the idle time: the session
    // stays. Another node claiming she is idle on it is not listened to.
    node.with(|s| s.activity = activity(&sid, 2_000));
    other.with(|s| s.activity = activity(&sid, 3_600_000));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(node.with(|s| s.end_reasons.is_empty()), "she is working");

    // She stops: her last input was 61 s ago. The session ends as idle; the proxy is told why;
    // her floating desktop is kept for her.
    node.with(|s| s.activity = activity(&sid, 61_000));
    assert_eq!(ended_because(&node, &sid).await, EndReason::Idle);
    let e = end_audited(&admin, &sid).await;
    assert!(e["details"].as_str().unwrap().contains("idle timeout"), "{e}");
    assert_eq!(e["actor"], "alice");
    node.with(|s| s.activity = Some(Vec::new()));
    let mine = alice.get_json("/api/v1/desktops", StatusCode::OK).await;
    assert!(mine.as_array().unwrap().iter().any(|d| d["id"] == desktop), "kept: {mine}");

    // She reconnects to the same desktop, in a new session.
    let again = ready_connect(&alice, "general").await;
    assert_eq!(again["source"], "existing");
    assert_eq!(again["desktop_id"], desktop);
    let sid2 = again["session_id"].as_str().unwrap().to_owned();
    assert_ne!(sid2, sid);
    // Her maximum length still counts from when she got the desktop, not from the reconnect.
    let ends_again = again["limits"]["ends_in_secs"].as_u64().unwrap();
    assert!(ends_again + 5 <= ends_in, "the reconnect gave her a fresh limit: {ends_again} s");

    // Her tab closes: the proxy lists no viewer of hers, while the other node claims she is
    // connected there. After the grace the session ends as disconnected...
    node.with(|s| s.activity = Some(Vec::new()));
    other.with(|s| s.activity = activity(&sid2, 0));
    assert_eq!(ended_because(&node, &sid2).await, EndReason::Disconnected);
    let e = end_audited(&admin, &sid2).await;
    assert!(e["details"].as_str().unwrap().contains("disconnected"), "{e}");
    // ...and her desktop is logged off after the pool's disconnect time: recycled, audited.
    let recycled = wait_for("the desktop to be recycled", Duration::from_secs(90), || async {
        let a = admin.get_json("/api/v1/admin/audit?action=desktop.recycle", StatusCode::OK).await;
        a.as_array().unwrap().iter().find(|e| e["target"] == desktop.as_str()).cloned()
    })
    .await
    .unwrap();
    let details = recycled["details"].as_str().unwrap();
    assert!(details.contains("disconnect timeout") && details.contains("alice"), "{details}");
    wait_for("her desktop to go", Duration::from_secs(20), || async {
        let mine = alice.get_json("/api/v1/desktops", StatusCode::OK).await;
        (!mine.as_array().unwrap().iter().any(|d| d["id"] == desktop.as_str())).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_maximum_length_ends_a_session_however_busy_and_a_quiet_node_keeps_old_ways() {
    if skip(
        Group::Ldap,
        "the_maximum_length_ends_a_session_however_busy_and_a_quiet_node_keeps_old_ways",
    ) {
        return;
    }
    let (_slapd, broker, admin, node) = with_pool("short", "floating", [60, 70, 0]).await;
    for value in [json!(2_592_001), json!(-1)] {
        let mut p = pool_json("bad", "floating", 0, 1);
        p["disconnect_timeout_secs"] = value.clone();
        let r = admin.post("/api/v1/admin/pools", p).await.unwrap();
        assert!(r.status().is_client_error(), "{value}");
    }
    let mut bob = broker.client();
    bob.login_ok("bob", "bob-pw").await;
    let c = ready_connect(&bob, "short").await;
    assert!(c["limits"]["ends_in_secs"].as_u64().unwrap() <= 70, "{c}");
    let sid = c["session_id"].as_str().unwrap().to_owned();
    let vm = ready_vm(&node);

    // A node that says nothing of its sessions (an older one) keeps them in use: past the idle
    // time the session is still open...
    tokio::time::sleep(Duration::from_secs(63)).await;
    assert!(node.with(|s| s.end_reasons.is_empty()), "ended before its time");
    // ...and however busy, at its maximum length from its start it ends: the proxy is told,
    // the floating desktop is recycled.
    assert_eq!(ended_because(&node, &sid).await, EndReason::MaxLength);
    let e = end_audited(&admin, &sid).await;
    assert!(e["details"].as_str().unwrap().contains("maximum session length"), "{e}");
    wait_for("the VM to be deleted", Duration::from_secs(20), || async {
        node.with(|s| s.deleted.contains(&vm)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn at_its_maximum_length_a_dedicated_desktop_is_logged_off_and_starts_a_new_logon() {
    if skip(
        Group::Ldap,
        "at_its_maximum_length_a_dedicated_desktop_is_logged_off_and_starts_a_new_logon",
    ) {
        return;
    }
    let (_slapd, broker, admin, node) = with_pool("mine", "dedicated", [60, 60, 1800]).await;
    let mut bob = broker.client();
    bob.login_ok("bob", "bob-pw").await;
    let c = ready_connect(&bob, "mine").await;
    let sid = c["session_id"].as_str().unwrap().to_owned();
    let desktop = c["desktop_id"].as_str().unwrap().to_owned();
    let vm = ready_vm(&node);
    node.with(|s| s.activity = activity(&sid, 0));

    // At a minute the session ends and the desktop is logged off: stopped, its VM gone, its
    // disk kept; audited.
    assert_eq!(ended_because(&node, &sid).await, EndReason::MaxLength);
    wait_for("the VM to be removed", Duration::from_secs(20), || async {
        node.with(|s| s.deleted.contains(&vm)).then_some(())
    })
    .await
    .unwrap();
    let stops = admin.get_json("/api/v1/admin/audit?action=desktop.stop", StatusCode::OK).await;
    let stop = stops.as_array().unwrap().iter().find(|e| e["target"] == desktop.as_str());
    let details = stop.and_then(|e| e["details"].as_str()).unwrap_or_default();
    assert!(details.contains("maximum session length"), "{stops}");

    // Connecting again starts it again: a new logon, with a whole minute ahead.
    let again = ready_connect(&bob, "mine").await;
    assert_eq!(again["desktop_id"], desktop.as_str(), "his own desktop, with its disk");
    assert_eq!(node.with(|s| s.created), 2, "started again on a VM of its own");
    let ends_in = again["limits"]["ends_in_secs"].as_u64().unwrap();
    assert!(ends_in >= 50, "the new logon's limit: {ends_in} s");
}

/// The id of the one VM the stand-in node runs.
fn ready_vm(node: &FakeNode) -> String {
    node.with(|s| s.vms.keys().next().cloned()).expect("a VM")
}
