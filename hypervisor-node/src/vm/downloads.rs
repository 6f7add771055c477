//! Files downloaded from a guest, through its agent: the list of the signed-in user's transfer
//! folder, and one file's bytes as they come, taken from the guest only as fast as the caller
//! reads them (the agent sends at most [`DOWNLOAD_WINDOW`] bytes ahead).

use std::time::Duration;

use atrium_protocol::agent::{FileEntry, HostMessage, validate_file_name};
use atrium_protocol::node::FieldError;
use axum::body::Bytes;

use super::files::{ANSWER_TIMEOUT, SEND_TIMEOUT, answer, unexpected, within_send};
use super::{VmError, VmManager};
use crate::agent_link::{DOWNLOAD_REPLIES, FileChannel, FileReply};

/// How far the agent may send ahead of the reader: eight whole chunks.
pub const DOWNLOAD_WINDOW: u32 = 2 * 1024 * 1024;
const _: () = assert!(DOWNLOAD_WINDOW as usize == 8 * atrium_protocol::agent::MAX_FILE_CHUNK);
const _: () = assert!(DOWNLOAD_WINDOW <= atrium_protocol::agent::MAX_FILE_WINDOW);
const _: () = assert!(DOWNLOAD_REPLIES > 8 + 2);
/// How long the next bytes of a download may take to come from the guest.
const DATA_TIMEOUT: Duration = Duration::from_secs(60);

/// A file coming from a guest: its size, then its bytes ([`Download::next`]). Dropping it
/// before the last byte stops the agent sending.
#[derive(Debug)]
pub struct Download {
    pub size: u64,
    channel: Option<FileChannel>,
    got: u64,
    vm: String,
}

impl Drop for Download {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Download {
    /// Tells the agent to stop sending (once; nothing when the file came whole).
    fn stop(&mut self) {
        if let Some(c) = self.channel.take() {
            tokio::spawn(async move {
                let abort = c.send(HostMessage::FileAbort { id: c.id });
                let _ = tokio::time::timeout(SEND_TIMEOUT, abort).await;
            });
        }
    }

    /// The next bytes; `None` once all [`Download::size`] bytes came (or after an error).
    pub async fn next(&mut self) -> Option<Result<Bytes, VmError>> {
        if self.got == self.size {
            // Whole: nothing to stop.
            self.channel = None;
            return None;
        }
        self.channel.as_ref()?;
        let r = self.take().await;
        if r.is_err() {
            self.stop();
        }
        Some(r)
    }

    async fn take(&mut self) -> Result<Bytes, VmError> {
        let c = self.channel.as_mut().expect("next checks it");
        let data = match tokio::time::timeout(DATA_TIMEOUT, c.reply()).await {
            Ok(Some(FileReply::Data(data))) => data,
            Ok(Some(FileReply::Error { message })) => {
                return Err(VmError::Conflict(format!(
                    "the desktop stopped the download: {message}"
                )));
            }
            Ok(Some(other)) => return Err(unexpected(&other)),
            Ok(None) => {
                return Err(VmError::Conflict(
                    "the desktop's agent went away, or sent more than it was asked for".into(),
                ));
            }
            Err(_) => {
                return Err(VmError::AgentTimeout {
                    id: self.vm.clone(),
                    what: "send the file's next bytes",
                    secs: DATA_TIMEOUT.as_secs(),
                });
            }
        };
        self.got += data.len() as u64;
        if self.got > self.size {
            return Err(VmError::Conflict(format!(
                "the desktop sent more than the {} bytes it said the file has",
                self.size
            )));
        }
        let bytes = u32::try_from(data.len()).expect("a frame is at most MAX_FILE_CHUNK");
        if self.got < self.size {
            within_send(c.send(HostMessage::FileMore { id: c.id, bytes })).await?;
        }
        Ok(data)
    }
}

impl VmManager {
    /// `GET /api/v1/vms/{id}/files`: the files the signed-in user may download.
    pub async fn list_files(&self, id: &str) -> Result<Vec<FileEntry>, VmError> {
        let (_, agent) = self.ready_agent(id)?;
        let mut c = agent.file_channel()?;
        within_send(c.send(HostMessage::ListFiles { id: c.id })).await?;
        match answer(&mut c, id, ANSWER_TIMEOUT, "list the files").await? {
            FileReply::List(files) => Ok(files),
            other => Err(unexpected(&other)),
        }
    }

    /// `GET /api/v1/vms/{id}/files/content?name=NAME`: starts sending file `name` of the
    /// signed-in user's transfer folder.
    pub async fn download(&self, id: &str, name: &str) -> Result<Download, VmError> {
        validate_file_name(name).map_err(|m| FieldError::new("name", m))?;
        let (_, agent) = self.ready_agent(id)?;
        // From here on, dropping `d` stops the agent sending (a late answer included).
        let mut d = Download {
            size: 0,
            channel: Some(agent.file_channel_of(DOWNLOAD_REPLIES)?),
            got: 0,
            vm: id.to_owned(),
        };
        let c = d.channel.as_mut().expect("just set");
        let get = HostMessage::FileGet { id: c.id, name: name.to_owned(), window: DOWNLOAD_WINDOW };
        within_send(c.send(get)).await?;
        match answer(c, id, ANSWER_TIMEOUT, "open the file").await? {
            FileReply::Sending { size } => d.size = size,
            other => return Err(unexpected(&other)),
        }
        Ok(d)
    }
}
