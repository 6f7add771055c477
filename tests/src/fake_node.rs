//! An in-process stand-in of the node agent API, for the broker's own tests: it accepts VM
//! specs, reports them ready after a delay, records deletions and session notices, and enrols
//! and heartbeats to the broker like `atrium-node` does (a key of its own, signed heartbeats).
//! It also answers the display proxy's end-session call. It boots nothing: flows that need real
//! desktops use the real node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::agent::SessionUser;
use atrium_protocol::node::{
    Capacity, DisplayEndpoint, EnrolRequest, HeartbeatReply, ImageInfo, KvmKind, NodeHeartbeat,
    RuntimeKind, SessionRequest, VmInfo, VmSpec, VmState, VmStatus,
};
use atrium_protocol::session::{EndReason, SessionActivity};
use atrium_protocol::signed::{self, NodeKey};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use axum::{Json, Router};

#[derive(Debug, Clone)]
pub struct FakeVm {
    pub spec: VmSpec,
    pub state: VmState,
    pub created: Instant,
}

#[derive(Debug)]
pub struct FakeState {
    pub vms: HashMap<String, FakeVm>,
    /// VMs become ready this long after creation.
    pub ready_after: Duration,
    /// Refuse VM creation with this message.
    pub refuse: Option<String>,
    /// How long a VM creation takes to answer (a slow node).
    pub create_delay: Duration,
    /// VM creations refused.
    pub refused: u32,
    /// vCPUs the node reports it hands out.
    pub vcpus_total: u32,
    pub memory_mib_total: u64,
    /// Host memory for VMs and what they really use, as a node with memory overcommit
    /// reports them (0: as a node without).
    pub memory_mib_physical: u64,
    pub memory_mib_used: u64,
    pub images: Vec<ImageInfo>,
    pub created: u32,
    pub deleted: Vec<String>,
    pub sessions: Vec<(String, SessionUser)>,
    pub ended_display_sessions: Vec<String>,
    /// Why each ended session ended, as the broker told the display proxy.
    pub end_reasons: Vec<(String, EndReason)>,
    /// What the heartbeats say of the sessions' viewers and input (as a display proxy would
    /// report them); `None`: nothing, as an older node.
    pub activity: Option<Vec<SessionActivity>>,
    /// File transfers the next heartbeat carries (then forgotten), as a display proxy reports
    /// them.
    pub transfers: Vec<atrium_protocol::session::TransferRecord>,
    /// Heartbeats stop while false (the node looks lost).
    pub heartbeating: bool,
    pub draining_seen: bool,
    /// Heartbeats the broker answered.
    pub heartbeats_answered: u64,
}

#[derive(Debug)]
pub struct FakeNode {
    pub id: String,
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
    server: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Its key, and the broker's base URL: it can sign other calls as a node does.
    key: Arc<NodeKey>,
    broker: String,
}

type Shared = Arc<Mutex<FakeState>>;

/// Checks the broker's calls as the real node does: signed by one of the broker's keys (its
/// JWKS, fetched again when an unknown key id appears), for this node and this request.
#[derive(Debug, Clone)]
struct BrokerCheck {
    jwks_url: String,
    node: String,
    keys: Arc<tokio::sync::Mutex<HashMap<String, jsonwebtoken::DecodingKey>>>,
}

impl BrokerCheck {
    async fn key(&self, kid: &str) -> Option<jsonwebtoken::DecodingKey> {
        let mut keys = self.keys.lock().await;
        if !keys.contains_key(kid) {
            let set: jsonwebtoken::jwk::JwkSet =
                reqwest::get(&self.jwks_url).await.ok()?.json().await.ok()?;
            for jwk in &set.keys {
                if let (Some(id), Ok(k)) =
                    (&jwk.common.key_id, jsonwebtoken::DecodingKey::from_jwk(jwk))
                {
                    keys.insert(id.clone(), k);
                }
            }
        }
        keys.get(kid).cloned()
    }

    async fn allows(&self, parts: &axum::http::request::Parts, body: &[u8]) -> bool {
        let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
        let Ok(token) = signed::bearer(auth) else { return false };
        let Some(kid) = signed::peek(token).ok().and_then(|u| u.kid) else { return false };
        let Some(key) = self.key(&kid).await else { return false };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let req = signed::Request { method: parts.method.as_str(), path_and_query: path, body };
        let aud = signed::node_audience(&self.node);
        signed::verify(token, &key, &aud, &req, signed::now_secs(), signed::CLOCK_LEEWAY_SECS)
            .is_ok()
    }
}

async fn require_broker(
    State(check): State<BrokerCheck>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if !check.allows(&parts, &bytes).await {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

fn info(id: &str, vm: &FakeVm) -> VmInfo {
    VmInfo {
        id: id.to_owned(),
        state: vm.state,
        runtime: RuntimeKind::Qemu,
        accel: None,
        image: vm.spec.image.clone(),
        vcpus: vm.spec.vcpus,
        memory_mib: vm.spec.memory_mib,
        display: vm.spec.display,
        screen: None,
        sound: false,
        persistent_disk: vm.spec.persistent_disk.clone(),
        user: vm.spec.user.as_ref().map(|u| u.username.clone()),
        created_at_ms: 0,
        ready_at_ms: None,
        error: None,
        display_endpoint: DisplayEndpoint::VncUnix { path: format!("/nonexistent/{id}.sock") },
        cloned: vm.spec.clone,
        agent: true,
    }
}

async fn create(
    State(st): State<Shared>,
    Json(spec): Json<VmSpec>,
) -> Result<(StatusCode, Json<VmInfo>), StatusCode> {
    let delay = st.lock().expect("lock").create_delay;
    tokio::time::sleep(delay).await;
    let mut s = st.lock().expect("lock");
    if s.refuse.is_some() {
        s.refused += 1;
        return Err(StatusCode::CONFLICT);
    }
    let id = format!("vm-{}", uuid::Uuid::new_v4().simple());
    let vm = FakeVm { spec, state: VmState::Starting, created: Instant::now() };
    let out = info(&id, &vm);
    s.vms.insert(id, vm);
    s.created += 1;
    Ok((StatusCode::CREATED, Json(out)))
}

async fn remove(State(st): State<Shared>, Path(id): Path<String>) -> StatusCode {
    let mut s = st.lock().expect("lock");
    if s.vms.remove(&id).is_some() {
        s.deleted.push(id);
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn session(
    State(st): State<Shared>,
    Path(id): Path<String>,
    Json(req): Json<SessionRequest>,
) -> StatusCode {
    let mut s = st.lock().expect("lock");
    if !s.vms.contains_key(&id) {
        return StatusCode::NOT_FOUND;
    }
    s.sessions.push((id, req.user));
    StatusCode::NO_CONTENT
}

async fn end_display(
    State(st): State<Shared>,
    Path(sid): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> StatusCode {
    let reason = q.get("reason").map_or(EndReason::Other, |r| EndReason::from_code(r));
    let mut s = st.lock().expect("lock");
    s.end_reasons.push((sid.clone(), reason));
    s.ended_display_sessions.push(sid);
    StatusCode::NO_CONTENT
}

impl FakeNode {
    /// Starts the stand-in, enrols it with `enrolment_token` (as `atrium-node` does, with a key
    /// of its own) and heartbeats to `broker_url` every 200 ms, signed; returns once the broker
    /// has answered a heartbeat (it knows the node's images and can place on it).
    pub async fn start(
        broker_url: &str,
        enrolment_token: &str,
        id: &str,
        memory_mib_total: u64,
    ) -> anyhow::Result<Self> {
        crate::util::install_crypto();
        let state = Arc::new(Mutex::new(FakeState {
            vms: HashMap::new(),
            ready_after: Duration::ZERO,
            refuse: None,
            create_delay: Duration::ZERO,
            refused: 0,
            vcpus_total: 64,
            memory_mib_total,
            memory_mib_physical: 0,
            memory_mib_used: 0,
            images: vec![ImageInfo {
                name: "console".into(),
                version: "1".into(),
                kind: "console".into(),
                agent: true,
                firmware: None,
                sha256: None,
            }],
            created: 0,
            deleted: Vec::new(),
            sessions: Vec::new(),
            ended_display_sessions: Vec::new(),
            end_reasons: Vec::new(),
            activity: None,
            transfers: Vec::new(),
            heartbeating: true,
            draining_seen: false,
            heartbeats_answered: 0,
        }));
        let check = BrokerCheck {
            jwks_url: format!("{}/.well-known/jwks.json", broker_url.trim_end_matches('/')),
            node: id.to_owned(),
            keys: Arc::default(),
        };
        let app = Router::new()
            .route("/api/v1/vms", post(create))
            .route("/api/v1/vms/{id}", delete(remove))
            .route("/api/v1/vms/{id}/session", post(session))
            .route("/api/v1/sessions/{sid}/end", post(end_display))
            .with_state(state.clone())
            .layer(axum::middleware::from_fn_with_state(check, require_broker));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let hb_state = state.clone();
        let base = broker_url.trim_end_matches('/').to_owned();
        let url = format!("{base}/api/v1/nodes/heartbeat");
        let node_id = id.to_owned();
        let key = Arc::new(NodeKey::ephemeral());
        let node_key = Arc::clone(&key);
        let http = reqwest::Client::new();
        let (vcpus_total, memory_mib_total) = {
            let s = state.lock().expect("lock");
            (s.vcpus_total, s.memory_mib_total)
        };
        let enrol = EnrolRequest {
            token: enrolment_token.to_owned(),
            node_id: id.to_owned(),
            public_key: key.public().to_owned(),
            vcpus_total,
            memory_mib_total,
        };
        crate::util::wait_for("the fake node to enrol", Duration::from_secs(30), || {
            let (http, enrol) = (http.clone(), enrol.clone());
            let url = format!("{base}/api/v1/nodes/enrol");
            async move {
                let r = http.post(url).json(&enrol).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await?;
        let heartbeat = tokio::spawn(async move {
            loop {
                let body = {
                    let mut s = hb_state.lock().expect("lock");
                    let ready_after = s.ready_after;
                    for vm in s.vms.values_mut() {
                        if vm.state == VmState::Starting && vm.created.elapsed() >= ready_after {
                            vm.state = VmState::Ready;
                        }
                    }
                    let allocated: u64 = s.vms.values().map(|v| u64::from(v.spec.memory_mib)).sum();
                    s.heartbeating.then(|| NodeHeartbeat {
                        node_id: node_id.clone(),
                        api_url: format!("http://{addr}"),
                        display_url: format!("ws://{addr}"),
                        capacity: Capacity {
                            vcpus_total: s.vcpus_total,
                            vcpus_allocated: 0,
                            memory_mib_total: s.memory_mib_total,
                            memory_mib_allocated: allocated,
                            memory_mib_used: s.memory_mib_used,
                            memory_mib_physical: s.memory_mib_physical,
                            vms: u32::try_from(s.vms.len()).unwrap_or(u32::MAX),
                            kvm: KvmKind::Pvm,
                            default_runtime: RuntimeKind::Qemu,
                            images: s.images.clone(),
                            image_fetches: Vec::new(),
                        },
                        vms: s
                            .vms
                            .iter()
                            .map(|(id, v)| VmStatus { id: id.clone(), state: v.state, error: None })
                            .collect(),
                        sessions: s.activity.clone(),
                        transfers: std::mem::take(&mut s.transfers),
                    })
                };
                let signed = body.map(|hb| {
                    let body = serde_json::to_vec(&hb).expect("a heartbeat serializes");
                    let req = signed::Request {
                        method: "POST",
                        path_and_query: "/api/v1/nodes/heartbeat",
                        body: &body,
                    };
                    let token = key
                        .sign(&node_id, signed::BROKER_AUDIENCE, &req, signed::now_secs())
                        .expect("signing");
                    (body, token)
                });
                if let Some((body, token)) = signed
                    && let Ok(r) = http
                        .post(&url)
                        .bearer_auth(token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                    && let Ok(reply) = r.json::<HeartbeatReply>().await
                {
                    let mut s = hb_state.lock().expect("lock");
                    s.draining_seen = reply.draining;
                    s.heartbeats_answered += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let node =
            Self { id: id.to_owned(), addr, state, server, heartbeat, key: node_key, broker: base };
        // Placement needs what the first heartbeat says (its images): a test may place at once.
        crate::util::wait_for(
            "the fake node's first heartbeat",
            Duration::from_secs(30),
            || async { (node.with(|s| s.heartbeats_answered) > 0).then_some(()) },
        )
        .await?;
        Ok(node)
    }

    /// Starts the stand-in on `broker`, enrolled with a token from `atrium-broker enrol-token`
    /// for `id`.
    pub async fn enrolled(
        broker: &crate::broker::Broker,
        id: &str,
        memory_mib_total: u64,
    ) -> anyhow::Result<Self> {
        Self::start(&broker.url, &broker.enrolment_token(id)?, id, memory_mib_total).await
    }

    /// A stand-in node `node-a` on `broker` and a floating console pool `general` on it (no
    /// spares), made by the administrator `admin`.
    pub async fn with_general_pool(
        broker: &crate::broker::Broker,
        admin: &crate::broker::ApiClient,
    ) -> anyhow::Result<Self> {
        let node = Self::enrolled(broker, "node-a", 8192).await?;
        let pool = crate::broker::pool_json("general", "floating", 0, 4);
        admin.post_json("/api/v1/admin/pools", pool, reqwest::StatusCode::CREATED).await;
        Ok(node)
    }

    /// `POST`s `body` to the broker's `path_and_query`, signed with this node's key (as the
    /// node does with session recordings).
    pub async fn post_signed(&self, path_and_query: &str, body: Vec<u8>) -> reqwest::Response {
        let req = signed::Request { method: "POST", path_and_query, body: &body };
        let token = self
            .key
            .sign(&self.id, signed::BROKER_AUDIENCE, &req, signed::now_secs())
            .expect("signing");
        reqwest::Client::new()
            .post(format!("{}{path_and_query}", self.broker))
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("the broker answers")
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().expect("lock"))
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.server.abort();
        self.heartbeat.abort();
    }
}
