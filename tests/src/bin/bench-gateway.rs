//! Display gateway benchmark: one desktop stream relayed by Atrium's gateway
//! (`atrium-display gateway`) and by HAProxy in TCP mode, both terminating TLS, in one run.
//! Run with `scripts/bench-gateway.sh` (release build). Prints one JSON object last.
//!
//! - **CPU per relayed MB**: viewers watch a streaming desktop (a scrolling terminal and a moving
//!   photo, 1280x800 at 30 frames a second, from a display proxy in this process) through each
//!   relay in turn, several rounds alternating; each relay process's CPU (schedstat, to the
//!   nanosecond) and wake-ups are divided by the megabytes it carried to viewers.
//! - **Added input-to-pixel latency**: on a quiet desktop that paints a block for each key, the
//!   time from sending a key to receiving the frame that shows it (its `FrameEnd` carries the
//!   key's sequence number), over a direct connection to the proxy and through each relay,
//!   samples interleaved; the p50 of each path minus the direct path's.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrium_display::config::DisplayConfig;
use atrium_display::framebuffer::Framebuffer;
use atrium_display::http::{AppState, router};
use atrium_display::source::open::{OpenError, OpenedSource, SourceOpener};
use atrium_display::source::{
    FramebufferSource, InputError, InputEvent, InputSink, SourceError, SourceEvent, Stopper,
};
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_display_testkit::synthetic::{SyntheticConfig, SyntheticSource};
use atrium_protocol::display::{ClientMessage, Rect, ServerMessage};
use atrium_protocol::ticket::Capabilities;
use atrium_tests::TempDir;
use atrium_tests::procstat::{self, Usage};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WIDTH: u16 = 1280;
const HEIGHT: u16 = 800;

#[derive(Debug, Clone)]
struct Options {
    /// Seconds each relay streams in each round.
    secs: u64,
    /// Rounds (each relay once per round, alternating).
    rounds: u32,
    /// Viewers watching at once.
    viewers: usize,
    /// Latency samples per path.
    samples: usize,
    /// HAProxy's `nbthread` (`None`: its default, one per CPU).
    haproxy_threads: Option<u32>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { secs: 8, rounds: 3, viewers: 2, samples: 300, haproxy_threads: None };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> anyhow::Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .context(name.to_owned())
        };
        match a.as_str() {
            "--secs" => o.secs = num("--secs")?,
            "--rounds" => o.rounds = u32::try_from(num("--rounds")?)?,
            "--viewers" => o.viewers = usize::try_from(num("--viewers")?)?,
            "--samples" => o.samples = usize::try_from(num("--samples")?)?,
            "--haproxy-threads" => {
                o.haproxy_threads = Some(u32::try_from(num("--haproxy-threads")?)?)
            }
            "-h" | "--help" => {
                println!(
                    "bench-gateway [--secs N] [--rounds N] [--viewers N] [--samples N] [--haproxy-threads N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------- the desktops

/// A quiet desktop that paints a block in a new colour for each key pressed, at once.
#[derive(Debug)]
struct KeyDesktop {
    inbox: Arc<Inbox>,
    drawn: bool,
    colour: u32,
}

#[derive(Debug, Default)]
struct Inbox {
    state: Mutex<(u64, bool)>,
    cv: Condvar,
}

impl InputSink for Inbox {
    fn send(&self, event: InputEvent) -> Result<(), InputError> {
        if let InputEvent::Key { down: true, .. } = event {
            self.state.lock().expect("inbox").0 += 1;
            self.cv.notify_all();
        }
        Ok(())
    }
}

impl Stopper for Inbox {
    fn stop(&self) {
        self.state.lock().expect("inbox").1 = true;
        self.cv.notify_all();
    }
}

impl FramebufferSource for KeyDesktop {
    fn name(&self) -> &str {
        "keys"
    }

    fn size(&self) -> (u16, u16) {
        (WIDTH, HEIGHT)
    }

    fn input(&self) -> Arc<dyn InputSink> {
        Arc::clone(&self.inbox) as Arc<dyn InputSink>
    }

    fn stopper(&self) -> Arc<dyn Stopper> {
        Arc::clone(&self.inbox) as Arc<dyn Stopper>
    }

    fn next_update(&mut self, fb: &mut Framebuffer) -> Result<Vec<SourceEvent>, SourceError> {
        if fb.width() != WIDTH || fb.height() != HEIGHT {
            fb.resize(WIDTH, HEIGHT);
        }
        if !self.drawn {
            self.drawn = true;
            fb.fill(fb.bounds(), 0x0020_2020);
            return Ok(vec![SourceEvent::Damage(fb.bounds())]);
        }
        let mut st = self.inbox.state.lock().expect("inbox");
        while st.0 == 0 && !st.1 {
            st = self.inbox.cv.wait(st).expect("inbox");
        }
        if st.1 {
            return Err(SourceError::Stopped);
        }
        st.0 -= 1;
        drop(st);
        self.colour = self.colour.wrapping_mul(0x0001_0193).wrapping_add(0x0040_2010) & 0x00ff_ffff;
        let block = Rect { x: 100, y: 100, w: 32, h: 32 };
        fb.fill(block, self.colour);
        Ok(vec![SourceEvent::Damage(block)])
    }
}

/// `stream-*` VMs are the synthetic desktop with a moving photo; `keys-*` VMs paint on keys.
#[derive(Debug)]
struct BenchOpener;

impl SourceOpener for BenchOpener {
    fn open<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<OpenedSource, OpenError>> {
        Box::pin(async move {
            let source: Box<dyn FramebufferSource> = if vm.starts_with("keys-") {
                Box::new(KeyDesktop { inbox: Arc::default(), drawn: false, colour: 1 })
            } else {
                Box::new(SyntheticSource::new(SyntheticConfig {
                    width: WIDTH,
                    height: HEIGHT,
                    fps: 30,
                    photo: true,
                    ticks: None,
                }))
            };
            Ok(OpenedSource { source, guest: None })
        })
    }
}

// ---------------------------------------------------------------- the relays

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < until, "{what} did not listen on {port} within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("the binary's folder")?.join(name);
    ensure!(p.exists(), "{} is missing: build the workspace's binaries", p.display());
    Ok(p)
}

fn start_gateway(dir: &Path, port: u16, jwks: &str) -> anyhow::Result<Proc> {
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nbroker_url = {jwks:?}\nplain_http_loopback = true\n\
             tls_cert = {:?}\ntls_key = {:?}\n\
             proxy_networks = [\"127.0.0.0/8\"]\n",
            dir.join("cert.pem").display().to_string(),
            dir.join("key.pem").display().to_string()
        ),
    )?;
    let child = Command::new(binary("atrium-display")?)
        .args(["gateway", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log"))?)
        .spawn()
        .context("starting atrium-display gateway")?;
    wait_port(port, "the gateway")?;
    Ok(Proc(child))
}

fn start_haproxy(
    dir: &Path,
    port: u16,
    backend: SocketAddr,
    threads: Option<u32>,
) -> anyhow::Result<Proc> {
    let cfg = dir.join("haproxy.cfg");
    let nbthread = threads.map(|n| format!("    nbthread {n}\n")).unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 1000\n{nbthread}\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
             frontend relay\n    bind 127.0.0.1:{port} ssl crt {} alpn http/1.1\n    default_backend proxy\n\n\
             backend proxy\n    server proxy {backend}\n",
            dir.join("haproxy.pem").display()
        ),
    )?;
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
        .spawn()
        .context("starting haproxy (Debian package `haproxy`)")?;
    wait_port(port, "haproxy")?;
    Ok(Proc(child))
}

// ---------------------------------------------------------------- viewers

trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

/// How a viewer reaches the desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    Gateway,
    Haproxy,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Gateway => "gateway",
            Self::Haproxy => "haproxy",
        }
    }
}

struct Bench {
    issuer: TicketIssuer,
    proxy: SocketAddr,
    gateway_port: u16,
    haproxy_port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl Bench {
    fn ticket(&self, vm: &str) -> String {
        let mut c = TicketIssuer::claims(vm, Capabilities::default(), 30);
        c.proxy = Some(format!("ws://{}", self.proxy));
        self.issuer.sign(&c)
    }

    async fn connect(&self, path: Route, vm: &str) -> anyhow::Result<Ws> {
        let ticket = self.ticket(vm);
        let (port, tls) = match path {
            Route::Direct => (self.proxy.port(), false),
            Route::Gateway => (self.gateway_port, true),
            Route::Haproxy => (self.haproxy_port, true),
        };
        let scheme = if tls { "wss" } else { "ws" };
        let req =
            format!("{scheme}://localhost:{port}/ws/{vm}?ticket={ticket}").into_client_request()?;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = if tls {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            Box::new(self.tls.connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        let (mut ws, _) =
            tokio_tungstenite::client_async(req, io).await.context("the WebSocket upgrade")?;
        // The Hello.
        match ws.next().await {
            Some(Ok(Message::Binary(b)))
                if matches!(ServerMessage::decode(&b), Ok(ServerMessage::Hello { .. })) => {}
            other => bail!("{}: expected Hello, got {other:?}", path.name()),
        }
        Ok(ws)
    }
}

/// Reads and acknowledges frames until `until`; the bytes of display messages received.
async fn watch(mut ws: Ws, until: Instant) -> anyhow::Result<u64> {
    let mut bytes = 0u64;
    let deadline = tokio::time::Instant::from_std(until);
    while let Ok(next) = tokio::time::timeout_at(deadline, ws.next()).await {
        let Some(msg) = next else { bail!("the stream closed") };
        if let Message::Binary(b) = msg? {
            bytes += b.len() as u64;
            if let Ok(ServerMessage::FrameEnd { frame, .. }) = ServerMessage::decode(&b) {
                ws.send(Message::Binary(ClientMessage::FrameAck { frame }.encode().into())).await?;
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(bytes)
}

/// One key to the desktop and the time until the frame showing it arrives.
async fn key_to_pixels(ws: &mut Ws, seq: u32) -> anyhow::Result<Duration> {
    let sent = Instant::now();
    let key = ClientMessage::Key { seq, down: true, keysym: 0x61, code: "KeyA".into() };
    ws.send(Message::Binary(key.encode().into())).await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no frame within 10 s of a key")?
            .context("the connection closed")??;
        if let Message::Binary(b) = msg
            && let Ok(ServerMessage::FrameEnd { frame, input_seq }) = ServerMessage::decode(&b)
        {
            ws.send(Message::Binary(ClientMessage::FrameAck { frame }.encode().into())).await?;
            if input_seq >= seq {
                let took = sent.elapsed();
                let up = ClientMessage::Key {
                    seq: seq + 1,
                    down: false,
                    keysym: 0x61,
                    code: "KeyA".into(),
                };
                ws.send(Message::Binary(up.encode().into())).await?;
                return Ok(took);
            }
        }
    }
}

fn percentile(v: &[f64], pct: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get((s.len().saturating_sub(1)) * pct / 100).copied().unwrap_or(f64::NAN)
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    atrium_tests::util::install_crypto();
    let opts = options()?;
    atrium_tests::util::install_crypto();
    let dir = TempDir::new("bench-gateway");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem())?;
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem())?;
    std::fs::write(
        dir.path().join("haproxy.pem"),
        format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem()),
    )?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone())?;
    let tls_cfg =
        rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();

    let issuer = TicketIssuer::generate("bench");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let cfg = DisplayConfig { broker_url: jwks.url(), ..DisplayConfig::default() };
    let state = AppState::with_opener(&cfg, Arc::new(BenchOpener), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?;
    let app = router(state);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let gateway_port = free_port()?;
    let gateway = start_gateway(dir.path(), gateway_port, &jwks.url())?;
    let haproxy_port = free_port()?;
    let haproxy = start_haproxy(dir.path(), haproxy_port, proxy, opts.haproxy_threads)?;
    let pids = [(Route::Gateway, gateway.0.id()), (Route::Haproxy, haproxy.0.id())];
    let bench = Bench {
        issuer,
        proxy,
        gateway_port,
        haproxy_port,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls_cfg)),
    };
    // The gateway fetches the keys at its start; one connection through each path warms up.
    for p in [Route::Direct, Route::Gateway, Route::Haproxy] {
        drop(bench.connect(p, "keys-warmup").await?);
    }

    // CPU per relayed MB, rounds alternating between the relays.
    let mut totals: Vec<(Route, Usage, u64)> =
        vec![(Route::Gateway, Usage::default(), 0), (Route::Haproxy, Usage::default(), 0)];
    for r in 0..opts.rounds {
        for (i, (path, pid)) in pids.iter().enumerate() {
            let vm = format!("stream-{}-{r}", path.name());
            let mut viewers = Vec::new();
            for _ in 0..opts.viewers {
                viewers.push(bench.connect(*path, &vm).await?);
            }
            let before = procstat::process_usage(*pid);
            let until = Instant::now() + Duration::from_secs(opts.secs);
            let tasks: Vec<_> =
                viewers.into_iter().map(|ws| tokio::spawn(watch(ws, until))).collect();
            let mut bytes = 0;
            for t in tasks {
                bytes += t.await??;
            }
            let used = procstat::process_usage(*pid) - before;
            eprintln!(
                "round {r} {}: {:.1} MB, {:.3} s CPU, {} wake-ups",
                path.name(),
                bytes as f64 / 1e6,
                used.secs,
                used.runs
            );
            totals[i].1 = totals[i].1 + used;
            totals[i].2 += bytes;
            // Let the desktop's viewers go before the next relay's turn.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let per_mb = |(_, u, b): &(Route, Usage, u64)| u.secs / (*b as f64 / 1e6);
    let wakes_per_mb = |(_, u, b): &(Route, Usage, u64)| u.runs as f64 / (*b as f64 / 1e6);
    let (gw, hp) = (&totals[0], &totals[1]);
    let cpu_ratio = per_mb(gw) / per_mb(hp);

    // Input-to-pixel on each path, samples interleaved.
    let mut conns = Vec::new();
    for p in [Route::Direct, Route::Gateway, Route::Haproxy] {
        conns.push((p, bench.connect(p, &format!("keys-{}", p.name())).await?, Vec::new()));
    }
    let mut seq = 1u32;
    for i in 0..opts.samples {
        for k in 0..conns.len() {
            // Rotate which path goes first.
            let (_, ws, samples) = &mut conns[(i + k) % 3];
            let took = key_to_pixels(ws, seq).await?;
            samples.push(took.as_secs_f64() * 1000.0);
            seq += 2;
            // Keys come a person's pace apart: each sample starts from idle.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let p50 = |p: Route| conns.iter().find(|c| c.0 == p).map_or(f64::NAN, |c| percentile(&c.2, 50));
    let p90 = |p: Route| conns.iter().find(|c| c.0 == p).map_or(f64::NAN, |c| percentile(&c.2, 90));
    let direct = p50(Route::Direct);
    let out: Value = json!({
        "stream_mb": { "gateway": round(gw.2 as f64 / 1e6, 1), "haproxy": round(hp.2 as f64 / 1e6, 1) },
        "cpu_ms_per_mb": { "gateway": round(per_mb(gw) * 1000.0, 3), "haproxy": round(per_mb(hp) * 1000.0, 3) },
        "wakeups_per_mb": { "gateway": round(wakes_per_mb(gw), 1), "haproxy": round(wakes_per_mb(hp), 1) },
        "input_to_pixel_p50_ms": {
            "direct": round(direct, 3), "gateway": round(p50(Route::Gateway), 3), "haproxy": round(p50(Route::Haproxy), 3)
        },
        "input_to_pixel_p90_ms": {
            "direct": round(p90(Route::Direct), 3), "gateway": round(p90(Route::Gateway), 3), "haproxy": round(p90(Route::Haproxy), 3)
        },
        "haproxy_added_p50_ms": round(p50(Route::Haproxy) - direct, 3),
        "haproxy_threads": opts.haproxy_threads.map_or(Value::from("default"), Value::from),
        "cpu_ratio_vs_haproxy": round(cpu_ratio, 3),
        "added_p50_ms": round(p50(Route::Gateway) - direct, 3),
    });
    drop((gateway, haproxy));
    println!("{out}");
    Ok(())
}
