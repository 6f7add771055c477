//! The HTTP side: `/healthz`, `/metrics`, and `GET /ws/{vm}?ticket=...`, where the upgrade
//! handler checks the `Origin` and the ticket before anything else happens.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use atrium_protocol::display::MAX_CLIENT_MESSAGE;
use atrium_protocol::node::{ErrorBody, validate_name};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::config::DisplayConfig;
use crate::desktop::Desktops;
use crate::metrics::Metrics;
use crate::pipeline::pool::EncodePool;
use crate::source::node::NodeClient;
use crate::source::open::{NodeOpener, OpenError, SourceOpener};
use crate::ticket::{TicketError, TicketVerifier, VerifierConfig};
use crate::viewer::{self, Sessions, ViewerContext};
use atrium_door::Door;

/// Everything a request handler reaches.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    verifier: TicketVerifier,
    desktops: Desktops,
    viewer: Arc<ViewerContext>,
    metrics: Arc<Metrics>,
    allowed_origins: Vec<String>,
    sessions: Arc<Sessions>,
    /// The audience of the broker's signed calls here: this node.
    node_audience: String,
    door: Arc<Door>,
}

impl AppState {
    /// The service as configured, finding displays through the node agent, serving TLS when
    /// `tls_cert` is set.
    pub fn from_config(cfg: &DisplayConfig) -> Result<Self, atrium_door::tls::TlsError> {
        let node = NodeClient::new(&cfg.node_socket);
        let keep_refresh = cfg.keep_refresh_after_input();
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(atrium_door::tls::TlsFiles::load(cert, key)?),
            _ => None,
        };
        Ok(Self::build(cfg, Arc::new(NodeOpener { node, keep_refresh }), tls))
    }

    /// The service with another way to open displays (benchmarks and tests use a synthetic
    /// desktop), without TLS.
    pub fn with_opener(cfg: &DisplayConfig, opener: Arc<dyn SourceOpener>) -> Self {
        Self::build(cfg, opener, None)
    }

    fn build(
        cfg: &DisplayConfig,
        opener: Arc<dyn SourceOpener>,
        tls: Option<atrium_door::tls::TlsFiles>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let mut vcfg = VerifierConfig::new(&cfg.broker_url);
        vcfg.node_id.clone_from(&cfg.node_id);
        vcfg.leeway_secs = cfg.ticket_leeway_secs;
        vcfg.min_refresh = std::time::Duration::from_secs(cfg.jwks_refresh_min_secs);
        vcfg.ca_file.clone_from(&cfg.ca_file);
        let pool = EncodePool::new(cfg.encode_threads, 16);
        let viewer = Arc::new(ViewerContext {
            pool: pool.clone(),
            metrics: Arc::clone(&metrics),
            max_in_flight: cfg.max_frames_in_flight,
            refine_after: cfg.refine_after(),
            ack_timeout: std::time::Duration::from_secs(cfg.ack_timeout_secs),
        });
        Self(Arc::new(Inner {
            verifier: TicketVerifier::new(vcfg),
            desktops: Desktops::new(
                opener,
                Arc::clone(&metrics),
                pool,
                cfg.max_viewers_per_desktop,
            ),
            viewer,
            metrics,
            allowed_origins: cfg.allowed_origins.clone(),
            sessions: Arc::new(Sessions::default()),
            node_audience: atrium_protocol::signed::node_audience(
                cfg.node_id.as_deref().unwrap_or_default(),
            ),
            door: Arc::new(Door::new(cfg.door_limits(), tls)),
        }))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// The accept loop's limits and counters.
    pub fn door(&self) -> &Arc<Door> {
        &self.0.door
    }

    /// Refreshes the broker's keys in the background until the service ends.
    pub async fn keep_keys_fresh(&self) {
        self.0.verifier.keep_fresh().await;
    }

    /// Fetches the broker's keys now; failure is logged, and retried when a ticket arrives.
    pub async fn warm_up(&self) {
        if let Err(e) = self.0.verifier.refresh().await {
            tracing::warn!(error = %e, "cannot fetch the broker's signing keys yet");
        }
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ws/{vm}", get(ws))
        .route("/api/v1/sessions/{sid}/end", post(end_session))
        .with_state(state)
}

async fn healthz(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "clients": s.0.metrics.clients.load(Ordering::Relaxed),
        "desktops": s.0.metrics.desktops.load(Ordering::Relaxed),
    }))
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = format!("{}{}", s.0.metrics.render(), s.0.door.stats.render("atrium_display"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    #[serde(default)]
    ticket: String,
}

fn refuse(s: &AppState, status: StatusCode, message: String) -> Response {
    s.0.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
    (status, Json(ErrorBody { error: message, field: None })).into_response()
}

async fn ws(
    State(s): State<AppState>,
    Path(vm): Path<String>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if validate_name("vm", &vm, 128).is_err() {
        return refuse(&s, StatusCode::BAD_REQUEST, "invalid VM id".into());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| s.0.allowed_origins.iter().any(|a| a == o));
        if !ok {
            tracing::warn!(vm, origin = ?origin, "display connection from a page not allowed");
            return refuse(&s, StatusCode::FORBIDDEN, "origin not allowed".into());
        }
    }
    let claims = match s.0.verifier.verify(&q.ticket, &vm).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(vm, reason = %e, "display ticket refused");
            let status = match e {
                _ if e.is_forbidden() => StatusCode::FORBIDDEN,
                TicketError::Busy | TicketError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            return refuse(&s, status, e.to_string());
        }
    };
    // A ticket minted before the broker ended its session (sign-out, an administrator's end).
    if s.0.sessions.has_ended(&claims.sid) {
        tracing::info!(vm, session = %claims.sid, "display ticket refused: its session has ended");
        return refuse(&s, StatusCode::UNAUTHORIZED, "the session has ended; sign in again".into());
    }
    let slot = match s.0.desktops.join(&vm).await {
        Ok(slot) => slot,
        Err(e) => {
            tracing::warn!(vm, error = %e, "cannot open the desktop");
            let status = match &e {
                OpenError::NotFound(_) => StatusCode::NOT_FOUND,
                OpenError::NotRunning(_) => StatusCode::CONFLICT,
                OpenError::TooManyViewers(_) => StatusCode::TOO_MANY_REQUESTS,
                OpenError::Node(_) | OpenError::Source(_) => StatusCode::BAD_GATEWAY,
            };
            return refuse(&s, status, e.to_string());
        }
    };
    tracing::info!(vm, user = %claims.sub, session = %claims.sid, shadow = claims.caps.shadow, "display ticket accepted");
    let ctx = Arc::clone(&s.0.viewer);
    let sessions = Arc::clone(&s.0.sessions);
    upgrade
        // Client messages are small (input, acknowledgements): the read buffer is zeroed up
        // to its size on every read, so a large one costs a memset per keystroke.
        .read_buffer_size(CLIENT_READ_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE + 1024)
        .max_frame_size(MAX_CLIENT_MESSAGE + 1024)
        .on_upgrade(move |socket| viewer::serve(socket, slot, claims, ctx, sessions))
}

/// Bytes read from a viewer's socket at a time.
const CLIENT_READ_BUFFER: usize = 4096;

/// `POST /api/v1/sessions/{sid}/end`, a call the broker signed for this node: disconnects
/// every viewer of a broker session. Idempotent.
async fn end_session(
    State(s): State<AppState>,
    uri: axum::extract::OriginalUri,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let path = uri.0.path_and_query().map_or("/", |p| p.as_str());
    let req = atrium_protocol::signed::Request { method: "POST", path_and_query: path, body: b"" };
    if let Err(e) = s.0.verifier.verify_request(auth, &req, &s.0.node_audience).await {
        tracing::warn!(session = %sid.chars().take(64).collect::<String>(), reason = %e, "a session end not signed by the broker was refused");
        return (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody {
                error: format!("a call signed by the broker is required: {e}"),
                field: None,
            }),
        )
            .into_response();
    }
    let n = s.0.sessions.end(&sid);
    tracing::info!(session = %sid, viewers = n, "the broker ended a session");
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests;
