//! Which desktop sessions have viewers here, how long each has been without input, and ending
//! them: the broker says a session ended (sign-out, revocation, an administrator, idle or
//! maximum time), and its viewers are closed with the reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_protocol::session::{
    ActivityReport, EndReason, SessionActivity, TransferQueue, TransferRecord,
};
use atrium_protocol::ticket::MAX_TICKET_TTL_SECS;
use tokio::sync::Notify;

/// A viewer of a session: its id, its notifier and its input.
#[derive(Debug)]
struct Waiter {
    id: u64,
    ending: Arc<Ending>,
    presence: Arc<Presence>,
}

/// When a viewer last sent keyboard or pointer input (or connected), in milliseconds since
/// its [`Sessions`] began. Only the session user's own viewers count: a shadowing
/// administrator neither keeps a session from idling nor counts as its user connected.
#[derive(Debug)]
pub struct Presence {
    epoch: Instant,
    user: bool,
    last_input_ms: AtomicU64,
}

impl Presence {
    /// Notes input from this viewer now.
    pub(super) fn input(&self) {
        self.last_input_ms.store(since(self.epoch), Ordering::Relaxed);
    }
}

fn since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// How a viewer learns that its session ended: the sending loop waits on [`Ending::notified`];
/// the receiving task checks [`Ending::is_ended`] before it forwards any input (the sending
/// loop may be stuck writing to a client that does not read).
#[derive(Debug, Default)]
pub struct Ending {
    notify: Notify,
    ended: AtomicBool,
    reason: Mutex<EndReason>,
}

impl Ending {
    fn end(&self, reason: EndReason) {
        *self.reason.lock().expect("reason lock") = reason;
        self.ended.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Why the broker ended the session (once it has).
    pub(super) fn reason(&self) -> EndReason {
        *self.reason.lock().expect("reason lock")
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
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Vec<Waiter>>>,
    next: AtomicU64,
    /// Sessions ended, until every ticket minted before could have expired, with the reason.
    ended: Mutex<HashMap<String, (Instant, EndReason)>>,
    /// What input times count from.
    epoch: Instant,
    /// Files that crossed, not yet taken by the node (for the broker's audit log).
    transfers: TransferQueue,
}

/// Most transfers kept for the node while it does not take them; older ones are dropped (and
/// said in the log).
const MAX_KEPT_TRANSFERS: usize = 10_000;

impl Default for Sessions {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            next: AtomicU64::new(0),
            ended: Mutex::default(),
            epoch: Instant::now(),
            transfers: TransferQueue::new(MAX_KEPT_TRANSFERS),
        }
    }
}

/// How long an ended session is remembered: the longest ticket lifetime and a leeway.
const ENDED_MEMORY: Duration = Duration::from_secs(MAX_TICKET_TTL_SECS + 60);
/// Most ended sessions remembered at once (the broker ends each once; it holds the node token).
const MAX_ENDED: usize = 100_000;

impl Sessions {
    /// A viewer of `sid` arrives; `user`: it is the session user's own (not a shadow).
    pub(super) fn register(self: &Arc<Self>, sid: &str, user: bool) -> SessionEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let ending = Arc::new(Ending::default());
        // Ended between the ticket check and now: the viewer stops at once.
        if let Some(reason) = self.ended_for(sid) {
            ending.end(reason);
        }
        let presence = Arc::new(Presence {
            epoch: self.epoch,
            user,
            last_input_ms: AtomicU64::new(since(self.epoch)),
        });
        self.map.lock().expect("sessions lock").entry(sid.to_owned()).or_default().push(Waiter {
            id,
            ending: Arc::clone(&ending),
            presence: Arc::clone(&presence),
        });
        SessionEntry { sessions: Arc::clone(self), sid: sid.to_owned(), id, ending, presence }
    }

    /// Disconnects every viewer of `sid` (telling them `reason`) and refuses its tickets from
    /// now on; returns how many viewers there were.
    pub fn end(&self, sid: &str, reason: EndReason) -> usize {
        {
            let mut ended = self.ended.lock().expect("ended lock");
            let now = Instant::now();
            if ended.len() >= MAX_ENDED {
                ended.retain(|_, (until, _)| *until > now);
            }
            if ended.len() < MAX_ENDED {
                ended.insert(sid.to_owned(), (now + ENDED_MEMORY, reason));
            }
        }
        let viewers = self.map.lock().expect("sessions lock").remove(sid).unwrap_or_default();
        for w in &viewers {
            w.ending.end(reason);
        }
        viewers.len()
    }

    /// Whether the broker ended `sid` (within the last few minutes).
    pub fn has_ended(&self, sid: &str) -> bool {
        self.ended_for(sid).is_some()
    }

    fn ended_for(&self, sid: &str) -> Option<EndReason> {
        let ended = self.ended.lock().expect("ended lock");
        ended.get(sid).filter(|(until, _)| *until > Instant::now()).map(|(_, r)| *r)
    }

    /// Keeps a file transfer for the next report.
    pub fn note_transfer(&self, t: TransferRecord) {
        if self.transfers.push(t) {
            tracing::error!("a transfer's audit record was dropped: the node agent takes none");
        }
    }

    /// Puts back the transfers of a report the node did not take, ahead of newer ones.
    pub fn return_transfers(&self, back: Vec<TransferRecord>) {
        self.transfers.give_back(back);
    }

    /// The sessions with at least one of their user's viewers here, and how long each has
    /// been without input from them; and the file transfers since the last report (taken: a
    /// caller whose report fails gives them back with [`Sessions::return_transfers`]).
    pub fn report(&self) -> ActivityReport {
        let now = since(self.epoch);
        let map = self.map.lock().expect("sessions lock");
        let sessions = map
            .iter()
            .filter_map(|(sid, viewers)| {
                let users = viewers.iter().filter(|w| w.presence.user);
                let (n, last) = users.fold((0u32, 0u64), |(n, last), w| {
                    (n + 1, last.max(w.presence.last_input_ms.load(Ordering::Relaxed)))
                });
                (n > 0).then(|| SessionActivity {
                    sid: sid.clone(),
                    viewers: n,
                    idle_ms: now.saturating_sub(last),
                })
            })
            .collect();
        drop(map);
        ActivityReport { sessions, transfers: self.transfers.take() }
    }
}

pub(super) struct SessionEntry {
    sessions: Arc<Sessions>,
    sid: String,
    id: u64,
    ending: Arc<Ending>,
    presence: Arc<Presence>,
}

impl SessionEntry {
    /// How this viewer learns that its session ended.
    pub(super) fn ending(&self) -> Arc<Ending> {
        Arc::clone(&self.ending)
    }

    /// Where this viewer's input is noted.
    pub(super) fn presence(&self) -> Arc<Presence> {
        Arc::clone(&self.presence)
    }
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        let mut map = self.sessions.map.lock().expect("sessions lock");
        if let Some(v) = map.get_mut(&self.sid) {
            v.retain(|w| w.id != self.id);
            if v.is_empty() {
                map.remove(&self.sid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_of(s: &Sessions, sid: &str) -> Option<(u32, u64)> {
        s.report().sessions.into_iter().find(|a| a.sid == sid).map(|a| (a.viewers, a.idle_ms))
    }

    #[test]
    fn a_session_reports_its_users_viewers_and_the_newest_input() {
        let s = Arc::new(Sessions::default());
        let a = s.register("alice", true);
        let b = s.register("alice", true);
        std::thread::sleep(Duration::from_millis(60));
        let (n, idle) = idle_of(&s, "alice").expect("alice is here");
        assert_eq!(n, 2);
        assert!(idle >= 50, "nobody typed for {idle} ms");
        b.presence().input();
        let (_, idle) = idle_of(&s, "alice").expect("alice is here");
        assert!(idle < 50, "one of her viewers typed just now, not {idle} ms ago");
        drop(a);
        drop(b);
        assert_eq!(idle_of(&s, "alice"), None, "a session without viewers is not listed");
    }

    #[test]
    fn a_shadow_neither_counts_as_the_user_nor_keeps_the_session_busy() {
        let s = Arc::new(Sessions::default());
        let shadow = s.register("bob", false);
        shadow.presence().input();
        assert_eq!(idle_of(&s, "bob"), None, "only an administrator watches");
        let user = s.register("bob", true);
        std::thread::sleep(Duration::from_millis(30));
        shadow.presence().input();
        let (n, idle) = idle_of(&s, "bob").expect("bob is here");
        assert_eq!(n, 1);
        assert!(idle >= 25, "the shadow's input does not count: {idle} ms");
        drop(user);
    }

    #[test]
    fn an_end_reaches_every_viewer_with_its_reason_and_later_tickets_too() {
        let s = Arc::new(Sessions::default());
        let a = s.register("carol", true);
        assert_eq!(s.end("carol", EndReason::Idle), 1);
        assert!(a.ending().is_ended());
        assert_eq!(a.ending().reason(), EndReason::Idle);
        let late = s.register("carol", true);
        assert!(late.ending().is_ended(), "a ticket of an ended session stops at once");
        assert_eq!(late.ending().reason(), EndReason::Idle);
        assert!(!s.register("dave", true).ending().is_ended());
    }
}
