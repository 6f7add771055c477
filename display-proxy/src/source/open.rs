//! Opening a VM's display: the node agent says where it is (a VNC socket, or the builtin VMM's
//! shared framebuffer), and the source that reads it is made; with the guest agent's services
//! (clipboard, screen size) when the node offers them.

use std::time::Duration;

use atrium_protocol::node::{DisplayEndpoint, DisplaySize, VmState};
use futures_util::future::BoxFuture;
use thiserror::Error;

use crate::source::node::{NodeClient, NodeError};
use crate::source::rfb::{RfbSource, RfbTarget};
use crate::source::shm::ShmSource;
use crate::source::{FramebufferSource, SourceError};

/// Why a desktop could not be opened or joined.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("no such VM: {0}")]
    NotFound(String),
    #[error("the VM is {0}")]
    NotRunning(&'static str),
    #[error("the node agent: {0}")]
    Node(NodeError),
    #[error("the VM's display: {0}")]
    Source(#[from] SourceError),
    #[error("the desktop already has {0} viewers")]
    TooManyViewers(usize),
}

impl From<NodeError> for OpenError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotFound(vm) => Self::NotFound(vm),
            other => Self::Node(other),
        }
    }
}

/// The guest agent, through the node: text going into the guest's clipboard and changes coming
/// out of it, and the screen's size.
#[derive(Debug, Clone)]
pub struct GuestLink {
    pub node: NodeClient,
    pub vm: String,
    /// The largest screen the guest may be asked for (the size it booted with), when its screen
    /// can change size at all.
    pub screen_max: Option<DisplaySize>,
}

/// An opened source, with the guest agent when there is one.
#[derive(Debug)]
pub struct OpenedSource {
    pub source: Box<dyn FramebufferSource>,
    pub guest: Option<GuestLink>,
}

/// Finds and connects a VM's display.
pub trait SourceOpener: Send + Sync + std::fmt::Debug {
    fn open<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<OpenedSource, OpenError>>;
}

/// The production opener: asks the node agent where the VM's display is.
#[derive(Debug, Clone)]
pub struct NodeOpener {
    pub node: NodeClient,
    /// For how long after input a QEMU desktop's refresh is kept fast (see
    /// [`RfbSource::set_keep_refresh`]); zero: never.
    pub keep_refresh: Duration,
}

impl SourceOpener for NodeOpener {
    fn open<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<OpenedSource, OpenError>> {
        Box::pin(async move {
            let info = self.node.vm(vm).await?;
            match info.state {
                VmState::Starting | VmState::Ready => {}
                other => return Err(OpenError::NotRunning(other.as_str())),
            }
            let name = vm.to_owned();
            // Only an agent that reports its screen can change it.
            let screen_max = info.screen.map(|_| info.display);
            let sound = info.sound;
            let endpoint = info.display_endpoint;
            let keep_refresh = self.keep_refresh;
            let source = tokio::task::spawn_blocking(
                move || -> Result<Box<dyn FramebufferSource>, SourceError> {
                    Ok(match endpoint {
                        DisplayEndpoint::VncUnix { path } => {
                            let mut s = RfbSource::connect(&RfbTarget::Unix(path.into()))?;
                            s.set_keep_refresh(Some(keep_refresh));
                            if sound {
                                s.enable_sound()?;
                            }
                            Box::new(s)
                        }
                        DisplayEndpoint::VncTcp { address } => {
                            let mut s = RfbSource::connect(&RfbTarget::Tcp(address))?;
                            s.set_keep_refresh(Some(keep_refresh));
                            Box::new(s)
                        }
                        DisplayEndpoint::Shm { path } => {
                            Box::new(ShmSource::connect(path.as_ref(), &name)?)
                        }
                    })
                },
            )
            .await
            .map_err(|e| SourceError::Protocol(format!("connect task: {e}")))??;
            Ok(OpenedSource {
                source,
                guest: Some(GuestLink { node: self.node.clone(), vm: vm.to_owned(), screen_max }),
            })
        })
    }
}
