//! The guest-agent protocol: JSON objects, one per line (`\n`), over a virtio-serial port named
//! [`PORT_NAME`] (QEMU) or the builtin VMM's agent channel. See `docs/guest-agent-protocol.md`.

use serde::{Deserialize, Serialize};

/// The virtio-serial port name the agent opens (`/dev/virtio-ports/<name>` in the guest).
pub const PORT_NAME: &str = "org.atrium.agent.0";
/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;
/// Longest line either side accepts, in bytes (newline included). Longer lines are discarded.
pub const MAX_LINE: usize = 1024 * 1024;
/// Longest clipboard text carried, in bytes.
pub const MAX_CLIPBOARD: usize = 256 * 1024;

/// The directory user a desktop is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionUser {
    /// Directory username (login name).
    pub username: String,
    /// Display name (`cn` / `displayName`).
    #[serde(default)]
    pub display_name: Option<String>,
    /// POSIX uid and gid where the directory has them.
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// XKB keyboard layout of the client, e.g. `us` or `de`.
    #[serde(default)]
    pub keyboard_layout: Option<String>,
}

impl SessionUser {
    /// Usernames become Unix login names in the guest: keep them to a safe set.
    pub fn validate(&self) -> Result<(), String> {
        let u = &self.username;
        if u.is_empty() || u.len() > 64 {
            return Err("username must be 1 to 64 bytes".into());
        }
        if u.starts_with('-')
            || !u.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        {
            return Err(format!("username {u:?} has characters a guest cannot log in with"));
        }
        if let Some(d) = &self.display_name
            && (d.len() > 256 || d.chars().any(char::is_control))
        {
            return Err("display_name is too long or has control characters".into());
        }
        if let Some(l) = &self.keyboard_layout
            && (l.is_empty()
                || l.len() > 32
                || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-+()".contains(&b)))
        {
            return Err(format!("keyboard_layout {l:?} is not an XKB layout name"));
        }
        if self.uid == Some(0) || self.gid == Some(0) {
            return Err("uid and gid 0 are refused".into());
        }
        Ok(())
    }
}

/// Messages from the host (node agent or builtin VMM) to the guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostMessage {
    /// Health check; the agent answers [`AgentMessage::Pong`] with the same id.
    Ping { id: u64 },
    /// A user signed in to this desktop.
    Session { user: SessionUser },
    /// The user's session ended (floating desktops are destroyed right after).
    EndSession,
    /// Put this text on the guest clipboard.
    Clipboard { text: String },
    /// Give the desktop's screen this size (the browser window changed). The agent answers
    /// [`AgentMessage::Screen`] once the screen has changed, or [`AgentMessage::Error`].
    ScreenSize { width: u32, height: u32 },
}

/// Messages from the guest agent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// Sent once when the agent starts.
    Hello { version: u32, agent: String },
    /// The desktop can be used (console drawn, or graphical session up).
    Ready,
    /// Answer to [`HostMessage::Ping`].
    Pong { id: u64 },
    /// The session for this user is running in the guest.
    SessionStarted { username: String },
    /// The guest clipboard changed.
    Clipboard { text: String },
    /// The desktop's screen has this size (when its X server starts, and after every change).
    /// Only an agent that sends it can be asked for [`HostMessage::ScreenSize`].
    Screen { width: u32, height: u32 },
    /// Something the agent could not do.
    Error { message: String },
}

/// Encodes one message as a line (with its trailing newline).
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("protocol messages always serialize");
    v.push(b'\n');
    v
}

/// Splits a byte stream into lines, bounded: a line longer than [`MAX_LINE`] is dropped whole
/// (and reported once as `Err`), never buffered without limit.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    discarding: bool,
    limit: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::with_limit(MAX_LINE)
    }
}

/// One item out of [`LineReader::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    TooLong,
}

impl LineReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader whose lines are shorter than `limit` bytes (the protocol's is [`MAX_LINE`]).
    pub fn with_limit(limit: usize) -> Self {
        Self { buf: Vec::new(), discarding: false, limit }
    }

    /// Feeds bytes; returns the lines completed by them.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            let (head, rest) = data.split_at(pos);
            if self.discarding || self.buf.len() + head.len() >= self.limit {
                if !self.discarding {
                    out.push(Line::TooLong);
                }
            } else {
                self.buf.extend_from_slice(head);
                out.push(Line::Complete(std::mem::take(&mut self.buf)));
            }
            self.buf.clear();
            self.discarding = false;
            data = &rest[1..];
        }
        if !self.discarding {
            if self.buf.len() + data.len() >= self.limit {
                self.buf.clear();
                self.discarding = true;
                out.push(Line::TooLong);
            } else {
                self.buf.extend_from_slice(data);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_a_stable_wire_form() {
        let m = HostMessage::Ping { id: 7 };
        assert_eq!(encode_line(&m), b"{\"type\":\"ping\",\"id\":7}\n");
        let a: AgentMessage = serde_json::from_str(r#"{"type":"ready"}"#).unwrap();
        assert_eq!(a, AgentMessage::Ready);
        assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"pong","id":1,"x":2}"#).is_err());
    }

    #[test]
    fn line_reader_splits_and_bounds() {
        let mut r = LineReader::new();
        assert_eq!(r.push(b"ab"), vec![]);
        assert_eq!(
            r.push(b"c\nd\n"),
            vec![Line::Complete(b"abc".to_vec()), Line::Complete(b"d".to_vec())]
        );
        let big = vec![b'x'; MAX_LINE + 10];
        assert_eq!(r.push(&big), vec![Line::TooLong]);
        assert_eq!(r.push(&big), vec![]);
        assert_eq!(r.push(b"tail\nok\n"), vec![Line::Complete(b"ok".to_vec())]);
    }

    #[test]
    fn usernames_are_checked() {
        let mut u = SessionUser {
            username: "alice".into(),
            display_name: Some("Alice Ö".into()),
            uid: Some(10001),
            gid: Some(10001),
            keyboard_layout: Some("de".into()),
        };
        assert!(u.validate().is_ok());
        u.username = "élodie".into();
        assert!(u.validate().is_ok());
        for bad in ["", "-rf", "a b", "a/b", "a;b", "a\0"] {
            u.username = bad.into();
            assert!(u.validate().is_err(), "{bad:?}");
        }
        u.username = "root".into();
        u.uid = Some(0);
        assert!(u.validate().is_err());
    }
}
