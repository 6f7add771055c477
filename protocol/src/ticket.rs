//! Display tickets: short-lived JWTs (EdDSA) that the broker signs and the display proxy checks
//! against the broker's published JWKS, with no call back to the broker.

use serde::{Deserialize, Serialize};

/// The `aud` of a display ticket without a watermark.
pub const DISPLAY_AUDIENCE: &str = "atrium-display";
/// The `aud` of a display ticket with a watermark: a display proxy that does not know
/// watermarks refuses the ticket rather than show the desktop without one.
pub const DISPLAY_AUDIENCE_WATERMARKED: &str = "atrium-display-watermarked";
/// The `aud` of a display ticket whose viewer's stream is recorded (with or without a
/// watermark): a display proxy that does not record refuses the ticket rather than show the
/// desktop unrecorded.
pub const DISPLAY_AUDIENCE_RECORDED: &str = "atrium-display-recorded";
/// The `iss` of every token the broker signs.
pub const ISSUER: &str = "atrium-broker";
/// The longest lifetime a display ticket may have, in seconds.
pub const MAX_TICKET_TTL_SECS: u64 = 60;

/// What one viewer may do in a session, as granted by policy when the ticket was minted.
/// Unknown fields are ignored: a right a newer broker grants that this proxy does not know is
/// a feature this proxy does not have, so nothing more is allowed (and brokers may be upgraded
/// before proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Input (keys, pointer) from this viewer is dropped.
    pub view_only: bool,
    /// Guest clipboard text may reach the browser.
    pub clipboard_copy_out: bool,
    /// Browser clipboard text may reach the guest.
    pub clipboard_paste_in: bool,
    /// Files may be uploaded into the desktop.
    pub file_upload: bool,
    /// Files may be downloaded from the desktop.
    pub file_download: bool,
    /// This viewer joins someone else's session (shadowing).
    pub shadow: bool,
    /// The desktop's sound may reach this viewer (absent in tickets of older brokers: none).
    #[serde(default)]
    pub audio: bool,
    /// Largest file this viewer may upload, in bytes; 0: no limit but the desktop's disk.
    #[serde(default)]
    pub upload_max_bytes: u64,
    /// Uploads must pass the virus scanner before they reach the desktop (absent: they must).
    #[serde(default = "scan_unless_said")]
    pub scan_files: bool,
    /// The kinds of file ([`crate::filetype::Kinds`]) that may be uploaded; 0: any.
    #[serde(default)]
    pub upload_types: crate::filetype::Kinds,
    /// Most bytes all uploads of the session may bring in; 0: no limit.
    #[serde(default)]
    pub upload_session_max_bytes: u64,
    /// Largest file this viewer may download, in bytes; 0: no limit.
    #[serde(default)]
    pub download_max_bytes: u64,
    /// Downloads must pass the virus scanner before the viewer may save them (absent: they
    /// must).
    #[serde(default = "scan_unless_said")]
    pub scan_downloads: bool,
    /// The kinds of file that may be downloaded; 0: any.
    #[serde(default)]
    pub download_types: crate::filetype::Kinds,
    /// Most bytes all downloads of the session may take out; 0: no limit.
    #[serde(default)]
    pub download_session_max_bytes: u64,
    /// Longest clipboard text or image that may leave the desktop, in bytes; 0: the protocol's
    /// limits.
    #[serde(default)]
    pub clipboard_out_max_bytes: u32,
    /// Longest clipboard text or image that may be pasted into the desktop, in bytes; 0: the
    /// protocol's.
    #[serde(default)]
    pub clipboard_in_max_bytes: u32,
    /// Images (not only text) may leave the desktop by the clipboard (absent in tickets of
    /// older brokers: they may not).
    #[serde(default)]
    pub clipboard_out_images: bool,
    /// Images (not only text) may be pasted into the desktop.
    #[serde(default)]
    pub clipboard_in_images: bool,
}

fn scan_unless_said() -> bool {
    true
}

/// The clipboard text a limit of `max` bytes (0: none but the protocol's) lets through.
pub fn clipboard_limit(max: u32) -> usize {
    match usize::try_from(max) {
        Ok(0) | Err(_) => crate::agent::MAX_CLIPBOARD,
        Ok(m) => m.min(crate::agent::MAX_CLIPBOARD),
    }
}

/// The clipboard image a limit of `max` bytes (0: none but the protocol's) lets through when
/// images may cross (`images`; else none): the policy's one limit holds for text and images
/// alike.
pub fn clipboard_image_limit(max: u32, images: bool) -> usize {
    match usize::try_from(max) {
        _ if !images => 0,
        Ok(0) | Err(_) => crate::agent::MAX_CLIPBOARD_IMAGE,
        Ok(m) => m.min(crate::agent::MAX_CLIPBOARD_IMAGE),
    }
}

/// Nothing allowed; files, once allowed, scanned.
impl Default for Capabilities {
    fn default() -> Self {
        Self {
            view_only: false,
            clipboard_copy_out: false,
            clipboard_paste_in: false,
            file_upload: false,
            file_download: false,
            shadow: false,
            audio: false,
            upload_max_bytes: 0,
            scan_files: true,
            upload_types: 0,
            upload_session_max_bytes: 0,
            download_max_bytes: 0,
            scan_downloads: true,
            download_types: 0,
            download_session_max_bytes: 0,
            clipboard_out_max_bytes: 0,
            clipboard_in_max_bytes: 0,
            clipboard_out_images: false,
            clipboard_in_images: false,
        }
    }
}

/// The claims of a display ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayClaims {
    pub iss: String,
    /// [`DISPLAY_AUDIENCE_RECORDED`] when `record` is set, else
    /// [`DISPLAY_AUDIENCE_WATERMARKED`] when `watermark` is set, else [`DISPLAY_AUDIENCE`]
    /// ([`DisplayClaims::audience`]).
    pub aud: String,
    /// The directory username of the viewer.
    pub sub: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: u64,
    /// Expiry, seconds since the Unix epoch; at most [`MAX_TICKET_TTL_SECS`] after `iat`.
    pub exp: u64,
    /// Unique ticket id: a display proxy accepts each `jti` once.
    pub jti: String,
    /// The broker's desktop id.
    pub desktop: String,
    /// The VM id on the node.
    pub vm: String,
    /// The node id.
    pub node: String,
    /// The broker's session id the viewer belongs to.
    pub sid: String,
    /// What this viewer may do.
    pub caps: Capabilities,
    /// The base URL (`ws://host:port`) of the node's display proxy that serves this VM. A
    /// display gateway relays the viewer there and nowhere else; a display proxy ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// When policy says so: the watermark the display proxy draws into every frame this
    /// viewer's desktop sends, before encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<Watermark>,
    /// When policy says so: this viewer's stream is recorded, as the recording the broker
    /// opened for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
}

impl DisplayClaims {
    /// The audience a ticket with these extras must have.
    pub fn audience(watermark: bool, record: bool) -> &'static str {
        match (watermark, record) {
            (_, true) => DISPLAY_AUDIENCE_RECORDED,
            (true, false) => DISPLAY_AUDIENCE_WATERMARKED,
            (false, false) => DISPLAY_AUDIENCE,
        }
    }
}

/// A recording of one viewer's stream, opened by the broker when it minted the ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The recording's id (a UUID): the display proxy sends its chunks under it.
    pub id: String,
    /// The viewer's keys and pointer are recorded too.
    #[serde(default)]
    pub input: bool,
}

impl Record {
    /// Whether the id can name a recording ([`validate_recording_id`]).
    pub fn validate(&self) -> Result<(), String> {
        validate_recording_id(&self.id)
    }
}

/// Whether `id` can name a recording: 1-64 lowercase hex digits and dashes (so it is safe as a
/// folder name and in a URL).
pub fn validate_recording_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
    if ok { Ok(()) } else { Err("bad recording id".into()) }
}

/// A watermark drawn into a desktop's pixels: its text (the broker has filled in who, from
/// where; the proxy fills in [`WATERMARK_TIME`] every minute), tiled diagonally over the screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// One to [`WATERMARK_MAX_LINES`] lines, separated by `\n`.
    pub text: String,
    /// How strongly the text shows, in percent (1-100).
    pub opacity: u8,
    /// Text height in pixels (8-96).
    pub size: u16,
    /// Angle of the text in degrees, counter-clockwise (-90 to 90).
    pub angle: i16,
    /// Space between neighbouring copies of the text, in text heights
    /// ([`WATERMARK_SPACING`]). Denser tiling names the user on smaller parts of the screen
    /// and costs more bytes: every copy's strokes go with each new piece of screen.
    #[serde(default = "default_spacing")]
    pub spacing: u8,
}

/// The range of [`Watermark::spacing`].
pub const WATERMARK_SPACING: std::ops::RangeInclusive<u8> = 2..=40;
/// [`Watermark::spacing`] when a ticket leaves it out: about twenty copies on a 1920x1080
/// screen for a two-line text at 20 pixels (docs/PERFORMANCE.md has the bytes each spacing
/// costs).
pub const DEFAULT_WATERMARK_SPACING: u8 = 16;

fn default_spacing() -> u8 {
    DEFAULT_WATERMARK_SPACING
}

/// Where the display proxy writes the date and time (UTC, to the minute) into a watermark.
pub const WATERMARK_TIME: &str = "{time}";
/// Lines a watermark may have.
pub const WATERMARK_MAX_LINES: usize = 4;
/// Characters a watermark's text may have in all.
pub const WATERMARK_MAX_CHARS: usize = 200;
/// Characters one line of a watermark may have (the text is drawn as one block; its size
/// bounds the proxy's work).
pub const WATERMARK_MAX_LINE_CHARS: usize = 100;

impl Watermark {
    /// Whether a proxy can draw this: bounded text without control characters (other than the
    /// line breaks), each setting in range.
    pub fn validate(&self) -> Result<(), String> {
        let lines = self.text.split('\n').count();
        if self.text.trim().is_empty() || lines > WATERMARK_MAX_LINES {
            return Err(format!("watermark text must have 1-{WATERMARK_MAX_LINES} lines"));
        }
        if self.text.chars().count() > WATERMARK_MAX_CHARS {
            return Err(format!("watermark text is longer than {WATERMARK_MAX_CHARS} characters"));
        }
        if self.text.split('\n').any(|l| l.chars().count() > WATERMARK_MAX_LINE_CHARS) {
            return Err(format!(
                "a watermark line is longer than {WATERMARK_MAX_LINE_CHARS} characters"
            ));
        }
        if self.text.chars().any(|c| c.is_control() && c != '\n') {
            return Err("watermark text has control characters".into());
        }
        if !(1..=100).contains(&self.opacity) {
            return Err("watermark opacity must be 1-100 (percent)".into());
        }
        if !(8..=96).contains(&self.size) {
            return Err("watermark size must be 8-96 pixels".into());
        }
        if !(-90..=90).contains(&self.angle) {
            return Err("watermark angle must be -90 to 90 degrees".into());
        }
        if !WATERMARK_SPACING.contains(&self.spacing) {
            return Err(format!(
                "watermark spacing must be {}-{} (text heights)",
                WATERMARK_SPACING.start(),
                WATERMARK_SPACING.end()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(text: &str) -> Watermark {
        Watermark { text: text.into(), opacity: 12, size: 20, angle: 30, spacing: 16 }
    }

    #[test]
    fn a_recording_id_is_short_lowercase_hex() {
        let r = |id: &str| Record { id: id.into(), input: false };
        assert!(r("5f0c9a1e-3b7d-4c2a-9e61-0d8f4b2a7c10").validate().is_ok());
        for bad in ["", "../x", "ABC", "a b", &"a".repeat(65)] {
            assert!(r(bad).validate().is_err(), "{bad:?}");
        }
        assert_eq!(DisplayClaims::audience(false, false), DISPLAY_AUDIENCE);
        assert_eq!(DisplayClaims::audience(true, false), DISPLAY_AUDIENCE_WATERMARKED);
        assert_eq!(DisplayClaims::audience(true, true), DISPLAY_AUDIENCE_RECORDED);
        assert_eq!(DisplayClaims::audience(false, true), DISPLAY_AUDIENCE_RECORDED);
    }

    #[test]
    fn a_watermark_is_bounded_text_with_settings_in_range() {
        assert_eq!(mark("alice · 10.0.0.5 · {time}").validate(), Ok(()));
        assert_eq!(mark("a\nb\nc\nd").validate(), Ok(()));
        for bad in ["", "  ", "a\nb\nc\nd\ne", "tab\there", "bell\u{7}"] {
            assert!(mark(bad).validate().is_err(), "{bad:?}");
        }
        assert!(mark(&"x".repeat(WATERMARK_MAX_CHARS + 1)).validate().is_err());
        assert!(mark(&"x".repeat(WATERMARK_MAX_LINE_CHARS + 1)).validate().is_err());
        let two = format!("{}\n{}", "é".repeat(WATERMARK_MAX_LINE_CHARS), "é".repeat(99));
        assert!(mark(&two).validate().is_ok(), "characters, not bytes");
        let ok = mark("a");
        for bad in [
            Watermark { opacity: 0, ..ok.clone() },
            Watermark { opacity: 101, ..ok.clone() },
            Watermark { size: 7, ..ok.clone() },
            Watermark { size: 97, ..ok.clone() },
            Watermark { angle: -91, ..ok.clone() },
            Watermark { angle: 91, ..ok.clone() },
            Watermark { spacing: 1, ..ok.clone() },
            Watermark { spacing: 41, ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let without: Watermark =
            serde_json::from_str(r#"{"text":"a","opacity":15,"size":20,"angle":30}"#).unwrap();
        assert_eq!(without.spacing, DEFAULT_WATERMARK_SPACING, "a ticket without spacing");
    }
}
