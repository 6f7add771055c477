//! The door of Atrium's HTTP services (broker, display proxy, gateway): one accept loop for
//! all, so none can be held open. At most `max_connections` connections at once (a gateway's
//! relays count too), at most `max_per_address` from one address that is not a trusted proxy
//! (an IPv6 host counts by its /64), a deadline for the TLS handshake (when there is TLS) and
//! another for the request's headers, a bounded request head, HTTP/1.1 with upgrades, and a
//! graceful stop. Each request carries its peer as `ConnectInfo<SocketAddr>`.

pub mod client;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrium_protocol::net::{IpNet, any_contains, limit_key};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::tls::TlsFiles;

/// The smallest request head a door may be given (hyper's minimum buffer).
pub const MIN_HEAD: usize = 8 * 1024;

/// What the door lets in.
#[derive(Debug, Clone)]
pub struct DoorLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Peers exempt from `max_per_address` (proxies that carry many clients).
    pub trusted: Vec<IpNet>,
    /// For the TLS handshake, and again for the request's headers.
    pub header_timeout: Duration,
    /// The largest request head (request line and headers) read, in bytes; at least
    /// [`MIN_HEAD`].
    pub max_head: usize,
    /// How long requests in flight (connections that have not upgraded) get to finish once
    /// the door closes.
    pub drain_within: Duration,
}

/// What the door counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct DoorStats {
    /// Connections open now.
    pub connections: AtomicI64,
    /// Connections closed at once: `max_connections` or `max_per_address` reached.
    pub refused: AtomicU64,
    pub tls_failures: AtomicU64,
}

impl DoorStats {
    /// The Prometheus text of these counters, named `{prefix}_...`.
    pub fn render(&self, prefix: &str) -> String {
        format!(
            "# HELP {prefix}_connections Connections open.\n# TYPE {prefix}_connections gauge\n{prefix}_connections {}\n\
             # HELP {prefix}_connections_refused_at_door_total Connections closed at once: too many open, in all or from one address.\n\
             # TYPE {prefix}_connections_refused_at_door_total counter\n{prefix}_connections_refused_at_door_total {}\n",
            self.connections.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// A door: its limits, its places, its TLS (if any).
#[derive(Debug)]
pub struct Door {
    limits: DoorLimits,
    permits: Arc<Semaphore>,
    per_address: Arc<AddressSlots>,
    tls: Option<TlsFiles>,
    pub stats: DoorStats,
}

impl Door {
    pub fn new(limits: DoorLimits, tls: Option<TlsFiles>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_address: Arc::new(AddressSlots::new(limits.max_per_address)),
            tls,
            limits,
            stats: DoorStats::default(),
        }
    }

    /// A place among the `max_connections`, for one more thing held open (a relay).
    pub fn permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// The peers counted as proxies (exempt from `max_per_address`): whose forwarded client
    /// addresses a service may believe.
    pub fn trusted(&self) -> &[IpNet] {
        &self.limits.trusted
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// A connection's place for `peer`: none needed for a trusted proxy.
    fn admit(&self, peer: IpAddr) -> Option<(OwnedSemaphorePermit, Option<Slot>)> {
        let permit = self.permit()?;
        if any_contains(&self.limits.trusted, peer) {
            return Some((permit, None));
        }
        let slot = self.per_address.take(peer)?;
        Some((permit, Some(slot)))
    }
}

/// Places per address, bounded. An IPv6 address counts by its /64.
#[derive(Debug)]
pub struct AddressSlots {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One place of one address in an [`AddressSlots`]; released on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<AddressSlots>,
    addr: IpAddr,
}

impl AddressSlots {
    pub fn new(max: usize) -> Self {
        Self { max, open: Mutex::new(HashMap::new()) }
    }

    /// A place for `addr`, or `None` when it has `max` already.
    pub fn take(self: &Arc<Self>, addr: IpAddr) -> Option<Slot> {
        let addr = limit_key(addr);
        let mut open = self.open.lock().expect("slots lock");
        let n = open.entry(addr).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { slots: Arc::clone(self), addr })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slots lock");
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// How often a door's TLS files are checked for a change.
const TLS_CHECK: Duration = Duration::from_secs(60);

/// Keeps `door`'s certificate fresh until the task is dropped: read again on SIGHUP, and when
/// its files change (checked every minute: a Kubernetes Secret updated in place). A reload that
/// fails is logged and the certificate in use stays. Returns at once for a door without TLS.
pub async fn keep_tls_fresh(door: Arc<Door>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Some(tls) = door.tls() else { return };
    let mut hup = signal(SignalKind::hangup()).ok();
    if hup.is_none() {
        tracing::warn!("cannot listen for SIGHUP; the TLS files reload when they change");
    }
    let mut tick = tokio::time::interval(TLS_CHECK);
    tick.tick().await;
    loop {
        let forced = tokio::select! {
            Some(()) = async { hup.as_mut()?.recv().await } => true,
            _ = tick.tick() => false,
        };
        let result = if forced { tls.reload().map(|()| true) } else { tls.reload_if_changed() };
        match result {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload refused; the one in use stays");
            }
        }
    }
}

/// Completes at the first SIGTERM (an orchestrator stopping the service) or SIGINT.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
}

/// Serves `app` on `listener` through `door` until `shutdown` completes; then stops accepting,
/// calls `on_close` (a gateway ends its relays there) and lets requests in flight finish (for
/// at most `drain_within`).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    door: Arc<Door>,
    shutdown: impl Future<Output = ()>,
    on_close: impl FnOnce(),
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(place) = door.admit(peer.ip()) else {
            door.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer, "connection refused: too many open, in all or from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let door = Arc::clone(&door);
        let stop = stop_rx.clone();
        conns.spawn(async move {
            let _place = place;
            door.stats.connections.fetch_add(1, Ordering::Relaxed);
            let deadline = door.limits.header_timeout;
            let head = door.limits.max_head.max(MIN_HEAD);
            match door.tls() {
                None => connection(stream, peer, app, deadline, head, stop).await,
                Some(tls) => {
                    match tokio::time::timeout(deadline, tls.acceptor().accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            connection(tls_stream, peer, app, deadline, head, stop).await;
                        }
                        Ok(Err(e)) => {
                            door.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            door.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            door.stats.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    on_close();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(door.limits.drain_within, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(left = conns.len(), "connections still open at shutdown were dropped");
    }
}

/// One client connection: HTTP/1.1 with upgrades until it closes or the door closes.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    app: axum::Router,
    header_timeout: Duration,
    max_head: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = app.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(max_head);
    let conn =
        http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "connection ended");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests;
