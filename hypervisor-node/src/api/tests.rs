//! Router tests: requests through the whole router with `oneshot`, no socket. Nothing here
//! boots a VM (that is `tests/tests/node_qemu.rs`); every case is refused or answered before a
//! runtime would run.

use std::path::PathBuf;
use std::sync::Arc;

use atrium_protocol::node::{Capacity, ErrorBody, KvmKind, RuntimeKind};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use atrium_protocol::node::BrokerKey;
use atrium_protocol::signed::{self, NodeKey, node_audience};

use super::{AppState, BrokerKeys, router};
use crate::config::NodeConfig;
use crate::runtime::Runtime;
use crate::runtime::qemu::QemuRuntime;
use crate::vm::VmManager;

/// The node id the fixture's node has (`node.id`).
const NODE: &str = "node-t";

struct Fixture {
    dir: PathBuf,
    app: axum::Router,
    /// Stands in for the broker's signing key (handed to the node as a heartbeat reply would).
    broker: NodeKey,
}

/// A request signed by `key` (as key id `kid`) for `node`, as the broker signs its calls.
fn sign(key: &NodeKey, kid: &str, node: &str, method: &str, uri: &str, body: &str) -> String {
    let req = signed::Request { method, path_and_query: uri, body: body.as_bytes() };
    let iss = atrium_protocol::ticket::ISSUER;
    signed::sign(
        key.encoding_key(),
        Some(kid),
        iss,
        iss,
        &node_audience(node),
        &req,
        signed::now_secs(),
    )
    .expect("signing")
}

impl Fixture {
    /// A call signed by the broker for this node.
    async fn call(&self, method: &str, uri: &str, body: &str) -> (StatusCode, Vec<u8>) {
        let token = sign(&self.broker, "broker-1", NODE, method, uri, body);
        call(&self.app, method, uri, Some(&token), body).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("atrium-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::image::tests::fake_image(&dir.join("images/console/v1"), "console", "v1", 1);
    let mut config = NodeConfig::default();
    config.node.id = Some(NODE.into());
    config.node.state_dir = dir.join("state");
    config.node.images_dir = dir.join("images");
    config.cgroup.enabled = false;
    config.capacity.vcpus = Some(4);
    config.capacity.memory_mib = Some(256);
    let runtimes: Vec<Arc<dyn Runtime>> =
        vec![Arc::new(QemuRuntime::new(config.qemu.clone(), KvmKind::Absent))];
    let node =
        VmManager::new(config, KvmKind::Absent, runtimes, RuntimeKind::Qemu).expect("manager");
    let broker = NodeKey::ephemeral();
    let keys = Arc::new(BrokerKeys::default());
    keys.replace(&[BrokerKey { kid: "broker-1".into(), x: broker.public().into() }]);
    let app = router(AppState::new(node, keys));
    Fixture { dir, app, broker }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    (status, bytes.to_vec())
}

fn error(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {}", String::from_utf8_lossy(body)))
}

const SPEC: &str = r#"{"image":"console","vcpus":1,"memory_mib":128,"display":"1024x768"}"#;

#[tokio::test]
async fn every_api_call_must_be_signed_by_the_broker_for_this_node_and_this_request() {
    let f = fixture("auth");
    let stranger = NodeKey::ephemeral();
    for (method, uri) in [
        ("GET", "/api/v1/vms"),
        ("POST", "/api/v1/vms"),
        ("GET", "/api/v1/capacity"),
        ("DELETE", "/api/v1/vms/vm-1"),
        ("GET", "/api/v1/vms/vm-1/screenshot.png"),
        ("GET", "/api/v1/no-such-path"),
    ] {
        let (status, body) = call(&f.app, method, uri, None, SPEC).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert!(error(&body).error.contains("signed by the broker"));
        let refused = [
            // Another key under the broker's key id (a node's stolen key, say).
            sign(&stranger, "broker-1", NODE, method, uri, SPEC),
            // The broker's key, for another node.
            sign(&f.broker, "broker-1", "node-other", method, uri, SPEC),
            // The broker's key, for another request.
            sign(&f.broker, "broker-1", NODE, method, "/api/v1/vms/vm-2", SPEC),
            sign(&f.broker, "broker-1", NODE, method, uri, "{}"),
            // A key id the node does not know.
            sign(&f.broker, "broker-2", NODE, method, uri, SPEC),
            "not-a-jwt".into(),
        ];
        for token in refused {
            let (status, _) = call(&f.app, method, uri, Some(&token), SPEC).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} with {token:.40}");
        }
    }
    // No body is read for a caller without a signature: 5 MiB (over the limit) is a 401.
    let big = "x".repeat(5 << 20);
    let (status, _) = call(&f.app, "POST", "/api/v1/vms", Some("not.a.signature"), &big).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = f.call("GET", "/api/v1/vms", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"[]");
    // Each signed call is good once: the same token again is refused.
    let token = sign(&f.broker, "broker-1", NODE, "GET", "/api/v1/vms", "");
    assert_eq!(call(&f.app, "GET", "/api/v1/vms", Some(&token), "").await.0, StatusCode::OK);
    assert_eq!(
        call(&f.app, "GET", "/api/v1/vms", Some(&token), "").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = f.call("GET", "/api/v1/no-such-path", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error(&body).error.contains("no such"));
}

/// The local socket's router serves the display proxy's reads and clipboards, a screen's size
/// and the sessions' activity, and nothing else that changes a VM.
#[tokio::test]
async fn the_local_api_serves_displays_clipboards_screen_sizes_uploads_and_activity_only() {
    let f = fixture("local");
    let state = AppState::new(
        crate::vm::VmManager::new(
            {
                let mut c = NodeConfig::default();
                c.node.state_dir = f.dir.join("state2");
                c.node.images_dir = f.dir.join("images");
                c.cgroup.enabled = false;
                c
            },
            KvmKind::Absent,
            vec![],
            RuntimeKind::Qemu,
        )
        .expect("manager"),
        Arc::new(BrokerKeys::default()),
    );
    let local = super::local_router(state.clone());
    for (method, uri, want) in [
        ("GET", "/api/v1/vms/vm-1", StatusCode::NOT_FOUND),
        ("GET", "/api/v1/vms/vm-1/clipboard", StatusCode::NOT_FOUND),
        ("POST", "/api/v1/vms", StatusCode::NOT_FOUND),
        ("DELETE", "/api/v1/vms/vm-1", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/api/v1/vms", StatusCode::NOT_FOUND),
        ("GET", "/api/v1/vms/vm-1/console", StatusCode::NOT_FOUND),
        ("POST", "/api/v1/vms/vm-1/session", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = call(&local, method, uri, None, SPEC).await;
        assert_eq!(status, want, "{method} {uri}: {}", String::from_utf8_lossy(&body));
    }
    // A VM it does not know is the VM's 404, not the route's.
    let (_, body) = call(&local, "GET", "/api/v1/vms/vm-1", None, "").await;
    assert!(error(&body).error.contains("vm-1"), "{}", String::from_utf8_lossy(&body));
    let (status, body) =
        call(&local, "PUT", "/api/v1/vms/vm-1/screen", None, r#"{"size":"800x600"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error(&body).error.contains("vm-1"), "{}", String::from_utf8_lossy(&body));
    // Uploads: into a VM it does not know, with a name that is a path, with no size; a
    // decision on an upload that is not waiting.
    for (method, uri, want, says) in [
        ("POST", "/api/v1/vms/vm-1/uploads?name=a.txt&size=1", StatusCode::NOT_FOUND, "vm-1"),
        ("POST", "/api/v1/vms/vm-1/uploads?name=..%2Fx&size=1", StatusCode::BAD_REQUEST, "folder"),
        ("POST", "/api/v1/vms/vm-1/uploads?name=a.txt", StatusCode::BAD_REQUEST, "size"),
        ("POST", "/api/v1/vms/vm-1/uploads/7/commit", StatusCode::NOT_FOUND, "upload 7"),
        ("DELETE", "/api/v1/vms/vm-1/uploads/7", StatusCode::NOT_FOUND, "upload 7"),
    ] {
        let (status, body) = call(&local, method, uri, None, "x").await;
        assert_eq!(status, want, "{method} {uri}: {}", String::from_utf8_lossy(&body));
        assert!(error(&body).error.contains(says), "{uri}: {}", String::from_utf8_lossy(&body));
    }
    // The sessions' activity: a bad report is refused naming the field and changes nothing;
    // a good one is what the next heartbeat carries.
    for (body, field) in [
        (r#"{"sessions":[{"sid":"a/b","viewers":1,"idle_ms":0}]}"#, "sessions[].sid"),
        (r#"{"sessions":[{"sid":"a","viewers":0,"idle_ms":0}]}"#, "sessions[].viewers"),
        (r#"{"sessions":[{"sid":"a","viewers":1,"idle_ms":-1}]}"#, "sessions"),
        (r#"{"sessions":[],"evil":1}"#, "evil"),
    ] {
        let (status, got) = call(&local, "PUT", "/api/v1/activity", None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error(&got).field.as_deref(), Some(field), "{body}");
    }
    assert_eq!(state.activity.current(), None);
    let good = r#"{"sessions":[{"sid":"s-1","viewers":1,"idle_ms":1500}]}"#;
    let (status, _) = call(&local, "PUT", "/api/v1/activity", None, good).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let now = state.activity.current().expect("the report is kept");
    assert_eq!((now[0].sid.as_str(), now[0].viewers), ("s-1", 1));
}

#[tokio::test]
async fn health_and_metrics_are_open_and_say_what_the_node_is() {
    let f = fixture("health");
    let (status, body) = call(&f.app, "GET", "/healthz", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["kvm"], "absent");
    assert_eq!(v["default_runtime"], "qemu");
    assert_eq!(v["runtimes"][0]["accel"], "tcg");
    assert!(v["runtimes"][0]["accel_reason"].as_str().expect("reason").contains("/dev/kvm"));
    let (status, body) = call(&f.app, "GET", "/metrics", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).expect("utf8");
    assert!(text.contains("atrium_node_vms{state=\"ready\"} 0"), "{text}");
    assert!(text.contains("atrium_node_memory_mib_total 256"), "{text}");
}

#[tokio::test]
async fn bad_specs_are_refused_naming_the_field() {
    let f = fixture("spec");
    for (body, field) in [
        (r#"{"image":"console","vcpus":0,"memory_mib":128,"display":"1024x768"}"#, Some("vcpus")),
        (r#"{"image":"console","vcpus":"1","memory_mib":128,"display":"1024x768"}"#, Some("vcpus")),
        (r#"{"image":"../x","vcpus":1,"memory_mib":128,"display":"1024x768"}"#, Some("image")),
        (r#"{"image":"console","vcpus":1,"memory_mib":128,"display":"1023x768"}"#, Some("display")),
        (
            r#"{"image":"console","vcpus":1,"memory_mib":64,"display":"1024x768"}"#,
            Some("memory_mib"),
        ),
        (
            r#"{"image":"console","vcpus":1,"memory_mib":128,"display":"1024x768","extra":true}"#,
            Some("extra"),
        ),
        (
            r#"{"image":"console","vcpus":1,"memory_mib":128,"display":"1024x768","runtime":"builtin"}"#,
            Some("runtime"),
        ),
        (
            r#"{"image":"console","vcpus":1,"memory_mib":128,"display":"1024x768","persistent_disk":"a/b"}"#,
            Some("persistent_disk"),
        ),
        (
            r#"{"image":"console","vcpus":1,"memory_mib":128,"display":"1024x768","user":{"username":"a b"}}"#,
            Some("user"),
        ),
        (r#"{"image":"console""#, None),
        ("", None),
    ] {
        let (status, resp) = f.call("POST", "/api/v1/vms", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {}", String::from_utf8_lossy(&resp));
        let e = error(&resp);
        assert_eq!(e.field.as_deref(), field, "{body}: {}", e.error);
        assert!(!e.error.is_empty());
    }
    // Nothing was started or reserved.
    let (_, body) = f.call("GET", "/api/v1/capacity", "").await;
    let c: Capacity = serde_json::from_slice(&body).expect("capacity");
    assert_eq!((c.vms, c.memory_mib_allocated), (0, 0));
}

#[tokio::test]
async fn a_missing_image_is_404_and_too_big_a_vm_is_409() {
    let f = fixture("refuse");
    let (status, body) = f.call("POST", "/api/v1/vms", &SPEC.replace("console", "desktop")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let e = error(&body);
    assert_eq!(e.field.as_deref(), Some("image"));
    assert!(e.error.contains("\"desktop\"") && e.error.contains("console@v1"), "{}", e.error);
    let (status, body) =
        f.call("POST", "/api/v1/vms", &SPEC.replace("console", "console@v9")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));

    let (status, body) = f.call("POST", "/api/v1/vms", &SPEC.replace("128", "512")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error(&body).error.contains("not enough memory: 512 MiB asked, 256 of 256 MiB free"));
    let (status, body) =
        f.call("POST", "/api/v1/vms", &SPEC.replace("\"vcpus\":1", "\"vcpus\":5")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error(&body).error.contains("vCPUs"));
}

#[tokio::test]
async fn a_home_disk_is_refused_to_an_image_without_home_disks() {
    let f = fixture("home");
    // A home disk (as a desktop image makes them) named for the console image, which has none:
    // refused before anything starts, rather than attached as the console's layer.
    let disks = f.dir.join("state/disks");
    std::fs::create_dir_all(&disks).expect("mkdir");
    std::fs::write(
        disks.join("alice-home.json"),
        r#"{"image":"console@v1","created_unix":1,"home":true}"#,
    )
    .expect("write");
    let spec = SPEC.replace("\"vcpus\"", "\"persistent_disk\":\"alice-home\",\"vcpus\"");
    let (status, body) = f.call("POST", "/api/v1/vms", &spec).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&body));
    assert!(error(&body).error.contains("is a home disk"), "{}", error(&body).error);
    let (_, body) = f.call("GET", "/api/v1/vms", "").await;
    assert_eq!(body, b"[]");
}

#[tokio::test]
async fn unknown_vms_and_bad_queries() {
    let f = fixture("unknown");
    for (method, uri, body) in [
        ("GET", "/api/v1/vms/vm-0000000000000000", ""),
        ("POST", "/api/v1/vms/vm-0000000000000000/stop", ""),
        ("DELETE", "/api/v1/vms/vm-0000000000000000", ""),
        ("GET", "/api/v1/vms/vm-0000000000000000/console", ""),
        ("GET", "/api/v1/vms/vm-0000000000000000/screenshot.png", ""),
        ("POST", "/api/v1/vms/vm-0000000000000000/clipboard", r#"{"text":"x"}"#),
        ("POST", "/api/v1/vms/vm-0000000000000000/session", r#"{"user":{"username":"alice"}}"#),
        ("PUT", "/api/v1/vms/vm-0000000000000000/screen", r#"{"size":"800x600"}"#),
    ] {
        let (status, resp) = f.call(method, uri, body).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert!(error(&resp).error.contains("vm-0000000000000000"));
    }
    let (status, resp) =
        f.call("GET", "/api/v1/vms/vm-0000000000000000/clipboard?wait=31", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&resp).field.as_deref(), Some("wait"));
    let (status, _) = f.call("GET", "/api/v1/vms/vm-0000000000000000/clipboard?after=x", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, resp) =
        f.call("POST", "/api/v1/vms/vm-0000000000000000/clipboard", r#"{"txt":"x"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&resp).field.as_deref(), Some("txt"));
    // An image that is not base64 or not a PNG file, both forms, or neither: refused by field.
    for (body, field) in [
        (r#"{"png":"%%"}"#, "png"),
        (r#"{"png":"aGk="}"#, "png"),
        (r#"{"text":"x","png":"aGk="}"#, "text"),
        ("{}", "text"),
    ] {
        let (status, resp) =
            f.call("POST", "/api/v1/vms/vm-0000000000000000/clipboard", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error(&resp).field.as_deref(), Some(field), "{body}");
    }
    let (status, resp) = f
        .call("POST", "/api/v1/vms/vm-0000000000000000/session", r#"{"user":{"username":7}}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&resp).field.as_deref(), Some("user"));
    for (body, field) in
        [(r#"{"size":"big"}"#, Some("size")), (r#"{"size":"800x600","more":1}"#, Some("more"))]
    {
        let (status, resp) = f.call("PUT", "/api/v1/vms/vm-0000000000000000/screen", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error(&resp).field.as_deref(), field, "{body}");
    }
}

#[tokio::test]
async fn capacity_lists_the_images() {
    let f = fixture("capacity");
    let (status, body) = f.call("GET", "/api/v1/capacity", "").await;
    assert_eq!(status, StatusCode::OK);
    let c: Capacity = serde_json::from_slice(&body).expect("capacity");
    assert_eq!(c.vcpus_total, 4);
    assert_eq!(c.memory_mib_free(), 256);
    assert_eq!(c.kvm, KvmKind::Absent);
    assert_eq!(c.images.len(), 1);
    assert_eq!(c.images[0].version, "v1");
}
