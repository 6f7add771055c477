//! The guest's clipboard, as the node agent reports it.

use std::time::Duration;

use atrium_protocol::display::{MAX_CLIPBOARD, truncate_utf8};
use tokio::sync::broadcast;

use crate::source::open::GuestLink;

/// Long-polls the guest clipboard through the node and broadcasts changes. The first read
/// answers at once: it is what was there before, not sent; a change while a long poll waited
/// is sent.
pub(super) async fn poll_clipboard(link: GuestLink, out: broadcast::Sender<String>) {
    let mut seq = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = if seq.is_some() { 25 } else { 0 };
        match link.node.clipboard_after(&link.vm, seq.unwrap_or(0), wait).await {
            Ok(state) => {
                backoff = Duration::from_secs(1);
                let first = seq.is_none();
                if seq.is_none_or(|s| state.seq > s) {
                    seq = Some(state.seq);
                    if !first && let Some(text) = state.text {
                        let _ = out.send(truncate_utf8(&text, MAX_CLIPBOARD).to_owned());
                    }
                }
            }
            Err(e) => {
                tracing::debug!(vm = %link.vm, error = %e, "guest clipboard unavailable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
