//! The display proxy for tests: `atrium-display serve` in a temporary folder, a stand-in for the
//! broker's JWKS and tickets (`atrium_display_testkit::issuer`), a small node API for a VNC socket the
//! test started itself, and a WebSocket viewer that keeps the image it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrium_protocol::display::{ClientMessage, ImageFormat, Rect, ServerMessage};
use atrium_protocol::node::{
    DisplayEndpoint, DisplaySize, RuntimeKind, ScreenSize, VmInfo, VmState,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::screen::Screen;
use crate::util::{TempDir, bin_path, free_port};

/// A running `atrium-display serve`; killed on drop.
#[derive(Debug)]
pub struct DisplayProxy {
    pub dir: TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl DisplayProxy {
    /// Starts the proxy for node `node-1` against a broker (for its JWKS) and the node agent's
    /// local socket.
    pub async fn start(
        broker_url: &str,
        node_socket: &std::path::Path,
        extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_inner(broker_url, node_socket, extra, None, None).await
    }

    /// The same as user and group `id` (a number no account has): not root, reaching the node
    /// only through what its group is given (`node.local_socket_group`).
    pub async fn start_unprivileged(
        broker_url: &str,
        node_socket: &std::path::Path,
        id: u32,
    ) -> anyhow::Result<Self> {
        Self::start_inner(broker_url, node_socket, "", None, Some(id)).await
    }

    /// The same on `https://`/`wss://` at `port` with `tls`'s certificate, trusting it for the
    /// broker.
    pub async fn start_tls(
        broker_url: &str,
        node_socket: &std::path::Path,
        port: u16,
        tls: &crate::pki::TestTls,
    ) -> anyhow::Result<Self> {
        Self::start_inner(broker_url, node_socket, "", Some((port, tls)), None).await
    }

    async fn start_inner(
        broker_url: &str,
        node_socket: &std::path::Path,
        extra: &str,
        tls: Option<(u16, &crate::pki::TestTls)>,
        run_as: Option<u32>,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("display");
        let port = tls.map_or_else(free_port, |(p, _)| p);
        let tls = tls.map(|(_, t)| t);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let config = format!(
            "listen = \"{addr}\"\nbroker_url = \"{broker_url}\"\nnode_socket = {:?}\n\
             node_id = \"node-1\"\nplain_http_loopback = true\nallowed_origins = [\"http://127.0.0.1\"]\n{}{extra}",
            node_socket.display().to_string(),
            tls.map(|t| format!(
                "tls_cert = {:?}\ntls_key = {:?}\nca_file = {:?}\n",
                t.cert.display().to_string(),
                t.key.display().to_string(),
                t.ca.display().to_string()
            ))
            .unwrap_or_default(),
        );
        let path = dir.path().join("display.toml");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.path().join("display.log"))?;
        let mut cmd = Command::new(bin_path("atrium-display"));
        if let Some(id) = run_as {
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            // Its configuration must be readable by it.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            // std drops the supplementary groups when it drops root: only `id` is left.
            cmd.uid(id).gid(id);
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,atrium_display=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting atrium-display serve")?;
        let proxy = Self { dir, addr, child };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let health = format!("{scheme}://{addr}/healthz");
        let http = tls.map_or_else(reqwest::Client::new, crate::pki::TestTls::client);
        let up =
            crate::util::wait_for("the display proxy's /healthz", Duration::from_secs(20), || {
                let (h, http) = (health.clone(), http.clone());
                async move { http.get(&h).send().await.ok().filter(|r| r.status().is_success()) }
            })
            .await;
        if let Err(e) = up {
            bail!("{e}; display proxy log:\n{}", proxy.log());
        }
        Ok(proxy)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("display.log")).unwrap_or_default()
    }

    pub fn ws_url(&self, vm: &str, ticket: &str) -> String {
        format!("ws://{}/ws/{vm}?ticket={ticket}", self.addr)
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.addr)).await?.text().await?)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DisplayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's local API that knows VMs whose displays the test started itself (for example a
/// bare QEMU with a VNC socket), on a socket of its own. It answers `GET /api/v1/vms/{id}`,
/// and, for a node started [`DisplayOnlyNode::resizable`], `PUT /api/v1/vms/{id}/screen` (the
/// sizes asked for are kept in `screen_requests`; no guest changes size).
#[derive(Debug)]
pub struct DisplayOnlyNode {
    pub dir: TempDir,
    pub socket: std::path::PathBuf,
    pub screen_requests: Arc<Mutex<Vec<(String, DisplaySize)>>>,
}

/// What the fake node's routes share.
#[derive(Debug, Clone)]
struct FakeVms {
    vms: Arc<HashMap<String, DisplayEndpoint>>,
    resizable: bool,
    requests: Arc<Mutex<Vec<(String, DisplaySize)>>>,
}

impl DisplayOnlyNode {
    pub async fn start(vms: Vec<(String, DisplayEndpoint)>) -> anyhow::Result<Self> {
        Self::start_with(vms, false).await
    }

    /// A node whose VMs report a screen (of 720x400) that may change size.
    pub async fn resizable(vms: Vec<(String, DisplayEndpoint)>) -> anyhow::Result<Self> {
        Self::start_with(vms, true).await
    }

    async fn start_with(
        vms: Vec<(String, DisplayEndpoint)>,
        resizable: bool,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("display-node");
        let socket = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let state = FakeVms {
            vms: Arc::new(vms.into_iter().collect()),
            resizable,
            requests: Arc::default(),
        };
        let screen_requests = Arc::clone(&state.requests);
        let app = Router::new()
            .route(
                "/api/v1/vms/{id}/screen",
                put(
                    |State(f): State<FakeVms>,
                     Path(id): Path<String>,
                     Json(req): Json<ScreenSize>| async move {
                        if !f.vms.contains_key(&id) {
                            return Err(StatusCode::NOT_FOUND);
                        }
                        if !f.resizable {
                            return Err(StatusCode::CONFLICT);
                        }
                        f.requests.lock().expect("requests").push((id, req.size));
                        Ok(Json(req))
                    },
                ),
            )
            .route(
                "/api/v1/vms/{id}",
                get(|State(f): State<FakeVms>, Path(id): Path<String>| async move {
                    let Some(endpoint) = f.vms.get(&id) else {
                        return Err(StatusCode::NOT_FOUND);
                    };
                    Ok(Json(VmInfo {
                        id,
                        state: VmState::Ready,
                        runtime: RuntimeKind::Qemu,
                        accel: None,
                        image: "none".into(),
                        vcpus: 1,
                        memory_mib: 64,
                        display: DisplaySize::new(720, 400),
                        screen: f.resizable.then_some(DisplaySize::new(720, 400)),
                        sound: false,
                        persistent_disk: None,
                        user: None,
                        created_at_ms: 0,
                        ready_at_ms: None,
                        error: None,
                        display_endpoint: endpoint.clone(),
                    }))
                }),
            )
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { dir, socket, screen_requests })
    }
}

/// A bare `qemu-system-x86_64` with no disk whose SeaBIOS draws text on a VGA console, served
/// on a VNC unix socket; killed on drop.
#[derive(Debug)]
pub struct BareQemu {
    pub dir: TempDir,
    pub socket: std::path::PathBuf,
    child: Child,
}

impl BareQemu {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = TempDir::new("bare-qemu");
        let socket = dir.path().join("vnc.sock");
        let child = Command::new("qemu-system-x86_64")
            .args(["-display", "none", "-nodefaults", "-vga", "std", "-m", "64", "-vnc"])
            .arg(format!("unix:{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-system-x86_64 (install qemu-system-x86)")?;
        let q = Self { dir, socket, child };
        crate::util::wait_for("QEMU's VNC socket", Duration::from_secs(20), || async {
            q.socket.exists().then_some(())
        })
        .await?;
        Ok(q)
    }
}

impl Drop for BareQemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A viewer speaking the display protocol, keeping the image it is sent.
#[derive(Debug)]
pub struct DisplayViewer {
    /// None: a player of recorded messages, with no connection.
    ws: Option<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    pub width: u16,
    pub height: u16,
    pub caps: u32,
    /// The largest size this viewer may ask the desktop for (`Resizable`), once it said so.
    pub max_size: Option<(u16, u16)>,
    /// RGB, row-major.
    pub rgb: Vec<u8>,
    pub frames: u32,
    pub bytes: usize,
    pub images: HashMap<&'static str, usize>,
    seq: u32,
    /// Pause between key events: a guest under TCG drains its keyboard queue slowly.
    pub key_delay: Duration,
    /// When set, every message a recording keeps, as received.
    pub kept: Option<Vec<Vec<u8>>>,
    /// The desktop's clipboard text as last received.
    pub clipboard: Option<String>,
}

impl DisplayViewer {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let req = url.into_client_request()?;
        let (mut ws, _) =
            tokio_tungstenite::connect_async(req).await.context("opening the display WebSocket")?;
        let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no Hello")?
            .context("closed before Hello")??;
        let Message::Binary(b) = first else { bail!("expected a binary Hello, got {first:?}") };
        let ServerMessage::Hello { width, height, caps, .. } = ServerMessage::decode(&b)? else {
            bail!("the first message is not Hello")
        };
        let rgb = vec![0; usize::from(width) * usize::from(height) * 3];
        Ok(Self {
            ws: Some(ws),
            width,
            height,
            caps,
            max_size: None,
            rgb,
            frames: 0,
            bytes: 0,
            images: HashMap::new(),
            seq: 0,
            key_delay: Duration::from_millis(30),
            kept: None,
            clipboard: None,
        })
    }

    /// A viewer with no connection, to play recorded messages into ([`DisplayViewer::apply`]).
    pub fn player() -> Self {
        Self {
            ws: None,
            width: 0,
            height: 0,
            caps: 0,
            max_size: None,
            rgb: Vec::new(),
            frames: 0,
            bytes: 0,
            images: HashMap::new(),
            seq: 0,
            key_delay: Duration::ZERO,
            kept: None,
            clipboard: None,
        }
    }

    fn ws(&mut self) -> anyhow::Result<&mut WebSocketStream<MaybeTlsStream<TcpStream>>> {
        self.ws.as_mut().context("a player has no connection")
    }

    /// Draws one server message; the frame number when it ends a frame.
    pub fn apply(&mut self, data: &[u8]) -> anyhow::Result<Option<u32>> {
        if let Some(kept) = &mut self.kept
            && atrium_display::recording::is_recorded(data)
        {
            kept.push(data.to_vec());
        }
        match ServerMessage::decode(data)? {
            ServerMessage::Resize { width, height } => {
                self.width = width;
                self.height = height;
                self.rgb = vec![0; usize::from(width) * usize::from(height) * 3];
            }
            ServerMessage::Resizable { max_width, max_height } => {
                self.max_size = Some((max_width, max_height));
            }
            ServerMessage::Fill { rect, rgba } => self.fill(rect, [rgba[0], rgba[1], rgba[2]])?,
            ServerMessage::Image { rect, format, data } => self.image(rect, format, &data)?,
            ServerMessage::Copy { rect, src_x, src_y } => self.copy(rect, src_x, src_y)?,
            ServerMessage::FrameEnd { frame, .. } => {
                self.frames += 1;
                return Ok(Some(frame));
            }
            ServerMessage::Clipboard { text } => self.clipboard = Some(text),
            _ => {}
        }
        Ok(None)
    }

    /// The image as a [`Screen`], to read text from.
    pub fn screen(&self) -> Screen {
        Screen {
            width: u32::from(self.width),
            height: u32::from(self.height),
            rgb: self.rgb.clone(),
        }
    }

    /// The image as a PNG (kept as a test artefact).
    pub fn png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, u32::from(self.width), u32::from(self.height));
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("PNG header");
        w.write_image_data(&self.rgb).expect("PNG data");
        w.finish().expect("PNG end");
        out
    }

    /// Handles messages until a frame ends (acknowledging it) or `wait` passes; true when a
    /// frame ended.
    pub async fn pump(&mut self, wait: Duration) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws()?.next()).await else {
                return Ok(false);
            };
            let msg = next.context("the display connection closed")??;
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(c) => bail!("the display proxy closed the connection: {c:?}"),
                _ => continue,
            };
            self.bytes += data.len();
            if let Some(frame) = self.apply(&data)? {
                self.send(ClientMessage::FrameAck { frame }).await?;
                return Ok(true);
            }
        }
    }

    /// Pumps frames until `pred` holds on the image, or fails after `timeout`.
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !pred(self) {
            ensure!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            self.pump(Duration::from_millis(200)).await?;
        }
        Ok(())
    }

    pub async fn send(&mut self, m: ClientMessage) -> anyhow::Result<()> {
        self.ws()?.send(Message::Binary(m.encode().into())).await?;
        Ok(())
    }

    /// Presses and releases a key given by its DOM code and keysym.
    pub async fn key(&mut self, code: &str, keysym: u32) -> anyhow::Result<()> {
        for down in [true, false] {
            self.seq += 1;
            self.send(ClientMessage::Key { seq: self.seq, down, keysym, code: code.into() })
                .await?;
            self.settle().await?;
        }
        Ok(())
    }

    /// Lets the key delay pass while keeping frames flowing.
    async fn settle(&mut self) -> anyhow::Result<()> {
        let until = Instant::now() + self.key_delay;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            self.pump(left).await?;
        }
        Ok(())
    }

    /// Types `text` on a US keyboard (`\n` is Enter).
    pub async fn type_text(&mut self, text: &str) -> anyhow::Result<()> {
        for c in text.chars() {
            let (code, shift) =
                crate::rfb::us_key(c).with_context(|| format!("cannot type {c:?}"))?;
            let keysym = if c == '\n' { 0xff0d } else { u32::from(c) };
            if shift {
                self.seq += 1;
                self.send(ClientMessage::Key {
                    seq: self.seq,
                    down: true,
                    keysym: 0xffe1,
                    code: "ShiftLeft".into(),
                })
                .await?;
            }
            self.key(&code, keysym).await?;
            if shift {
                self.seq += 1;
                self.send(ClientMessage::Key {
                    seq: self.seq,
                    down: false,
                    keysym: 0xffe1,
                    code: "ShiftLeft".into(),
                })
                .await?;
            }
        }
        Ok(())
    }

    fn check(&self, r: Rect) -> anyhow::Result<()> {
        ensure!(
            u32::from(r.x) + u32::from(r.w) <= u32::from(self.width)
                && u32::from(r.y) + u32::from(r.h) <= u32::from(self.height),
            "rectangle {r:?} outside the {}x{} screen",
            self.width,
            self.height
        );
        Ok(())
    }

    fn fill(&mut self, r: Rect, rgb: [u8; 3]) -> anyhow::Result<()> {
        self.check(r)?;
        *self.images.entry("fill").or_default() += 1;
        for y in r.y..r.y + r.h {
            for x in r.x..r.x + r.w {
                let i = (usize::from(y) * usize::from(self.width) + usize::from(x)) * 3;
                self.rgb[i..i + 3].copy_from_slice(&rgb);
            }
        }
        Ok(())
    }

    fn copy(&mut self, r: Rect, sx: u16, sy: u16) -> anyhow::Result<()> {
        self.check(r)?;
        self.check(Rect { x: sx, y: sy, w: r.w, h: r.h })?;
        *self.images.entry("copy").or_default() += 1;
        let src = self.rgb.clone();
        let w = usize::from(self.width);
        for dy in 0..usize::from(r.h) {
            let from = ((usize::from(sy) + dy) * w + usize::from(sx)) * 3;
            let to = ((usize::from(r.y) + dy) * w + usize::from(r.x)) * 3;
            let n = usize::from(r.w) * 3;
            self.rgb[to..to + n].copy_from_slice(&src[from..from + n]);
        }
        Ok(())
    }

    fn image(&mut self, r: Rect, format: ImageFormat, data: &[u8]) -> anyhow::Result<()> {
        self.check(r)?;
        let rgb = match format {
            ImageFormat::Png => {
                *self.images.entry("png").or_default() += 1;
                let mut dec = png::Decoder::new(std::io::Cursor::new(data));
                dec.set_transformations(
                    png::Transformations::EXPAND | png::Transformations::STRIP_16,
                );
                let mut reader = dec.read_info()?;
                let mut buf = vec![0; reader.output_buffer_size().context("PNG size")?];
                let info = reader.next_frame(&mut buf)?;
                ensure!(
                    (info.width, info.height) == (u32::from(r.w), u32::from(r.h)),
                    "PNG of {}x{} for {r:?}",
                    info.width,
                    info.height
                );
                let channels = info.color_type.samples();
                buf.truncate(info.buffer_size());
                buf.chunks_exact(channels).flat_map(|p| [p[0], p[1], p[2]]).collect::<Vec<u8>>()
            }
            ImageFormat::Indexed => {
                *self.images.entry("indexed").or_default() += 1;
                decode_indexed(data, usize::from(r.w), usize::from(r.h))?
            }
            ImageFormat::Rgba => {
                *self.images.entry("rgba").or_default() += 1;
                data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()
            }
            ImageFormat::Jpeg => {
                // Lossy areas are refined losslessly once they stop changing; this viewer
                // waits for that rather than decode JPEG.
                *self.images.entry("jpeg").or_default() += 1;
                return Ok(());
            }
        };
        ensure!(rgb.len() == usize::from(r.w) * usize::from(r.h) * 3, "image size mismatch");
        let w = usize::from(self.width);
        for dy in 0..usize::from(r.h) {
            let to = ((usize::from(r.y) + dy) * w + usize::from(r.x)) * 3;
            let from = dy * usize::from(r.w) * 3;
            let n = usize::from(r.w) * 3;
            self.rgb[to..to + n].copy_from_slice(&rgb[from..from + n]);
        }
        Ok(())
    }
}

/// RGB pixels of an `Indexed` image (see docs/display-protocol.md).
fn decode_indexed(d: &[u8], w: usize, h: usize) -> anyhow::Result<Vec<u8>> {
    let n = usize::from(*d.first().context("empty indexed image")?);
    ensure!((2..=16).contains(&n), "indexed image with {n} colours");
    let bits = match n {
        2 => 1,
        3..=4 => 2,
        _ => 4,
    };
    let row = (w * bits).div_ceil(8);
    let base = 1 + n * 3;
    ensure!(d.len() == base + row * h, "indexed image of the wrong size");
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let b = d[base + y * row + x * bits / 8];
            let i = usize::from((b >> (8 - bits - (x * bits) % 8)) & ((1 << bits) - 1));
            ensure!(i < n, "indexed image: index out of range");
            out.extend_from_slice(&d[1 + i * 3..4 + i * 3]);
        }
    }
    Ok(out)
}

/// Counts pixels of one colour in an RGB buffer.
pub fn count_color(rgb: &[u8], color: [u8; 3]) -> usize {
    rgb.chunks_exact(3).filter(|p| *p == color).count()
}

/// Keeps a file for a person to look at (`tests/artifacts` under scripts/test.sh).
pub fn keep_artifact(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("ATRIUM_TEST_ARTIFACTS") {
        let _ = std::fs::write(std::path::Path::new(&dir).join(name), bytes);
    }
}
