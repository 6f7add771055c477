//! The display gateway (`atrium-display gateway`): the one public door for displays.
//!
//! A viewer opens `wss://<gateway>/ws/{vm}?ticket=...`. The gateway checks the ticket at the
//! edge (signature against the broker's published keys, issuer, audience, times, VM) before a
//! byte reaches the node network, then repeats the upgrade to the display proxy that the signed
//! ticket names (never one the URL names) and relays bytes both ways. The proxy checks the
//! ticket again, spends it, and enforces its rights. The gateway keeps no state: any gateway
//! serves any viewer, and a viewer whose gateway died reconnects through another.
//!
//! - [`config`]: the settings;
//! - the accept loop is the display proxy's too ([`atrium_door`]): connection limits, TLS from
//!   PEM files (reloaded on SIGHUP and when they change), header deadlines, graceful stop;
//! - [`routes`]: `/healthz`, `/readyz`, `/metrics`, `/ws/{vm}` and `/files/{vm}/{token}` (a
//!   download's one-time link, passed to the proxy this gateway relays that desktop's viewers
//!   to: the one state a gateway keeps, so the edge sends a desktop's links to the gateway of
//!   its viewers);
//! - [`relay`]: the upgrade repeated to the proxy, then the byte pump;
//! - [`metrics`]: the counters at `/metrics`.

pub mod config;
pub mod metrics;
pub mod relay;
pub mod routes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atrium_protocol::net::IpNet;
use thiserror::Error;

use crate::ticket::{TicketVerifier, VerifierConfig};
use atrium_door::tls::{TlsError, TlsFiles};
use atrium_door::{self as door, AddressSlots, Door, DoorLimits};
use config::GatewayConfig;
use metrics::GatewayMetrics;

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
}

/// Everything a request handler reaches.
#[derive(Debug, Clone)]
pub struct Gateway(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    cfg: GatewayConfig,
    /// Where display proxies may be.
    proxy_nets: Vec<IpNet>,
    verifier: TicketVerifier,
    /// TLS to `wss://` display proxies, trusting `ca_file`.
    proxy_tls: Arc<rustls::ClientConfig>,
    /// Connections (relays hold a place there too), per-address limits and TLS.
    door: Arc<Door>,
    metrics: GatewayMetrics,
    /// Open relays by client address.
    relays: Arc<AddressSlots>,
    /// The display proxy of each desktop with a viewer relayed here, and how many viewers.
    relayed: std::sync::Mutex<std::collections::HashMap<String, (relay::Backend, usize)>>,
    draining: AtomicBool,
    /// Fires once when the gateway stops: open relays end.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// The gateway as configured; reads the TLS files (an error names the file).
    pub fn new(cfg: GatewayConfig) -> Result<Self, GatewayError> {
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) if !cfg.plain_http => Some(TlsFiles::load(c, k)?),
            _ => None,
        };
        let mut vcfg = VerifierConfig::new(&cfg.broker_url);
        vcfg.leeway_secs = cfg.ticket_leeway_secs;
        vcfg.min_refresh = Duration::from_secs(cfg.jwks_refresh_min_secs);
        vcfg.ca_file.clone_from(&cfg.ca_file);
        let mut client_tls = door::client::client_config(cfg.ca_file.as_deref())?;
        client_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let proxy_tls = Arc::new(client_tls);
        let (stop, _) = tokio::sync::watch::channel(false);
        let limits = DoorLimits {
            max_connections: cfg.max_connections,
            max_per_address: cfg.max_connections_per_address,
            trusted: cfg.trusted_nets(),
            header_timeout: cfg.header_timeout(),
            max_head: crate::config::MAX_REQUEST_HEAD,
            drain_within: crate::config::DRAIN_WITHIN,
        };
        Ok(Self(Arc::new(Inner {
            proxy_nets: cfg.proxy_nets(),
            relays: Arc::new(AddressSlots::new(cfg.max_relays_per_address)),
            relayed: std::sync::Mutex::default(),
            door: Arc::new(Door::new(limits, tls)),
            verifier: TicketVerifier::new(vcfg),
            proxy_tls,
            metrics: GatewayMetrics::default(),
            draining: AtomicBool::new(false),
            stop,
            cfg,
        })))
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.0.cfg
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.0.metrics
    }

    /// The accept loop's limits and counters.
    pub fn door(&self) -> &Arc<Door> {
        &self.0.door
    }

    /// Fetches the broker's keys now; failure is logged, and retried when a ticket arrives.
    pub async fn warm_up(&self) {
        if let Err(e) = self.0.verifier.refresh().await {
            tracing::warn!(error = %e, "cannot fetch the broker's signing keys yet");
        }
    }

    /// From now on `/readyz` answers 503 (a load balancer stops sending viewers here).
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    fn draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    /// A viewer of `vm` is relayed to `backend` until the guard drops.
    fn relaying(&self, vm: &str, backend: &relay::Backend) -> Relayed {
        let mut map = self.0.relayed.lock().expect("relayed lock");
        let e = map.entry(vm.to_owned()).or_insert_with(|| (backend.clone(), 0));
        // The latest viewer's proxy wins (a desktop moved to another node).
        e.0 = backend.clone();
        e.1 += 1;
        Relayed { gateway: self.clone(), vm: vm.to_owned() }
    }

    /// The display proxy this gateway relays `vm`'s viewers to now.
    fn relayed(&self, vm: &str) -> Option<relay::Backend> {
        self.0.relayed.lock().expect("relayed lock").get(vm).map(|(b, _)| b.clone())
    }

    /// Ends every open relay (the gateway is stopping).
    pub fn stop_relays(&self) {
        let _ = self.0.stop.send(true);
    }

    /// Resolves once [`Self::stop_relays`] was called.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// One relayed viewer of a desktop, counted while it lasts.
struct Relayed {
    gateway: Gateway,
    vm: String,
}

impl Drop for Relayed {
    fn drop(&mut self) {
        let mut map = self.gateway.0.relayed.lock().expect("relayed lock");
        if let Some(e) = map.get_mut(&self.vm) {
            e.1 -= 1;
            if e.1 == 0 {
                map.remove(&self.vm);
            }
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` completes; then its relays end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let app = routes::router(gateway.clone());
    let door = Arc::clone(gateway.door());
    door::serve(listener, app, door, shutdown, || gateway.stop_relays()).await;
}

/// Runs the gateway until SIGINT or SIGTERM: serves, reloads TLS on SIGHUP, and on SIGTERM
/// drains (`/readyz` 503 for `drain_secs`), stops accepting and ends its relays.
pub async fn run(cfg: GatewayConfig) -> Result<(), GatewayError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addr = cfg.listen;
    let gateway = Gateway::new(cfg)?;
    gateway.warm_up().await;
    let g = gateway.clone();
    tokio::spawn(async move { g.0.verifier.keep_fresh().await });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Listen { addr, source })?;
    tracing::info!(
        listen = %listener.local_addr().map_err(|source| GatewayError::Listen { addr, source })?,
        tls = gateway.0.door.tls().is_some(),
        "display gateway listening"
    );
    tokio::spawn(door::keep_tls_fresh(Arc::clone(&gateway.0.door)));
    let drain = Duration::from_secs(gateway.config().drain_secs);
    let g = gateway.clone();
    let shutdown = async move {
        door::stop_signal().await;
        g.start_draining();
        if !drain.is_zero() {
            tracing::info!(secs = drain.as_secs(), "draining: /readyz answers 503");
            tokio::time::sleep(drain).await;
        }
    };
    serve(listener, gateway, shutdown).await;
    Ok(())
}
