//! The HTTP server: the router on hyper's HTTP/1 connections, with a time limit on reading
//! each request's headers (a client sending them a byte at a time cannot hold connections
//! open), the peer address for every request, and a graceful stop.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long requests in flight may take to finish once the server stops.
const DRAIN_WITHIN: Duration = Duration::from_secs(10);

/// Which listener a request came in on (a request extension): the internal one serves what
/// monitoring needs and the public one does not show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Internal,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish (for at most [`DRAIN_WITHIN`]). Each request carries `which` as an extension.
pub async fn serve(
    listener: TcpListener,
    which: Listener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
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
        let _ = stream.set_nodelay(true);
        let svc = app.clone().map_request(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(which);
            req
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
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
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN_WITHIN, async { while conns.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        tracing::warn!(left = conns.len(), "connections still open at shutdown were dropped");
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn start(header_timeout: Duration) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(p): ConnectInfo<SocketAddr>| async move { p.ip().to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, Listener::Public, app, header_timeout, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    #[tokio::test]
    async fn requests_see_their_peer() {
        let (addr, _stop) = start(Duration::from_secs(30)).await;
        let body = reqwest::get(format!("http://{addr}/peer")).await.unwrap().text().await.unwrap();
        assert_eq!(body, "127.0.0.1");
    }

    #[tokio::test]
    async fn headers_sent_too_slowly_close_the_connection() {
        let (addr, _stop) = start(Duration::from_secs(1)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nHo").await.unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        // A client that would trickle the rest: the server answers (408 or nothing) and
        // closes, long before this test's own limit.
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection stayed open for {:?}", start.elapsed());
    }

    #[tokio::test]
    async fn stopping_lets_the_listener_go() {
        let (addr, stop) = start(Duration::from_secs(30)).await;
        stop.send(()).unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "still accepting after the stop");
    }
}
