//! The guest-agent protocol: JSON objects, one per line (`\n`), over a virtio-serial port named
//! [`PORT_NAME`] (QEMU) or the builtin VMM's agent channel, and between them the raw bytes of
//! files in transfer, each chunk after a header line `=<id> <len>` ([`encode_data`]). See
//! `docs/guest-agent-protocol.md`.

use serde::{Deserialize, Serialize};

/// The virtio-serial port name the agent opens (`/dev/virtio-ports/<name>` in the guest).
pub const PORT_NAME: &str = "org.atrium.agent.0";
/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;
/// Longest line either side accepts, in bytes (newline included). Longer lines are discarded.
/// A clipboard image of [`MAX_CLIPBOARD_IMAGE`] bytes, in base64, fits.
pub const MAX_LINE: usize = 2 * 1024 * 1024;
/// Longest clipboard text carried, in bytes.
pub const MAX_CLIPBOARD: usize = 256 * 1024;
/// Largest clipboard image carried (a PNG file), in bytes.
pub const MAX_CLIPBOARD_IMAGE: usize = 1024 * 1024;
/// Largest chunk of a file in one data frame, in bytes.
pub const MAX_FILE_CHUNK: usize = 256 * 1024;
/// Longest file name carried, in bytes (a Linux file name's limit).
pub const MAX_FILE_NAME: usize = 255;
/// Most files in transfer at once on one desktop.
pub const MAX_OPEN_FILES: usize = 8;
/// Most files listed by [`AgentMessage::FileList`] (the newest first).
pub const MAX_LISTED_FILES: usize = 500;
/// Most bytes of a download the host lets the agent send ahead ([`HostMessage::FileGet`]'s
/// `window`, and all [`HostMessage::FileMore`] beyond what it has taken).
pub const MAX_FILE_WINDOW: u32 = 4 * 1024 * 1024;

/// Checks a file name that crosses into or out of a desktop: one name (no folder), printable,
/// not hidden, at most [`MAX_FILE_NAME`] bytes.
pub fn validate_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_FILE_NAME {
        return Err(format!("a file name must be 1 to {MAX_FILE_NAME} bytes"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(format!("{name:?} is not a file name: it names a folder"));
    }
    if name.chars().any(char::is_control) {
        return Err("a file name must not have control characters".into());
    }
    if name.starts_with('.') {
        return Err(format!("{name:?} starts with a dot: hidden files are not transferred"));
    }
    if name.trim() != name {
        return Err(format!("{name:?} starts or ends with a space"));
    }
    Ok(())
}

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

/// How many random bytes a [`HostMessage::Renew`] carries: at least a reseed's worth (256 bits).
pub const RENEW_ENTROPY: std::ops::RangeInclusive<usize> = 32..=64;

/// Whether `name` is a host name a clone may take: 1 to 63 of `a-z`, `0-9` and `-`, neither
/// first nor last a `-`.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a host name (1-63 of a-z, 0-9 and -, not at the ends)"))
    }
}

/// Messages from the host (node agent or builtin VMM) to the guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostMessage {
    /// The answer to a hello that carried a `nonce`: from the byte after this line on, the
    /// stream is the host's, fresh. Until it comes, the agent reads nothing as a message (what
    /// it reads could be the rest of a file an earlier agent or connection was sent, made to
    /// look like messages).
    Sync { nonce: u64 },
    /// Health check; the agent answers [`AgentMessage::Pong`] with the same id.
    Ping { id: u64 },
    /// A user signed in to this desktop.
    Session { user: SessionUser },
    /// The user's session ended (floating desktops are destroyed right after).
    EndSession,
    /// Put this text on the guest clipboard.
    Clipboard { text: String },
    /// Put this image (a PNG file of at most [`MAX_CLIPBOARD_IMAGE`] bytes, base64 in the
    /// line) on the guest clipboard. An agent whose desktop has no images answers
    /// [`AgentMessage::Error`].
    ClipboardImage {
        #[serde(with = "crate::b64")]
        png: Vec<u8>,
    },
    /// This desktop is a clone of a template VM: make it its own before anyone uses it. The
    /// agent mixes `entropy` (random bytes from the host, [`RENEW_ENTROPY`]) into the kernel's
    /// random pool and credits it, sets the clock to `time_ms` (milliseconds since the Unix
    /// epoch), makes a new machine-id and takes `hostname` ([`check_hostname`]). Answered with
    /// [`AgentMessage::Renewed`] or [`AgentMessage::Error`].
    Renew {
        #[serde(with = "crate::b64")]
        entropy: Vec<u8>,
        time_ms: u64,
        hostname: String,
    },
    /// Give the desktop's screen this size (the browser window changed). The agent answers
    /// [`AgentMessage::Screen`] once the screen has changed, or [`AgentMessage::Error`].
    ScreenSize { width: u32, height: u32 },
    /// Receive a file of `size` bytes for the signed-in user: its chunks follow as data frames
    /// with this `id`, then [`HostMessage::FileEnd`]. Answered with [`AgentMessage::FileReady`]
    /// (send the data) or [`AgentMessage::FileError`]. Until it is committed the file is the
    /// agent's alone: the user cannot read it or see it under its name.
    FileOpen { id: u32, name: String, size: u64 },
    /// All of file `id` was sent. Answered with [`AgentMessage::FileReceived`] once it is on the
    /// guest's disk, or [`AgentMessage::FileError`] (fewer bytes than announced, disk full).
    FileEnd { id: u32 },
    /// Give the received file `id` to the user (in their transfer folder, under its name or, if
    /// that is taken, a free variant of it). Answered with [`AgentMessage::FileSaved`].
    FileCommit { id: u32 },
    /// Throw file `id` away, received or not (cancelled, refused by a scanner or by policy),
    /// or stop sending it.
    FileAbort { id: u32 },
    /// List the files the signed-in user may download (those in their transfer folder).
    /// Answered with [`AgentMessage::FileList`] or [`AgentMessage::FileError`].
    ListFiles { id: u32 },
    /// Send file `name` of the user's transfer folder as file `id`. Answered with
    /// [`AgentMessage::FileSending`] (its size) and then its bytes as data frames with this
    /// `id`, or [`AgentMessage::FileError`]. The agent sends at most `window` bytes (at most
    /// [`MAX_FILE_WINDOW`]) beyond what [`HostMessage::FileMore`] has added since.
    FileGet { id: u32, name: String, window: u32 },
    /// The host took `bytes` more of download `id`: the agent may send that much more.
    FileMore { id: u32, bytes: u32 },
}

/// Messages from the guest agent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// Sent when the agent starts, and when a host connects again. With a `nonce` (a random
    /// number, new each time), the agent waits for [`HostMessage::Sync`] with it before it
    /// reads anything else.
    Hello {
        version: u32,
        agent: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    /// The desktop can be used (console drawn, or graphical session up).
    Ready,
    /// Answer to [`HostMessage::Ping`].
    Pong { id: u64 },
    /// The session for this user is running in the guest.
    SessionStarted { username: String },
    /// The guest clipboard changed.
    Clipboard { text: String },
    /// The guest clipboard changed to an image: a PNG file of at most [`MAX_CLIPBOARD_IMAGE`]
    /// bytes (base64 in the line).
    ClipboardImage {
        #[serde(with = "crate::b64")]
        png: Vec<u8>,
    },
    /// The desktop's screen has this size (when its X server starts, and after every change).
    /// Only an agent that sends it can be asked for [`HostMessage::ScreenSize`].
    Screen { width: u32, height: u32 },
    /// The clone is its own ([`HostMessage::Renew`]): its new machine-id (32 hex digits).
    Renewed { machine_id: String },
    /// Something the agent could not do.
    Error { message: String },
    /// File `id` is open: its data may be sent.
    FileReady { id: u32 },
    /// All `size` bytes of file `id` are on the guest's disk, not yet the user's.
    FileReceived { id: u32, size: u64 },
    /// File `id` is the user's, as `path` (in the guest).
    FileSaved { id: u32, path: String },
    /// File `id` failed and is gone from the guest (an upload), or stopped (a download, or
    /// a list).
    FileError { id: u32, message: String },
    /// Answer to [`HostMessage::ListFiles`]: the user's files that may be downloaded, newest
    /// first, at most [`MAX_LISTED_FILES`].
    FileList { id: u32, files: Vec<FileEntry> },
    /// Download `id` is `size` bytes: exactly that many follow as data frames.
    FileSending { id: u32, size: u64 },
}

/// A file in the user's transfer folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// Last changed, in seconds since 1970 (UTC).
    pub modified: u64,
}

/// Encodes one message as a line (with its trailing newline).
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("protocol messages always serialize");
    v.push(b'\n');
    v
}

/// Encodes one data frame: a header line `=<id> <len>` and `data` (at most [`MAX_FILE_CHUNK`]
/// bytes).
pub fn encode_data(id: u32, data: &[u8]) -> Vec<u8> {
    debug_assert!(data.len() <= MAX_FILE_CHUNK);
    let mut v = format!("={id} {}\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v
}

/// Splits a byte stream into lines, bounded: a line longer than [`MAX_LINE`] is dropped whole
/// (and reported once as `Err`), never buffered without limit.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    discarding: bool,
    limit: usize,
    /// Inside a data frame: its id and the bytes still to come.
    data: Option<(u32, usize)>,
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
    /// A whole data frame.
    Data {
        id: u32,
        data: Vec<u8>,
    },
    /// A data frame's header that does not parse, or announces more than [`MAX_FILE_CHUNK`]
    /// bytes: the reader cannot know where the frame ends, and reads on as lines.
    BadFrame,
}

/// The id and length in a data frame's header line (without the `=`).
fn frame_header(h: &[u8]) -> Option<(u32, usize)> {
    let h = std::str::from_utf8(h).ok()?;
    let (id, len) = h.split_once(' ')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(id) || !digits(len) {
        return None;
    }
    let len: usize = len.parse().ok()?;
    (len <= MAX_FILE_CHUNK).then_some((id.parse().ok()?, len))
}

impl LineReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader whose lines are shorter than `limit` bytes (the protocol's is [`MAX_LINE`]).
    pub fn with_limit(limit: usize) -> Self {
        Self { buf: Vec::new(), discarding: false, limit, data: None }
    }

    /// Feeds bytes; returns the lines (and data frames) completed by them.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        loop {
            if let Some((id, left)) = self.data {
                let n = left.min(data.len());
                self.buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                if n < left {
                    self.data = Some((id, left - n));
                    return out;
                }
                self.data = None;
                out.push(Line::Data { id, data: std::mem::take(&mut self.buf) });
                continue;
            }
            let Some(pos) = data.iter().position(|&b| b == b'\n') else { break };
            let (head, rest) = data.split_at(pos);
            data = &rest[1..];
            if self.discarding || self.buf.len() + head.len() >= self.limit {
                if !self.discarding {
                    out.push(Line::TooLong);
                }
                self.buf.clear();
                self.discarding = false;
                continue;
            }
            self.buf.extend_from_slice(head);
            let line = std::mem::take(&mut self.buf);
            match line.split_first() {
                Some((b'=', h)) => match frame_header(h) {
                    Some((id, 0)) => out.push(Line::Data { id, data: Vec::new() }),
                    Some((id, len)) => {
                        self.buf.reserve(len);
                        self.data = Some((id, len));
                    }
                    None => out.push(Line::BadFrame),
                },
                _ => out.push(Line::Complete(line)),
            }
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
    fn a_largest_clipboard_image_fits_in_a_line() {
        let png = vec![0xa5; MAX_CLIPBOARD_IMAGE];
        let line = encode_line(&HostMessage::ClipboardImage { png: png.clone() });
        assert!(line.len() < MAX_LINE, "{} bytes", line.len());
        let mut r = LineReader::new();
        let lines = r.push(&line);
        let [Line::Complete(l)] = &lines[..] else { panic!("{lines:?}") };
        assert_eq!(
            serde_json::from_slice::<HostMessage>(l).ok(),
            Some(HostMessage::ClipboardImage { png })
        );
        let a: AgentMessage =
            serde_json::from_str(r#"{"type":"clipboard_image","png":"iVBORw=="}"#).expect("parse");
        assert_eq!(a, AgentMessage::ClipboardImage { png: b"\x89PNG".to_vec() });
        let bad = r#"{"type":"clipboard_image","png":"not base64!"}"#;
        assert!(serde_json::from_str::<AgentMessage>(bad).is_err());
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
    fn data_frames_pass_whole_between_lines() {
        let mut stream =
            encode_line(&HostMessage::FileOpen { id: 3, name: "a.txt".into(), size: 5 });
        stream.extend(encode_data(3, b"he\nl\x00"));
        stream.extend(encode_data(3, b""));
        stream.extend(encode_line(&HostMessage::FileEnd { id: 3 }));
        // Fed in every split, a byte at a time included, it reads the same.
        let mut whole = LineReader::new();
        let expected = whole.push(&stream);
        assert_eq!(expected.len(), 4);
        assert_eq!(expected[1], Line::Data { id: 3, data: b"he\nl\x00".to_vec() });
        assert_eq!(expected[2], Line::Data { id: 3, data: Vec::new() });
        let mut bytewise = LineReader::new();
        let got: Vec<Line> = stream.iter().flat_map(|b| bytewise.push(&[*b])).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn bad_frame_headers_are_refused() {
        let mut r = LineReader::new();
        let too_big = format!("=1 {}\n", MAX_FILE_CHUNK + 1);
        for bad in ["=\n", "=1\n", "=x 2\n", "=1 -2\n", "=1  2\n", "=99999999999 1\n", &too_big] {
            assert_eq!(r.push(bad.as_bytes()), vec![Line::BadFrame], "{bad:?}");
        }
        assert_eq!(r.push(b"{}\n"), vec![Line::Complete(b"{}".to_vec())]);
    }

    #[test]
    fn download_messages_have_a_stable_wire_form() {
        let m = HostMessage::FileGet { id: 4, name: "a b.pdf".into(), window: 1024 };
        assert_eq!(
            encode_line(&m),
            b"{\"type\":\"file_get\",\"id\":4,\"name\":\"a b.pdf\",\"window\":1024}\n"
        );
        let a: AgentMessage = serde_json::from_str(
            r#"{"type":"file_list","id":2,"files":[{"name":"x","size":3,"modified":9}]}"#,
        )
        .unwrap();
        let files = vec![FileEntry { name: "x".into(), size: 3, modified: 9 }];
        assert_eq!(a, AgentMessage::FileList { id: 2, files });
        assert!(
            serde_json::from_str::<AgentMessage>(
                r#"{"type":"file_list","id":2,"files":[{"name":"x","size":3}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn file_names_are_checked() {
        for good in ["report.pdf", "Übersicht 2026.xlsx", "a", "x".repeat(255).as_str()] {
            assert!(validate_file_name(good).is_ok(), "{good:?}");
        }
        for bad in
            ["", ".", "..", ".bashrc", "a/b", "../x", "a\\b", "a\nb", " a", "a ", &"x".repeat(256)]
        {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renewals_have_a_stable_wire_form_and_host_names_are_checked() {
        let m = HostMessage::Renew { entropy: vec![1; 32], time_ms: 5, hostname: "desk-1".into() };
        let line = serde_json::to_string(&m).unwrap();
        assert!(line.starts_with("{\"type\":\"renew\",\"entropy\":\"AQEB"), "{line}");
        assert_eq!(serde_json::from_str::<HostMessage>(&line).unwrap(), m);
        let r: AgentMessage =
            serde_json::from_str("{\"type\":\"renewed\",\"machine_id\":\"ab\"}").unwrap();
        assert_eq!(r, AgentMessage::Renewed { machine_id: "ab".into() });
        for good in ["a", "desk-1", "vm-0123456789abcdef", &"a".repeat(63)] {
            assert!(check_hostname(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a b", "é", &"a".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
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
