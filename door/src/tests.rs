use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn limits() -> DoorLimits {
    DoorLimits {
        max_connections: 64,
        max_per_address: 16,
        trusted: Vec::new(),
        header_timeout: Duration::from_secs(30),
        max_head: MIN_HEAD,
        drain_within: Duration::from_secs(5),
    }
}

struct Served {
    addr: SocketAddr,
    door: Arc<Door>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(limits: DoorLimits) -> Served {
    crate::client::install_default_provider();
    let app = Router::new()
        .route(
            "/peer",
            get(|ConnectInfo(p): ConnectInfo<SocketAddr>| async move { p.ip().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "finished"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let door = Arc::new(Door::new(limits, None));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(serve(
        listener,
        app,
        Arc::clone(&door),
        async {
            let _ = rx.await;
        },
        || {},
    ));
    Served { addr, door, stop: Some(tx), done }
}

/// Reads until the server closes the connection; false when it is still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn open_connections(door: &Door, n: i64) {
    for _ in 0..250 {
        if door.stats.connections.load(Ordering::Relaxed) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} connections never open: {}", door.stats.connections.load(Ordering::Relaxed));
}

#[tokio::test]
async fn requests_see_their_peer() {
    let s = start(limits()).await;
    let body = reqwest::get(format!("http://{}/peer", s.addr)).await.unwrap().text().await.unwrap();
    assert_eq!(body, "127.0.0.1");
}

#[tokio::test]
async fn headers_sent_too_slowly_close_the_connection() {
    let s = start(DoorLimits { header_timeout: Duration::from_secs(1), ..limits() }).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /peer HTTP/1.1\r\nHo").await.unwrap();
    let start = Instant::now();
    // A client that would trickle the rest: the server answers (408 or nothing) and closes,
    // long before this test's own limit.
    assert!(
        closed_within(&mut c, Duration::from_secs(20)).await,
        "open after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_refused() {
    let s = start(limits()).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/peer", s.addr);
    let ok = client.get(&url).header("x-pad", "a".repeat(MIN_HEAD / 2)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let big = client.get(&url).header("x-pad", "a".repeat(MIN_HEAD * 2)).send().await;
    // hyper answers 431, or closes before the client has sent it all.
    if let Ok(r) = big {
        assert_eq!(r.status(), 431);
    }
    // The server is none the worse.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn connections_per_address_are_limited_and_released() {
    let s = start(DoorLimits { max_per_address: 3, ..limits() }).await;
    let held = vec![
        TcpStream::connect(s.addr).await.unwrap(),
        TcpStream::connect(s.addr).await.unwrap(),
        TcpStream::connect(s.addr).await.unwrap(),
    ];
    open_connections(&s.door, 3).await;
    let mut fourth = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(5)).await, "the fourth was let in");
    assert_eq!(s.door.stats.refused.load(Ordering::Relaxed), 1);
    let text = s.door.stats.render("t");
    assert!(text.contains("t_connections_refused_at_door_total 1"), "{text}");
    // Their places are given back when they close.
    drop(held);
    open_connections(&s.door, 0).await;
    let body = reqwest::get(format!("http://{}/peer", s.addr)).await.unwrap().text().await.unwrap();
    assert_eq!(body, "127.0.0.1");
}

#[tokio::test]
async fn trusted_proxies_are_held_only_by_the_total() {
    let trusted = vec!["127.0.0.0/8".parse().unwrap()];
    let s = start(DoorLimits { max_per_address: 1, max_connections: 3, trusted, ..limits() }).await;
    let held = vec![
        TcpStream::connect(s.addr).await.unwrap(),
        TcpStream::connect(s.addr).await.unwrap(),
        TcpStream::connect(s.addr).await.unwrap(),
    ];
    open_connections(&s.door, 3).await;
    assert_eq!(s.door.stats.refused.load(Ordering::Relaxed), 0);
    // Beyond max_connections, a trusted peer is closed at once too.
    let mut fourth = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(5)).await, "past the total");
    assert_eq!(s.door.stats.refused.load(Ordering::Relaxed), 1);
    drop(held);
}

#[tokio::test]
async fn stopping_closes_the_listener_and_finishes_requests_in_flight() {
    let mut s = start(limits()).await;
    let url = format!("http://{}/slow", s.addr);
    let in_flight = tokio::spawn(async move { reqwest::get(url).await?.text().await });
    open_connections(&s.door, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(10), &mut s.done)
        .await
        .expect("serve returned")
        .unwrap();
    assert!(TcpStream::connect(s.addr).await.is_err(), "still accepting after the stop");
}
