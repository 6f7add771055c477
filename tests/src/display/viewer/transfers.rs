//! The viewer's files: uploads the way the web client sends them, downloads the way it takes
//! them (acknowledging each chunk, keeping the bytes), and what the proxy said of each.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use atrium_protocol::agent::FileEntry;
use atrium_protocol::display::{ClientMessage, FILE_WINDOW, MAX_FILE_CHUNK, ServerMessage};

use super::DisplayViewer;

/// One upload as the viewer heard of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upload {
    pub done: u64,
    /// `Ok((path, sha256))` once saved; `Err(message)` once refused.
    pub end: Option<Result<(String, [u8; 32]), String>>,
    /// The link's token, when the proxy offered one ([`ClientMessage::FilePut`]).
    pub link: Option<String>,
    /// The proxy withdrew the link unused: the bytes are to come over the connection.
    pub unlinked: bool,
}

/// One download as the viewer heard of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Download {
    /// The size the proxy announced, once it started sending.
    pub size: Option<u64>,
    /// How far the proxy's scanner got, as it said.
    pub checked: u64,
    pub data: Vec<u8>,
    /// What this viewer acknowledged.
    pub taken: u64,
    /// The most bytes received beyond what was acknowledged at any time.
    pub most_ahead: u64,
    /// `Ok(sha256)` once done; `Err(message)` once refused.
    pub end: Option<Result<[u8; 32], String>>,
    /// The link's size and token, when the proxy offered one ([`ClientMessage::FileFetch`]).
    pub link: Option<(u64, String)>,
}

impl DisplayViewer {
    /// Notes a message about a file (a download's when its id is one).
    pub(super) fn heard_file(&mut self, m: ServerMessage) -> anyhow::Result<()> {
        match m {
            ServerMessage::FileList { message, files } => self.files = Some((message, files)),
            ServerMessage::FileProgress { id, done } => match self.downloads.get_mut(&id) {
                Some(d) => d.checked = done,
                None => self.uploads.entry(id).or_default().done = done,
            },
            ServerMessage::FileSaved { id, sha256, path } => {
                self.uploads.entry(id).or_default().end = Some(Ok((path, sha256)));
            }
            ServerMessage::FileRefused { id, message } => match self.downloads.get_mut(&id) {
                Some(d) => d.end = Some(Err(message)),
                None => self.uploads.entry(id).or_default().end = Some(Err(message)),
            },
            ServerMessage::FileStart { id, size } => {
                let Some(d) = self.downloads.get_mut(&id) else { bail!("FileStart of {id}?") };
                ensure!(d.size.is_none(), "download {id} started twice");
                d.size = Some(size);
            }
            ServerMessage::FileChunk { id, data } => {
                let Some(d) = self.downloads.get_mut(&id) else { bail!("FileChunk of {id}?") };
                let size = d.size.ok_or_else(|| anyhow::anyhow!("a chunk before FileStart"))?;
                ensure!(d.data.len() + data.len() <= usize::try_from(size)?, "more than the file");
                d.data.extend_from_slice(&data);
                d.most_ahead = d.most_ahead.max(d.data.len() as u64 - d.taken);
            }
            ServerMessage::FileDone { id, sha256 } => {
                let Some(d) = self.downloads.get_mut(&id) else { bail!("FileDone of {id}?") };
                d.end = Some(Ok(sha256));
            }
            ServerMessage::FileLink { id, size, token } => {
                let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
                if let Some(d) = self.downloads.get_mut(&id) {
                    ensure!(d.link.is_none() && d.size.is_none(), "download {id} started twice");
                    d.link = Some((size, hex));
                } else {
                    let u = self.uploads.entry(id).or_default();
                    ensure!(u.link.is_none(), "upload {id} got two links");
                    u.link = Some(hex);
                }
            }
            ServerMessage::FileUnlinked { id } => {
                self.uploads.entry(id).or_default().unlinked = true
            }
            other => bail!("not a file message: {other:?}"),
        }
        Ok(())
    }

    /// Asks for the desktop's files and waits for the answer: its message (empty, or why
    /// there is no list) and the files.
    pub async fn list_files(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<(String, Vec<FileEntry>)> {
        let deadline = Instant::now() + within;
        self.files = None;
        self.send(ClientMessage::FileList).await?;
        loop {
            if let Some(list) = self.files.take() {
                return Ok(list);
            }
            ensure!(Instant::now() < deadline, "no file list in {within:?}");
            self.pump(Duration::from_millis(200)).await?;
        }
    }

    /// Downloads file `name` as download `id` the way the web client does, acknowledging what
    /// it received; with `cancel_after`, cancels once that many bytes came. Returns how the
    /// download ended, and what came of it is in [`DisplayViewer::downloads`].
    pub async fn download(
        &mut self,
        id: u32,
        name: &str,
        cancel_after: Option<u64>,
        within: Duration,
    ) -> anyhow::Result<Result<[u8; 32], String>> {
        self.downloads.insert(id, Download::default());
        self.send(ClientMessage::FileGet { id, name: name.into() }).await?;
        self.take_download(id, name, cancel_after, within).await
    }

    /// Asks for file `name` as download `id` over a link ([`ClientMessage::FileFetch`]) and
    /// waits for the proxy's answer: `Ok((size, token))` of the link, or `Err(message)`.
    pub async fn offer_link(
        &mut self,
        id: u32,
        name: &str,
        within: Duration,
    ) -> anyhow::Result<Result<(u64, String), String>> {
        self.downloads.insert(id, Download::default());
        self.send(ClientMessage::FileFetch { id, name: name.into() }).await?;
        self.wait_until(&format!("a link for download {id}"), within, |v| {
            v.downloads[&id].link.is_some() || v.downloads[&id].end.is_some()
        })
        .await?;
        let d = &self.downloads[&id];
        match (&d.link, &d.end) {
            (Some(link), _) => Ok(Ok(link.clone())),
            (None, Some(Err(m))) => Ok(Err(m.clone())),
            (None, end) => bail!("download {id} ended without a link: {end:?}"),
        }
    }

    /// Takes download `id` as it comes over this connection (acknowledging each chunk), until
    /// it ends; with `cancel_after`, cancels once that many bytes came.
    pub async fn take_download(
        &mut self,
        id: u32,
        name: &str,
        cancel_after: Option<u64>,
        within: Duration,
    ) -> anyhow::Result<Result<[u8; 32], String>> {
        let deadline = Instant::now() + within;
        let mut cancelled = false;
        loop {
            let d = &self.downloads[&id];
            if let Some(end) = d.end.clone() {
                return Ok(end);
            }
            let got = d.data.len() as u64;
            if !cancelled && cancel_after.is_some_and(|c| got >= c) {
                self.send(ClientMessage::FileCancel { id }).await?;
                cancelled = true;
            } else if got > d.taken {
                self.downloads.get_mut(&id).expect("inserted").taken = got;
                self.send(ClientMessage::FileTaken { id, done: got }).await?;
            }
            ensure!(Instant::now() < deadline, "download {id} of {name} did not end in {within:?}");
            self.pump(Duration::from_millis(200)).await?;
        }
    }

    /// Uploads `data` as `name` (upload `id`) the way the web client does: chunks of at most
    /// [`MAX_FILE_CHUNK`], never more than [`FILE_WINDOW`] beyond the progress heard, drawing
    /// frames meanwhile. With `cancel_after`, cancels once that many bytes are sent. Returns how
    /// the upload ended.
    pub async fn upload(
        &mut self,
        id: u32,
        name: &str,
        data: &[u8],
        cancel_after: Option<u64>,
        within: Duration,
    ) -> anyhow::Result<Result<(String, [u8; 32]), String>> {
        let size = data.len() as u64;
        self.send(ClientMessage::FileOpen { id, size, name: name.into() }).await?;
        self.send_upload(id, name, data, cancel_after, within).await
    }

    /// Asks for upload `id` of `size` bytes over a link ([`ClientMessage::FilePut`]) and waits
    /// for the proxy's answer: `Ok(token)` of the link, or `Err(message)` when refused.
    pub async fn put_link(
        &mut self,
        id: u32,
        name: &str,
        size: u64,
        within: Duration,
    ) -> anyhow::Result<Result<String, String>> {
        self.uploads.insert(id, Upload::default());
        self.send(ClientMessage::FilePut { id, size, name: name.into() }).await?;
        self.wait_until(&format!("a link for upload {id}"), within, |v| {
            v.uploads[&id].link.is_some() || v.uploads[&id].end.is_some()
        })
        .await?;
        let u = &self.uploads[&id];
        match (&u.link, &u.end) {
            (Some(token), _) => Ok(Ok(token.clone())),
            (None, Some(Err(m))) => Ok(Err(m.clone())),
            (None, end) => bail!("upload {id} ended without a link: {end:?}"),
        }
    }

    /// Waits for upload `id` to end.
    pub async fn upload_end(
        &mut self,
        id: u32,
        within: Duration,
    ) -> anyhow::Result<Result<(String, [u8; 32]), String>> {
        self.wait_upload_end(id, Instant::now() + within).await
    }

    /// Sends the bytes of upload `id` (opened already) as the web client does, and waits for
    /// its end.
    pub async fn send_upload(
        &mut self,
        id: u32,
        name: &str,
        data: &[u8],
        cancel_after: Option<u64>,
        within: Duration,
    ) -> anyhow::Result<Result<(String, [u8; 32]), String>> {
        let deadline = Instant::now() + within;
        let size = data.len() as u64;
        let mut sent = 0u64;
        loop {
            let heard = self.uploads.get(&id).cloned().unwrap_or_default();
            if let Some(end) = heard.end {
                return Ok(end);
            }
            if cancel_after.is_some_and(|c| sent >= c) {
                self.send(ClientMessage::FileCancel { id }).await?;
                return self.wait_upload_end(id, deadline).await;
            }
            ensure!(Instant::now() < deadline, "upload {id} of {name} did not end in {within:?}");
            if sent < size && sent < heard.done + FILE_WINDOW {
                let n = usize::try_from((size - sent).min(MAX_FILE_CHUNK as u64))?;
                let at = usize::try_from(sent)?;
                self.send(ClientMessage::FileData { id, data: data[at..at + n].to_vec() }).await?;
                sent += n as u64;
            } else {
                self.pump(Duration::from_millis(200)).await?;
            }
        }
    }

    async fn wait_upload_end(
        &mut self,
        id: u32,
        deadline: Instant,
    ) -> anyhow::Result<Result<(String, [u8; 32]), String>> {
        loop {
            if let Some(end) = self.uploads.get(&id).and_then(|u| u.end.clone()) {
                return Ok(end);
            }
            ensure!(Instant::now() < deadline, "upload {id} did not end in time");
            self.pump(Duration::from_millis(200)).await?;
        }
    }
}
