//! Which desktop sessions have viewers here, and ending them: the broker says a session ended
//! (sign-out, revocation, an administrator), and its viewers are closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::ticket::MAX_TICKET_TTL_SECS;
use tokio::sync::Notify;

/// A viewer waiting to be told its session ended: its id and its notifier.
type Waiter = (u64, Arc<Ending>);

/// How a viewer learns that its session ended: the sending loop waits on [`Ending::notified`];
/// the receiving task checks [`Ending::is_ended`] before it forwards any input (the sending
/// loop may be stuck writing to a client that does not read).
#[derive(Debug, Default)]
pub struct Ending {
    notify: Notify,
    ended: AtomicBool,
}

impl Ending {
    fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    pub(super) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Completes when the session ends.
    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// The viewers of each broker session, so the broker can end a session (sign-out, policy,
/// administrator) and every viewer of it is disconnected; and the sessions ended lately, so a
/// ticket minted before its session ended no longer connects.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Vec<Waiter>>>,
    next: std::sync::atomic::AtomicU64,
    /// Sessions ended, until every ticket minted before could have expired.
    ended: Mutex<HashMap<String, Instant>>,
}

/// How long an ended session is remembered: the longest ticket lifetime and a leeway.
const ENDED_MEMORY: Duration = Duration::from_secs(MAX_TICKET_TTL_SECS + 60);
/// Most ended sessions remembered at once (the broker ends each once; it holds the node token).
const MAX_ENDED: usize = 100_000;

impl Sessions {
    pub(super) fn register(self: &Arc<Self>, sid: &str) -> SessionEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Ending::default());
        // Ended between the ticket check and now: the viewer stops at once.
        if self.has_ended(sid) {
            notify.end();
        }
        self.map
            .lock()
            .expect("sessions lock")
            .entry(sid.to_owned())
            .or_default()
            .push((id, Arc::clone(&notify)));
        SessionEntry { sessions: Arc::clone(self), sid: sid.to_owned(), id, notify }
    }

    /// Disconnects every viewer of `sid` and refuses its tickets from now on; returns how many
    /// viewers there were.
    pub fn end(&self, sid: &str) -> usize {
        {
            let mut ended = self.ended.lock().expect("ended lock");
            let now = Instant::now();
            if ended.len() >= MAX_ENDED {
                ended.retain(|_, until| *until > now);
            }
            if ended.len() < MAX_ENDED {
                ended.insert(sid.to_owned(), now + ENDED_MEMORY);
            }
        }
        let viewers = self.map.lock().expect("sessions lock").remove(sid).unwrap_or_default();
        for (_, n) in &viewers {
            n.end();
        }
        viewers.len()
    }

    /// Whether the broker ended `sid` (within the last few minutes).
    pub fn has_ended(&self, sid: &str) -> bool {
        self.ended.lock().expect("ended lock").get(sid).is_some_and(|until| *until > Instant::now())
    }
}

pub(super) struct SessionEntry {
    sessions: Arc<Sessions>,
    sid: String,
    id: u64,
    notify: Arc<Ending>,
}

impl SessionEntry {
    /// How this viewer learns that its session ended.
    pub(super) fn ending(&self) -> Arc<Ending> {
        Arc::clone(&self.notify)
    }
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        let mut map = self.sessions.map.lock().expect("sessions lock");
        if let Some(v) = map.get_mut(&self.sid) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                map.remove(&self.sid);
            }
        }
    }
}
