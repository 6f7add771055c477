//! Enrolment, registration and heartbeat with the broker.
//!
//! Every heartbeat (`POST {broker.url}/api/v1/nodes/heartbeat`, a `NodeHeartbeat` with capacity
//! and VM states) is signed with this node's own key ([`NodeKey`], made at first start in
//! `state_dir/node-key.pem`, never sent anywhere). When the broker answers that this node is not
//! enrolled, the node enrols (`POST /api/v1/nodes/enrol`) with the one-time token an
//! administrator gave it (`broker.enrolment_token`), binding its id to its public key, and
//! heartbeats again. The broker answers when the next heartbeat is due, whether this node is
//! drained, and its public keys (the node API accepts calls signed by these). While the broker cannot be reached the node retries with a doubling backoff, up to
//! `broker.max_backoff_secs`.

use std::sync::Arc;
use std::time::Duration;

use atrium_protocol::node::{EnrolReply, EnrolRequest, ErrorBody, HeartbeatReply, NodeHeartbeat};
use atrium_protocol::signed::{self, BROKER_AUDIENCE, NodeKey};

use crate::api::{Activity, BrokerKeys};
use crate::config::Secret;
use crate::library::Library;
use crate::vm::VmManager;

/// The heartbeat this node would send now, with the display proxy's latest word on the
/// sessions and the file transfers the broker has not taken yet (taken from `activity`: a
/// caller whose heartbeat fails gives them back), and where it is with the broker's library.
pub fn heartbeat(node: &VmManager, activity: &Activity, library: &Library) -> NodeHeartbeat {
    let c = node.config();
    let mut capacity = node.capacity();
    capacity.image_fetches = library.statuses();
    NodeHeartbeat {
        node_id: node.node_id().to_owned(),
        api_url: c.api_url(),
        display_url: c.node.display_url.clone().unwrap_or_default(),
        capacity,
        vms: node.statuses(),
        sessions: activity.current(),
        transfers: activity.take_transfers(),
    }
}

/// Why a heartbeat or an enrolment failed.
#[derive(Debug)]
enum Failure {
    /// The broker does not know this node's key (never enrolled, or revoked).
    NotEnrolled(String),
    /// The broker refused the request itself (a 4xx other than 401): the same one would be
    /// refused again.
    Refused(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotEnrolled(m) | Self::Refused(m) | Self::Other(m) => f.write_str(m),
        }
    }
}

/// The broker's error text, short and printable (it goes into this node's log).
async fn refusal(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = match resp.json::<ErrorBody>().await {
        Ok(b) => b.error,
        Err(_) => String::new(),
    };
    let text: String =
        text.chars().take(300).map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!("the broker answered {status}: {text}")
}

/// The broker's client and where to reach it.
struct Broker {
    client: reqwest::Client,
    base: String,
    heartbeat_url: String,
}

async fn send_once(
    b: &Broker,
    key: &NodeKey,
    node: &VmManager,
    activity: &Activity,
    library: &Library,
) -> Result<HeartbeatReply, Failure> {
    let hb = heartbeat(node, activity, library);
    let transfers = hb.transfers.clone();
    let result = send_heartbeat(b, key, node, &hb).await;
    match &result {
        // The broker refused this heartbeat (a 4xx other than an unknown node): sent again,
        // the same transfers would be refused for ever, and the node taken for lost.
        Err(Failure::Refused(why)) if !transfers.is_empty() => {
            tracing::error!(dropped = transfers.len(), %why,
                "the broker refused a heartbeat with transfers' audit records; they are dropped");
        }
        Err(_) => activity.return_transfers(transfers),
        Ok(_) => {}
    }
    result
}

async fn send_heartbeat(
    b: &Broker,
    key: &NodeKey,
    node: &VmManager,
    hb: &NodeHeartbeat,
) -> Result<HeartbeatReply, Failure> {
    let body = serde_json::to_vec(hb).map_err(|e| Failure::Other(e.to_string()))?;
    let req = signed::Request {
        method: "POST",
        path_and_query: signed::path_and_query(&b.heartbeat_url),
        body: &body,
    };
    let token = key
        .sign(node.node_id(), BROKER_AUDIENCE, &req, signed::now_secs())
        .map_err(|e| Failure::Other(e.to_string()))?;
    let resp = b
        .client
        .post(&b.heartbeat_url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Other(e.to_string()))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(Failure::NotEnrolled(refusal(resp).await));
    }
    if status.is_client_error() {
        return Err(Failure::Refused(refusal(resp).await));
    }
    if !status.is_success() {
        return Err(Failure::Other(refusal(resp).await));
    }
    resp.json::<HeartbeatReply>()
        .await
        .map_err(|e| Failure::Other(format!("bad heartbeat reply: {e}")))
}

async fn enrol(
    b: &Broker,
    key: &NodeKey,
    token: &Secret,
    node: &VmManager,
) -> Result<EnrolReply, Failure> {
    let c = node.capacity();
    let req = EnrolRequest {
        token: token.expose().to_owned(),
        node_id: node.node_id().to_owned(),
        public_key: key.public().to_owned(),
        vcpus_total: c.vcpus_total,
        memory_mib_total: c.memory_mib_total,
    };
    let url = format!("{}/api/v1/nodes/enrol", b.base);
    let resp =
        b.client.post(url).json(&req).send().await.map_err(|e| Failure::Other(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(Failure::Other(refusal(resp).await));
    }
    resp.json::<EnrolReply>().await.map_err(|e| Failure::Other(format!("bad enrolment reply: {e}")))
}

/// Heartbeats until the task is dropped, enrolling first when the broker asks for it; each
/// carries `activity`'s latest word on the sessions, and each reply's image library goes to
/// `library`.
pub async fn run(
    node: Arc<VmManager>,
    key: Arc<NodeKey>,
    enrolment: Option<Secret>,
    broker_keys: Arc<BrokerKeys>,
    activity: Arc<Activity>,
    library: Arc<Library>,
) {
    let cfg = node.config().broker.clone();
    let Some(base) = cfg.url.clone() else { return };
    let base = base.trim_end_matches('/').to_owned();
    let built = atrium_door::client::http_client(cfg.ca_file.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.timeout(Duration::from_secs(cfg.timeout_secs)).build().map_err(|e| e.to_string())
        });
    let client = match built {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot make an HTTP client for the broker (broker.ca_file): {e}");
            return;
        }
    };
    let broker = Broker {
        client,
        heartbeat_url: format!("{base}/api/v1/nodes/heartbeat"),
        base: base.clone(),
    };
    let max_backoff = Duration::from_secs(cfg.max_backoff_secs);
    let mut backoff = Duration::from_secs(1);
    let mut connected = false;
    // Set by an enrolment the broker accepted, until the next heartbeat's answer: a heartbeat
    // refused right after enrolling (clocks apart, a proxy rewriting the path) backs off like
    // any failure rather than enrolling again at once, in a loop.
    let mut just_enrolled = false;
    loop {
        let sent = send_once(&broker, &key, &node, &activity, &library).await;
        let retry_enrolment = !std::mem::take(&mut just_enrolled);
        let failure = match sent {
            Ok(reply) => {
                if !connected {
                    tracing::info!(broker = %base, interval = reply.interval_secs, "registered with the broker");
                    connected = true;
                }
                node.set_draining(reply.draining);
                broker_keys.replace(&reply.broker_keys);
                library.want(&reply.images);
                backoff = Duration::from_secs(1);
                tokio::time::sleep(Duration::from_secs(reply.interval_secs.clamp(1, 300))).await;
                continue;
            }
            Err(Failure::NotEnrolled(why)) if !retry_enrolment => format!(
                "{why}; the broker refuses this node's signature right after enrolling it: \
                 check that the clocks agree and that nothing rewrites the broker's path"
            ),
            Err(Failure::NotEnrolled(why)) => match &enrolment {
                Some(token) => match enrol(&broker, &key, token, &node).await {
                    Ok(r) => {
                        tracing::info!(broker = %base, max_vcpus = r.max_vcpus, max_memory_mib = r.max_memory_mib,
                            "enrolled with the broker");
                        just_enrolled = true;
                        continue;
                    }
                    Err(e) => format!("enrolment refused: {e}"),
                },
                None => format!(
                    "{why}; this node is not enrolled: set broker.enrolment_token (or \
                     broker.enrolment_token_file) to a token from an administrator"
                ),
            },
            Err(Failure::Refused(e) | Failure::Other(e)) => e,
        };
        if connected {
            tracing::warn!(broker = %base, "heartbeat failed: {failure}; retrying in {backoff:?}");
        } else {
            tracing::warn!(broker = %base, "cannot register with the broker: {failure}; retrying in {backoff:?}");
        }
        connected = false;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use atrium_protocol::node::{KvmKind, RuntimeKind};
    use atrium_protocol::session::{ActivityReport, SessionActivity};
    use axum::Json;
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    /// What the stand-in broker saw: enrolments, and heartbeats whose signature it checked.
    #[derive(Debug)]
    enum Seen {
        Enrol(EnrolRequest),
        Heartbeat(NodeHeartbeat),
    }

    /// A broker's node endpoints that check what the real one checks about a signature (the
    /// broker's own tests cover the rest): unknown keys get 401 until the node enrols.
    async fn broker(listener: tokio::net::TcpListener, seen: mpsc::UnboundedSender<Seen>) {
        let enrolled: Arc<Mutex<Option<String>>> = Arc::default();
        let (e1, e2) = (Arc::clone(&enrolled), Arc::clone(&enrolled));
        let (s1, s2) = (seen.clone(), seen);
        let app = axum::Router::new()
            .route(
                "/api/v1/nodes/enrol",
                post(move |Json(req): Json<EnrolRequest>| {
                    let (enrolled, seen) = (Arc::clone(&e1), s1.clone());
                    async move {
                        if req.token != "atrium-enrol-test" {
                            return StatusCode::FORBIDDEN.into_response();
                        }
                        *enrolled.lock().unwrap() = Some(req.public_key.clone());
                        let reply = EnrolReply {
                            node_id: req.node_id.clone(),
                            max_vcpus: req.vcpus_total,
                            max_memory_mib: req.memory_mib_total,
                        };
                        let _ = seen.send(Seen::Enrol(req));
                        Json(reply).into_response()
                    }
                }),
            )
            .route(
                "/api/v1/nodes/heartbeat",
                post(move |headers: HeaderMap, body: Bytes| {
                    let (enrolled, seen) = (Arc::clone(&e2), s2.clone());
                    async move {
                        let Some(public) = enrolled.lock().unwrap().clone() else {
                            return StatusCode::UNAUTHORIZED.into_response();
                        };
                        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                        let req = signed::Request {
                            method: "POST",
                            path_and_query: "/api/v1/nodes/heartbeat",
                            body: &body,
                        };
                        let key = signed::node_public_key(&public).expect("a public key");
                        let token = signed::bearer(auth).expect("a bearer token");
                        let checked = signed::verify(
                            token,
                            &key,
                            BROKER_AUDIENCE,
                            &req,
                            signed::now_secs(),
                            5,
                        );
                        if checked.is_err() {
                            return StatusCode::UNAUTHORIZED.into_response();
                        }
                        let hb: NodeHeartbeat = serde_json::from_slice(&body).expect("a heartbeat");
                        let _ = seen.send(Seen::Heartbeat(hb));
                        let broker_keys = vec![atrium_protocol::node::BrokerKey {
                            kid: "k1".into(),
                            x: NodeKey::ephemeral().public().to_owned(),
                        }];
                        Json(HeartbeatReply {
                            interval_secs: 1,
                            draining: true,
                            broker_keys,
                            images: Vec::new(),
                        })
                        .into_response()
                    }
                }),
            );
        axum::serve(listener, app).await.expect("serve");
    }

    #[tokio::test]
    async fn retries_until_the_broker_is_up_enrols_then_heartbeats_signed() {
        // Reserve a port, then leave it closed: the broker is down at first.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);

        let dir = std::env::temp_dir().join(format!("atrium-hb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = NodeConfig::default();
        config.node.id = Some("node-7".into());
        config.node.state_dir = dir.join("state");
        config.node.images_dir = dir.join("images");
        config.node.display_url = Some("ws://127.0.0.1:7443".into());
        config.cgroup.enabled = false;
        config.broker.url = Some(format!("http://{addr}"));
        config.broker.max_backoff_secs = 1;
        let node =
            VmManager::new(config, KvmKind::Absent, vec![], RuntimeKind::Qemu).expect("manager");
        let key = Arc::new(NodeKey::ephemeral());
        let broker_keys = Arc::new(BrokerKeys::default());
        let activity = Arc::new(Activity::default());
        let task = tokio::spawn(run(
            Arc::clone(&node),
            Arc::clone(&key),
            Some(Secret::new("atrium-enrol-test")),
            Arc::clone(&broker_keys),
            Arc::clone(&activity),
            Arc::default(),
        ));

        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!node.draining());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the broker's port");
        let server = tokio::spawn(broker(listener, tx));

        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("the node calls the broker once it is up")
                .expect("channel open")
        };
        let Seen::Enrol(e) = next().await else { panic!("the node enrols first") };
        assert_eq!((e.node_id.as_str(), e.public_key.as_str()), ("node-7", key.public()));
        let Seen::Heartbeat(hb) = next().await else { panic!("then heartbeats") };
        assert_eq!(hb.node_id, "node-7");
        assert_eq!(hb.display_url, "ws://127.0.0.1:7443");
        assert_eq!(hb.capacity.kvm, KvmKind::Absent);
        assert!(hb.vms.is_empty());
        assert_eq!(hb.sessions, None, "no word from the display proxy yet");
        // The display proxy reports its sessions; the next heartbeat carries them, at the
        // interval the broker asked for, and the node is drained.
        activity.put(ActivityReport {
            transfers: vec![],
            sessions: vec![SessionActivity { sid: "s-1".into(), viewers: 2, idle_ms: 40 }],
        });
        let Seen::Heartbeat(hb) = next().await else { panic!("heartbeats go on") };
        let sessions = hb.sessions.expect("the proxy's report");
        assert_eq!((sessions[0].sid.as_str(), sessions[0].viewers), ("s-1", 2));
        assert!(sessions[0].idle_ms >= 40);
        assert!(node.draining());
        // The broker's keys came with the reply.
        assert!(format!("{broker_keys:?}").contains("k1"), "{broker_keys:?}");
        task.abort();
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A broker that accepts the enrolment but refuses every heartbeat (clocks apart, say): the
    /// node backs off, it does not enrol again and again in a loop.
    #[tokio::test]
    async fn a_heartbeat_refused_right_after_enrolling_backs_off() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let enrolments = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&enrolments);
        let app = axum::Router::new()
            .route(
                "/api/v1/nodes/enrol",
                post(move |Json(req): Json<EnrolRequest>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Json(EnrolReply {
                            node_id: req.node_id,
                            max_vcpus: req.vcpus_total,
                            max_memory_mib: req.memory_mib_total,
                        })
                    }
                }),
            )
            .route("/api/v1/nodes/heartbeat", post(|| async { StatusCode::UNAUTHORIZED }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

        let dir = std::env::temp_dir().join(format!("atrium-hb-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = NodeConfig::default();
        config.node.id = Some("node-8".into());
        config.node.state_dir = dir.join("state");
        config.node.images_dir = dir.join("images");
        config.node.display_url = Some("ws://127.0.0.1:7443".into());
        config.cgroup.enabled = false;
        config.broker.url = Some(format!("http://{addr}"));
        config.broker.max_backoff_secs = 2;
        let node =
            VmManager::new(config, KvmKind::Absent, vec![], RuntimeKind::Qemu).expect("manager");
        let task = tokio::spawn(run(
            node,
            Arc::new(NodeKey::ephemeral()),
            Some(Secret::new("atrium-enrol-test")),
            Arc::new(BrokerKeys::default()),
            Arc::default(),
            Arc::default(),
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        task.abort();
        server.abort();
        let n = enrolments.load(Ordering::SeqCst);
        assert!((1..=3).contains(&n), "{n} enrolments in 3 s");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
