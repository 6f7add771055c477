//! The node's end of the guest-agent protocol (`atrium_protocol::agent`, documented in
//! `docs/guest-agent-protocol.md`), over the unix socket a runtime offers for a VM.
//!
//! What the agent says is kept in watch channels (ready, the last session started, the guest's
//! clipboard with a sequence number, the screen's size, the last pong), so API handlers and the VM's monitor can
//! wait on them without a lock.
//!
//! The guest is hostile. Lines are bounded ([`LineReader`]); messages beyond
//! [`MESSAGES_PER_SEC`] (after a burst of [`MESSAGE_BURST`]) are dropped, so a flooding guest
//! costs the node little; what the node logs of a guest is made printable (no forged log lines)
//! and limited to [`LOG_LINES_PER_MIN`] lines a minute per VM, the rest counted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use atrium_protocol::agent::{
    AgentMessage, HostMessage, Line, LineReader, MAX_CLIPBOARD_IMAGE, encode_data, encode_line,
};
use atrium_protocol::filetype::png_size;
use atrium_protocol::node::{ClipboardState, DisplaySize, MAX_DISPLAY_HEIGHT, MAX_DISPLAY_WIDTH};
use thiserror::Error;

mod files;
pub use self::files::{DOWNLOAD_REPLIES, FileChannel, FileReply};
use self::files::{FILE_REPLIES, FileRoutes, Outgoing, route_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("connecting to the guest agent's socket {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("the connection to the guest agent is closed")]
    Closed,
}

/// What the agent has said so far.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub ready: watch::Receiver<bool>,
    /// The `agent` string of the last hello.
    pub hello: watch::Receiver<Option<String>>,
    /// Username of the last `session_started`, with a counter that grows at each.
    pub session: watch::Receiver<(u64, Option<String>)>,
    pub clipboard: watch::Receiver<ClipboardState>,
    /// The screen's size as the agent last reported it, with a counter that grows at each
    /// report (a report of an unchanged size answers a request too).
    pub screen: watch::Receiver<(u64, Option<DisplaySize>)>,
    pub last_pong: watch::Receiver<Option<Instant>>,
    pub last_error: watch::Receiver<Option<String>>,
    pub connected: watch::Receiver<bool>,
    /// The machine-id of the agent's last `renewed` (a clone made its own).
    pub renewed: watch::Receiver<Option<String>>,
}

#[derive(Debug)]
struct Senders {
    ready: watch::Sender<bool>,
    hello: watch::Sender<Option<String>>,
    session: watch::Sender<(u64, Option<String>)>,
    clipboard: watch::Sender<ClipboardState>,
    screen: watch::Sender<(u64, Option<DisplaySize>)>,
    last_pong: watch::Sender<Option<Instant>>,
    last_error: watch::Sender<Option<String>>,
    connected: watch::Sender<bool>,
    renewed: watch::Sender<Option<String>>,
}

/// A connection to one VM's guest agent.
#[derive(Debug)]
pub struct AgentLink {
    tx: mpsc::Sender<Outgoing>,
    pub view: AgentView,
    tasks: Vec<JoinHandle<()>>,
    files: FileRoutes,
    next_file: AtomicU32,
}

impl Drop for AgentLink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl AgentLink {
    /// Connects to `path` (retrying for a few seconds while the runtime makes the socket).
    pub async fn connect(path: &Path, vm_id: &str) -> Result<Self, AgentError> {
        let mut tries = 0;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tries >= 100 => {
                    return Err(AgentError::Connect {
                        path: path.display().to_string(),
                        source: e,
                    });
                }
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        Ok(Self::from_stream(stream, vm_id))
    }

    pub fn from_stream(stream: UnixStream, vm_id: &str) -> Self {
        let (ready, ready_rx) = watch::channel(false);
        let (hello, hello_rx) = watch::channel(None);
        let (session, session_rx) = watch::channel((0, None));
        let (clipboard, clipboard_rx) =
            watch::channel(ClipboardState { seq: 0, text: None, png: None });
        let (screen, screen_rx) = watch::channel((0, None));
        let (last_pong, last_pong_rx) = watch::channel(None);
        let (last_error, last_error_rx) = watch::channel(None);
        let (connected, connected_rx) = watch::channel(true);
        let (renewed, renewed_rx) = watch::channel(None);
        let senders = Senders {
            ready,
            hello,
            session,
            clipboard,
            screen,
            last_pong,
            last_error,
            connected,
            renewed,
        };
        let view = AgentView {
            ready: ready_rx,
            hello: hello_rx,
            session: session_rx,
            clipboard: clipboard_rx,
            screen: screen_rx,
            last_pong: last_pong_rx,
            last_error: last_error_rx,
            connected: connected_rx,
            renewed: renewed_rx,
        };
        let (r, mut w) = stream.into_split();
        // Small: a file's chunks wait here for a slow guest, and each may be 256 KiB.
        let (tx, mut rx) = mpsc::channel::<Outgoing>(16);
        let id = vm_id.to_owned();
        let writer = tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let bytes = match out {
                    Outgoing::Message(msg) => encode_line(&msg),
                    Outgoing::Data(file, data) => encode_data(file, &data),
                };
                if let Err(e) = w.write_all(&bytes).await {
                    tracing::warn!(vm = %id, "writing to the guest agent failed: {e}");
                    break;
                }
            }
        });
        let id = vm_id.to_owned();
        let files = FileRoutes::default();
        let routes = Arc::clone(&files);
        let out = tx.clone();
        let reader = tokio::spawn(async move {
            read_loop(r, &senders, &routes, &out, &id).await;
            // Nobody waits for an answer that cannot come.
            routes.lock().expect("file routes lock").clear();
            let _ = senders.connected.send(false);
        });
        Self { tx, view, tasks: vec![writer, reader], files, next_file: AtomicU32::new(1) }
    }

    pub async fn send(&self, msg: HostMessage) -> Result<(), AgentError> {
        self.tx.send(Outgoing::Message(msg)).await.map_err(|_| AgentError::Closed)
    }

    /// A new file id and the channel for its answers.
    pub fn file_channel(&self) -> Result<FileChannel, AgentError> {
        self.file_channel_of(FILE_REPLIES)
    }

    /// A new file id and the channel for up to `replies` unread answers about it.
    pub fn file_channel_of(&self, replies: usize) -> Result<FileChannel, AgentError> {
        if !*self.view.connected.borrow() {
            return Err(AgentError::Closed);
        }
        let id = self.next_file.fetch_add(1, Ordering::Relaxed);
        let (tx, replies) = mpsc::channel(replies);
        self.files.lock().expect("file routes lock").insert(id, tx);
        Ok(FileChannel { id, tx: self.tx.clone(), replies, routes: Arc::clone(&self.files) })
    }
}

/// Messages a guest agent may send a second, on average.
pub const MESSAGES_PER_SEC: f64 = 50.0;
/// Messages it may send at once before the rate applies.
pub const MESSAGE_BURST: f64 = 200.0;
/// Lines the node logs about one VM's agent a minute; the rest are counted.
pub const LOG_LINES_PER_MIN: u32 = 20;
/// Longest guest text (an agent name, a username, an error) put in a log line.
const MAX_LOGGED_TEXT: usize = 200;

/// A token bucket: [`MESSAGE_BURST`] at once, then [`MESSAGES_PER_SEC`].
#[derive(Debug)]
struct MessageBudget {
    tokens: f64,
    last: Instant,
}

impl MessageBudget {
    fn new(now: Instant) -> Self {
        Self { tokens: MESSAGE_BURST, last: now }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * MESSAGES_PER_SEC;
        self.tokens = (self.tokens + refill).min(MESSAGE_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// At most [`LOG_LINES_PER_MIN`] log lines a minute; what is held back is counted and said with
/// the next line allowed.
#[derive(Debug)]
struct LogBudget {
    window: Instant,
    used: u32,
    held_back: u64,
}

impl LogBudget {
    fn new(now: Instant) -> Self {
        Self { window: now, used: 0, held_back: 0 }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(60) {
            self.window = now;
            self.used = 0;
        }
        if self.used >= LOG_LINES_PER_MIN {
            self.held_back += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// What one link has allowed its guest so far.
#[derive(Debug)]
struct Guard {
    messages: MessageBudget,
    log: LogBudget,
    dropped: u64,
}

impl Guard {
    fn new() -> Self {
        let now = Instant::now();
        Self { messages: MessageBudget::new(now), log: LogBudget::new(now), dropped: 0 }
    }

    /// Logs `what` (a warning about the guest) unless this VM's log budget is spent.
    fn warn(&mut self, vm: &str, what: std::fmt::Arguments<'_>) {
        if let Some(held_back) = self.log.allow(Instant::now()) {
            if held_back > 0 {
                tracing::warn!(vm, held_back, "{what} (and lines held back: this guest says much)");
            } else {
                tracing::warn!(vm, "{what}");
            }
        }
    }
}

/// Guest text fit for a log line.
fn shown(s: &str) -> String {
    atrium_protocol::text::printable(s, MAX_LOGGED_TEXT)
}

async fn read_loop(
    mut r: tokio::net::unix::OwnedReadHalf,
    s: &Senders,
    files: &FileRoutes,
    out: &mpsc::Sender<Outgoing>,
    vm: &str,
) {
    let mut lines = LineReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut guard = Guard::new();
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(vm, "reading from the guest agent failed: {e}");
                return;
            }
        };
        for line in lines.push(&buf[..n]) {
            let line = match line {
                Line::Complete(line) => line,
                Line::TooLong => {
                    guard.warn(vm, format_args!("the guest agent sent a line over the limit"));
                    continue;
                }
                // A download's data (not counted as messages: its window bounds it).
                Line::Data { id, data } => {
                    route_file(files, id, FileReply::Data(data.into()), vm, &mut guard);
                    continue;
                }
                Line::BadFrame => {
                    guard.warn(vm, format_args!("the guest agent sent a bad data frame"));
                    continue;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if !guard.messages.allow(Instant::now()) {
                guard.dropped += 1;
                let dropped = guard.dropped;
                guard.warn(
                    vm,
                    format_args!(
                        "the guest agent sends over {MESSAGES_PER_SEC} messages a second; \
                         {dropped} dropped so far"
                    ),
                );
                continue;
            }
            match serde_json::from_slice::<AgentMessage>(&line) {
                Ok(AgentMessage::Hello { version, agent, nonce }) => {
                    // The agent reads nothing until it is answered (after what is queued).
                    if let Some(nonce) = nonce {
                        let out = out.clone();
                        tokio::spawn(async move {
                            let _ = out.send(Outgoing::Message(HostMessage::Sync { nonce })).await;
                        });
                    }
                    handle(AgentMessage::Hello { version, agent, nonce }, s, files, vm, &mut guard);
                }
                Ok(msg) => handle(msg, s, files, vm, &mut guard),
                Err(e) => guard.warn(
                    vm,
                    format_args!("bad message from the guest agent: {}", shown(&e.to_string())),
                ),
            }
        }
    }
}

fn handle(msg: AgentMessage, s: &Senders, files: &FileRoutes, vm: &str, guard: &mut Guard) {
    match msg {
        AgentMessage::FileReady { id } => route_file(files, id, FileReply::Ready, vm, guard),
        AgentMessage::FileReceived { id, size } => {
            route_file(files, id, FileReply::Received { size }, vm, guard);
        }
        AgentMessage::FileSaved { id, path } => {
            route_file(
                files,
                id,
                FileReply::Saved { path: atrium_protocol::text::printable(&path, 4096) },
                vm,
                guard,
            );
        }
        AgentMessage::FileError { id, message } => {
            route_file(
                files,
                id,
                FileReply::Error { message: atrium_protocol::text::printable(&message, 1000) },
                vm,
                guard,
            );
        }
        AgentMessage::FileList { id, files: list } => {
            let listed = list.len();
            let list: Vec<_> = list
                .into_iter()
                .filter(|f| atrium_protocol::agent::validate_file_name(&f.name).is_ok())
                .take(atrium_protocol::agent::MAX_LISTED_FILES)
                .collect();
            if list.len() < listed {
                guard.warn(
                    vm,
                    format_args!("guest agent: {} names listed left out", listed - list.len()),
                );
            }
            route_file(files, id, FileReply::List(list), vm, guard);
        }
        AgentMessage::FileSending { id, size } => {
            route_file(files, id, FileReply::Sending { size }, vm, guard);
        }
        AgentMessage::Hello { version, agent, .. } => {
            if guard.log.allow(Instant::now()).is_some() {
                tracing::info!(vm, version, agent = %shown(&agent), "guest agent says hello");
            }
            let _ = s.hello.send(Some(agent));
        }
        AgentMessage::Ready => {
            if !*s.ready.borrow() {
                tracing::info!(vm, "guest agent is ready");
            }
            let _ = s.ready.send(true);
        }
        AgentMessage::Pong { .. } => {
            let _ = s.last_pong.send(Some(Instant::now()));
        }
        AgentMessage::Renewed { machine_id } => {
            // A machine-id is 32 lower-case hex digits; anything else is not believed.
            let well_formed = machine_id.len() == 32
                && machine_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !well_formed {
                guard.warn(vm, format_args!("guest agent: a renewal with a bad machine-id"));
                return;
            }
            tracing::info!(vm, "the clone is its own");
            let _ = s.renewed.send(Some(machine_id));
        }
        AgentMessage::SessionStarted { username } => {
            if guard.log.allow(Instant::now()).is_some() {
                tracing::info!(vm, user = %shown(&username), "session started in the guest");
            }
            s.session.send_modify(|(n, u)| {
                *n += 1;
                *u = Some(username);
            });
        }
        AgentMessage::Clipboard { text } => {
            s.clipboard.send_modify(|c| {
                c.seq += 1;
                c.text = Some(text);
                c.png = None;
            });
        }
        AgentMessage::ClipboardImage { png } => {
            // Only a PNG file within the limit is believed: the guest is not trusted.
            let checked = if png.len() > MAX_CLIPBOARD_IMAGE {
                Err(format!("{} bytes, over {MAX_CLIPBOARD_IMAGE}", png.len()))
            } else {
                png_size(&png).map(drop)
            };
            if let Err(e) = checked {
                guard.warn(vm, format_args!("guest agent: a clipboard image ignored: {e}"));
                return;
            }
            s.clipboard.send_modify(|c| {
                c.seq += 1;
                c.text = None;
                c.png = Some(png);
            });
        }
        AgentMessage::Screen { width, height } => {
            // A size no display could have is not believed (nor logged beyond the limit).
            if width == 0 || height == 0 || width > MAX_DISPLAY_WIDTH || height > MAX_DISPLAY_HEIGHT
            {
                guard.warn(vm, format_args!("guest agent: a screen of {width}x{height} ignored"));
                return;
            }
            s.screen.send_modify(|(n, size)| {
                *n += 1;
                *size = Some(DisplaySize::new(width, height));
            });
        }
        AgentMessage::Error { message } => {
            guard.warn(vm, format_args!("guest agent: {}", shown(&message)));
            let _ = s.last_error.send(Some(shown(&message)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real PNG file of `width` x `height` black pixels.
    fn real_png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let pixels = vec![0; usize::try_from(width * height * 4).expect("small")];
        enc.write_header().expect("header").write_image_data(&pixels).expect("pixels");
        out
    }
    use atrium_protocol::agent::SessionUser;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[tokio::test]
    async fn tracks_what_the_agent_says_and_sends_host_messages() {
        let (node_end, agent_end) = UnixStream::pair().expect("pair");
        let link = AgentLink::from_stream(node_end, "vm-test");
        let (r, mut w) = agent_end.into_split();
        let mut r = BufReader::new(r);

        w.write_all(
            b"{\"type\":\"hello\",\"version\":1,\"agent\":\"test/1\"}\n{\"type\":\"ready\"}\n",
        )
        .await
        .expect("write");
        let mut ready = link.view.ready.clone();
        ready.wait_for(|r| *r).await.expect("ready");
        assert_eq!(link.view.hello.borrow().as_deref(), Some("test/1"));

        // Garbage and oversize lines are dropped; the link keeps working.
        w.write_all(b"{\"type\":\"nonsense\"}\nnot json\n\n").await.expect("write");
        w.write_all(b"{\"type\":\"clipboard\",\"text\":\"copied\"}\n").await.expect("write");
        let mut clip = link.view.clipboard.clone();
        let state = clip.wait_for(|c| c.seq == 1).await.expect("clipboard").clone();
        assert_eq!(state.text.as_deref(), Some("copied"));
        // An image that is not a PNG file is not believed; a PNG file replaces the text.
        let fake = AgentMessage::ClipboardImage { png: b"GIF89a, not a PNG".to_vec() };
        w.write_all(&encode_line(&fake)).await.expect("write");
        let png = real_png(16, 8);
        let smuggled = [png.clone(), b"anything after the image".to_vec()].concat();
        let fake = AgentMessage::ClipboardImage { png: smuggled };
        w.write_all(&encode_line(&fake)).await.expect("write");
        w.write_all(&encode_line(&AgentMessage::ClipboardImage { png: png.clone() }))
            .await
            .expect("write");
        let state = clip.wait_for(|c| c.seq == 2).await.expect("clipboard image").clone();
        assert_eq!((state.text, state.png), (None, Some(png)), "a fake image was taken");

        let user = SessionUser {
            username: "alice".into(),
            display_name: None,
            uid: None,
            gid: None,
            keyboard_layout: None,
        };
        link.send(HostMessage::Session { user }).await.expect("send");
        let mut line = String::new();
        r.read_line(&mut line).await.expect("read");
        assert!(line.starts_with("{\"type\":\"session\""), "{line}");
        w.write_all(b"{\"type\":\"session_started\",\"username\":\"alice\"}\n").await.expect("w");
        let mut session = link.view.session.clone();
        let s = session.wait_for(|s| s.0 == 1).await.expect("session").clone();
        assert_eq!(s.1.as_deref(), Some("alice"));

        drop(w);
        drop(r);
        let mut connected = link.view.connected.clone();
        connected.wait_for(|c| !*c).await.expect("closed");
    }

    /// A download's size, list and data frames reach its channel; a guest that floods a
    /// download beyond its queue fails it (its channel closes) rather than losing bytes.
    #[tokio::test]
    async fn downloads_come_back_to_their_channel_and_a_flood_fails_them() {
        let (node_end, agent_end) = UnixStream::pair().expect("pair");
        let link = AgentLink::from_stream(node_end, "vm-downloads");
        let (_r, mut w) = agent_end.into_split();
        let mut a = link.file_channel_of(DOWNLOAD_REPLIES).expect("channel");
        let mut list = link.file_channel().expect("channel");
        let mut stream = encode_line(&AgentMessage::FileSending { id: a.id, size: 5 });
        stream.extend(encode_data(a.id, b"hello"));
        stream.extend(encode_data(4242, b"late frame of a stopped download"));
        stream.extend(encode_line(&AgentMessage::FileList {
            id: list.id,
            files: vec![
                atrium_protocol::agent::FileEntry { name: "a.txt".into(), size: 1, modified: 2 },
                atrium_protocol::agent::FileEntry { name: "../etc".into(), size: 1, modified: 2 },
            ],
        }));
        w.write_all(&stream).await.expect("write");
        assert_eq!(a.reply().await, Some(FileReply::Sending { size: 5 }));
        assert_eq!(
            a.reply().await,
            Some(FileReply::Data(axum::body::Bytes::from_static(b"hello")))
        );
        let Some(FileReply::List(files)) = list.reply().await else { panic!("no list") };
        assert_eq!(files.len(), 1, "a name that may not cross is left out");
        assert_eq!(files[0].name, "a.txt");
        let mut flood = Vec::new();
        for _ in 0..DOWNLOAD_REPLIES + 5 {
            flood.extend(encode_data(a.id, b"x"));
        }
        w.write_all(&flood).await.expect("write");
        let mut got = 0;
        while let Some(r) = a.reply().await {
            assert_eq!(r, FileReply::Data(axum::body::Bytes::from_static(b"x")));
            got += 1;
        }
        assert_eq!(got, DOWNLOAD_REPLIES, "what fit is read, then the channel ends");
    }

    /// A file's chunks reach the agent as data frames between lines; answers reach the file's
    /// channel and no other; an answer about a file nobody asked for is dropped.
    #[tokio::test]
    async fn files_go_out_as_frames_and_answers_come_back_to_their_channel() {
        let (node_end, agent_end) = UnixStream::pair().expect("pair");
        let link = AgentLink::from_stream(node_end, "vm-files");
        let (mut r, mut w) = agent_end.into_split();
        let mut a = link.file_channel().expect("channel");
        let mut b = link.file_channel().expect("channel");
        assert_ne!(a.id, b.id);
        a.send(HostMessage::FileOpen { id: a.id, name: "x.bin".into(), size: 300_000 })
            .await
            .expect("send");
        let data = vec![7u8; 300_000];
        a.data(axum::body::Bytes::from(data.clone())).await.expect("data");
        a.send(HostMessage::FileEnd { id: a.id }).await.expect("send");
        let mut reader = LineReader::new();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < 4 {
            let n = r.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early");
            got.extend(reader.push(&buf[..n]));
        }
        assert!(matches!(&got[0], Line::Complete(l) if l.starts_with(b"{\"type\":\"file_open\"")));
        let mut joined = Vec::new();
        for l in &got[1..3] {
            let Line::Data { id, data } = l else { panic!("{l:?}") };
            assert_eq!(*id, a.id);
            assert!(data.len() <= atrium_protocol::agent::MAX_FILE_CHUNK);
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, data);
        let answers = format!(
            "{{\"type\":\"file_received\",\"id\":{},\"size\":300000}}\n\
             {{\"type\":\"file_error\",\"id\":{},\"message\":\"disk\\nfull\"}}\n\
             {{\"type\":\"file_ready\",\"id\":999}}\n",
            a.id, b.id
        );
        w.write_all(answers.as_bytes()).await.expect("write");
        assert_eq!(a.reply().await, Some(FileReply::Received { size: 300_000 }));
        assert_eq!(b.reply().await, Some(FileReply::Error { message: "disk\u{fffd}full".into() }));
        assert_eq!(a.try_reply(), None);
        drop(w);
        drop(r);
        assert_eq!(a.reply().await, None, "a closed link ends every channel");
    }

    #[test]
    fn budgets_allow_a_burst_then_a_rate_and_count_what_they_hold_back() {
        let t0 = Instant::now();
        let mut m = MessageBudget::new(t0);
        let burst = (0..1000).filter(|_| m.allow(t0)).count();
        assert_eq!(burst as f64, MESSAGE_BURST);
        let later = t0 + Duration::from_secs(2);
        let refilled = (0..1000).filter(|_| m.allow(later)).count();
        assert_eq!(refilled as f64, 2.0 * MESSAGES_PER_SEC);

        let mut log = LogBudget::new(t0);
        let shown = (0..100).filter(|_| log.allow(t0).is_some()).count();
        assert_eq!(shown, LOG_LINES_PER_MIN as usize);
        assert_eq!(
            log.allow(t0 + Duration::from_secs(61)),
            Some(100 - u64::from(LOG_LINES_PER_MIN))
        );
    }

    /// A guest flooding its channel: what is beyond the budget is dropped, the link stays up
    /// and is heard again once the guest calms down; what it says is kept printable.
    #[tokio::test]
    async fn a_flooding_guest_is_heard_within_its_budget_and_cannot_forge_log_lines() {
        let (node_end, agent_end) = UnixStream::pair().expect("pair");
        let link = AgentLink::from_stream(node_end, "vm-flood");
        let (_r, mut w) = agent_end.into_split();
        let started = Instant::now();
        let mut flood = Vec::new();
        for i in 0..5000 {
            flood.extend_from_slice(
                format!("{{\"type\":\"clipboard\",\"text\":\"{i}\"}}\n").as_bytes(),
            );
        }
        w.write_all(&flood).await.expect("write");
        w.write_all(b"{\"type\":\"error\",\"message\":\"x\\n2026-12-01 INFO forged\\u001b[2J\"}\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = started.elapsed().as_secs_f64();
        let seen = link.view.clipboard.borrow().seq;
        let most = MESSAGE_BURST + MESSAGES_PER_SEC * took + 1.0;
        assert!((seen as f64) <= most, "{seen} messages handled in {took:.2} s (at most {most})");
        assert!(seen as f64 >= MESSAGE_BURST - 1.0, "{seen}");
        // Calm again: heard.
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.write_all(b"{\"type\":\"error\",\"message\":\"last\\nline\"}\n").await.expect("write");
        let mut err = link.view.last_error.clone();
        let e = err
            .wait_for(|e| e.as_deref().is_some_and(|e| e.starts_with("last")))
            .await
            .expect("the calmed guest is heard")
            .clone()
            .expect("an error");
        assert!(!e.chars().any(char::is_control), "{e:?}");
    }
}
