//! The clipboard between a desktop and one viewer, under the ticket's rights: what the viewer
//! pastes in and what the desktop copies out, text or an image (a PNG file), each within the
//! policy's limit and audited by what it is, its size and hash (never its content).

use atrium_protocol::display::ServerMessage;
use atrium_protocol::filetype::png_size;
use atrium_protocol::ticket::{Capabilities, clipboard_image_limit, clipboard_limit};
use tokio::sync::mpsc;

use crate::desktop::{Clip, Desktop};
use crate::files::Outcome;

/// The most bytes of `clip`'s kind that `max` (the policy's limit, 0: none) lets through;
/// none of an image unless `images` may cross.
fn limit_for(clip: &Clip, max: u32, images: bool) -> usize {
    match clip {
        Clip::Text(_) => clipboard_limit(max),
        Clip::Png(_) => clipboard_image_limit(max, images),
    }
}

/// Why a clipboard of `size` bytes does not cross a `limit` (0: images may not).
fn over(size: usize, limit: usize) -> String {
    if limit == 0 {
        "an image, and the policy lets only text cross".into()
    } else {
        format!("{size} bytes, over the limit of {limit}")
    }
}

fn refusal(out: bool, size: usize, limit: usize) -> ServerMessage {
    ServerMessage::ClipboardRefused {
        out,
        size: u32::try_from(size).unwrap_or(u32::MAX),
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
    }
}

/// A paste from the viewer, within the ticket's rights and limits: sent to the desktop and
/// audited. Over the limit (an image where the policy lets only text cross: a limit of 0), it
/// is refused and audited (by size and hash), and the answer is what the viewer is told; an
/// image that is not a PNG file is refused and audited too. Not allowed at all: nothing.
pub(super) fn paste(
    desktop: &Desktop,
    rights: &Capabilities,
    outcomes: &mpsc::UnboundedSender<Outcome>,
    clip: Clip,
) -> Option<ServerMessage> {
    if !rights.clipboard_paste_in || rights.view_only {
        tracing::debug!("clipboard paste refused: not allowed by the ticket");
        return None;
    }
    let limit = limit_for(&clip, rights.clipboard_in_max_bytes, rights.clipboard_in_images);
    let size = clip.bytes().len();
    if let Clip::Png(p) = &clip
        && let Err(why) = png_size(p)
    {
        // The web client sends the browser's own PNG: anything else is not a user's paste.
        tracing::debug!("clipboard image refused: {why}");
        let _ = outcomes.send(Outcome::clipboard("clipboard_in", &clip, Some(why)));
        return None;
    }
    if size > limit {
        let _ = outcomes.send(Outcome::clipboard("clipboard_in", &clip, Some(over(size, limit))));
        return Some(refusal(false, size, limit));
    }
    let mut outcome = Outcome::clipboard("clipboard_in", &clip, None);
    if let Err(why) = desktop.paste(&clip) {
        outcome.verdict = "failed";
        outcome.detail = Some(why.to_owned());
    }
    let _ = outcomes.send(outcome);
    None
}

/// What the viewer is sent of what the desktop copied (the ticket lets the clipboard out):
/// the text or image, or, over the limit (an image where only text may leave: 0), its refusal.
/// Audited either way.
pub(super) fn copy_out(
    rights: &Capabilities,
    outcomes: Option<&mpsc::UnboundedSender<Outcome>>,
    clip: Clip,
) -> ServerMessage {
    let limit = limit_for(&clip, rights.clipboard_out_max_bytes, rights.clipboard_out_images);
    let size = clip.bytes().len();
    let refused = (size > limit).then(|| over(size, limit));
    if let Some(o) = outcomes {
        let _ = o.send(Outcome::clipboard("clipboard_out", &clip, refused.clone()));
    }
    match clip {
        _ if refused.is_some() => refusal(true, size, limit),
        Clip::Text(text) => ServerMessage::Clipboard { text },
        Clip::Png(png) => ServerMessage::ClipboardImage { png: png.to_vec() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_protocol::display::MAX_CLIPBOARD;
    use axum::body::Bytes;

    #[test]
    fn what_the_desktop_copies_reaches_the_viewer_within_the_limit_and_is_audited() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let rights = Capabilities {
            clipboard_copy_out: true,
            clipboard_out_max_bytes: 8,
            clipboard_out_images: true,
            ..Default::default()
        };
        let small = copy_out(&rights, Some(&tx), Clip::Png(Bytes::from_static(b"\x89PNG")));
        assert_eq!(small, ServerMessage::ClipboardImage { png: b"\x89PNG".to_vec() });
        let big = copy_out(&rights, Some(&tx), Clip::Text("123456789".into()));
        assert_eq!(big, ServerMessage::ClipboardRefused { out: true, size: 9, limit: 8 });
        let audited: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(audited.len(), 2);
        assert_eq!(
            (audited[0].name.as_str(), audited[0].verdict),
            ("clipboard image (PNG)", "saved")
        );
        assert_eq!((audited[1].name.as_str(), audited[1].verdict), ("clipboard text", "refused"));
        // No policy limit: the protocol's, larger for images than for text.
        let open = Capabilities {
            clipboard_copy_out: true,
            clipboard_out_images: true,
            ..Default::default()
        };
        let image = Clip::Png(Bytes::from(vec![0; MAX_CLIPBOARD + 1]));
        assert!(matches!(copy_out(&open, None, image), ServerMessage::ClipboardImage { .. }));
        let text = Clip::Text("x".repeat(MAX_CLIPBOARD + 1));
        assert!(matches!(copy_out(&open, None, text), ServerMessage::ClipboardRefused { .. }));
    }

    #[test]
    fn an_image_where_only_text_may_leave_is_refused_with_a_limit_of_0_and_audited() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let text_only = Capabilities { clipboard_copy_out: true, ..Default::default() };
        let image = Clip::Png(Bytes::from_static(b"\x89PNG"));
        let answer = copy_out(&text_only, Some(&tx), image);
        assert_eq!(answer, ServerMessage::ClipboardRefused { out: true, size: 4, limit: 0 });
        let text = copy_out(&text_only, Some(&tx), Clip::Text("hi".into()));
        assert_eq!(text, ServerMessage::Clipboard { text: "hi".into() }, "text still leaves");
        let audited: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!((audited[0].verdict, audited[1].verdict), ("refused", "saved"));
        assert!(audited[0].detail.as_deref().is_some_and(|d| d.contains("only text")));
    }
}
