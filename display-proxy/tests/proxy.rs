//! The service over real sockets: a synthetic desktop, tickets from an in-test JWKS server, and
//! WebSocket clients.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atrium_protocol::display::{ClientMessage, ServerMessage, caps};
use atrium_protocol::ticket::Capabilities;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use atrium_display::config::DisplayConfig;
use atrium_display::http::{AppState, router};
use atrium_display::source::open::SourceOpener;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticOpener};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Harness {
    addr: std::net::SocketAddr,
    issuer: TicketIssuer,
    _jwks: JwksServer,
    opener: Arc<SyntheticOpener>,
    state: AppState,
}

const ORIGIN: &str = "http://app.example";

async fn harness(fps: u32) -> Harness {
    let screen = SyntheticConfig { width: 320, height: 192, fps, photo: false, ticks: None };
    harness_with(screen, None, |_| {}).await
}

/// A harness with its own screen, the server's socket send buffer fixed at `send_buffer`
/// bytes when given (no autotuning), and a configuration tweak.
async fn harness_with(
    screen: SyntheticConfig,
    send_buffer: Option<u32>,
    tune: impl FnOnce(&mut DisplayConfig),
) -> Harness {
    let issuer = TicketIssuer::generate("k1");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await.unwrap();
    let mut cfg = DisplayConfig {
        broker_url: jwks.url(),
        allowed_origins: vec![ORIGIN.into()],
        node_id: Some("node-1".into()),
        encode_threads: 2,
        ..DisplayConfig::default()
    };
    tune(&mut cfg);
    let opener = Arc::new(SyntheticOpener::new(screen));
    let state = AppState::with_opener(&cfg, Arc::clone(&opener) as Arc<dyn SourceOpener>, None);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = send_buffer {
        socket.set_send_buffer_size(size).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    let door = Arc::clone(state.door());
    tokio::spawn(atrium_door::serve(listener, app, door, std::future::pending(), || {}));
    Harness { addr, issuer, _jwks: jwks, opener, state }
}

impl Harness {
    fn ticket(&self, vm: &str, caps: Capabilities) -> String {
        self.issuer.ticket(vm, caps)
    }

    async fn connect(&self, vm: &str, ticket: &str, origin: Option<&str>) -> Result<Ws, WsError> {
        let mut req =
            format!("ws://{}/ws/{vm}?ticket={ticket}", self.addr).into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
    }

    async fn viewer(&self, vm: &str, caps: Capabilities) -> Ws {
        self.connect(vm, &self.ticket(vm, caps), Some(ORIGIN)).await.unwrap()
    }
}

fn status(e: WsError) -> u16 {
    match e {
        WsError::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// The next message, or None after `wait`.
async fn next(ws: &mut Ws, wait: Duration) -> Option<Message> {
    tokio::time::timeout(wait, ws.next()).await.ok().flatten().map(|m| m.unwrap())
}

async fn next_server(ws: &mut Ws) -> ServerMessage {
    loop {
        match next(ws, Duration::from_secs(10)).await.expect("a message in time") {
            Message::Binary(b) => return ServerMessage::decode(&b).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads until the next FrameEnd; returns its frame number.
async fn frame_end(ws: &mut Ws) -> u32 {
    loop {
        if let ServerMessage::FrameEnd { frame, .. } = next_server(ws).await {
            return frame;
        }
    }
}

async fn send(ws: &mut Ws, m: ClientMessage) {
    ws.send(Message::Binary(m.encode().into())).await.unwrap();
}

/// Sends a ping and waits for its pong: everything sent before it has been handled.
async fn sync(ws: &mut Ws, id: u32) {
    send(ws, ClientMessage::Ping { id }).await;
    loop {
        if let ServerMessage::Pong { id: got } = next_server(ws).await
            && got == id
        {
            return;
        }
    }
}

#[tokio::test]
async fn health_and_metrics() {
    let h = harness(10).await;
    let body: serde_json::Value =
        reqwest::get(format!("http://{}/healthz", h.addr)).await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let text =
        reqwest::get(format!("http://{}/metrics", h.addr)).await.unwrap().text().await.unwrap();
    assert!(text.contains("atrium_display_frames_sent_total 0"));
    assert!(text.contains("atrium_display_clients 0"));
}

#[tokio::test]
async fn only_a_valid_ticket_from_an_allowed_page_gets_in() {
    let h = harness(10).await;
    let ticket = h.ticket("vm-1", Capabilities::default());
    assert_eq!(status(h.connect("vm-1", "", Some(ORIGIN)).await.unwrap_err()), 401);
    assert_eq!(
        status(h.connect("vm-1", &ticket, Some("http://evil.example")).await.unwrap_err()),
        403
    );
    assert_eq!(
        status(h.connect("vm-2", &ticket, Some(ORIGIN)).await.unwrap_err()),
        403,
        "ticket for vm-1"
    );
    assert_eq!(status(h.connect("bad%2Fid", &ticket, Some(ORIGIN)).await.unwrap_err()), 400);
    // Refusals did not spend the ticket; a client without Origin (not a browser) is let in.
    let mut ws = h.connect("vm-1", &ticket, None).await.unwrap();
    let ServerMessage::Hello { version, width, height, caps: c, max_frames_in_flight, .. } =
        next_server(&mut ws).await
    else {
        panic!("Hello first")
    };
    // No rights beyond watching; video is offered (the proxy has it on by default).
    assert_eq!((version, width, height, c, max_frames_in_flight), (1, 320, 192, caps::VIDEO, 2));
    assert!(matches!(
        next_server(&mut ws).await,
        ServerMessage::Resize { width: 320, height: 192 }
    ));
    frame_end(&mut ws).await;
    assert_eq!(
        status(h.connect("vm-1", &ticket, Some(ORIGIN)).await.unwrap_err()),
        401,
        "used once"
    );
    assert!(h.state.metrics().connections_refused.load(Ordering::Relaxed) >= 5);
}

#[tokio::test]
async fn a_client_that_never_acknowledges_gets_no_more_than_the_window() {
    let h = harness(60).await;
    let mut ws = h.viewer("vm-1", Capabilities::default()).await;
    // Count frames for a while without acknowledging any.
    let mut ends = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Binary(b) = m.unwrap()
            && let ServerMessage::FrameEnd { frame, .. } = ServerMessage::decode(&b).unwrap()
        {
            ends.push(frame);
        }
    }
    assert_eq!(ends, vec![1, 2], "exactly max_frames_in_flight frames");
    let dropped_before = h.state.metrics().frames_dropped.load(Ordering::Relaxed);
    // Acknowledging both opens the window: the next frame skips what the viewer missed.
    send(&mut ws, ClientMessage::FrameAck { frame: 2 }).await;
    assert_eq!(frame_end(&mut ws).await, 3);
    let dropped = h.state.metrics().frames_dropped.load(Ordering::Relaxed);
    assert!(dropped > dropped_before, "the frames captured meanwhile were skipped, not queued");
}

#[tokio::test]
async fn a_bad_message_closes_only_its_connection() {
    let h = harness(30).await;
    let mut good = h.viewer("vm-1", Capabilities::default()).await;
    let cases: Vec<(Message, CloseCode, &str)> = vec![
        (Message::Binary(vec![0x99].into()), CloseCode::Unsupported, "unknown message type"),
        (Message::Binary(vec![0x84, 1].into()), CloseCode::Protocol, "truncated"),
        (Message::Text("hello".into()), CloseCode::Unsupported, "text messages"),
        (
            Message::Binary(ClientMessage::FrameAck { frame: 1_000_000 }.encode().into()),
            CloseCode::Protocol,
            "never sent",
        ),
        (
            Message::Binary(vec![0x83; atrium_protocol::display::MAX_CLIENT_MESSAGE + 10].into()),
            CloseCode::Size,
            "over the limit",
        ),
    ];
    for (bad, code, reason) in cases {
        let mut ws = h.viewer("vm-1", Capabilities::default()).await;
        ws.send(bad).await.unwrap();
        let close = loop {
            match next(&mut ws, Duration::from_secs(10)).await.expect("a close frame") {
                Message::Close(c) => break c.expect("a close reason"),
                _ => continue,
            }
        };
        assert_eq!(close.code, code);
        assert!(close.reason.contains(reason), "{}", close.reason);
    }
    // The other viewer of the same desktop carries on.
    let mut last = frame_end(&mut good).await;
    for _ in 0..3 {
        send(&mut good, ClientMessage::FrameAck { frame: last }).await;
        last = frame_end(&mut good).await;
    }
    assert!(h.state.metrics().connections_closed_bad_message.load(Ordering::Relaxed) >= 5);
}

#[tokio::test]
async fn view_only_viewers_cannot_type_and_shadows_share_one_desktop() {
    let h = harness(10).await;
    let key = |seq| ClientMessage::Key { seq, down: true, keysym: 0x61, code: "KeyA".into() };
    let mut watcher = h
        .viewer("vm-1", Capabilities { view_only: true, shadow: true, ..Default::default() })
        .await;
    let ServerMessage::Hello { caps: c, .. } = next_server(&mut watcher).await else {
        panic!("Hello")
    };
    assert_eq!(c, caps::VIEW_ONLY | caps::SHADOW | caps::VIDEO);
    send(&mut watcher, key(1)).await;
    send(
        &mut watcher,
        ClientMessage::Pointer { seq: 2, x: 1, y: 1, buttons: 1, wheel_x: 0, wheel_y: 0 },
    )
    .await;
    sync(&mut watcher, 7).await;
    let input = h.opener.input_of("vm-1").expect("the desktop is open");
    assert_eq!(input.count(), 0, "view-only input dropped");

    let mut user = h.viewer("vm-1", Capabilities::default()).await;
    send(&mut user, key(1)).await;
    sync(&mut user, 8).await;
    assert_eq!(input.count(), 1);
    assert_eq!(
        input.last(),
        Some(atrium_display::source::InputEvent::Key { down: true, keysym: 0x61, evdev: Some(30) })
    );
    assert!(
        Arc::ptr_eq(&h.opener.input_of("vm-1").unwrap(), &input),
        "one source for both viewers"
    );
    // Leaving with the key held releases it.
    drop(user);
    let released = tokio::time::timeout(Duration::from_secs(10), async {
        while input.count() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(released.is_ok());
    assert_eq!(
        input.last(),
        Some(atrium_display::source::InputEvent::Key {
            down: false,
            keysym: 0x61,
            evdev: Some(30)
        })
    );
}

#[tokio::test]
async fn a_client_cannot_hold_the_proxy_open() {
    let screen = SyntheticConfig { width: 320, height: 192, fps: 10, photo: false, ticks: None };
    let h = harness_with(screen, None, |c| {
        c.header_timeout_secs = 1;
        c.max_connections_per_address = 3;
    })
    .await;
    // Headers sent a byte at a time: the connection is closed, long before this test's limit.
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut slow, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a client trickling its headers held the connection");
    // At most three connections from one address: the fourth is closed at once.
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(h.addr).await.unwrap(),
        TcpStream::connect(h.addr).await.unwrap(),
        TcpStream::connect(h.addr).await.unwrap(),
    ];
    let stats = &h.state.door().stats;
    for _ in 0..100 {
        if stats.connections.load(Ordering::Relaxed) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fourth = TcpStream::connect(h.addr).await.unwrap();
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut fourth, &mut buf),
    )
    .await
    .expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
    drop(held);
    let text =
        reqwest::get(format!("http://{}/metrics", h.addr)).await.unwrap().text().await.unwrap();
    assert!(text.contains("atrium_display_connections_refused_at_door_total 1"), "{text}");
}

#[tokio::test]
async fn the_broker_ends_a_session_and_its_viewers_go() {
    let h = harness(10).await;
    let mut ws = h.viewer("vm-1", Capabilities::default()).await;
    frame_end(&mut ws).await;
    // A ticket of the same session minted before its end, kept for later.
    let kept = h.ticket("vm-1", Capabilities::default());
    let path = "/api/v1/sessions/session-1/end";
    let url = format!("http://{}{path}", h.addr);
    let http = reqwest::Client::new();
    let r = http.post(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    // Signed by the broker, but for another node, or for ending another session.
    let other_node = h.issuer.sign_request("node-2", "POST", path, b"");
    let other_session =
        h.issuer.sign_request("node-1", "POST", "/api/v1/sessions/session-2/end", b"");
    let stranger = TicketIssuer::generate("k1").sign_request("node-1", "POST", path, b"");
    for token in [other_node, other_session, stranger] {
        let r = http.post(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(h.state.metrics().clients.load(Ordering::Relaxed), 1, "nothing was ended");
    // A reason the broker did not sign is not taken: the signature covers the query.
    let signed_plain = h.issuer.sign_request("node-1", "POST", path, b"");
    let r = http.post(format!("{url}?reason=idle")).bearer_auth(signed_plain).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(h.state.metrics().clients.load(Ordering::Relaxed), 1, "nothing was ended");
    // The broker's call, signed for this node and this session, with why.
    let end = async |query: &str| {
        let path_and_query = format!("{path}{query}");
        let token = h.issuer.sign_request("node-1", "POST", &path_and_query, b"");
        let url = format!("http://{}{path_and_query}", h.addr);
        http.post(&url).bearer_auth(token).send().await.unwrap().status()
    };
    assert_eq!(end("?reason=idle").await, 204);
    let close = loop {
        match next(&mut ws, Duration::from_secs(10)).await.expect("a close frame") {
            Message::Close(c) => break c.expect("a reason"),
            _ => continue,
        }
    };
    assert_eq!(close.code, CloseCode::Normal);
    assert_eq!(close.reason.as_str(), "the session ended: idle", "the viewer is told why");
    // The ticket minted before the end no longer connects.
    assert_eq!(status(h.connect("vm-1", &kept, Some(ORIGIN)).await.unwrap_err()), 401);
    // Ending it again (no viewers left, no reason: an older broker) is fine.
    assert_eq!(end("").await, 204);
}

/// A viewer whose socket takes 4 KiB at a time and that never reads.
async fn stalled_viewer(h: &Harness) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(h.addr).await.unwrap();
    let ticket = h.ticket("vm-1", Capabilities::default());
    let mut req = format!("ws://{}/ws/vm-1?ticket={ticket}", h.addr).into_client_request().unwrap();
    req.headers_mut().insert("origin", ORIGIN.parse().unwrap());
    let (ws, _) =
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await.unwrap();
    ws
}

/// 1080p frames against a 16 KiB server send buffer: a client that does not read stalls the
/// proxy's writes within its first frame.
async fn stalling_harness(ack_timeout_secs: u64) -> Harness {
    let screen = SyntheticConfig { width: 1920, height: 1080, fps: 30, photo: true, ticks: None };
    harness_with(screen, Some(16 * 1024), |c| c.ack_timeout_secs = ack_timeout_secs).await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go() {
    // The proxy's first frame cannot all go out and its write waits, before the frame counts
    // as in flight (so the acknowledgement timer is not running): the write's own limit (the
    // one-second acknowledgement timeout) lets the viewer go.
    let h = stalling_harness(1).await;
    let mut ws = stalled_viewer(&h).await;
    let metrics = h.state.metrics();
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while metrics.clients.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the viewer still holds its slot while its client does not read");
    assert_eq!(metrics.connections_closed_bad_message.load(Ordering::Relaxed), 0);
    // What was queued drains, then the connection ends.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the connection ends once the client reads again");
}

#[tokio::test]
async fn input_stops_when_the_session_ends_even_if_the_viewer_is_stalled() {
    let h = stalling_harness(60).await;
    let mut ws = stalled_viewer(&h).await;
    let input = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(i) = h.opener.input_of("vm-1") {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the desktop opens");
    // Give the proxy time to fill the buffers and stall on its first frame.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = "/api/v1/sessions/session-1/end";
    let url = format!("http://{}{path}", h.addr);
    let token = h.issuer.sign_request("node-1", "POST", path, b"");
    let r = reqwest::Client::new().post(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    send(&mut ws, ClientMessage::Key { seq: 1, down: true, keysym: 0x61, code: "KeyA".into() })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(input.count(), 0, "a key typed after the session ended reached the desktop");
}

/// Reads one update (up to its FrameEnd), acknowledges it, and returns its messages.
async fn update(ws: &mut Ws) -> Vec<ServerMessage> {
    let mut got = Vec::new();
    loop {
        match next_server(ws).await {
            ServerMessage::FrameEnd { frame, .. } => {
                send(ws, ClientMessage::FrameAck { frame }).await;
                return got;
            }
            m => got.push(m),
        }
    }
}

#[tokio::test]
async fn a_viewer_that_decodes_video_gets_the_moving_box_as_vp8_and_others_get_stills() {
    use atrium_display::video::vp8::Decoder;
    let screen = SyntheticConfig { width: 640, height: 384, fps: 20, photo: true, ticks: None };
    let h = harness_with(screen, None, |_| {}).await;
    let mut video = h.viewer("vm-1", Capabilities::default()).await;
    let mut stills = h.viewer("vm-1", Capabilities::default()).await;
    for ws in [&mut video, &mut stills] {
        let ServerMessage::Hello { caps: c, .. } = next_server(ws).await else {
            panic!("no Hello")
        };
        assert_ne!(c & caps::VIDEO, 0, "the proxy offers video");
    }
    send(&mut video, ClientMessage::Video { enabled: true }).await;
    let mut decoder = Decoder::new().unwrap();
    let (mut frames, mut keys, mut video_bytes, mut still_bytes) = (0, 0, 0, 0);
    for _ in 0..40 {
        for m in update(&mut video).await {
            match m {
                ServerMessage::Video { rect, key, data } => {
                    if frames == 0 {
                        assert!(key, "a stream starts with a key frame");
                    }
                    let (w, h, _) = decoder.decode(&data).expect("a frame the decoder takes");
                    assert_eq!((w, h), (rect.w, rect.h));
                    assert!(u32::from(rect.x) + u32::from(rect.w) <= 640);
                    assert!(u32::from(rect.y) + u32::from(rect.h) <= 384);
                    (frames, keys, video_bytes) =
                        (frames + 1, keys + usize::from(key), video_bytes + data.len());
                }
                ServerMessage::Image { data, .. } => still_bytes += data.len(),
                _ => {}
            }
        }
        for m in update(&mut stills).await {
            assert!(
                !matches!(m, ServerMessage::Video { .. }),
                "video to a viewer that did not ask"
            );
        }
    }
    assert!(frames >= 10, "{frames} video frames in 40 updates");
    assert!(keys < frames, "frames after the key frame are predicted ({keys} keys in {frames})");
    let m = h.state.metrics();
    // The proxy may have encoded frames the test has not read yet (at most the frames a
    // viewer may have in flight).
    let counted = m.video_frames.load(Ordering::Relaxed);
    let in_flight = u64::from(DisplayConfig::default().max_frames_in_flight);
    let frames_read = u64::try_from(frames).unwrap();
    assert!(
        (frames_read..=frames_read + in_flight).contains(&counted),
        "{counted} frames counted, {frames_read} read"
    );
    assert!(
        m.video_bytes.load(Ordering::Relaxed) > 0
            && m.video_encode_nanos.load(Ordering::Relaxed) > 0
    );
    eprintln!(
        "video: {frames} frames, {keys} key, {video_bytes} bytes; stills {still_bytes} bytes"
    );
    // Asking for stills again stops the video.
    // (The updates already on their way may still carry some.)
    send(&mut video, ClientMessage::Video { enabled: false }).await;
    for _ in 0..3 {
        update(&mut video).await;
    }
    for _ in 0..5 {
        assert!(!update(&mut video).await.iter().any(|m| matches!(m, ServerMessage::Video { .. })));
    }
}

#[tokio::test]
async fn a_proxy_with_video_off_offers_none_and_sends_none() {
    let screen = SyntheticConfig { width: 640, height: 384, fps: 20, photo: true, ticks: None };
    let h = harness_with(screen, None, |c| c.video_max_fps = 0).await;
    let mut ws = h.viewer("vm-1", Capabilities::default()).await;
    let ServerMessage::Hello { caps: c, .. } = next_server(&mut ws).await else {
        panic!("no Hello")
    };
    assert_eq!(c & caps::VIDEO, 0);
    send(&mut ws, ClientMessage::Video { enabled: true }).await;
    for _ in 0..20 {
        assert!(!update(&mut ws).await.iter().any(|m| matches!(m, ServerMessage::Video { .. })));
    }
}

/// A ticket that asks for a watermark is refused by a proxy that cannot draw one (its font is
/// missing), with a clear reason; a ticket without one still gets in.
#[tokio::test]
async fn a_watermark_that_cannot_be_drawn_keeps_the_viewer_out() {
    let screen = SyntheticConfig { width: 320, height: 192, fps: 10, photo: false, ticks: None };
    let h = harness_with(screen, None, |c| c.watermark_font = "/nonexistent/font.ttf".into()).await;
    let mark = atrium_protocol::ticket::Watermark {
        text: "alice\n{time}".into(),
        opacity: 20,
        size: 16,
        angle: 30,
        spacing: 4,
    };
    let claims = TicketIssuer::watermarked_claims("vm-1", Capabilities::default(), 30, mark);
    let e = h.connect("vm-1", &h.issuer.sign(&claims), Some(ORIGIN)).await.unwrap_err();
    assert_eq!(status(e), 503);
    let mut ws = h.viewer("vm-1", Capabilities::default()).await;
    assert!(matches!(next_server(&mut ws).await, ServerMessage::Hello { .. }));
}
