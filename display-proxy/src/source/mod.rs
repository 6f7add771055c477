//! Where a desktop's pixels come from. Every source implements [`FramebufferSource`]: a
//! blocking interface driven by one capture thread per desktop, so the async runtime never
//! waits on a VNC socket or a dirty-page bitmap.
//!
//! - [`rfb`]: an RFB 3.8 client (QEMU's VNC socket, or any VNC server);
//! - [`shm`]: the builtin VMM's shared framebuffer and dirty-page log;
//! - [`open`]: opening a VM's display where the node agent ([`node`]) says it is.

pub mod node;
pub mod open;
pub mod rfb;
pub mod shm;

use std::fmt;
use std::sync::Arc;

use atrium_protocol::display::Rect;
use thiserror::Error;

use crate::framebuffer::Framebuffer;

/// Why a source stopped or could not start.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("the source was stopped")]
    Stopped,
}

impl SourceError {
    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        Self::Protocol(msg.into())
    }
}

/// How long a blocking source may stay in [`FramebufferSource::next_update`] without
/// returning when nothing changes.
pub const QUIET_RETURN: std::time::Duration = std::time::Duration::from_millis(250);

/// Something a source reports from [`FramebufferSource::next_update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// Pixels in this rectangle may have changed (a hint: the capture compares).
    Damage(Rect),
    /// The framebuffer changed size (the source already resized it; all content is new).
    Resized { width: u16, height: u16 },
    /// A new pointer shape: RGBA pixels, row-major, with its hotspot. Empty hides the pointer.
    Cursor(CursorShape),
    /// Text the guest put on its clipboard (RFB cut text).
    Clipboard(String),
    /// Sound the guest played: 16-bit little-endian stereo samples at 48 kHz.
    Sound(Vec<u8>),
    /// The guest stopped playing sound.
    SoundEnded,
}

/// A pointer image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CursorShape {
    pub width: u16,
    pub height: u16,
    pub hot_x: u16,
    pub hot_y: u16,
    pub rgba: Vec<u8>,
}

/// An input event on its way to a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEvent {
    /// A key: the X keysym and, when the DOM code is a key Atrium maps, its evdev code.
    Key { down: bool, keysym: u32, evdev: Option<u16> },
    /// Absolute pointer in framebuffer pixels; buttons bit 0 left, 1 middle, 2 right, 3 back,
    /// 4 forward; wheel steps, positive down/right.
    Pointer { x: u16, y: u16, buttons: u8, wheel_x: i8, wheel_y: i8 },
}

/// Why an input event was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InputError {
    #[error("the desktop's input queue is full")]
    Full,
    #[error("the desktop is gone")]
    Closed,
}

/// Takes input for a desktop from any thread, without blocking.
pub trait InputSink: Send + Sync + fmt::Debug {
    fn send(&self, event: InputEvent) -> Result<(), InputError>;
}

/// Stops a source from another thread: a blocked [`FramebufferSource::next_update`] returns.
pub trait Stopper: Send + Sync + fmt::Debug {
    fn stop(&self);
}

/// A desktop's screen and input, driven by one capture thread.
pub trait FramebufferSource: Send + fmt::Debug {
    /// The desktop's name (RFB server name, VM id).
    fn name(&self) -> &str;
    /// The current size of the framebuffer.
    fn size(&self) -> (u16, u16);
    /// Whether the desktop's sound comes through this source ([`SourceEvent::Sound`]).
    fn has_sound(&self) -> bool {
        false
    }
    /// Where input for this desktop goes.
    fn input(&self) -> Arc<dyn InputSink>;
    /// A handle that stops this source from another thread.
    fn stopper(&self) -> Arc<dyn Stopper>;
    /// Blocks until the desktop reports a change, applies it to `fb` (which has the source's
    /// size, and keeps what earlier calls wrote), and says what changed. A source that stays
    /// quiet should return no events after at most [`QUIET_RETURN`], so its capture loop keeps
    /// up with what does not come from it (a viewer's watermark, the watermark's clock).
    fn next_update(&mut self, fb: &mut Framebuffer) -> Result<Vec<SourceEvent>, SourceError>;
    /// The same source driven without blocking, when it can be (see [`PolledSource`]).
    fn polled(&mut self) -> Option<&mut dyn PolledSource> {
        None
    }
}

/// A message that has fully arrived from a [`PolledSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffered {
    /// Its length in bytes.
    pub len: usize,
    /// The bytes of framebuffer decoding it writes (what decides where it is decoded).
    pub work: usize,
}

/// A source the async runtime can drive instead of a capture thread: it reads without
/// blocking, says when a whole message has arrived, and decodes it where the caller chooses
/// (inline when small, on the encode pool when large). No thread hand-off per update.
pub trait PolledSource: Send {
    /// Another handle on the connection, to wait on until there is something to read.
    fn readiness(&self) -> std::io::Result<std::os::fd::OwnedFd>;
    /// The next message once all of it has arrived (`None`: read more first); asks for the
    /// next update when none is asked for.
    fn buffered_message(&mut self) -> Result<Option<Buffered>, SourceError>;
    /// Reads what has arrived, without blocking (`Ok(0)`: the connection closed).
    fn read_available(&mut self) -> std::io::Result<usize>;
    /// Sends what keeps the source quick to report changes, if it is due at `now`; returns
    /// when to call again (`None`: nothing to keep up until more input arrives).
    fn keep_alive(&mut self, now: std::time::Instant) -> Option<std::time::Instant> {
        let _ = now;
        None
    }
    /// Decodes the buffered message of `len` bytes into `fb`, as [`FramebufferSource::next_update`]
    /// would; `None` when the message reports nothing.
    fn decode_message(
        &mut self,
        len: usize,
        fb: &mut Framebuffer,
    ) -> Result<Option<Vec<SourceEvent>>, SourceError>;
}

/// An [`InputSink`] over a bounded channel to a source's writer thread.
#[derive(Debug)]
pub struct ChannelInput<T: Send> {
    tx: std::sync::mpsc::SyncSender<T>,
    wrap: fn(InputEvent) -> T,
}

impl<T: Send> ChannelInput<T> {
    pub fn new(tx: std::sync::mpsc::SyncSender<T>, wrap: fn(InputEvent) -> T) -> Self {
        Self { tx, wrap }
    }
}

impl<T: Send + fmt::Debug> InputSink for ChannelInput<T> {
    fn send(&self, event: InputEvent) -> Result<(), InputError> {
        self.tx.try_send((self.wrap)(event)).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => InputError::Full,
            std::sync::mpsc::TrySendError::Disconnected(_) => InputError::Closed,
        })
    }
}
