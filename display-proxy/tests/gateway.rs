//! The gateway over real sockets: a real display proxy with a synthetic desktop behind it,
//! tickets from an in-test JWKS server, WebSocket viewers over plain TCP and over TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use atrium_protocol::display::ServerMessage;
use atrium_protocol::ticket::{Capabilities, DisplayClaims};
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use atrium_display::config::DisplayConfig;
use atrium_display::files::links::{Way, token_hex};
use atrium_display::files::upload::Piece;
use atrium_display::gateway::config::GatewayConfig;
use atrium_display::gateway::metrics::Refusal;
use atrium_display::gateway::{Gateway, serve};
use atrium_display::http::{AppState, router as proxy_router};
use atrium_display::source::open::SourceOpener;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticOpener};

const ORIGIN: &str = "https://desk.example";

struct Harness {
    issuer: TicketIssuer,
    jwks: JwksServer,
    proxy: SocketAddr,
    proxy_state: AppState,
    gateway: Gateway,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The gateway's self-signed certificate, when it serves TLS.
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

async fn proxy(jwks: &JwksServer) -> (SocketAddr, AppState) {
    let cfg =
        DisplayConfig { broker_url: jwks.url(), encode_threads: 1, ..DisplayConfig::default() };
    let screen = SyntheticConfig { width: 160, height: 96, fps: 10, photo: false, ticks: None };
    let opener = Arc::new(SyntheticOpener::new(screen));
    let state = AppState::with_opener(&cfg, opener as Arc<dyn SourceOpener>, None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = proxy_router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

async fn harness(tls: bool, tune: impl FnOnce(&mut GatewayConfig)) -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = TicketIssuer::generate("k1");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await.unwrap();
    let (proxy, proxy_state) = proxy(&jwks).await;
    let dir = std::env::temp_dir().join(format!("atrium-gw-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = GatewayConfig {
        broker_url: jwks.url(),
        plain_http_loopback: true,
        allowed_origins: vec![ORIGIN.into()],
        plain_http: !tls,
        // The test's display proxies are on loopback.
        proxy_networks: vec!["127.0.0.0/8".into()],
        ..GatewayConfig::default()
    };
    let mut cert = None;
    if tls {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
        cfg.tls_cert = Some(dir.join("tls.crt"));
        cfg.tls_key = Some(dir.join("tls.key"));
        cert = Some(ck.cert.der().clone());
    }
    tune(&mut cfg);
    cfg.validate().unwrap();
    let gateway = Gateway::new(cfg).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    gateway.warm_up().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, gateway.clone(), async {
        let _ = stopped.await;
    }));
    Harness { issuer, jwks, proxy, proxy_state, gateway, addr, stop: Some(stop), cert }
}

/// A viewer's socket: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

impl Harness {
    fn claims(&self, vm: &str) -> DisplayClaims {
        let mut c = TicketIssuer::claims(vm, Capabilities::default(), 30);
        c.proxy = Some(format!("ws://{}", self.proxy));
        c
    }

    fn ticket(&self, vm: &str) -> String {
        self.issuer.sign(&self.claims(vm))
    }

    fn request(
        &self,
        vm: &str,
        ticket: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let scheme = if self.cert.is_some() { "wss" } else { "ws" };
        let mut req = format!("{scheme}://localhost:{}/ws/{vm}?ticket={ticket}", self.addr.port())
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", ORIGIN.parse().unwrap());
        req
    }

    async fn connect(&self, vm: &str, ticket: &str) -> Result<Ws, WsError> {
        self.connect_req(self.request(vm, ticket)).await
    }

    async fn connect_req(
        &self,
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Ws, WsError> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let io: Box<dyn Io> = match &self.cert {
            None => Box::new(tcp),
            Some(cert) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(cert.clone()).unwrap();
                let cfg = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(name, tcp)
                    .await
                    .unwrap();
                Box::new(tls)
            }
        };
        tokio_tungstenite::client_async(req, io).await.map(|(ws, _)| ws)
    }

    fn proxy_refused(&self) -> u64 {
        self.proxy_state.metrics().connections_refused.load(Ordering::Relaxed)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn status(e: WsError) -> u16 {
    match e {
        WsError::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// The first display message: the proxy's Hello, relayed.
async fn hello(ws: &mut Ws) -> (u16, u16) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("the relay is open")
            .expect("a valid message");
        if let Message::Binary(b) = m
            && let ServerMessage::Hello { width, height, .. } = ServerMessage::decode(&b).unwrap()
        {
            return (width, height);
        }
    }
}

#[tokio::test]
async fn a_valid_ticket_is_relayed_to_the_proxy_it_names_and_spent_there() {
    let h = harness(false, |_| {}).await;
    let t = h.ticket("vm-1");
    let mut ws = h.connect("vm-1", &t).await.unwrap();
    assert_eq!(hello(&mut ws).await, (160, 96));
    assert_eq!(h.gateway.metrics().relays.load(Ordering::Relaxed), 1);
    // The gateway keeps no state; the proxy behind it spends the ticket.
    assert_eq!(status(h.connect("vm-1", &t).await.unwrap_err()), 401);
    assert_eq!(h.proxy_refused(), 1);
    assert_eq!(h.gateway.metrics().refused(Refusal::Proxy), 1);
    drop(ws);
    // The relay ends with its viewer.
    wait_until(|| h.gateway.metrics().relays.load(Ordering::Relaxed) == 0).await;
    assert!(h.gateway.metrics().traffic.to_viewer.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn a_file_link_reaches_the_proxy_of_a_relayed_viewer_and_nothing_else() {
    let h = harness(false, |_| {}).await;
    let links = h.proxy_state.links();
    let get = |vm: &str, token: &str| reqwest::get(format!("http://{}/files/{vm}/{token}", h.addr));
    let download = |name: &str, size| Way::Download { name: name.into(), size };
    let (offer, feed) = links.offer("vm-1", download("Bericht 1.txt", 5)).unwrap();
    let token = token_hex(&offer.token);
    // No viewer of vm-1 is relayed here: the gateway does not know where to go, and answers as
    // for a wrong token (which desktops have viewers is not told).
    let r = get("vm-1", &token).await.unwrap();
    assert_eq!(r.status(), 404);
    let no_viewer = r.text().await.unwrap();

    let t = h.ticket("vm-1");
    let mut ws = h.connect("vm-1", &t).await.unwrap();
    hello(&mut ws).await;
    assert_eq!(get("vm-1", "not-a-token").await.unwrap().status(), 404);
    tokio::spawn(async move {
        let mut offer = offer;
        offer.fetched().await;
        for piece in [&b"hel"[..], b"lo"] {
            feed.tx.send(Ok(axum::body::Bytes::from_static(piece))).await.unwrap();
        }
    });
    let r = get("vm-1", &token).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-disposition"], "attachment; filename*=UTF-8''Bericht%201.txt");
    assert_eq!(r.headers()["content-length"], "5");
    assert_eq!(r.bytes().await.unwrap(), &b"hello"[..]);
    // Served once: the proxy's 404 comes back through the gateway, as the gateway's own answer
    // for a desktop without a viewer here (so nothing tells the two apart).
    let again = get("vm-1", &token).await.unwrap();
    assert_eq!(again.status(), 404);
    let used = again.text().await.unwrap();
    assert!(used.contains("used once"));
    assert_eq!(used, no_viewer, "a link used and a desktop without viewers answer alike");

    // A link that ends short of its length fails in the browser, through the gateway too.
    let (offer, feed) = links.offer("vm-1", download("kurz.bin", 10)).unwrap();
    let token = token_hex(&offer.token);
    tokio::spawn(async move {
        let mut offer = offer;
        offer.fetched().await;
        feed.tx.send(Ok(axum::body::Bytes::from_static(b"abc"))).await.unwrap();
    });
    // The head may go out before the error, or not at all: the download fails either way.
    let failed = match get("vm-1", &token).await {
        Ok(r) => r.status() == 200 && r.bytes().await.is_err(),
        Err(e) => e.is_request(),
    };
    assert!(failed, "the response stops short, as an error");

    // An upload's PUT streams through to the proxy, which passes the body on in chunks.
    let (into, mut chunks) = tokio::sync::mpsc::channel(8);
    let (offer, _) = links.offer("vm-1", Way::Upload { size: 6, into }).unwrap();
    let url = format!("http://{}/files/vm-1/{}", h.addr, token_hex(&offer.token));
    let http = reqwest::Client::new();
    // The page's origin is the gateway's to check; its preflight is answered here.
    let pre = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .send()
    };
    let ok = pre(ORIGIN).await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(pre("https://evil.example").await.unwrap().status(), 403);
    let evil = http.put(&url).header("origin", "https://evil.example").body("abcdef");
    assert_eq!(evil.send().await.unwrap().status(), 403, "refused before the proxy");
    assert_eq!(http.head(&url).send().await.unwrap().status(), 405, "HEAD takes no link");
    let put = http.put(&url).header("origin", ORIGIN).body("abcdef").send().await.unwrap();
    assert_eq!(put.status(), 204);
    assert_eq!(put.headers()["access-control-allow-origin"], ORIGIN);
    let mut got = Vec::new();
    while let Ok(Piece::Data(b)) = chunks.try_recv() {
        got.extend_from_slice(&b);
    }
    assert_eq!(got, b"abcdef");
    assert_eq!(http.put(&url).body("x").send().await.unwrap().status(), 404, "used once");

    // Once its viewer left, the desktop's links are not followed.
    drop(ws);
    wait_until(|| h.gateway.metrics().relays.load(Ordering::Relaxed) == 0).await;
    let (offer, _) = links.offer("vm-1", download("spät.txt", 1)).unwrap();
    let token = token_hex(&offer.token);
    assert_eq!(get("vm-1", &token).await.unwrap().status(), 404);
    assert_eq!(links.open(), 1, "the proxy never saw it");
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached in 5 s");
}

/// A listener that counts the connections it accepts: a display proxy that must see none.
async fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = Arc::clone(&n);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, n)
}

#[tokio::test]
async fn bad_tickets_stop_at_the_gateway_and_the_node_sees_nothing() {
    let h = harness(false, |_| {}).await;
    let (backend, accepted) = counting_backend().await;
    let aim = |mut c: DisplayClaims| {
        c.proxy = Some(format!("ws://{backend}"));
        c
    };
    let forger = TicketIssuer::generate("k1"); // same key id, another key
    let mut expired = aim(h.claims("vm-1"));
    expired.iat -= 120;
    expired.nbf -= 120;
    expired.exp -= 100;
    let mut audience = aim(h.claims("vm-1"));
    audience.aud = "atrium-broker".into();
    let mut no_proxy = h.claims("vm-1");
    no_proxy.proxy = None;
    let mut bad_proxy = h.claims("vm-1");
    bad_proxy.proxy = Some(format!("http://{backend}/admin"));
    let cases = [
        ("forged", forger.sign(&aim(h.claims("vm-1"))), "vm-1", 401),
        ("expired", h.issuer.sign(&expired), "vm-1", 401),
        ("audience", h.issuer.sign(&audience), "vm-1", 401),
        ("none", String::new(), "vm-1", 401),
        ("garbage", "a.b.c".into(), "vm-1", 401),
        ("other vm", h.issuer.sign(&aim(h.claims("vm-2"))), "vm-1", 403),
        ("no proxy", h.issuer.sign(&no_proxy), "vm-1", 403),
        ("bad proxy", h.issuer.sign(&bad_proxy), "vm-1", 403),
    ];
    let n = cases.len() as u64;
    for (what, ticket, vm, want) in cases {
        assert_eq!(status(h.connect(vm, &ticket).await.unwrap_err()), want, "{what}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a refused viewer reached the node network");
    assert_eq!(h.gateway.metrics().refused(Refusal::Ticket), n);
    // The URL cannot choose the target: a valid ticket goes where it says, whatever the path.
    let good = h.issuer.sign(&aim(h.claims("vm-1")));
    let _ = h.connect("vm-1", &good).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requests_that_are_not_viewers_are_refused() {
    let h = harness(false, |_| {}).await;
    let t = h.ticket("vm-1");
    let mut other_origin = h.request("vm-1", &t);
    other_origin.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(status(h.connect_req(other_origin).await.unwrap_err()), 403);
    assert_eq!(status(h.connect("bad%2Fid", &t).await.unwrap_err()), 400);
    let plain = reqwest::get(format!("http://{}/ws/vm-1?ticket={t}", h.addr)).await.unwrap();
    assert_eq!(plain.status(), 400, "a GET that is not an upgrade");
    // None of that spent the ticket.
    let mut ws = h.connect("vm-1", &t).await.unwrap();
    hello(&mut ws).await;
    assert_eq!(h.gateway.metrics().refused(Refusal::Request), 3);
}

#[tokio::test]
async fn relays_per_address_are_limited_and_released() {
    let h = harness(false, |c| c.max_relays_per_address = 2).await;
    let mut a = h.connect("vm-1", &h.ticket("vm-1")).await.unwrap();
    let mut b = h.connect("vm-2", &h.ticket("vm-2")).await.unwrap();
    hello(&mut a).await;
    hello(&mut b).await;
    let third = h.ticket("vm-3");
    assert_eq!(status(h.connect("vm-3", &third).await.unwrap_err()), 429);
    drop(a);
    wait_until(|| h.gateway.metrics().relays.load(Ordering::Relaxed) == 1).await;
    let mut c = h.connect("vm-3", &third).await.unwrap();
    hello(&mut c).await;
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_trusted_proxies() {
    let h = harness(false, |c| {
        c.max_relays_per_address = 1;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let with_xff = |vm: &str, xff: &str| {
        let mut r = h.request(vm, &h.ticket(vm));
        r.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    // Two clients behind the same trusted proxy each get their own limit.
    let mut a = h.connect_req(with_xff("vm-1", "203.0.113.1")).await.unwrap();
    let mut b = h.connect_req(with_xff("vm-2", "203.0.113.2")).await.unwrap();
    hello(&mut a).await;
    hello(&mut b).await;
    assert_eq!(status(h.connect_req(with_xff("vm-3", "203.0.113.1")).await.unwrap_err()), 429);
}

#[tokio::test]
async fn connections_per_address_are_limited_but_not_for_trusted_proxies() {
    let h = harness(false, |c| c.max_connections_per_address = 2).await;
    let (a, b) =
        (TcpStream::connect(h.addr).await.unwrap(), TcpStream::connect(h.addr).await.unwrap());
    wait_until(|| h.gateway.door().stats.connections.load(Ordering::Relaxed) == 2).await;
    // A third from the same address is closed at once, before any HTTP.
    let mut third = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut third, &mut buf),
    )
    .await
    .expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(h.gateway.door().stats.refused.load(Ordering::Relaxed), 1);
    drop((a, b));
    // From a trusted proxy (the edge carries many clients), no such limit.
    let edge = harness(false, |c| {
        c.max_connections_per_address = 1;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(edge.addr).await.unwrap());
    }
    wait_until(|| edge.gateway.door().stats.connections.load(Ordering::Relaxed) == 3).await;
}

#[tokio::test]
async fn a_proxy_outside_the_display_network_is_never_reached() {
    let h = harness(false, |c| c.proxy_networks = vec!["10.0.0.0/8".into()]).await;
    let (backend, accepted) = counting_backend().await;
    let mut c = h.claims("vm-1");
    c.proxy = Some(format!("ws://{backend}"));
    assert_eq!(status(h.connect("vm-1", &h.issuer.sign(&c)).await.unwrap_err()), 403);
    c = h.claims("vm-1");
    c.proxy = Some(format!("ws://localhost:{}", backend.port()));
    assert_eq!(status(h.connect("vm-1", &h.issuer.sign(&c)).await.unwrap_err()), 403);
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_unreachable_proxy_is_a_clear_502() {
    let h = harness(false, |c| c.connect_timeout_secs = 2).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut c = h.claims("vm-1");
    c.proxy = Some(format!("ws://{dead}"));
    assert_eq!(status(h.connect("vm-1", &h.issuer.sign(&c)).await.unwrap_err()), 502);
    // A proxy that accepts and never answers: 504 within the connect timeout.
    let silent = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        a
    };
    c = h.claims("vm-1");
    c.proxy = Some(format!("ws://{silent}"));
    let started = std::time::Instant::now();
    assert_eq!(status(h.connect("vm-1", &h.issuer.sign(&c)).await.unwrap_err()), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn tls_viewers_are_relayed_and_plain_http_gets_nothing() {
    let h = harness(true, |_| {}).await;
    let mut ws = h.connect("vm-1", &h.ticket("vm-1")).await.unwrap();
    assert_eq!(hello(&mut ws).await, (160, 96));
    // A plain-text client gets no HTTP out of a TLS port.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", h.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err());
    wait_until(|| h.gateway.door().stats.tls_failures.load(Ordering::Relaxed) == 1).await;
}

#[tokio::test]
async fn readiness_follows_the_keys_and_the_drain() {
    let h = harness(false, |_| {}).await;
    let ready = || async {
        reqwest::get(format!("http://{}/readyz", h.addr)).await.unwrap().status().as_u16()
    };
    assert_eq!(ready().await, 200);
    h.gateway.start_draining();
    assert_eq!(ready().await, 503);

    // A gateway that has never reached the broker is not ready, and becomes ready once the
    // broker answers.
    let down = JwksServer::start("not json".into()).await.unwrap();
    let h2 = harness(false, |c| c.broker_url = down.url()).await;
    let ready2 = || async {
        reqwest::get(format!("http://{}/readyz", h2.addr)).await.unwrap().status().as_u16()
    };
    assert_eq!(ready2().await, 503);
    down.set(TicketIssuer::jwks(&[&h2.issuer])).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ready2().await, 200);
    let metrics =
        reqwest::get(format!("http://{}/metrics", h.addr)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("atrium_gateway_relays 0"), "{metrics}");
    assert!(metrics.contains("atrium_gateway_refused_total{reason=\"ticket\"} 0"), "{metrics}");
    let _ = &h.jwks;
}

#[tokio::test]
async fn stopping_the_gateway_ends_its_relays() {
    let mut h = harness(false, |_| {}).await;
    let mut ws = h.connect("vm-1", &h.ticket("vm-1")).await.unwrap();
    hello(&mut ws).await;
    h.stop.take().unwrap().send(()).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the relay outlived the gateway");
}

/// A display proxy serving `wss://` (its certificate from the CA in the gateway's `ca_file`) is
/// relayed to over TLS; a gateway that does not trust its certificate reaches nothing.
#[tokio::test]
async fn a_wss_proxy_is_relayed_over_tls_checked_against_the_ca() {
    let dir = std::env::temp_dir().join(format!("atrium-gw-wss-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("proxy.crt"), dir.join("proxy.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let ca = cert.clone();
    let h = harness(false, |c| c.ca_file = Some(ca)).await;
    // The same proxy state behind a TLS door.
    let tls = atrium_door::tls::TlsFiles::load(&cert, &key).unwrap();
    let door = Arc::new(atrium_door::Door::new(
        atrium_display::config::DisplayConfig::default().door_limits(),
        Some(tls),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wss = listener.local_addr().unwrap();
    let app = proxy_router(h.proxy_state.clone());
    tokio::spawn(atrium_door::serve(listener, app, door, std::future::pending(), || {}));
    let ticket_for = |h: &Harness| {
        let mut c = h.claims("vm-1");
        c.proxy = Some(format!("wss://{wss}"));
        h.issuer.sign(&c)
    };
    let mut ws = h.connect("vm-1", &ticket_for(&h)).await.unwrap();
    assert_eq!(hello(&mut ws).await, (160, 96));
    drop(ws);

    // A gateway with the system's roots does not trust the proxy's certificate.
    let untrusting = harness(false, |_| {}).await;
    let mut c = untrusting.claims("vm-1");
    c.proxy = Some(format!("wss://{wss}"));
    let refused = untrusting.connect("vm-1", &untrusting.issuer.sign(&c)).await.unwrap_err();
    assert_eq!(status(refused), 502);
    std::fs::remove_dir_all(dir).unwrap();
}
