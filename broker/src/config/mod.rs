//! The broker's configuration: one TOML file, every key overridable from the environment as
//! `ATRIUM_<SECTION>_<KEY>` (for example `ATRIUM_LDAP_BIND_PASSWORD`). Documented in
//! `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atrium_protocol::config::{EnvKeys, EnvSpec};
use atrium_protocol::net::IpNet;
use serde::{Deserialize, Serialize};

pub use atrium_protocol::config::ConfigError;

use crate::secret::Secret;

mod ldap;
mod oidc;

pub use ldap::{GroupMode, LdapSection};
pub use oidc::{OidcSection, OidcUsers, SUPPORTED_ALGORITHMS, check_url};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerSection,
    pub database: DatabaseSection,
    pub ldap: LdapSection,
    pub oidc: OidcSection,
    pub mfa: MfaSection,
    pub sessions: SessionsSection,
    pub tickets: TicketsSection,
    pub login: LoginSection,
    pub policies: PoliciesSection,
    pub nodes: NodesSection,
    pub web: WebSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Address of the internal listener, for monitoring: when set, `/metrics` and the details
    /// of `/healthz` and `/readyz` are served there only (the public listener answers
    /// `/metrics` with 404 and its health with the status alone). Unset: all on `listen`.
    pub internal_listen: Option<SocketAddr>,
    /// The URL users reach the broker at; `https://` makes cookies `Secure`.
    pub public_url: String,
    /// Where the broker keeps its SQLite database and generated keys by default.
    pub data_dir: PathBuf,
    /// Peers whose `X-Forwarded-For` is believed (load balancers). Empty: none.
    pub trusted_proxies: Vec<String>,
    /// Seconds between reconcile passes (spares, lost nodes, timeouts).
    pub reconcile_interval_secs: u64,
    /// Seconds a client has to send a request's headers; slower connections are closed.
    pub header_timeout_secs: u64,
    /// Connections open at once on each listener, in all; beyond it new ones are closed at
    /// once.
    pub max_connections: usize,
    /// Connections open at once from one address that is not in `trusted_proxies` (an IPv6
    /// host counts by its /64).
    pub max_connections_per_address: usize,
    /// Seconds between SIGTERM and closing the listener, during which `/readyz` answers 503 and
    /// every other request is still served, so a load balancer stops sending new requests
    /// before the broker stops taking them. Requests in flight then get 10 s more to finish.
    pub drain_secs: u64,
    /// PEM certificate chain the broker presents on `listen` (reloaded on SIGHUP), with
    /// `tls_key`; nodes and display proxies then reach it at `https://`. Unset: plain HTTP (a
    /// TLS-terminating edge in front, or one host).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            internal_listen: None,
            public_url: "http://127.0.0.1:8080".into(),
            data_dir: PathBuf::from("/var/lib/atrium"),
            trusted_proxies: Vec::new(),
            reconcile_interval_secs: 2,
            header_timeout_secs: 30,
            max_connections: 4096,
            max_connections_per_address: 1024,
            drain_secs: 0,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `sqlite://PATH` (created when missing) or `postgres://USER:PASS@HOST/DB`. Empty: SQLite in
    /// `broker.data_dir`.
    pub url: Secret,
    /// File whose first line is `url` (a mounted secret), instead of `url`.
    pub url_file: Option<PathBuf>,
    /// Largest number of pooled connections (PostgreSQL; SQLite uses one writer).
    pub max_connections: u32,
    /// Seconds a request waits for a database connection (including reconnecting to a
    /// database that went away) before it is answered 503.
    pub acquire_timeout_secs: u64,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            url_file: None,
            max_connections: 16,
            acquire_timeout_secs: 5,
        }
    }
}

/// `[mfa]`: the second factor. Who must pass it is policy's (`require_mfa`, docs/policies.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaSection {
    /// The key that seals MFA secrets in the database (32 bytes, base64url; created when
    /// missing). Keep it out of the database's backups and share it between replicas like the
    /// signing keys. Empty: `<keys_dir>/mfa.key`.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsSection {
    /// Lifetime of a session token; refreshed (sliding) while the user is active.
    pub ttl_secs: u64,
    /// A session ends this long after sign-in, active or not.
    pub max_lifetime_secs: u64,
    /// Folder of signing keys (`*.pem`, Ed25519 PKCS#8). The newest signs; older ones
    /// stay published until their tokens have expired. Empty: `<data_dir>/keys`.
    pub keys_dir: Option<PathBuf>,
}

impl Default for SessionsSection {
    fn default() -> Self {
        Self { ttl_secs: 900, max_lifetime_secs: 12 * 3600, keys_dir: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketsSection {
    /// Lifetime of a display ticket (at most 60).
    pub ttl_secs: u64,
    /// The display gateways' public base URL (`wss://host[:port]`). When set, viewers connect
    /// there (`{gateway_url}/ws/{vm}`) and a gateway relays them to the node's display proxy
    /// that the ticket names; when empty, viewers connect to the node's display proxy directly.
    pub gateway_url: String,
}

impl Default for TicketsSection {
    fn default() -> Self {
        Self { ttl_secs: 30, gateway_url: String::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSection {
    /// Users may sign in with their directory username and password. With `false`, only
    /// single sign-on (`[oidc]`) is offered.
    pub password: bool,
    /// Failed sign-ins for one username within `window_secs` before it is locked.
    pub max_failures_per_user: u32,
    /// Failed sign-ins from one client address within `window_secs` before it is locked.
    pub max_failures_per_address: u32,
    pub window_secs: u64,
    /// How long a lockout lasts.
    pub lockout_secs: u64,
}

impl Default for LoginSection {
    fn default() -> Self {
        Self {
            password: true,
            max_failures_per_user: 5,
            max_failures_per_address: 50,
            window_secs: 300,
            lockout_secs: 900,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesSection {
    /// Folder with `schema.cedarschema` and `*.cedar` policy files.
    pub dir: PathBuf,
    /// UTC offset of the clock policies see (`context.hour`, `context.weekday`), e.g. `+01:00`.
    pub utc_offset: String,
}

impl Default for PoliciesSection {
    fn default() -> Self {
        Self { dir: PathBuf::from("/etc/atrium/policies"), utc_offset: "+00:00".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodesSection {
    /// Gone: nodes enrol with their own keys. Read only to say so clearly.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    #[serde(skip_serializing)]
    pub token_file: Option<PathBuf>,
    /// Heartbeat interval asked of nodes.
    pub heartbeat_interval_secs: u64,
    /// A node silent for this long is lost; its desktops fail.
    pub lost_after_secs: u64,
    /// Timeout of calls to a node agent.
    pub request_timeout_secs: u64,
    /// PEM bundle of the CA that issued the nodes' and display proxies' certificates (default:
    /// the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Accepts nodes whose API and display URLs are plain `http://`/`ws://` to a loopback
    /// address (one host, tests). Other plain URLs are refused at registration.
    pub plain_http_loopback: bool,
}

impl Default for NodesSection {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            heartbeat_interval_secs: 5,
            lost_after_secs: 20,
            request_timeout_secs: 30,
            ca_file: None,
            plain_http_loopback: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Serve the web client from this folder instead of the copy built into the binary
    /// (for development).
    pub dir: Option<PathBuf>,
}

/// The largest request head (request line and headers) a listener reads: cookies, a bearer
/// token and a long query fit many times over.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// How long requests in flight get to finish once a listener closes.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(10);

const SECTIONS: &[&str] = &[
    "broker", "database", "ldap", "oidc", "mfa", "sessions", "tickets", "login", "policies",
    "nodes", "web",
];

/// `ATRIUM_<SECTION>_<KEY>`; variables of other services (`ATRIUM_DISPLAY_*`...) are left alone.
const ENV: EnvSpec<'static> = EnvSpec { prefix: "ATRIUM_", keys: EnvKeys::Sections(SECTIONS) };

impl Config {
    /// Reads `path` (if given), applies `ATRIUM_*` environment overrides, resolves secret files,
    /// and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut cfg: Config = atrium_protocol::config::load(path, ENV, env)?;
        cfg.resolve_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_files(&mut self) -> Result<(), ConfigError> {
        if let Some(f) = &self.ldap.bind_password_file {
            self.ldap.bind_password = read_secret_file(f)?;
        }
        if let Some(f) = &self.oidc.client_secret_file {
            self.oidc.client_secret = read_secret_file(f)?;
        }
        if let Some(f) = &self.database.url_file {
            self.database.url = read_secret_file(f)?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.broker.tls_cert.is_some() != self.broker.tls_key.is_some() {
            return bad("broker.tls_cert and broker.tls_key go together".into());
        }
        if self.nodes.token.is_some() || self.nodes.token_file.is_some() {
            return bad(
                "nodes.token and nodes.token_file are no longer used: each node enrols with \
                 a one-time token and signs with its own key, and the broker signs its calls to \
                 nodes with its own keys (docs/node.md, \"Enrolment\"); remove them"
                    .into(),
            );
        }
        if !self.login.password && !self.oidc.enabled() {
            return bad("no way to sign in: set login.password = true or configure [oidc]".into());
        }
        if self.uses_directory() {
            self.ldap.validate()?;
        }
        self.oidc.validate()?;
        const DAY: u64 = 86_400;
        if self.sessions.max_lifetime_secs > 30 * DAY {
            return bad("sessions.max_lifetime_secs must be at most 30 days".into());
        }
        if self.login.window_secs > 30 * DAY || self.login.lockout_secs > 30 * DAY {
            return bad("login.window_secs and login.lockout_secs must be at most 30 days".into());
        }
        if self.nodes.heartbeat_interval_secs > 3600
            || self.nodes.lost_after_secs > DAY
            || !(1..=600).contains(&self.nodes.request_timeout_secs)
        {
            return bad("nodes: heartbeat_interval_secs <= 3600, lost_after_secs <= 86400, 1 <= request_timeout_secs <= 600".into());
        }
        if !(1..=300).contains(&self.broker.header_timeout_secs) {
            return bad("broker.header_timeout_secs must be 1 to 300".into());
        }
        if self.broker.max_connections == 0 || self.broker.max_connections_per_address == 0 {
            return bad(
                "broker.max_connections and broker.max_connections_per_address must be at least 1"
                    .into(),
            );
        }
        if self.broker.reconcile_interval_secs > 3600 {
            return bad("broker.reconcile_interval_secs must be at most 3600".into());
        }
        if self.sessions.ttl_secs < 60 || self.sessions.ttl_secs > self.sessions.max_lifetime_secs {
            return bad(
                "sessions.ttl_secs must be at least 60 and at most sessions.max_lifetime_secs"
                    .into(),
            );
        }
        if self.tickets.ttl_secs == 0
            || self.tickets.ttl_secs > atrium_protocol::ticket::MAX_TICKET_TTL_SECS
        {
            return bad("tickets.ttl_secs must be 1 to 60".into());
        }
        if self.login.window_secs == 0
            || self.login.max_failures_per_user == 0
            || self.login.max_failures_per_address == 0
        {
            return bad("login limits and window must be positive".into());
        }
        if self.nodes.heartbeat_interval_secs == 0
            || self.nodes.lost_after_secs <= self.nodes.heartbeat_interval_secs
        {
            return bad(
                "nodes.lost_after_secs must exceed nodes.heartbeat_interval_secs (> 0)".into()
            );
        }
        if self.broker.reconcile_interval_secs == 0 {
            return bad("broker.reconcile_interval_secs must be positive".into());
        }
        if !(self.broker.public_url.starts_with("http://")
            || self.broker.public_url.starts_with("https://"))
        {
            return bad("broker.public_url must be an http:// or https:// URL".into());
        }
        crate::policy::parse_utc_offset(&self.policies.utc_offset)
            .map_err(|e| ConfigError::Invalid(format!("policies.utc_offset: {e}")))?;
        let gw = &self.tickets.gateway_url;
        if !gw.is_empty() {
            let rest = gw.strip_prefix("wss://").or_else(|| gw.strip_prefix("ws://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', '@', ' '])) {
                return bad(format!(
                    "tickets.gateway_url {gw:?} must be a ws:// or wss:// URL with no query"
                ));
            }
        }
        if self.database.acquire_timeout_secs == 0 {
            return bad("database.acquire_timeout_secs must be at least 1".into());
        }
        for p in &self.broker.trusted_proxies {
            p.parse::<IpNet>()
                .map_err(|e| ConfigError::Invalid(format!("broker.trusted_proxies: {e}")))?;
        }
        Ok(())
    }

    /// The database URL, defaulting to SQLite in the data folder.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.broker.data_dir.join("broker.db").display())
        } else {
            self.database.url.expose().to_owned()
        }
    }

    /// `broker.trusted_proxies`, parsed (validated at load).
    pub fn trusted_proxy_nets(&self) -> Vec<IpNet> {
        self.broker.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect()
    }

    /// What each listener lets in.
    pub fn door_limits(&self) -> atrium_door::DoorLimits {
        atrium_door::DoorLimits {
            max_connections: self.broker.max_connections,
            max_per_address: self.broker.max_connections_per_address,
            trusted: self.trusted_proxy_nets(),
            header_timeout: Duration::from_secs(self.broker.header_timeout_secs),
            max_head: MAX_REQUEST_HEAD,
            drain_within: DRAIN_WITHIN,
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.sessions.keys_dir.clone().unwrap_or_else(|| self.broker.data_dir.join("keys"))
    }

    /// Whether the directory is used: for password sign-in, or to find single sign-on users.
    pub fn uses_directory(&self) -> bool {
        self.login.password || (self.oidc.enabled() && self.oidc.users == OidcUsers::Directory)
    }

    /// Where the OpenID provider sends the browser back.
    pub fn oidc_redirect_url(&self) -> String {
        if self.oidc.redirect_url.is_empty() {
            format!("{}/api/v1/auth/oidc/callback", self.broker.public_url.trim_end_matches('/'))
        } else {
            self.oidc.redirect_url.clone()
        }
    }

    /// Where the OpenID provider sends the browser after signing out there.
    pub fn oidc_post_logout_url(&self) -> String {
        if self.oidc.post_logout_redirect_url.is_empty() {
            format!("{}/", self.broker.public_url.trim_end_matches('/'))
        } else {
            self.oidc.post_logout_redirect_url.clone()
        }
    }

    /// The key file that seals MFA secrets.
    pub fn mfa_key_file(&self) -> PathBuf {
        self.mfa.key_file.clone().unwrap_or_else(|| self.keys_dir().join("mfa.key"))
    }

    /// Cookies get `Secure` when users reach the broker over TLS.
    pub fn secure_cookies(&self) -> bool {
        self.broker.public_url.starts_with("https://")
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    Ok(Secret::new(text.lines().next().unwrap_or("").trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    fn write(text: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("atrium-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("broker.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn env_overrides_take_the_key_type() {
        let (_d, p) = write("[ldap]\nurl = \"ldap://10.0.0.1\"\ngroup_base = \"ou=groups,dc=x\"\n");
        let c = Config::load_with_env(
            Some(&p),
            &env(&[
                ("ATRIUM_LDAP_BIND_PASSWORD", "12345"),
                ("ATRIUM_LDAP_TIMEOUT_SECS", "7"),
                ("ATRIUM_LDAP_STARTTLS", "true"),
                ("ATRIUM_BROKER_TRUSTED_PROXIES", "10.0.0.1, 10.0.0.2"),
                ("ATRIUM_SKIP", "qemu"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.ldap.bind_password.expose(), "12345");
        assert_eq!(c.ldap.timeout_secs, 7);
        assert!(c.ldap.starttls);
        assert_eq!(c.broker.trusted_proxies, vec!["10.0.0.1", "10.0.0.2"]);
        assert_eq!(c.ldap.url, "ldap://10.0.0.1");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let e =
            Config::load_with_env(None, &env(&[("ATRIUM_LDAP_TIMEOUT_SECS", "soon")])).unwrap_err();
        assert!(e.to_string().contains("ATRIUM_LDAP_TIMEOUT_SECS"), "{e}");
        let e = Config::load_with_env(None, &env(&[("ATRIUM_LDAP_NOPE", "x")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let (_d, p) = write("[ldap]\nuser_filter = \"(uid=*)\"\n");
        let e = Config::load_with_env(Some(&p), &[]).unwrap_err();
        assert!(e.to_string().contains("{username}"), "{e}");
        let (_d, p) = write("[ldap\n");
        assert!(matches!(Config::load_with_env(Some(&p), &[]), Err(ConfigError::Parse { .. })));
        let (_d, p) = write("[unknown]\n");
        assert!(Config::load_with_env(Some(&p), &[]).is_err());
        let e = Config::load_with_env(Some(Path::new("/nonexistent/x.toml")), &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }

    #[test]
    fn parse_errors_never_show_a_secret() {
        for (text, secret) in [
            ("[ldap]\nbind_password = 12345678\ngroup_base = \"ou=g\"\n", "12345678"),
            ("[ldap]\nbind_password = \"hunter\\q2\"\n", "hunter"),
            ("[database]\nurl = postgres://u:pw0rd@h/db\n", "pw0rd"),
            ("[nodes]\ntoken = 4242424242\n", "4242424242"),
        ] {
            let (_d, p) = write(text);
            let e = Config::load_with_env(Some(&p), &[]).unwrap_err().to_string();
            assert!(!e.contains(secret), "{e}");
            assert!(e.contains("line ") || e.contains("in `"), "still says where: {e}");
        }
        // Other errors keep their detail.
        let (_d, p) = write("[ldap]\ngroup_base = \"ou=g\"\ntimeout_secs = \"soon\"\n");
        let e = Config::load_with_env(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("soon") && e.contains("ldap.timeout_secs"), "{e}");
    }

    #[test]
    fn a_group_base_is_required() {
        let (_d, p) = write("[ldap]\nurl = \"ldap://10.0.0.1\"\ngroup_mode = \"member_of\"\n");
        let e = Config::load_with_env(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("group_base"), "{e}");
    }

    #[test]
    fn secret_files_are_read_and_never_printed() {
        let (d, p) = write("");
        let pw = d.join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::write(
            &p,
            format!(
                "[ldap]\nbind_password_file = {:?}\ngroup_base = \"ou=groups,dc=x\"\n",
                pw.display().to_string()
            ),
        )
        .unwrap();
        let c = Config::load_with_env(Some(&p), &[]).unwrap();
        assert_eq!(c.ldap.bind_password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        // The database URL from a mounted secret, as the container manifests give it.
        let url = d.join("db-url");
        std::fs::write(
            &url,
            "postgres://atrium:pw-77@db/atrium
",
        )
        .unwrap();
        let env = env(&[("ATRIUM_DATABASE_URL_FILE", url.to_str().unwrap())]);
        let c = Config::load_with_env(Some(&p), &env).unwrap();
        assert_eq!(c.database_url(), "postgres://atrium:pw-77@db/atrium");
        assert!(!format!("{c:?}").contains("pw-77"));
    }

    #[test]
    fn replica_settings_are_checked() {
        let (_d, p) = write("[ldap]\ngroup_base = \"ou=g\"\n");
        let load = |pairs: &[(&str, &str)]| Config::load_with_env(Some(&p), &env(pairs));
        let c = load(&[
            ("ATRIUM_TICKETS_GATEWAY_URL", "wss://desk.example.com"),
            ("ATRIUM_BROKER_DRAIN_SECS", "5"),
            ("ATRIUM_BROKER_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
        ])
        .unwrap();
        assert_eq!(c.broker.drain_secs, 5);
        assert_eq!(c.trusted_proxy_nets().len(), 2);
        let door = c.door_limits();
        assert_eq!(
            (door.max_connections, door.max_per_address, door.trusted.len()),
            (4096, 1024, 2)
        );
        for (var, value) in [
            ("ATRIUM_TICKETS_GATEWAY_URL", "https://desk.example.com"),
            ("ATRIUM_TICKETS_GATEWAY_URL", "wss://desk.example.com/?x"),
            ("ATRIUM_DATABASE_ACQUIRE_TIMEOUT_SECS", "0"),
            ("ATRIUM_BROKER_TRUSTED_PROXIES", "10.0.0.0/40"),
            ("ATRIUM_BROKER_MAX_CONNECTIONS", "0"),
            ("ATRIUM_BROKER_MAX_CONNECTIONS_PER_ADDRESS", "0"),
        ] {
            let e = load(&[(var, value)]).unwrap_err().to_string();
            let key = var.trim_start_matches("ATRIUM_").to_ascii_lowercase();
            let key = key.split_once('_').map_or(key.as_str(), |(_, k)| k).to_owned();
            assert!(e.contains(&key), "{var}={value}: {e}");
        }
    }
}
