//! The receiving task of one viewer: every client message checked, the ticket's rights
//! enforced, input forwarded to the desktop, keys held released when the viewer goes.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use atrium_protocol::display::{ClientMessage, DecodeError};
use atrium_protocol::keymap;
use atrium_protocol::ticket::Capabilities;
use axum::extract::ws::{Message, WebSocket, close_code};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::sync::mpsc;

use super::clipboard::paste;
use super::{Ending, Event, InputLog, Presence, may_resize};
use crate::desktop::{Clip, Desktop};
use crate::metrics::Metrics;
use crate::source::InputEvent;

/// Most keys one viewer is tracked as holding down at once.
const MAX_HELD_KEYS: usize = 256;

/// Keys and buttons a viewer holds down, released if it goes away.
struct Held {
    desktop: Arc<Desktop>,
    keys: HashSet<(u32, Option<u16>)>,
    buttons: Option<(u16, u16, u8)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for (keysym, evdev) in self.keys.drain() {
            let _ = self.desktop.input().send(InputEvent::Key { down: false, keysym, evdev });
        }
        if let Some((x, y, b)) = self.buttons
            && b != 0
        {
            let _ = self.desktop.input().send(InputEvent::Pointer {
                x,
                y,
                buttons: 0,
                wheel_x: 0,
                wheel_y: 0,
            });
        }
    }
}

fn close_for(e: &DecodeError) -> (u16, String) {
    let code = match e {
        DecodeError::TooLarge(_) => close_code::SIZE,
        DecodeError::UnknownType(_) => close_code::UNSUPPORTED,
        _ => close_code::PROTOCOL,
    };
    (code, format!("bad message: {e}"))
}

/// What the receiving task works with.
pub(super) struct Receiving {
    pub desktop: Arc<Desktop>,
    pub rights: Capabilities,
    pub inputs: Arc<Mutex<InputLog>>,
    pub metrics: Arc<Metrics>,
    pub ending: Arc<Ending>,
    /// Keys and pointer go to the sending loop's recording too.
    pub record_input: bool,
    /// Where input that reached the desktop is noted.
    pub presence: Arc<Presence>,
    /// The viewer's uploads.
    pub uploads: crate::files::Uploads,
    /// The viewer's downloads.
    pub downloads: crate::files::Downloads,
    /// Where what crossed the clipboard is noted (size and hash, for the audit).
    pub outcomes: mpsc::UnboundedSender<crate::files::Outcome>,
}

pub(super) async fn receive(
    mut stream: SplitStream<WebSocket>,
    tx: mpsc::Sender<Event>,
    r: Receiving,
) {
    let Receiving {
        desktop,
        rights,
        inputs,
        metrics,
        ending,
        record_input,
        presence,
        mut uploads,
        mut downloads,
        outcomes,
    } = r;
    let input = Input {
        desktop: &desktop,
        rights: &rights,
        metrics: &metrics,
        inputs: &inputs,
        presence: &presence,
    };
    let mut held = Held { desktop: Arc::clone(&desktop), keys: HashSet::new(), buttons: None };
    loop {
        let msg = match stream.next().await {
            None => {
                let _ = tx.send(Event::Gone).await;
                return;
            }
            Some(Err(e)) => {
                let text = e.to_string();
                let ev = if text.contains("Space limit exceeded") || text.contains("too long") {
                    Event::Close(close_code::SIZE, "bad message: over the size limit".into())
                } else {
                    Event::Gone
                };
                let _ = tx.send(ev).await;
                return;
            }
            Some(Ok(m)) => m,
        };
        let data = match msg {
            Message::Binary(b) => b,
            Message::Text(_) => {
                let _ = tx
                    .send(Event::Close(
                        close_code::UNSUPPORTED,
                        "text messages are not part of the display protocol".into(),
                    ))
                    .await;
                return;
            }
            Message::Close(_) => {
                let _ = tx.send(Event::Gone).await;
                return;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let m = match ClientMessage::decode(&data) {
            Ok(m) => m,
            Err(e) => {
                let (code, reason) = close_for(&e);
                let _ = tx.send(Event::Close(code, reason)).await;
                return;
            }
        };
        // Once the broker ended the session nothing more reaches the desktop, even while the
        // sending side is still stuck on a client that does not read.
        if ending.is_ended() {
            let _ = tx.send(Event::Gone).await;
            return;
        }
        // Recorded input: what reached the desktop, as the viewer sent it.
        let record = record_input
            && !rights.view_only
            && matches!(m, ClientMessage::Key { .. } | ClientMessage::Pointer { .. });
        if record && tx.send(Event::Input(data.clone())).await.is_err() {
            return;
        }
        let ev = match m {
            ClientMessage::Key { seq, down, keysym, code } => {
                let evdev = keymap::evdev_code(&code);
                input.forward(seq, InputEvent::Key { down, keysym, evdev });
                if !rights.view_only {
                    // A keyboard has about a hundred keys: a client claiming to hold more is
                    // not tracked further (its releases at disconnect are best effort anyway).
                    if down && held.keys.len() < MAX_HELD_KEYS {
                        held.keys.insert((keysym, evdev));
                    } else if !down {
                        held.keys.remove(&(keysym, evdev));
                    }
                }
                continue;
            }
            ClientMessage::Pointer { seq, x, y, buttons, wheel_x, wheel_y } => {
                input.forward(seq, InputEvent::Pointer { x, y, buttons, wheel_x, wheel_y });
                if !rights.view_only {
                    held.buttons = Some((x, y, buttons));
                }
                continue;
            }
            ClientMessage::Clipboard { text } => {
                match paste(&desktop, &rights, &outcomes, Clip::Text(text)) {
                    Some(refused) => Event::Say(refused),
                    None => continue,
                }
            }
            ClientMessage::ClipboardImage { png } => {
                match paste(&desktop, &rights, &outcomes, Clip::Png(png.into())) {
                    Some(refused) => Event::Say(refused),
                    None => continue,
                }
            }
            ClientMessage::Resize { width, height } => {
                if !may_resize(&rights) {
                    tracing::debug!("screen size refused: this viewer only watches");
                } else if !desktop.ask_screen_size(width, height) {
                    tracing::debug!(
                        "screen size refused: this desktop's screen cannot change size"
                    );
                }
                continue;
            }
            ClientMessage::Audio { enabled } => {
                if !rights.audio && enabled {
                    tracing::debug!("sound refused: not allowed by the ticket");
                    continue;
                }
                Event::Sound(enabled)
            }
            ClientMessage::Video { enabled } => Event::Video(enabled),
            ClientMessage::FileOpen { id, size, name } => {
                uploads.open(id, size, name, false).await;
                continue;
            }
            ClientMessage::FilePut { id, size, name } => {
                uploads.open(id, size, name, true).await;
                continue;
            }
            ClientMessage::FileData { id, data } => {
                uploads.data(id, data).await;
                continue;
            }
            ClientMessage::FileCancel { id } => {
                uploads.cancel(id);
                downloads.cancel(id);
                continue;
            }
            ClientMessage::FileList => {
                downloads.list().await;
                continue;
            }
            ClientMessage::FileGet { id, name } => {
                downloads.get(id, name, false).await;
                continue;
            }
            ClientMessage::FileFetch { id, name } => {
                downloads.get(id, name, true).await;
                continue;
            }
            ClientMessage::FileTaken { id, done } => {
                downloads.taken(id, done);
                continue;
            }
            ClientMessage::FrameAck { frame } => Event::Ack(frame),
            ClientMessage::Ping { id } => Event::Ping(id),
            ClientMessage::Refresh => Event::Refresh,
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

/// Where a viewer's keys and pointer go, and what is noted of them.
struct Input<'a> {
    desktop: &'a Desktop,
    rights: &'a Capabilities,
    metrics: &'a Metrics,
    inputs: &'a Mutex<InputLog>,
    presence: &'a Presence,
}

impl Input<'_> {
    fn forward(&self, seq: u32, ev: InputEvent) {
        if self.rights.view_only {
            self.metrics.input_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let at = Instant::now();
        if let Err(e) = self.desktop.input().send(ev) {
            self.metrics.input_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "input dropped");
            return;
        }
        self.presence.input();
        self.inputs.lock().expect("input log lock").record(seq, at);
    }
}
