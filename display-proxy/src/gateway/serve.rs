//! The accept loop: at most `max_connections` client connections at once (relays included),
//! a deadline for the TLS handshake and another for the request headers, HTTP/1.1 with
//! upgrades, and a graceful stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::Gateway;
use super::metrics::Refusal;
use super::routes::router;

/// The largest request head read (hyper's minimum; a ticket is at most 8 KiB).
const MAX_REQUEST: usize = 16 * 1024;

/// How long connections that have not upgraded get to finish once the gateway stops.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// Serves on `listener` until `shutdown` completes; then stops accepting, ends the relays and
/// lets plain requests in flight finish (for at most [`DRAIN_WITHIN`]).
pub async fn serve(listener: TcpListener, gateway: Gateway, shutdown: impl Future<Output = ()>) {
    let app = router(gateway.clone());
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
        let Ok(permit) = gateway.connection_permit() else {
            gateway.metrics().refuse(Refusal::Limit);
            tracing::warn!(peer = %peer, "connection refused: max_connections reached");
            continue;
        };
        let Some(slot) = gateway.take_connection_slot(peer.ip()) else {
            gateway.metrics().refuse(Refusal::Limit);
            tracing::warn!(peer = %peer, "connection refused: max_connections_per_address reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let gw = gateway.clone();
        let stop = stop_rx.clone();
        conns.spawn(async move {
            let (_permit, _slot) = (permit, slot);
            gw.metrics().connections.fetch_add(1, Ordering::Relaxed);
            let deadline = gw.config().header_timeout();
            match &gw.0.tls {
                None => connection(stream, peer, app, deadline, stop).await,
                Some(tls) => match tokio::time::timeout(deadline, tls.acceptor().accept(stream))
                    .await
                {
                    Ok(Ok(tls_stream)) => connection(tls_stream, peer, app, deadline, stop).await,
                    Ok(Err(e)) => {
                        gw.metrics().tls_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        gw.metrics().tls_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %peer, "TLS handshake timed out");
                    }
                },
            }
            gw.metrics().connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    gateway.stop_relays();
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN_WITHIN, async { while conns.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        tracing::warn!(left = conns.len(), "connections still open at shutdown were dropped");
    }
}

/// One client connection: HTTP/1.1 with upgrades until it closes or the gateway stops.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = app.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // A viewer's request is headers and a ticket: hyper's smallest read buffer holds it.
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_REQUEST);
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
