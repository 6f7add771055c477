//! `[watermark]`: how a watermark looks when policy asks for one (action `watermark`).

use serde::{Deserialize, Serialize};

use super::ConfigError;
use atrium_protocol::ticket::{
    DEFAULT_WATERMARK_SPACING, WATERMARK_MAX_CHARS, WATERMARK_MAX_LINES, WATERMARK_TIME,
};

/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &["{user}", "{name}", "{client}", "{pool}", WATERMARK_TIME];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatermarkSection {
    /// The text, one line per `\n`: `{user}` (username), `{name}` (display name), `{client}`
    /// (the viewer's address as the broker saw it), `{pool}`, `{time}` (UTC, to the minute,
    /// written by the display proxy). At most three lines: a shadowing administrator's name
    /// is added as a fourth.
    pub template: String,
    /// How strongly the text shows, in percent (1-100).
    pub opacity: u8,
    /// Text height in pixels (8-96).
    pub size: u16,
    /// Angle of the text in degrees, counter-clockwise (-90 to 90).
    pub angle: i16,
    /// Space between neighbouring copies of the text, in text heights (2-40). The default,
    /// 16, puts about twenty copies of a two-line text on a 1920x1080 screen; 4 puts some
    /// eighty, and new content then costs about 1.36x the bytes instead of 1.14x.
    pub spacing: u8,
}

impl Default for WatermarkSection {
    fn default() -> Self {
        Self {
            template: "{user} · {client}\n{time}".into(),
            opacity: 15,
            size: 20,
            angle: 30,
            spacing: DEFAULT_WATERMARK_SPACING,
        }
    }
}

impl WatermarkSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let t = &self.template;
        if t.trim().is_empty() || t.split('\n').count() > WATERMARK_MAX_LINES - 1 {
            return bad(format!(
                "watermark.template must have 1-{} lines (a shadowing administrator's name is added as another)",
                WATERMARK_MAX_LINES - 1
            ));
        }
        if t.chars().count() > WATERMARK_MAX_CHARS / 2 {
            return bad(format!(
                "watermark.template is longer than {} characters",
                WATERMARK_MAX_CHARS / 2
            ));
        }
        if t.chars().any(|c| c.is_control() && c != '\n') {
            return bad("watermark.template has control characters".into());
        }
        let mut rest = t.as_str();
        while let Some(at) = rest.find('{') {
            let tail = &rest[at..];
            match PLACEHOLDERS.iter().find(|p| tail.starts_with(**p)) {
                Some(p) => rest = &tail[p.len()..],
                None => {
                    return bad(format!(
                        "watermark.template: unknown placeholder at {:?} (known: {})",
                        tail.chars().take(12).collect::<String>(),
                        PLACEHOLDERS.join(", ")
                    ));
                }
            }
        }
        let sample = atrium_protocol::ticket::Watermark {
            text: "x".into(),
            opacity: self.opacity,
            size: self.size,
            angle: self.angle,
            spacing: self.spacing,
        };
        sample.validate().map_err(|e| ConfigError::Invalid(e.replace("watermark ", "watermark.")))
    }
}
