//! A WebSocket viewer for tests: speaks the display protocol, keeps the image it is sent (and
//! the clipboard, and what it hears of its uploads and downloads), types into the desktop.

mod transfers;
pub use transfers::{Download, Upload};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrium_protocol::display::{ClientMessage, ImageFormat, Rect, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::screen::Screen;

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
    /// The desktop's clipboard image (a PNG file) as last received.
    pub clipboard_image: Option<Vec<u8>>,
    /// What the proxy said of each upload: the bytes taken so far, and how it ended.
    pub uploads: HashMap<u32, Upload>,
    /// What came of each download.
    pub downloads: HashMap<u32, Download>,
    /// The last file list the proxy sent: its message, and the files.
    pub files: Option<(String, Vec<atrium_protocol::agent::FileEntry>)>,
    /// A message about a file came since the last [`DisplayViewer::pump`] returned.
    file_news: bool,
    /// Clipboard texts refused for their size: (out of the desktop, size, limit).
    pub clipboard_refused: Vec<(bool, u32, u32)>,
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
            clipboard_image: None,
            uploads: HashMap::new(),
            downloads: HashMap::new(),
            files: None,
            file_news: false,
            clipboard_refused: Vec::new(),
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
            clipboard_image: None,
            uploads: HashMap::new(),
            downloads: HashMap::new(),
            files: None,
            file_news: false,
            clipboard_refused: Vec::new(),
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
            ServerMessage::ClipboardImage { png } => self.clipboard_image = Some(png),
            ServerMessage::ClipboardRefused { out, size, limit } => {
                self.clipboard_refused.push((out, size, limit));
            }
            m @ (ServerMessage::FileProgress { .. }
            | ServerMessage::FileSaved { .. }
            | ServerMessage::FileRefused { .. }
            | ServerMessage::FileList { .. }
            | ServerMessage::FileStart { .. }
            | ServerMessage::FileChunk { .. }
            | ServerMessage::FileDone { .. }
            | ServerMessage::FileLink { .. }
            | ServerMessage::FileUnlinked { .. }) => {
                self.file_news = true;
                self.heard_file(m)?;
            }
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

    /// Handles messages until a frame ends (acknowledging it), a message about a file came, or
    /// `wait` passes; true when a frame ended.
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
            if std::mem::take(&mut self.file_news) {
                return Ok(false);
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
