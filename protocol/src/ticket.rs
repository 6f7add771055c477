//! Display tickets: short-lived JWTs (EdDSA) that the broker signs and the display proxy checks
//! against the broker's published JWKS, with no call back to the broker.

use serde::{Deserialize, Serialize};

/// The `aud` of every display ticket.
pub const DISPLAY_AUDIENCE: &str = "atrium-display";
/// The `iss` of every token the broker signs.
pub const ISSUER: &str = "atrium-broker";
/// The longest lifetime a display ticket may have, in seconds.
pub const MAX_TICKET_TTL_SECS: u64 = 60;

/// What one viewer may do in a session, as granted by policy when the ticket was minted.
/// Unknown fields are ignored: a right a newer broker grants that this proxy does not know is
/// a feature this proxy does not have, so nothing more is allowed (and brokers may be upgraded
/// before proxies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The claims of a display ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayClaims {
    pub iss: String,
    /// Always [`DISPLAY_AUDIENCE`].
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
}
