//! The guest's clipboard, as the node agent reports it: text, or an image (a PNG file).

use std::time::Duration;

use atrium_protocol::display::{MAX_CLIPBOARD, MAX_CLIPBOARD_IMAGE, truncate_utf8};
use atrium_protocol::filetype::png_size;
use atrium_protocol::node::{ClipboardPaste, ClipboardState};
use axum::body::Bytes;
use tokio::sync::broadcast;

use crate::source::open::GuestLink;

/// What a clipboard holds as it crosses between a desktop and its viewers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clip {
    Text(String),
    /// A PNG file, checked to be one ([`png_size`]).
    Png(Bytes),
}

impl Clip {
    /// Its bytes: the text's UTF-8, or the image's file.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Clip::Text(t) => t.as_bytes(),
            Clip::Png(p) => p,
        }
    }

    /// What it is, as the audit log names it.
    pub fn what(&self) -> &'static str {
        match self {
            Clip::Text(_) => "clipboard text",
            Clip::Png(_) => "clipboard image (PNG)",
        }
    }

    /// What the node takes to paste it.
    pub(super) fn to_paste(&self) -> ClipboardPaste {
        match self {
            Clip::Text(t) => ClipboardPaste { text: Some(t.clone()), png: None },
            Clip::Png(p) => ClipboardPaste { text: None, png: Some(p.to_vec()) },
        }
    }

    /// The clipboard a node reports, checked: text cut to the protocol's limit; an image only
    /// when it is a PNG file within the limit (a node, like a guest, may lie).
    fn of(state: ClipboardState) -> Option<Self> {
        if let Some(png) = state.png {
            return (png.len() <= MAX_CLIPBOARD_IMAGE && png_size(&png).is_ok())
                .then(|| Clip::Png(Bytes::from(png)));
        }
        state.text.map(|t| Clip::Text(truncate_utf8(&t, MAX_CLIPBOARD).to_owned()))
    }
}

/// Long-polls the guest clipboard through the node and broadcasts changes. The first read
/// answers at once: it is what was there before, not sent; a change while a long poll waited
/// is sent.
pub(super) async fn poll_clipboard(link: GuestLink, out: broadcast::Sender<Clip>) {
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
                    if !first && let Some(clip) = Clip::of(state) {
                        let _ = out.send(clip);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A real PNG file of `width` x `height` black pixels.
    fn real_png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let pixels = vec![0; usize::try_from(width * height * 4).expect("small")];
        enc.write_header().expect("header").write_image_data(&pixels).expect("pixels");
        out
    }

    fn state(text: Option<&str>, png: Option<Vec<u8>>) -> ClipboardState {
        ClipboardState { seq: 1, text: text.map(str::to_owned), png }
    }

    #[test]
    fn a_node_s_clipboard_is_checked_before_it_crosses() {
        let png = real_png(2, 2);
        assert_eq!(
            Clip::of(state(None, Some(png.clone()))),
            Some(Clip::Png(Bytes::from(png.clone())))
        );
        let smuggled = [png, b"after the end".to_vec()].concat();
        assert_eq!(Clip::of(state(None, Some(smuggled))), None, "something after the image");
        assert_eq!(Clip::of(state(None, Some(b"GIF89a".to_vec()))), None, "not a PNG file");
        assert_eq!(Clip::of(state(Some("hi"), None)), Some(Clip::Text("hi".into())));
        let long = "é".repeat(MAX_CLIPBOARD);
        let Some(Clip::Text(cut)) = Clip::of(state(Some(&long), None)) else { panic!("text") };
        assert!(cut.len() <= MAX_CLIPBOARD && cut.chars().all(|c| c == 'é'));
        assert_eq!(Clip::of(state(None, None)), None);
    }
}
