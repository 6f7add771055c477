//! The relay: the viewer's WebSocket upgrade is repeated to the display proxy the ticket
//! names, and once the proxy has accepted it, bytes are copied both ways unchanged until
//! either side closes, the relay has been idle too long, or the gateway stops. TCP's own flow
//! control carries through: a viewer that stops reading stops the proxy's writes, which the
//! proxy handles as it does for a direct viewer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use atrium_protocol::net::{IpNet, any_contains};
use axum::body::Bytes;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes copied at a time in each direction (a TLS record's worth: about 40 KiB of buffers per
/// relay in all, with rustls' own).
const RELAY_BUFFER: usize = 16 * 1024;
/// Most bytes of a refusal body read from the display proxy.
const MAX_REFUSAL_BODY: usize = 4096;
/// Most characters of the proxy's refusal message passed on.
const MAX_REFUSAL_MESSAGE: usize = 200;

#[derive(Debug, Error)]
pub enum RelayError {
    #[error("the ticket names no display proxy")]
    NoProxy,
    #[error("the ticket's display proxy {0:?} is not a ws(s)://host:port URL")]
    BadProxy(String),
    #[error("the ticket's display proxy {0} is outside proxy_networks")]
    NotAllowed(String),
    #[error("cannot resolve the display proxy {0}")]
    Resolve(String),
    #[error("cannot reach the display proxy: {0}")]
    Connect(io::Error),
    #[error("the display proxy did not answer in time")]
    Timeout,
    #[error("the display proxy broke the upgrade: {0}")]
    Http(#[from] hyper::Error),
    #[error("the display proxy answered the upgrade without Sec-WebSocket-Accept")]
    NoAccept,
}

/// Where a ticket sends its viewer: a display proxy's host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The host as written (a name, an IPv4 address, or an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    /// `wss://`: the relay speaks TLS to the proxy, checking its certificate for `host`.
    pub tls: bool,
}

impl Backend {
    /// `ws://host[:port]` or `wss://host[:port]` with nothing after it but an optional `/`.
    /// Anything else is refused: the target comes from a signed ticket, but a node may have
    /// registered any URL.
    pub fn parse(url: &str) -> Result<Self, RelayError> {
        let bad = || RelayError::BadProxy(url.chars().take(200).collect());
        let (tls, rest) = match (url.strip_prefix("wss://"), url.strip_prefix("ws://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            (None, None) => return Err(bad()),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ', '\\']) {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (h, port)
        } else {
            let (h, p) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if h.contains(':') {
                return Err(bad());
            }
            (h, p)
        };
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !host_ok {
            return Err(bad());
        }
        Ok(Self { host: host.to_owned(), port, tls })
    }

    /// The `Host` header for this backend.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What the display proxy said to the upgrade.
#[derive(Debug)]
pub enum Answer {
    /// It accepted: the viewer gets this `Sec-WebSocket-Accept`, and bytes flow over `stream`.
    Accepted { accept: HeaderValue, stream: Upgraded },
    /// It refused: its status and its message (`{"error": ...}`, cleaned and shortened) go back
    /// to the viewer; nothing else of its answer does.
    Refused { status: StatusCode, message: String },
}

/// Everything the upgrade repeated to the display proxy carries.
#[derive(Debug)]
pub struct Upgrade<'a> {
    pub vm: &'a str,
    pub ticket: &'a str,
    pub key: &'a HeaderValue,
    pub client: std::net::IpAddr,
}

/// Connects to `backend`, whose every address must be in `allowed`, and repeats the viewer's
/// upgrade there, within `timeout`.
pub async fn open(
    backend: &Backend,
    allowed: &[IpNet],
    tls: &Arc<rustls::ClientConfig>,
    up: Upgrade<'_>,
    timeout: Duration,
) -> Result<Answer, RelayError> {
    tokio::time::timeout(timeout, open_inner(backend, allowed, tls, up))
        .await
        .map_err(|_| RelayError::Timeout)?
}

/// The addresses of `backend`, each checked against `allowed` (all of them: a name that also
/// resolves elsewhere is refused). The connection goes to these, never to the name again.
async fn resolve(backend: &Backend, allowed: &[IpNet]) -> Result<Vec<SocketAddr>, RelayError> {
    let authority = backend.authority();
    let addrs: Vec<SocketAddr> = match backend.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, backend.port)],
        Err(_) => tokio::net::lookup_host((backend.host.as_str(), backend.port))
            .await
            .map_err(|_| RelayError::Resolve(authority.clone()))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(RelayError::Resolve(authority));
    }
    if let Some(out) = addrs.iter().find(|a| !any_contains(allowed, a.ip())) {
        return Err(RelayError::NotAllowed(format!("{authority} ({})", out.ip())));
    }
    Ok(addrs)
}

async fn open_inner(
    backend: &Backend,
    allowed: &[IpNet],
    tls: &Arc<rustls::ClientConfig>,
    up: Upgrade<'_>,
) -> Result<Answer, RelayError> {
    let addrs = resolve(backend, allowed).await?;
    let tcp = TcpStream::connect(addrs.as_slice()).await.map_err(RelayError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if !backend.tls {
        return upgrade(tcp, backend, up).await;
    }
    let name = rustls::pki_types::ServerName::try_from(backend.host.clone())
        .map_err(|_| RelayError::BadProxy(backend.host.clone()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
    let stream = connector.connect(name, tcp).await.map_err(RelayError::Connect)?;
    upgrade(stream, backend, up).await
}

/// The headers of a file link's request passed to the display proxy, beside `Host` and
/// `X-Forwarded-For`. Not `Origin`: the gateway checks it against its own `allowed_origins`
/// and answers CORS itself, as it does for viewers; the body's framing is hyper's.
const LINK_REQUEST_HEADERS: [header::HeaderName; 2] =
    [header::CONTENT_TYPE, header::CONTENT_LENGTH];

/// The headers of the display proxy's answer to a file link passed back to the browser.
pub const LINK_ANSWER_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_DISPOSITION,
    header::CACHE_CONTROL,
    header::X_CONTENT_TYPE_OPTIONS,
    header::REFERRER_POLICY,
];

/// Connects to `backend` (every address in `allowed`) within `timeout`, and passes it the
/// browser's request `req` of a file link (its method, `path`, the headers that matter, its
/// body as it comes). Returns the proxy's answer, whose body streams as the proxy sends it.
pub async fn forward(
    backend: &Backend,
    allowed: &[IpNet],
    tls: &Arc<rustls::ClientConfig>,
    path: &str,
    client: IpAddr,
    req: Request<axum::body::Body>,
    timeout: Duration,
) -> Result<Response<hyper::body::Incoming>, RelayError> {
    let connect = async {
        let addrs = resolve(backend, allowed).await?;
        let tcp = TcpStream::connect(addrs.as_slice()).await.map_err(RelayError::Connect)?;
        if !backend.tls {
            return handshake(tcp).await;
        }
        let name = rustls::pki_types::ServerName::try_from(backend.host.clone())
            .map_err(|_| RelayError::BadProxy(backend.host.clone()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
        let stream = connector.connect(name, tcp).await.map_err(RelayError::Connect)?;
        handshake(stream).await
    };
    let mut sender =
        tokio::time::timeout(timeout, connect).await.map_err(|_| RelayError::Timeout)??;
    let (parts, body) = req.into_parts();
    let mut out = Request::builder()
        .method(parts.method)
        .uri(path)
        .header(header::HOST, backend.authority())
        .header("x-forwarded-for", client.to_string());
    for name in LINK_REQUEST_HEADERS {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v.clone());
        }
    }
    let out = out.body(body).map_err(|_| RelayError::BadProxy(backend.authority()))?;
    Ok(sender.send_request(out).await?)
}

/// An HTTP/1 connection to the display proxy over `io`, for one request.
async fn handshake<S>(
    io: S,
) -> Result<hyper::client::conn::http1::SendRequest<axum::body::Body>, RelayError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "display proxy connection ended");
        }
    });
    Ok(sender)
}

/// The display proxy's refusal of a request, as [`Answer::Refused`] says it.
pub async fn refusal(resp: Response<hyper::body::Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_REFUSAL_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, refusal_message(status, &body))
}

/// Repeats the viewer's upgrade to the display proxy over `io`.
async fn upgrade<S>(io: S, backend: &Backend, up: Upgrade<'_>) -> Result<Answer, RelayError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection task ends with the upgrade (or the refusal); it owns the socket until then.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "display proxy connection ended");
        }
    });
    let req = Request::get(format!(
        "/ws/{}?ticket={}",
        up.vm,
        atrium_protocol::text::query_escape(up.ticket)
    ))
    .header(header::HOST, backend.authority())
    .header(header::UPGRADE, "websocket")
    .header(header::CONNECTION, "Upgrade")
    .header(header::SEC_WEBSOCKET_VERSION, "13")
    .header(header::SEC_WEBSOCKET_KEY, up.key.clone())
    .header("x-forwarded-for", up.client.to_string())
    .body(Empty::<Bytes>::new())
    .expect("a request built from checked parts");
    let resp = sender.send_request(req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (status, message) = refusal(resp).await;
        return Ok(Answer::Refused { status, message });
    }
    let accept =
        resp.headers().get(header::SEC_WEBSOCKET_ACCEPT).cloned().ok_or(RelayError::NoAccept)?;
    let stream = hyper::upgrade::on(resp).await?;
    Ok(Answer::Accepted { accept, stream })
}

/// The display proxy's refusal as text fit for the viewer: its `error` field, printable and
/// short; else a generic sentence. A proxy is not trusted to write the viewer's page.
fn refusal_message(status: StatusCode, body: &[u8]) -> String {
    let said = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .map(|m| {
            m.chars().filter(|c| !c.is_control()).take(MAX_REFUSAL_MESSAGE).collect::<String>()
        })
        .filter(|m| !m.trim().is_empty());
    said.unwrap_or_else(|| {
        format!("the desktop's display service refused the viewer ({})", status.as_u16())
    })
}

/// The answer that switches the viewer's connection to the relay.
pub fn switching(accept: HeaderValue) -> Response<axum::body::Body> {
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}

/// Bytes relayed, for metrics.
#[derive(Debug, Default)]
pub struct Traffic {
    pub to_viewer: AtomicU64,
    pub to_proxy: AtomicU64,
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// One side closed (or failed); the other was closed with it.
    Closed,
    /// Nothing crossed for the idle timeout.
    Idle,
    /// The gateway is stopping.
    Stopped,
}

/// Copies bytes both ways between the viewer and the display proxy until one closes, the relay
/// is idle for `idle`, or `stop` fires.
pub async fn pump<V, P>(
    viewer: V,
    proxy: P,
    idle: Duration,
    traffic: &Traffic,
    stop: impl std::future::Future<Output = ()>,
) -> Ended
where
    V: AsyncRead + AsyncWrite + Unpin,
    P: AsyncRead + AsyncWrite + Unpin,
{
    let last = AtomicU64::new(0);
    let started = Instant::now();
    let mut viewer = Counted { inner: viewer, last: &last, read: &traffic.to_proxy, started };
    let mut proxy = Counted { inner: proxy, last: &last, read: &traffic.to_viewer, started };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut viewer,
        &mut proxy,
        RELAY_BUFFER,
        RELAY_BUFFER,
    );
    let idle_watch = async {
        // Wakes rarely: at the earliest moment the relay could have gone idle.
        let mut deadline = started + idle;
        loop {
            tokio::time::sleep_until(deadline).await;
            let active = started + Duration::from_millis(last.load(Ordering::Relaxed));
            if active + idle <= Instant::now() {
                return;
            }
            deadline = active + idle;
        }
    };
    tokio::select! {
        _ = copy => Ended::Closed,
        () = idle_watch => Ended::Idle,
        () = stop => Ended::Stopped,
    }
}

/// A stream that counts the bytes read from it and notes when it last carried any
/// (milliseconds after `started`).
struct Counted<'a, S> {
    inner: S,
    last: &'a AtomicU64,
    read: &'a AtomicU64,
    started: Instant,
}

impl<S> Counted<'_, S> {
    fn touch(&self, bytes: usize) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
        self.read.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.touch(n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn only_ws_and_wss_urls_name_a_backend() {
        let ok = |u: &str, host: &str, port: u16| {
            let tls = u.starts_with("wss://");
            assert_eq!(Backend::parse(u).unwrap(), Backend { host: host.into(), port, tls }, "{u}");
        };
        ok("ws://10.0.0.5:8090", "10.0.0.5", 8090);
        ok("ws://node-1.atrium.internal:8090/", "node-1.atrium.internal", 8090);
        ok("ws://node-1", "node-1", 80);
        ok("ws://[fd00::5]:8090", "fd00::5", 8090);
        ok("wss://node-1.atrium.internal:8090", "node-1.atrium.internal", 8090);
        ok("wss://node-1", "node-1", 443);
        assert_eq!(Backend::parse("ws://[fd00::5]:8090").unwrap().authority(), "[fd00::5]:8090");
        for bad in [
            "",
            "http://10.0.0.5:8090",
            "https://10.0.0.5:8090",
            "ws://",
            "wss://",
            "wss://10.0.0.5:8090/x",
            "ws://10.0.0.5:8090/ws/other",
            "ws://user@10.0.0.5:8090",
            "ws://10.0.0.5:0",
            "ws://10.0.0.5:99999",
            "ws://10.0.0.5:+80",
            "ws://10.0.0.5:8090?x=1",
            "ws://[nonsense]:80",
            "ws://a b:80",
            "ws://evil\\@host",
            "ws://[::1]x",
            "ws://[::1]:80x",
            "ws://a:b:80",
        ] {
            assert!(Backend::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_proxy_refusal_reaches_the_viewer_as_a_short_clean_message() {
        let s = StatusCode::UNAUTHORIZED;
        assert_eq!(
            refusal_message(s, br#"{"error":"the ticket was already used"}"#),
            "the ticket was already used"
        );
        let long = format!(r#"{{"error":"{}\u0007"}}"#, "x".repeat(500));
        assert_eq!(refusal_message(s, long.as_bytes()).len(), MAX_REFUSAL_MESSAGE);
        assert!(refusal_message(s, b"<html>page</html>").contains("refused the viewer (401)"));
    }

    #[tokio::test]
    async fn only_proxies_inside_the_allowed_networks_are_reached() {
        let private: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let b = |u: &str| Backend::parse(u).unwrap();
        assert!(resolve(&b("ws://10.1.2.3:8090"), &private).await.is_ok());
        for out in [
            "ws://127.0.0.1:5432",
            "ws://169.254.169.254",
            "ws://localhost:8090",
            "ws://[::1]:8090",
        ] {
            assert!(
                matches!(resolve(&b(out), &private).await, Err(RelayError::NotAllowed(_))),
                "{out} was allowed"
            );
        }
        let loopback: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(resolve(&b("ws://127.0.0.1:8090"), &loopback).await.is_ok());
    }

    #[tokio::test]
    async fn the_pump_copies_both_ways_and_counts() {
        let (viewer_end, mut viewer) = tokio::io::duplex(1024);
        let (proxy_end, mut proxy) = tokio::io::duplex(1024);
        let traffic = Traffic::default();
        let relay =
            pump(viewer_end, proxy_end, Duration::from_secs(60), &traffic, std::future::pending());
        let talk = async {
            viewer.write_all(b"key").await.unwrap();
            let mut b = [0u8; 3];
            proxy.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"key");
            proxy.write_all(b"pixels!").await.unwrap();
            let mut b = [0u8; 7];
            viewer.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"pixels!");
            drop(proxy);
            // The proxy closing closes the viewer's side too.
            let mut rest = Vec::new();
            viewer.read_to_end(&mut rest).await.unwrap();
            drop(viewer);
        };
        let (ended, ()) = tokio::join!(relay, talk);
        assert_eq!(ended, Ended::Closed);
        assert_eq!(traffic.to_proxy.load(Ordering::Relaxed), 3);
        assert_eq!(traffic.to_viewer.load(Ordering::Relaxed), 7);
    }

    #[tokio::test]
    async fn an_idle_relay_is_closed_and_a_busy_one_is_not() {
        let (viewer_end, mut viewer) = tokio::io::duplex(1024);
        let (proxy_end, mut proxy) = tokio::io::duplex(1024);
        let traffic = Traffic::default();
        let idle = Duration::from_secs(2);
        let relay = pump(viewer_end, proxy_end, idle, &traffic, std::future::pending());
        let talk = async {
            // A byte every 0.2 s keeps it open well past the idle time...
            for _ in 0..15 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                viewer.write_all(b"k").await.unwrap();
                let mut b = [0u8; 1];
                proxy.read_exact(&mut b).await.unwrap();
            }
            Instant::now()
        };
        tokio::pin!(relay);
        let busy_until = tokio::select! {
            e = &mut relay => panic!("the relay ended while busy: {e:?}"),
            t = talk => t,
        };
        // ...then silence ends it, no sooner than the idle time after the last byte.
        assert_eq!(relay.await, Ended::Idle);
        assert!(busy_until.elapsed() >= idle);
        assert_eq!(traffic.to_proxy.load(Ordering::Relaxed), 15);
    }

    #[tokio::test]
    async fn stopping_ends_the_relay() {
        let (viewer_end, _viewer) = tokio::io::duplex(64);
        let (proxy_end, _proxy) = tokio::io::duplex(64);
        let traffic = Traffic::default();
        let ended = pump(viewer_end, proxy_end, Duration::from_secs(60), &traffic, async {}).await;
        assert_eq!(ended, Ended::Stopped);
    }
}
