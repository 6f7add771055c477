//! The display proxy's HTTP edge, one module per resource: `meta` (`/healthz`, `/metrics`),
//! `viewers` (`GET /ws/{vm}?ticket=...`: a viewer's WebSocket, checked before anything else
//! happens), `files` (`/files/{vm}/{token}`: a file's one-time link, `GET` for a download,
//! `PUT` for an upload) and `sessions` (the broker ending a session). Refusals are
//! [`Refused`]; what a request must show is in [`crate::auth`].
//!
//! [`Refused`]: crate::error::Refused

mod files;
mod meta;
mod sessions;
mod viewers;

use std::sync::Arc;

use axum::Router;

use crate::config::DisplayConfig;
use crate::desktop::Desktops;
use crate::metrics::Metrics;
use crate::pipeline::pool::EncodePool;
use crate::recording::Sink;
use crate::source::node::{NodeClient, NodeError};
use crate::source::open::{NodeOpener, SourceOpener};
use crate::ticket::{TicketVerifier, VerifierConfig};
use crate::viewer::{Sessions, ViewerContext};
use crate::watermark::Font;
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
    /// Where recorded viewers' streams go (the node agent); none: recorded tickets are refused.
    recordings: Option<Arc<dyn Sink>>,
    /// The node agent, told what sessions have viewers here and their input (none in
    /// benchmarks and tests with a synthetic desktop).
    node: Option<NodeClient>,
    door: Arc<Door>,
}

/// How often the node agent is told which sessions have viewers here and how long each has
/// been without input: the broker's idle and disconnect times are counted from what it hears,
/// so they run at most this (and a heartbeat) late.
pub const ACTIVITY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

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
        let sink: Arc<dyn Sink> = Arc::new(node.clone());
        let opener = Arc::new(NodeOpener { node: node.clone(), keep_refresh });
        Ok(Self::build(cfg, opener, tls, Some(sink), Some(node)))
    }

    /// The service with another way to open displays (benchmarks and tests use a synthetic
    /// desktop), without TLS, and optionally another place for recordings.
    pub fn with_opener(
        cfg: &DisplayConfig,
        opener: Arc<dyn SourceOpener>,
        recordings: Option<Arc<dyn Sink>>,
    ) -> Self {
        Self::build(cfg, opener, None, recordings, None)
    }

    fn build(
        cfg: &DisplayConfig,
        opener: Arc<dyn SourceOpener>,
        tls: Option<atrium_door::tls::TlsFiles>,
        recordings: Option<Arc<dyn Sink>>,
        node: Option<NodeClient>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let mut vcfg = VerifierConfig::new(&cfg.broker_url);
        vcfg.node_id.clone_from(&cfg.node_id);
        vcfg.leeway_secs = cfg.ticket_leeway_secs;
        vcfg.min_refresh = std::time::Duration::from_secs(cfg.jwks_refresh_min_secs);
        vcfg.ca_file.clone_from(&cfg.ca_file);
        let pool = EncodePool::new(cfg.encode_threads, 16);
        let font = match Font::load(&cfg.watermark_font) {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                tracing::warn!(error = %e, "watermarks cannot be drawn: viewers whose tickets ask for one will be refused");
                None
            }
        };
        let viewer = Arc::new(ViewerContext {
            pool: pool.clone(),
            metrics: Arc::clone(&metrics),
            max_in_flight: cfg.max_frames_in_flight,
            refine_after: cfg.refine_after(),
            video_max_fps: cfg.video_max_fps,
            ack_timeout: std::time::Duration::from_secs(cfg.ack_timeout_secs),
            scanner: cfg.clamd_socket.clone().map(crate::files::scan::Scanner::new),
            totals: Arc::default(),
            links: Arc::default(),
        });
        Self(Arc::new(Inner {
            verifier: TicketVerifier::new(vcfg),
            desktops: Desktops::new(
                opener,
                Arc::clone(&metrics),
                pool,
                cfg.max_viewers_per_desktop,
                font,
            ),
            viewer,
            metrics,
            allowed_origins: cfg.allowed_origins.clone(),
            sessions: Arc::new(Sessions::default()),
            node_audience: atrium_protocol::signed::node_audience(
                cfg.node_id.as_deref().unwrap_or_default(),
            ),
            door: Arc::new(Door::new(cfg.door_limits(), tls)),
            recordings,
            node,
        }))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// The accept loop's limits and counters.
    pub fn door(&self) -> &Arc<Door> {
        &self.0.door
    }

    /// The downloads' links offered here.
    pub fn links(&self) -> &Arc<crate::files::links::Links> {
        &self.0.viewer.links
    }

    /// Refreshes the broker's keys in the background until the service ends.
    pub async fn keep_keys_fresh(&self) {
        self.0.verifier.keep_fresh().await;
    }

    /// Tells the node agent, every [`ACTIVITY_EVERY`] until the service ends, which sessions
    /// have viewers here and how long each has been without input. Without a node agent
    /// (a synthetic desktop) there is no one to tell.
    pub async fn keep_reporting_activity(&self) {
        let Some(node) = &self.0.node else { return };
        let mut failing = false;
        loop {
            let report = self.0.sessions.report();
            let sent = node.report_activity(&report).await;
            // A report the node refused as malformed is not sent again (it would be refused
            // for ever); one it did not get is.
            match &sent {
                Err(NodeError::Status { status: 400, body }) if !report.transfers.is_empty() => {
                    tracing::error!(%body, dropped = report.transfers.len(),
                        "the node refused file transfers' audit records");
                }
                Err(_) => self.0.sessions.return_transfers(report.transfers),
                Ok(()) => {}
            }
            match sent {
                Ok(()) if failing => {
                    tracing::info!("the node agent takes the sessions' activity again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot tell the node agent the sessions' activity; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(ACTIVITY_EVERY).await;
        }
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
        .merge(meta::routes())
        .merge(viewers::routes())
        .merge(files::routes())
        .merge(sessions::routes())
        .with_state(state)
}
