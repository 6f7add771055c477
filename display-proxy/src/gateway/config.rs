//! `atrium-display gateway --config FILE`: one TOML file (unknown keys refused), every key
//! overridable from the environment as `ATRIUM_GATEWAY_<KEY>` (upper case). Documented in
//! `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atrium_protocol::config::{EnvKeys, EnvSpec};
use atrium_protocol::net::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The display gateway's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// The broker's base URL; its keys are at `{broker_url}/.well-known/jwks.json`.
    pub broker_url: String,
    /// PEM bundle of the CA that issued the broker's and the display proxies' certificates
    /// (`https://` broker, `wss://` proxies; default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain the gateway presents (reloaded on SIGHUP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (reloaded on SIGHUP).
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP instead of TLS. Only for a gateway whose clients reach it on loopback
    /// or through a TLS-terminating proxy on the same host.
    pub plain_http: bool,
    /// Allow `broker_url` to be plain `http://` when it is a loopback address (a broker, or the
    /// edge in front of the brokers, on this host). Otherwise it must be `https://`.
    pub plain_http_loopback: bool,
    /// Origins (`scheme://host[:port]`) whose pages may open display connections. A request
    /// with another `Origin` header is refused; one without (not a browser) is allowed.
    pub allowed_origins: Vec<String>,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` is believed for the per-address
    /// limit.
    pub trusted_proxies: Vec<String>,
    /// The networks display proxies may be in: a ticket naming a proxy elsewhere (a node that
    /// registered a URL to a database, a metadata service, this host) is refused. Names are
    /// resolved and every address must be in one of these.
    pub proxy_networks: Vec<String>,
    /// Open client connections and relays at once, in all.
    pub max_connections: usize,
    /// Open connections at once from one address that is not a trusted proxy (an IPv6 host
    /// counts by its /64).
    pub max_connections_per_address: usize,
    /// Open display relays at once from one client address (behind trusted proxies, the
    /// address they forward; an IPv6 host counts by its /64).
    pub max_relays_per_address: usize,
    /// Seconds a client has for its TLS handshake and its request's headers.
    pub header_timeout_secs: u64,
    /// Seconds a relay may carry no byte in either direction before it is closed. An idle
    /// desktop sends nothing, so this is long; ending a session closes its relays at once.
    pub idle_timeout_secs: u64,
    /// Seconds to connect to a display proxy and get its answer to the upgrade.
    pub connect_timeout_secs: u64,
    /// Clock skew allowed on ticket times, in seconds.
    pub ticket_leeway_secs: u64,
    /// Least seconds between JWKS fetches caused by unknown key ids.
    pub jwks_refresh_min_secs: u64,
    /// Seconds between SIGTERM and closing the listener, during which `/readyz` answers 503.
    /// Open relays are then closed (their viewers reconnect through another gateway).
    pub drain_secs: u64,
    /// Threads of the async runtime. 1 (the default): one thread does all, with the fewest
    /// wake-ups; 0: one per CPU.
    pub io_threads: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            broker_url: String::new(),
            ca_file: None,
            tls_cert: None,
            tls_key: None,
            plain_http: false,
            plain_http_loopback: false,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            proxy_networks: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
                .map(str::to_owned)
                .to_vec(),
            max_connections: 4096,
            max_connections_per_address: 64,
            max_relays_per_address: 32,
            header_timeout_secs: 10,
            idle_timeout_secs: 3600,
            connect_timeout_secs: 5,
            ticket_leeway_secs: 5,
            jwks_refresh_min_secs: 10,
            drain_secs: 0,
            io_threads: 1,
        }
    }
}

/// `ATRIUM_GATEWAY_<KEY>`; an unknown one is an error (a typo must not pass).
const ENV: EnvSpec<'static> = EnvSpec { prefix: "ATRIUM_GATEWAY_", keys: EnvKeys::Flat };

impl GatewayConfig {
    /// Reads `path`, applies the environment, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// The same with these variables (tests).
    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_text(path, &text, env)
    }

    /// A file's text (`origin` names it in errors) with these variables applied, checked.
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !self.broker_url.starts_with("http://") && !self.broker_url.starts_with("https://") {
            return bad(format!("broker_url must be an http(s):// URL, not {:?}", self.broker_url));
        }
        atrium_door::client::check_url(&self.broker_url, self.plain_http_loopback)
            .map_err(|e| ConfigError::Invalid(format!("broker_url: {e} (plain_http_loopback)")))?;
        match (&self.tls_cert, &self.tls_key, self.plain_http) {
            (Some(_), Some(_), false) => {}
            (None, None, true) => {}
            (_, _, true) => {
                return bad("plain_http cannot be combined with tls_cert/tls_key".into());
            }
            _ => {
                return bad(
                    "tls_cert and tls_key are required (or plain_http = true, for loopback only)"
                        .into(),
                );
            }
        }
        for o in &self.allowed_origins {
            if !crate::config::valid_origin(o) {
                return bad(format!("allowed_origins: {o:?} is not scheme://host[:port]"));
            }
        }
        for p in &self.trusted_proxies {
            p.parse::<IpNet>()
                .map_err(|e| ConfigError::Invalid(format!("trusted_proxies: {e}")))?;
        }
        if self.proxy_networks.is_empty() {
            return bad("proxy_networks must name at least one network".into());
        }
        for p in &self.proxy_networks {
            p.parse::<IpNet>().map_err(|e| ConfigError::Invalid(format!("proxy_networks: {e}")))?;
        }
        if self.max_connections == 0
            || self.max_connections_per_address == 0
            || self.max_relays_per_address == 0
        {
            return bad("max_connections, max_connections_per_address and max_relays_per_address must be at least 1".into());
        }
        for (key, v, max) in [
            ("header_timeout_secs", self.header_timeout_secs, 300),
            ("idle_timeout_secs", self.idle_timeout_secs, 7 * 86_400),
            ("connect_timeout_secs", self.connect_timeout_secs, 60),
        ] {
            if v == 0 || v > max {
                return bad(format!("{key} must be 1 to {max}"));
            }
        }
        if self.ticket_leeway_secs > 60 {
            return bad("ticket_leeway_secs must be at most 60".into());
        }
        if self.jwks_refresh_min_secs == 0 {
            return bad("jwks_refresh_min_secs must be at least 1 (it limits fetches that unknown key ids cause)".into());
        }
        if self.drain_secs > 300 {
            return bad("drain_secs must be at most 300".into());
        }
        Ok(())
    }

    /// `trusted_proxies`, parsed (validated at load).
    pub fn trusted_nets(&self) -> Vec<IpNet> {
        self.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect()
    }

    /// `proxy_networks`, parsed (validated at load).
    pub fn proxy_nets(&self) -> Vec<IpNet> {
        self.proxy_networks.iter().filter_map(|p| p.parse().ok()).collect()
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "0.0.0.0:8443"
broker_url = "https://atrium-broker:8080"
ca_file = "/etc/atrium/ca/ca.crt"
tls_cert = "/etc/atrium/tls/tls.crt"
tls_key = "/etc/atrium/tls/tls.key"
allowed_origins = ["https://desk.example.com"]
trusted_proxies = ["10.0.0.0/8"]
"#;

    #[test]
    fn parses_and_validates() {
        let c = GatewayConfig::parse(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 8443);
        assert_eq!(c.trusted_nets().len(), 1);
        assert_eq!(c.io_threads, 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(GatewayConfig::parse(&format!("{GOOD}\nlisten_port = 3\n")).is_err());
        type Break = fn(&mut GatewayConfig);
        let cases: [(&str, Break); 12] = [
            ("broker_url", |c| c.broker_url = "ftp://broker".into()),
            // Plain HTTP to the broker: only on loopback, and only when allowed.
            ("broker_url", |c| c.broker_url = "http://atrium-broker:8080".into()),
            ("broker_url", |c| {
                c.broker_url = "http://atrium-broker:8080".into();
                c.plain_http_loopback = true;
            }),
            ("tls_cert", |c| c.tls_key = None),
            ("plain_http", |c| c.plain_http = true),
            ("allowed_origins", |c| c.allowed_origins = vec!["https://x/path".into()]),
            ("trusted_proxies", |c| c.trusted_proxies = vec!["10.0.0.0/99".into()]),
            ("max_connections", |c| c.max_relays_per_address = 0),
            ("proxy_networks", |c| c.proxy_networks = Vec::new()),
            ("proxy_networks", |c| c.proxy_networks = vec!["10.0.0.0/33".into()]),
            ("idle_timeout_secs", |c| c.idle_timeout_secs = 0),
            ("jwks_refresh_min_secs", |c| c.jwks_refresh_min_secs = 0),
        ];
        for (key, break_it) in cases {
            let mut c = GatewayConfig::parse(GOOD).unwrap();
            break_it(&mut c);
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let mut plain = GatewayConfig::parse(GOOD).unwrap();
        plain.tls_cert = None;
        plain.tls_key = None;
        plain.plain_http = true;
        plain.validate().unwrap();
        let mut local = GatewayConfig::parse(GOOD).unwrap();
        local.broker_url = "http://127.0.0.1:28080".into();
        local.plain_http_loopback = true;
        local.validate().unwrap();
    }

    #[test]
    fn environment_overrides() {
        let dir = std::env::temp_dir().join(format!("atrium-gw-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("gateway.toml");
        std::fs::write(&f, GOOD).unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let c = GatewayConfig::load_with_env(
            &f,
            &env(&[
                ("ATRIUM_GATEWAY_LISTEN", "127.0.0.1:1234"),
                ("ATRIUM_GATEWAY_ALLOWED_ORIGINS", "https://a:1, https://b"),
                ("ATRIUM_GATEWAY_MAX_RELAYS_PER_ADDRESS", "3"),
                ("ATRIUM_GATEWAY_TLS_CERT", "/x.pem"),
                ("ATRIUM_DISPLAY_LISTEN", "ignored: another service's"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 1234);
        assert_eq!(c.allowed_origins, ["https://a:1", "https://b"]);
        assert_eq!(c.max_relays_per_address, 3);
        assert_eq!(c.tls_cert, Some(PathBuf::from("/x.pem")));
        for (var, value) in [
            ("ATRIUM_GATEWAY_LISTN", "x"),
            ("ATRIUM_GATEWAY_PLAIN_HTTP", "maybe"),
            ("ATRIUM_GATEWAY_IO_THREADS", "-1"),
        ] {
            let e = GatewayConfig::load_with_env(&f, &env(&[(var, value)])).unwrap_err();
            assert!(e.to_string().contains(var), "{var}={value}: {e}");
        }
        // Emptied, the certificate is unset: the configuration is then refused as incomplete.
        let e =
            GatewayConfig::load_with_env(&f, &env(&[("ATRIUM_GATEWAY_TLS_CERT", "")])).unwrap_err();
        assert!(e.to_string().contains("tls_cert"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
