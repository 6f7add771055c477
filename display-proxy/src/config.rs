//! `atrium-display serve --config FILE`: one TOML file (unknown keys refused), every key
//! overridable from the environment as `ATRIUM_DISPLAY_<KEY>` (upper case). Documented in
//! `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atrium_protocol::config::{EnvKeys, EnvSpec};
use serde::{Deserialize, Serialize};

pub use atrium_protocol::config::ConfigError;
pub use atrium_protocol::secret::Secret;

/// The largest request head the display proxy and the gateway read (a ticket is at most 8 KiB).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long connections that have not upgraded get to finish once the door closes (viewers,
/// upgraded, are ended by the stop itself).
pub const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// The display proxy's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DisplayConfig {
    /// Address the HTTP/WebSocket server listens on.
    pub listen: SocketAddr,
    /// The broker's base URL; its keys are at `{broker_url}/.well-known/jwks.json`.
    pub broker_url: String,
    /// The CA bundle that issued the broker's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Allows a plain `http://` `broker_url` to a loopback address (one host, tests).
    pub plain_http_loopback: bool,
    /// PEM certificate chain this proxy presents (reloaded on SIGHUP and when it changes), with
    /// `tls_key`: the node's `display_url` is then `wss://`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The node agent's local socket (`node.local_socket`): where `/api/v1/vms/{id}` finds a
    /// VM's display and its clipboard. The proxy holds no credential for the node; the socket's
    /// permissions let it in (run it in `node.local_socket_group`).
    pub node_socket: PathBuf,
    /// Gone: read only to say so clearly.
    #[serde(skip_serializing)]
    pub node_api_url: Option<String>,
    #[serde(skip_serializing)]
    pub node_token: Option<Secret>,
    #[serde(skip_serializing)]
    pub node_token_file: Option<PathBuf>,
    /// Origins (`scheme://host[:port]`) whose pages may open display connections. A request
    /// with another `Origin` header is refused; one without (not a browser) is allowed.
    pub allowed_origins: Vec<String>,
    /// The node this proxy serves (required by `serve`): tickets must name it, and the broker's
    /// calls here (ending a session) are signed for it.
    pub node_id: Option<String>,
    /// Frames a viewer may have unacknowledged.
    pub max_frames_in_flight: u8,
    /// Viewers of one desktop at once (its user and shadows).
    pub max_viewers_per_desktop: usize,
    /// Encode threads (0: one per CPU).
    pub encode_threads: usize,
    /// Least seconds between JWKS fetches caused by unknown key ids.
    pub jwks_refresh_min_secs: u64,
    /// Clock skew allowed on ticket times, in seconds.
    pub ticket_leeway_secs: u64,
    /// Milliseconds an area shown lossy must stay unchanged before it is sent losslessly.
    pub refine_after_ms: u64,
    /// Most frames a second of a moving area sent as VP8 video, per viewer whose browser
    /// decodes it (encoding is also kept within half a frame's time). 0: no video, still
    /// images only.
    pub video_max_fps: u32,
    /// Seconds without a frame acknowledgement before a viewer is disconnected.
    pub ack_timeout_secs: u64,
    /// Threads of the async runtime (sockets); encoding has its own threads. 0: one per CPU.
    pub io_threads: usize,
    /// Milliseconds after a viewer's input during which a QEMU desktop's VNC refresh is kept
    /// at its fastest (a no-op message to QEMU every 25 ms), so a typed character is sent when
    /// the next 30 ms refresh finds it rather than 30 ms after the key: input-to-pixel p50
    /// about 15 ms instead of 32 ms, for about 1 ms of proxy CPU per second of typing. 0: off.
    pub keep_refresh_after_input_ms: u64,
    /// Seconds a client has to send a request's headers; slower connections are closed.
    pub header_timeout_secs: u64,
    /// Connections open at once, in all (viewers and API calls).
    pub max_connections: usize,
    /// Connections open at once from one address that is not a trusted proxy (an IPv6 host
    /// counts by its /64).
    pub max_connections_per_address: usize,
    /// Peers exempt from `max_connections_per_address`: the display gateways (each carries many
    /// viewers), or a TLS-terminating proxy in front. Addresses or networks.
    pub trusted_proxies: Vec<String>,
    /// The TrueType font watermarks are drawn with. A viewer whose ticket asks for a watermark
    /// is refused when this font cannot be read.
    pub watermark_font: PathBuf,
    /// ClamAV's daemon socket (`clamd`'s `LocalSocket`): files uploaded into desktops, and
    /// downloaded from them, are scanned there when policy says so (the default). Without it,
    /// files that must be scanned are refused.
    pub clamd_socket: Option<PathBuf>,
}

/// Debian's fonts-dejavu-core.
pub const DEFAULT_WATERMARK_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

impl Default for DisplayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            broker_url: String::new(),
            ca_file: None,
            plain_http_loopback: false,
            tls_cert: None,
            tls_key: None,
            node_socket: PathBuf::from("/var/lib/atrium-node/state/api.sock"),
            node_api_url: None,
            node_token: None,
            node_token_file: None,
            allowed_origins: Vec::new(),
            node_id: None,
            max_frames_in_flight: 2,
            max_viewers_per_desktop: 16,
            encode_threads: 0,
            jwks_refresh_min_secs: 10,
            ticket_leeway_secs: 5,
            refine_after_ms: 300,
            video_max_fps: 30,
            ack_timeout_secs: 60,
            io_threads: 1,
            keep_refresh_after_input_ms: 1000,
            header_timeout_secs: 10,
            max_connections: 1024,
            max_connections_per_address: 64,
            trusted_proxies: Vec::new(),
            watermark_font: PathBuf::from(DEFAULT_WATERMARK_FONT),
            clamd_socket: None,
        }
    }
}

/// `ATRIUM_DISPLAY_<KEY>`; an unknown one is an error (a typo must not pass).
const ENV: EnvSpec<'static> = EnvSpec { prefix: "ATRIUM_DISPLAY_", keys: EnvKeys::Flat };

impl DisplayConfig {
    /// Reads `path`, applies the environment, reads the token file, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// The same with these variables (tests).
    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut cfg = Self::from_text(path, &text, env)?;
        cfg.finish()?;
        Ok(cfg)
    }

    /// A file's text (`origin` names it in errors) with these variables applied, and its
    /// values checked: everything [`Self::load_with_env`] does before it reads other files.
    pub fn from_text(
        origin: &Path,
        text: &str,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let cfg: Self = atrium_protocol::config::from_text(origin, text, ENV, env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text)
            .map_err(|e| atrium_protocol::secret::toml_error_message(&e, Some(text)))
    }

    /// Checks every value, and what `serve` needs besides: a node id, a TLS (or loopback)
    /// broker URL, a readable CA bundle.
    pub fn finish(&mut self) -> Result<(), ConfigError> {
        self.validate()?;
        atrium_door::client::check_url(&self.broker_url, self.plain_http_loopback)
            .map_err(|e| ConfigError::Invalid(format!("broker_url: {e} (plain_http_loopback)")))?;
        atrium_door::client::client_config(self.ca_file.as_deref())
            .map_err(|e| ConfigError::Invalid(format!("ca_file: {e}")))?;
        if self.node_id.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid(
                "node_id is required: tickets must name this node, and the broker's calls here \
                 are signed for it"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !self.broker_url.starts_with("http://") && !self.broker_url.starts_with("https://") {
            return bad(format!("broker_url must be an http(s):// URL, not {:?}", self.broker_url));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together".into());
        }
        if self.node_api_url.is_some()
            || self.node_token.is_some()
            || self.node_token_file.is_some()
        {
            return bad("node_api_url, node_token and node_token_file are no longer used: the \
                 display proxy reaches the node on its local socket (node_socket) and holds no \
                 node credential (docs/node.md); remove them"
                .into());
        }
        if !(1..=16).contains(&self.max_frames_in_flight) {
            return bad("max_frames_in_flight must be 1 to 16".into());
        }
        if self.max_viewers_per_desktop == 0 {
            return bad("max_viewers_per_desktop must be at least 1".into());
        }
        for o in &self.allowed_origins {
            if !valid_origin(o) {
                return bad(format!("allowed_origins: {o:?} is not scheme://host[:port]"));
            }
        }
        if self.ticket_leeway_secs > 60 {
            return bad("ticket_leeway_secs must be at most 60".into());
        }
        if self.video_max_fps > 60 {
            return bad("video_max_fps must be 0 (no video) to 60".into());
        }
        if self.ack_timeout_secs == 0 {
            return bad("ack_timeout_secs must be at least 1".into());
        }
        if !(1..=300).contains(&self.header_timeout_secs) {
            return bad("header_timeout_secs must be 1 to 300".into());
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return bad("max_connections and max_connections_per_address must be at least 1".into());
        }
        for p in &self.trusted_proxies {
            p.parse::<atrium_protocol::net::IpNet>()
                .map_err(|e| ConfigError::Invalid(format!("trusted_proxies: {e}")))?;
        }
        if self.jwks_refresh_min_secs == 0 {
            return bad("jwks_refresh_min_secs must be at least 1 (it limits fetches that unknown key ids cause)".into());
        }
        Ok(())
    }

    /// What the accept loop lets in.
    pub fn door_limits(&self) -> atrium_door::DoorLimits {
        atrium_door::DoorLimits {
            max_connections: self.max_connections,
            max_per_address: self.max_connections_per_address,
            trusted: self.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect(),
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            max_head: MAX_REQUEST_HEAD,
            drain_within: DRAIN_WITHIN,
        }
    }

    pub fn refine_after(&self) -> Duration {
        Duration::from_millis(self.refine_after_ms)
    }

    pub fn keep_refresh_after_input(&self) -> Duration {
        Duration::from_millis(self.keep_refresh_after_input_ms)
    }
}

/// `scheme://host[:port]` with no path, as browsers send in `Origin`.
pub(crate) fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "0.0.0.0:9000"
broker_url = "https://broker.internal:8443"
node_socket = "/run/atrium/node.sock"
node_id = "node-1"
allowed_origins = ["https://desk.example.com"]
"#;

    #[test]
    fn a_bad_token_value_is_not_shown_in_the_error() {
        let e = DisplayConfig::parse("node_token = 98765432\n").unwrap_err();
        assert!(!e.contains("98765432") && e.contains("line 1"), "{e}");
        let e = DisplayConfig::parse("node_token = \"ab\\qcd\"\n").unwrap_err();
        assert!(!e.contains("ab\\qcd") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn the_old_shared_token_is_refused_with_the_reason() {
        let mut c =
            DisplayConfig::parse(&format!("{GOOD}node_token = \"s3cret-0123456789\"\n")).unwrap();
        let e = c.finish().unwrap_err().to_string();
        assert!(e.contains("no longer used") && !e.contains("s3cret"), "{e}");
        let mut c = DisplayConfig::parse(GOOD).unwrap();
        c.node_id = None;
        assert!(c.finish().unwrap_err().to_string().contains("node_id"));
    }

    #[test]
    fn parses_validates_and_redacts() {
        let c = DisplayConfig::parse(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_frames_in_flight, 2);
        assert_eq!(c.node_socket, PathBuf::from("/run/atrium/node.sock"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(DisplayConfig::parse(&format!("{GOOD}\nlisten_port = 3\n")).is_err());
        let mut c = DisplayConfig::parse(GOOD).unwrap();
        c.allowed_origins = vec!["https://x.example/path".into()];
        assert!(c.validate().is_err());
        let mut c = DisplayConfig::parse(GOOD).unwrap();
        c.max_frames_in_flight = 0;
        assert!(c.validate().is_err());
        let mut c = DisplayConfig::parse(GOOD).unwrap();
        c.broker_url = "ftp://x".into();
        assert!(c.validate().is_err());
        let mut c = DisplayConfig::parse(GOOD).unwrap();
        c.jwks_refresh_min_secs = 0;
        assert!(c.validate().unwrap_err().to_string().contains("jwks_refresh_min_secs"));
    }

    #[test]
    fn environment_overrides() {
        let dir = std::env::temp_dir().join(format!("atrium-display-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("display.toml");
        std::fs::write(&f, GOOD).unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let c = DisplayConfig::load_with_env(
            &f,
            &env(&[
                ("ATRIUM_DISPLAY_LISTEN", "127.0.0.1:1234"),
                ("ATRIUM_DISPLAY_ALLOWED_ORIGINS", "http://a:1, http://b"),
                ("ATRIUM_DISPLAY_MAX_FRAMES_IN_FLIGHT", "3"),
                ("ATRIUM_DISPLAY_NODE_ID", "node-9"),
                ("ATRIUM_GATEWAY_LISTEN", "another service's"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 1234);
        assert_eq!(c.allowed_origins, ["http://a:1", "http://b"]);
        assert_eq!(c.max_frames_in_flight, 3);
        assert_eq!(c.node_id.as_deref(), Some("node-9"));
        let e =
            DisplayConfig::load_with_env(&f, &env(&[("ATRIUM_DISPLAY_LISTN", "x")])).unwrap_err();
        assert!(e.to_string().contains("ATRIUM_DISPLAY_LISTN"), "{e}");
        let e = DisplayConfig::load_with_env(
            &f,
            &env(&[("ATRIUM_DISPLAY_MAX_FRAMES_IN_FLIGHT", "999")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ATRIUM_DISPLAY_MAX_FRAMES_IN_FLIGHT"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
