//! The node's end of the guest-agent protocol (`atrium_protocol::agent`, documented in
//! `docs/guest-agent-protocol.md`), over the unix socket a runtime offers for a VM.
//!
//! What the agent says is kept in watch channels (ready, the last session started, the guest's
//! clipboard with a sequence number, the last pong), so API handlers and the VM's monitor can
//! wait on them without a lock.

use std::path::Path;
use std::time::{Duration, Instant};

use atrium_protocol::agent::{AgentMessage, HostMessage, Line, LineReader, encode_line};
use atrium_protocol::node::ClipboardState;
use thiserror::Error;
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
    pub last_pong: watch::Receiver<Option<Instant>>,
    pub last_error: watch::Receiver<Option<String>>,
    pub connected: watch::Receiver<bool>,
}

#[derive(Debug)]
struct Senders {
    ready: watch::Sender<bool>,
    hello: watch::Sender<Option<String>>,
    session: watch::Sender<(u64, Option<String>)>,
    clipboard: watch::Sender<ClipboardState>,
    last_pong: watch::Sender<Option<Instant>>,
    last_error: watch::Sender<Option<String>>,
    connected: watch::Sender<bool>,
}

/// A connection to one VM's guest agent.
#[derive(Debug)]
pub struct AgentLink {
    tx: mpsc::Sender<HostMessage>,
    pub view: AgentView,
    tasks: Vec<JoinHandle<()>>,
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
        let (clipboard, clipboard_rx) = watch::channel(ClipboardState { seq: 0, text: None });
        let (last_pong, last_pong_rx) = watch::channel(None);
        let (last_error, last_error_rx) = watch::channel(None);
        let (connected, connected_rx) = watch::channel(true);
        let senders =
            Senders { ready, hello, session, clipboard, last_pong, last_error, connected };
        let view = AgentView {
            ready: ready_rx,
            hello: hello_rx,
            session: session_rx,
            clipboard: clipboard_rx,
            last_pong: last_pong_rx,
            last_error: last_error_rx,
            connected: connected_rx,
        };
        let (r, mut w) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<HostMessage>(64);
        let id = vm_id.to_owned();
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = w.write_all(&encode_line(&msg)).await {
                    tracing::warn!(vm = %id, "writing to the guest agent failed: {e}");
                    break;
                }
            }
        });
        let id = vm_id.to_owned();
        let reader = tokio::spawn(async move {
            read_loop(r, &senders, &id).await;
            let _ = senders.connected.send(false);
        });
        Self { tx, view, tasks: vec![writer, reader] }
    }

    pub async fn send(&self, msg: HostMessage) -> Result<(), AgentError> {
        self.tx.send(msg).await.map_err(|_| AgentError::Closed)
    }
}

async fn read_loop(mut r: tokio::net::unix::OwnedReadHalf, s: &Senders, vm: &str) {
    let mut lines = LineReader::new();
    let mut buf = vec![0u8; 64 * 1024];
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
            let Line::Complete(line) = line else {
                tracing::warn!(vm, "the guest agent sent a line over the limit; dropped");
                continue;
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<AgentMessage>(&line) {
                Ok(msg) => handle(msg, s, vm),
                Err(e) => tracing::warn!(vm, "bad message from the guest agent: {e}"),
            }
        }
    }
}

fn handle(msg: AgentMessage, s: &Senders, vm: &str) {
    match msg {
        AgentMessage::Hello { version, agent } => {
            tracing::info!(vm, version, agent = %agent, "guest agent says hello");
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
        AgentMessage::SessionStarted { username } => {
            tracing::info!(vm, user = %username, "session started in the guest");
            s.session.send_modify(|(n, u)| {
                *n += 1;
                *u = Some(username);
            });
        }
        AgentMessage::Clipboard { text } => {
            s.clipboard.send_modify(|c| {
                c.seq += 1;
                c.text = Some(text);
            });
        }
        AgentMessage::Error { message } => {
            tracing::warn!(vm, "guest agent: {message}");
            let _ = s.last_error.send(Some(message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
