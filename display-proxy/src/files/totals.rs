//! What each session moved, each way, against policy's `@max_session_mb`: counted by the
//! session (not the viewer), so reconnecting does not start again. A file reserves its size
//! when it starts; one that does not cross gives it back.
//!
//! The count lives in this proxy, beside the desktop: a proxy restarted mid-session starts it
//! again from zero (noted in docs/file-transfer.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A session's count is forgotten this long after its last file.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// A session id and a direction (`upload`, `download`).
type Key = (String, &'static str);

/// The bytes each session moved each way, and when it last moved a file.
#[derive(Debug, Default)]
pub struct SessionTotals {
    moved: Mutex<HashMap<Key, (u64, Instant)>>,
}

/// Bytes reserved for one file; given back on drop unless [`Reserved::keep`] was called.
#[derive(Debug)]
pub struct Reserved {
    totals: Arc<SessionTotals>,
    key: Key,
    bytes: u64,
}

impl SessionTotals {
    /// Reserves `bytes` of session `sid`'s `limit` (0: none) for a file moving `direction`;
    /// `Err(bytes already moved)` when they do not fit.
    pub fn reserve(
        self: &Arc<Self>,
        sid: &str,
        direction: &'static str,
        bytes: u64,
        limit: u64,
    ) -> Result<Reserved, u64> {
        let now = Instant::now();
        let mut moved = self.moved.lock().expect("totals lock");
        moved.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
        let key = (sid.to_owned(), direction);
        let entry = moved.entry(key.clone()).or_insert((0, now));
        if limit > 0 && entry.0.saturating_add(bytes) > limit {
            return Err(entry.0);
        }
        *entry = (entry.0.saturating_add(bytes), now);
        Ok(Reserved { totals: Arc::clone(self), key, bytes })
    }
}

impl Reserved {
    /// The file crossed: its bytes stay counted.
    pub fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        if let Some(e) = self.totals.moved.lock().expect("totals lock").get_mut(&self.key) {
            e.0 = e.0.saturating_sub(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_moves_up_to_its_limit_each_way_and_what_failed_comes_back() {
        let t = Arc::new(SessionTotals::default());
        let a = t.reserve("s1", "upload", 60, 100).unwrap();
        assert_eq!(t.reserve("s1", "upload", 50, 100).unwrap_err(), 60);
        t.reserve("s1", "download", 100, 100).unwrap().keep();
        t.reserve("s2", "upload", 100, 100).unwrap().keep();
        drop(a); // that upload failed: its 60 bytes come back
        let b = t.reserve("s1", "upload", 90, 100).unwrap();
        b.keep();
        assert_eq!(t.reserve("s1", "upload", 11, 100).unwrap_err(), 90);
        assert!(t.reserve("s1", "download", 1, 100).is_err(), "downloads count on their own");
        assert!(t.reserve("s1", "download", 1 << 40, 0).is_ok(), "0: no limit");
    }
}
