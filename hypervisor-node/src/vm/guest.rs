//! What is asked of a running guest, through its agent or its runtime: the user's session
//! (start, end), the clipboard both ways, the screen's size, a screenshot.

use std::sync::Arc;
use std::time::Duration;

use atrium_protocol::agent::{HostMessage, MAX_CLIPBOARD, MAX_CLIPBOARD_IMAGE, SessionUser};
use atrium_protocol::filetype::png_size;
use atrium_protocol::node::{
    ClipboardPaste, ClipboardState, DisplaySize, FieldError, RuntimeKind, VmInfo, VmState,
};

use super::{Vm, VmError, VmManager, lock};
use crate::agent_link::AgentLink;
use crate::runtime::Frame;

/// How long the agent has to confirm a session (a desktop image confirms once the user's
/// session has drawn its panel: seconds under TCG, more on a busy host).
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent has to change the screen's size (X sets a mode in well under a second,
/// even under TCG).
const SCREEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session whose caller has stopped waiting is still waited for, to be recorded
/// (a stuck or hostile guest must not keep the task forever).
const SESSION_RECORD_WAIT: Duration = Duration::from_secs(600);

impl VmManager {
    pub(super) fn ready_agent(&self, id: &str) -> Result<(Arc<Vm>, Arc<AgentLink>), VmError> {
        let vm = self.get(id)?;
        let state = vm.state();
        match (state, vm.agent()) {
            (VmState::Ready, Some(a)) => Ok((vm, a)),
            (VmState::Ready, None) if !vm.has_agent() => {
                Err(VmError::NoAgent { id: id.to_owned() })
            }
            _ => Err(VmError::NotReady { id: id.to_owned(), state: state.as_str() }),
        }
    }

    /// A ready VM of an image without an agent: its user is recorded (whose desktop it is) and
    /// signs in to the OS themselves.
    fn record_user(&self, id: &str, user: Option<String>) -> Result<Option<VmInfo>, VmError> {
        let vm = self.get(id)?;
        if vm.has_agent() {
            return Ok(None);
        }
        let state = vm.state();
        if state != VmState::Ready {
            return Err(VmError::NotReady { id: id.to_owned(), state: state.as_str() });
        }
        {
            let mut s = lock(&vm.status);
            s.session_gen += 1;
            s.user = user;
        }
        vm.persist();
        Ok(Some(vm.info()))
    }

    /// `POST /api/v1/vms/{id}/session`: tells the guest agent who signed in; waits for it to
    /// confirm.
    ///
    /// Asking, waiting for the confirmation and recording it run in a task of their own: a
    /// caller that gives up (a broker whose request timed out on a loaded host) neither cuts
    /// the request off half-sent nor leaves the node without a record of a session the guest
    /// did start. The caller waits up to [`SESSION_TIMEOUT`], the task up to
    /// [`SESSION_RECORD_WAIT`].
    pub async fn start_session(&self, id: &str, user: SessionUser) -> Result<VmInfo, VmError> {
        user.validate().map_err(|m| FieldError::new("user", m))?;
        if let Some(info) = self.record_user(id, Some(user.username.clone()))? {
            return Ok(info);
        }
        let (vm, agent) = self.ready_agent(id)?;
        let task = tokio::spawn(session_task(Arc::clone(&vm), agent, user));
        match tokio::time::timeout(SESSION_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => Ok(vm.info()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) | Err(_) => Err(VmError::AgentTimeout {
                id: id.into(),
                what: "confirm the session",
                secs: SESSION_TIMEOUT.as_secs(),
            }),
        }
    }

    /// `DELETE /api/v1/vms/{id}/session`: the user's session ended.
    pub async fn end_session(&self, id: &str) -> Result<VmInfo, VmError> {
        if let Some(info) = self.record_user(id, None)? {
            return Ok(info);
        }
        let (vm, agent) = self.ready_agent(id)?;
        {
            let _one_at_a_time = vm.session_op.lock().await;
            agent.send(HostMessage::EndSession).await?;
            let mut s = lock(&vm.status);
            s.session_gen += 1;
            s.user = None;
        }
        vm.persist();
        Ok(vm.info())
    }

    /// `POST /api/v1/vms/{id}/clipboard`: text or an image (a PNG file) for the guest's
    /// clipboard.
    pub async fn paste(&self, id: &str, paste: ClipboardPaste) -> Result<(), VmError> {
        let msg = match paste {
            ClipboardPaste { text: Some(text), png: None } => {
                if text.len() > MAX_CLIPBOARD {
                    return Err(FieldError::new(
                        "text",
                        format!("is {} bytes; the limit is {MAX_CLIPBOARD}", text.len()),
                    )
                    .into());
                }
                HostMessage::Clipboard { text }
            }
            ClipboardPaste { text: None, png: Some(png) } => {
                if png.len() > MAX_CLIPBOARD_IMAGE {
                    return Err(FieldError::new(
                        "png",
                        format!("is {} bytes; the limit is {MAX_CLIPBOARD_IMAGE}", png.len()),
                    )
                    .into());
                }
                png_size(&png).map_err(|e| FieldError::new("png", e))?;
                HostMessage::ClipboardImage { png }
            }
            _ => {
                return Err(FieldError::new(
                    "text",
                    "give the clipboard either text or png (a PNG image, base64)",
                )
                .into());
            }
        };
        let (_, agent) = self.ready_agent(id)?;
        agent.send(msg).await?;
        Ok(())
    }

    /// `PUT /api/v1/vms/{id}/screen`: gives the desktop's screen a new size, at most the one it
    /// booted with (its video memory holds that); waits for the guest agent to report the size
    /// its screen took. Only a desktop whose agent reports its screen can be resized.
    pub async fn set_screen(&self, id: &str, size: DisplaySize) -> Result<DisplaySize, VmError> {
        let (vm, agent) = self.ready_agent(id)?;
        size.validate().map_err(|m| FieldError::new("size", m))?;
        let max = vm.spec.display;
        if size.width > max.width || size.height > max.height {
            return Err(FieldError::new(
                "size",
                format!("{size} is larger than this desktop's display ({max})"),
            )
            .into());
        }
        let mut screen = agent.view.screen.clone();
        let (before, known) = *screen.borrow();
        if known.is_none() || vm.runtime != RuntimeKind::Qemu {
            return Err(VmError::Conflict(format!(
                "the screen of VM {id} cannot change size (its guest agent does not report one, \
                 or its runtime's display has a fixed size)"
            )));
        }
        let mut errors = agent.view.last_error.clone();
        errors.mark_unchanged();
        agent.send(HostMessage::ScreenSize { width: size.width, height: size.height }).await?;
        // The screen passes through a larger size on its way (RandR's order): the answer is
        // the report of the size asked for, or the agent's error about it.
        let prefix = format!("screen size {}x{}:", size.width, size.height);
        let answer = tokio::time::timeout(SCREEN_TIMEOUT, async {
            tokio::select! {
                r = screen.wait_for(|(n, s)| *n > before && *s == Some(size)) => {
                    r.map(|_| size).map_err(|_| "the guest agent went away".to_owned())
                }
                e = async {
                    loop {
                        if errors.changed().await.is_err() {
                            return "the guest agent went away".to_owned();
                        }
                        let e = errors.borrow_and_update().clone().unwrap_or_default();
                        if e.starts_with(&prefix) || e.starts_with("this image has no") {
                            return e;
                        }
                    }
                } => Err(e),
            }
        })
        .await;
        match answer {
            Ok(Ok(took)) => Ok(took),
            Ok(Err(message)) => {
                Err(VmError::Conflict(format!("the guest could not change its screen: {message}")))
            }
            Err(_) => Err(VmError::AgentTimeout {
                id: id.into(),
                what: "change the screen's size",
                secs: SCREEN_TIMEOUT.as_secs(),
            }),
        }
    }

    /// `GET /api/v1/vms/{id}/clipboard?after=SEQ&wait=SECS`: the guest's clipboard, waiting up
    /// to `wait` for a change after `after`.
    pub async fn clipboard(
        &self,
        id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<ClipboardState, VmError> {
        let vm = self.get(id)?;
        if !vm.has_agent() {
            return Err(VmError::NoAgent { id: id.into() });
        }
        let agent = vm
            .agent()
            .ok_or_else(|| VmError::NotReady { id: id.into(), state: vm.state().as_str() })?;
        let mut rx = agent.view.clipboard.clone();
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, rx.wait_for(|c| c.seq > after)).await;
        }
        Ok(rx.borrow().clone())
    }

    /// `GET /api/v1/vms/{id}/screenshot.png`.
    pub async fn screenshot(&self, id: &str) -> Result<Frame, VmError> {
        let vm = self.get(id)?;
        let h = vm.handle().filter(|h| h.exit_watch().borrow().is_none());
        let h = h.ok_or_else(|| VmError::NotReady { id: id.into(), state: vm.state().as_str() })?;
        Ok(h.screenshot().await?)
    }
}

/// Asks the guest agent to start `user`'s session, waits for it to confirm, and records the
/// user on the VM unless a newer request or a sign-out came since.
async fn session_task(
    vm: Arc<Vm>,
    agent: Arc<AgentLink>,
    user: SessionUser,
) -> Result<(), VmError> {
    let username = user.username.clone();
    let mut session = agent.view.session.clone();
    let (asked, before) = {
        let _one_at_a_time = vm.session_op.lock().await;
        let before = session.borrow().0;
        agent.send(HostMessage::Session { user }).await?;
        let mut s = lock(&vm.status);
        s.session_gen += 1;
        (s.session_gen, before)
    };
    let confirmed = tokio::time::timeout(
        SESSION_RECORD_WAIT,
        session.wait_for(|(n, u)| *n > before && u.as_deref() == Some(username.as_str())),
    )
    .await;
    if !matches!(confirmed, Ok(Ok(_))) {
        // Seen by a caller only when the agent went away first: the caller's own wait is the
        // one it knows.
        return Err(VmError::AgentTimeout {
            id: vm.id.clone(),
            what: "confirm the session",
            secs: SESSION_TIMEOUT.as_secs(),
        });
    }
    let mut s = lock(&vm.status);
    if s.session_gen == asked {
        s.user = Some(username);
        drop(s);
        vm.persist();
    }
    Ok(())
}
