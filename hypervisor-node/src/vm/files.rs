//! Files uploaded into a guest, through its agent: received whole (and not yet the user's),
//! then committed to the user or aborted. The display proxy, which scans what it passes on,
//! decides which.

use std::time::Duration;

use atrium_protocol::agent::{HostMessage, validate_file_name};
use atrium_protocol::node::FieldError;
use axum::body::Bytes;
use futures_util::{Stream, StreamExt};

use super::{VmError, VmManager};
use crate::agent_link::{FileChannel, FileReply};

/// How long the agent has to open a file, and to give it to the user.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent has to put a whole file on its disk after its last byte (a sync of
/// what the guest still holds in memory).
const END_TIMEOUT: Duration = Duration::from_secs(120);

/// A file the guest has received whole, still the agent's: [`StagedFile::commit`] gives it to
/// the user, [`StagedFile::abort`] (or dropping it unanswered) throws it away.
#[derive(Debug)]
pub struct StagedFile {
    channel: Option<FileChannel>,
    pub vm: String,
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(c) = self.channel.take() {
            tokio::spawn(async move {
                let abort = c.send(HostMessage::FileAbort { id: c.id });
                let _ = tokio::time::timeout(SEND_TIMEOUT, abort).await;
            });
        }
    }
}

/// The agent's next answer about a file, within `wait`.
pub(super) async fn answer(
    c: &mut FileChannel,
    vm: &str,
    wait: Duration,
    what: &'static str,
) -> Result<FileReply, VmError> {
    match tokio::time::timeout(wait, c.reply()).await {
        Ok(Some(FileReply::Error { message })) => {
            Err(VmError::Conflict(format!("the desktop refused the file: {message}")))
        }
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(VmError::Agent(crate::agent_link::AgentError::Closed)),
        Err(_) => Err(VmError::AgentTimeout { id: vm.into(), what, secs: wait.as_secs() }),
    }
}

impl StagedFile {
    /// Gives the file to the user; returns its path in the guest.
    pub async fn commit(mut self) -> Result<String, VmError> {
        let mut c = self.channel.take().expect("a staged file has its channel until used");
        within_send(c.send(HostMessage::FileCommit { id: c.id })).await?;
        match answer(&mut c, &self.vm, ANSWER_TIMEOUT, "save the file").await? {
            FileReply::Saved { path } => Ok(path),
            other => Err(unexpected(&other)),
        }
    }

    /// Throws the file away.
    pub async fn abort(mut self) -> Result<(), VmError> {
        if let Some(c) = self.channel.take() {
            within_send(c.send(HostMessage::FileAbort { id: c.id })).await?;
        }
        Ok(())
    }
}

/// How long a send to the guest agent may wait for room: a guest that stops reading its port
/// must not hold the request (and what it buffers) for ever.
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) async fn within_send(
    send: impl Future<Output = Result<(), crate::agent_link::AgentError>>,
) -> Result<(), VmError> {
    match tokio::time::timeout(SEND_TIMEOUT, send).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(VmError::Conflict(format!(
            "the desktop took no data for {} s: the upload was stopped",
            SEND_TIMEOUT.as_secs()
        ))),
    }
}

pub(super) fn unexpected(r: &FileReply) -> VmError {
    VmError::Conflict(format!("the guest agent answered out of turn ({r:?})"))
}

/// Why a body ended badly, for the caller.
fn short(got: u64, size: u64) -> VmError {
    FieldError::new("size", format!("the upload ended after {got} of the {size} bytes announced"))
        .into()
}

impl VmManager {
    /// `POST /api/v1/vms/{id}/uploads`: streams `body` (exactly `size` bytes) into the guest
    /// as file `name` of the signed-in user, as fast as the guest takes it. On any error the
    /// guest throws what it has away.
    pub async fn upload<S, E>(
        &self,
        id: &str,
        name: &str,
        size: u64,
        body: S,
    ) -> Result<StagedFile, VmError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        validate_file_name(name).map_err(|m| FieldError::new("name", m))?;
        let (_, agent) = self.ready_agent(id)?;
        // From here on, dropping `staged` aborts the file in the guest (a late answer to the
        // open included).
        let mut staged = StagedFile { channel: Some(agent.file_channel()?), vm: id.to_owned() };
        let c = staged.channel.as_mut().expect("just set");
        let open = HostMessage::FileOpen { id: c.id, name: name.to_owned(), size };
        within_send(c.send(open)).await?;
        match answer(c, id, ANSWER_TIMEOUT, "open the file").await? {
            FileReply::Ready => {}
            other => return Err(unexpected(&other)),
        }
        let mut got = 0u64;
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                VmError::Conflict(format!("the upload broke off after {got} bytes: {e}"))
            })?;
            got += chunk.len() as u64;
            if got > size {
                return Err(FieldError::new(
                    "size",
                    format!("the upload is longer than the {size} bytes announced"),
                )
                .into());
            }
            // An error while the data flows (the guest's disk is full) ends it at once.
            if let Some(r) = c.try_reply() {
                return Err(match r {
                    FileReply::Error { message } => {
                        VmError::Conflict(format!("the desktop refused the file: {message}"))
                    }
                    other => unexpected(&other),
                });
            }
            within_send(c.data(chunk)).await?;
        }
        if got != size {
            return Err(short(got, size));
        }
        within_send(c.send(HostMessage::FileEnd { id: c.id })).await?;
        match answer(c, id, END_TIMEOUT, "receive the whole file").await? {
            FileReply::Received { size: s } if s == size => Ok(staged),
            other => Err(unexpected(&other)),
        }
    }
}
