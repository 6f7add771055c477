//! The guest's screen size, as its viewer's window asks for it: each request is fitted to what
//! the screen can take (at least [`MIN_DISPLAY`] square, at most the size the VM booted with,
//! a width that is a multiple of 8), and one task gives the newest to the guest agent through
//! the node, one at a time. A window dragged through many sizes costs the guest one change per
//! round trip, never a queue.

use atrium_protocol::node::{DisplaySize, MIN_DISPLAY};
use tokio::sync::watch;

use crate::source::open::GuestLink;

/// Where requests go in; cloned into the desktop.
#[derive(Debug, Clone)]
pub(super) struct ScreenSizes {
    max: DisplaySize,
    wanted: watch::Sender<Option<DisplaySize>>,
}

impl ScreenSizes {
    /// The sender, and the receiver for [`follow_screen_requests`].
    pub(super) fn new(max: DisplaySize) -> (Self, watch::Receiver<Option<DisplaySize>>) {
        let (wanted, rx) = watch::channel(None);
        (Self { max, wanted }, rx)
    }

    pub(super) fn max(&self) -> DisplaySize {
        self.max
    }

    /// Asks for `width` x `height`, fitted.
    pub(super) fn ask(&self, width: u16, height: u16) {
        self.wanted.send_replace(Some(fit(width, height, self.max)));
    }
}

/// The size the screen takes for a request: within [`MIN_DISPLAY`] and `max` (both of which
/// have widths that are multiples of 8), its width rounded down to a multiple of 8.
pub(super) fn fit(width: u16, height: u16, max: DisplaySize) -> DisplaySize {
    let w = u32::from(width).clamp(MIN_DISPLAY, max.width.max(MIN_DISPLAY)) / 8 * 8;
    let h = u32::from(height).clamp(MIN_DISPLAY, max.height.max(MIN_DISPLAY));
    DisplaySize::new(w, h)
}

/// Gives the guest the newest size asked for, until the desktop closes.
pub(super) async fn follow_screen_requests(
    link: GuestLink,
    mut wanted: watch::Receiver<Option<DisplaySize>>,
) {
    while wanted.changed().await.is_ok() {
        let Some(size) = *wanted.borrow_and_update() else { continue };
        match link.node.set_screen(&link.vm, size).await {
            Ok(took) => tracing::debug!(vm = %link.vm, asked = %size, %took, "screen resized"),
            Err(e) => {
                tracing::warn!(vm = %link.vm, asked = %size, error = %e, "the screen could not change size");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_fitted_to_what_the_screen_takes() {
        let max = DisplaySize::new(1920, 1080);
        assert_eq!(fit(1366, 768, max), DisplaySize::new(1360, 768));
        assert_eq!(fit(1920, 1080, max), max);
        assert_eq!(fit(3840, 2160, max), max);
        assert_eq!(fit(2560, 700, max), DisplaySize::new(1920, 700));
        assert_eq!(fit(0, 0, max), DisplaySize::new(MIN_DISPLAY, MIN_DISPLAY));
        assert_eq!(fit(390, 844, max), DisplaySize::new(384, 844));
        for (w, h) in [(1, 1), (333, 999), (u16::MAX, u16::MAX), (1023, 767)] {
            let s = fit(w, h, max);
            assert!(s.validate().is_ok(), "{w}x{h} fitted to {s}");
            assert!(s.width <= max.width && s.height <= max.height);
        }
    }

    #[tokio::test]
    async fn the_newest_request_wins() {
        let (sizes, mut rx) = ScreenSizes::new(DisplaySize::new(1280, 800));
        sizes.ask(800, 600);
        sizes.ask(1024, 768);
        rx.changed().await.expect("a request");
        assert_eq!(*rx.borrow_and_update(), Some(DisplaySize::new(1024, 768)));
        assert!(!rx.has_changed().expect("open"));
    }
}
