//! `[broker]`, `[database]`, `[nodes]`, `[tickets]`, `[policies]` and `[web]`: where the broker
//! listens and keeps its state, how it reaches nodes, what viewers are given, where policies and
//! the web client are.

use std::net::SocketAddr;
use std::path::PathBuf;

use atrium_protocol::net::IpNet;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

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

impl BrokerSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("broker.tls_cert and broker.tls_key go together".into());
        }
        if !(1..=300).contains(&self.header_timeout_secs) {
            return bad("broker.header_timeout_secs must be 1 to 300".into());
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return bad(
                "broker.max_connections and broker.max_connections_per_address must be at least 1"
                    .into(),
            );
        }
        if self.reconcile_interval_secs > 3600 {
            return bad("broker.reconcile_interval_secs must be at most 3600".into());
        }
        if self.reconcile_interval_secs == 0 {
            return bad("broker.reconcile_interval_secs must be positive".into());
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return bad("broker.public_url must be an http:// or https:// URL".into());
        }
        for p in &self.trusted_proxies {
            p.parse::<IpNet>()
                .map_err(|e| ConfigError::Invalid(format!("broker.trusted_proxies: {e}")))?;
        }
        Ok(())
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

impl DatabaseSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.acquire_timeout_secs == 0 {
            return bad("database.acquire_timeout_secs must be at least 1".into());
        }
        Ok(())
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

impl NodesSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.token.is_some() || self.token_file.is_some() {
            return bad(
                "nodes.token and nodes.token_file are no longer used: each node enrols with \
                 a one-time token and signs with its own key, and the broker signs its calls to \
                 nodes with its own keys (docs/node.md, \"Enrolment\"); remove them"
                    .into(),
            );
        }
        if self.heartbeat_interval_secs > 3600
            || self.lost_after_secs > super::DAY
            || !(1..=600).contains(&self.request_timeout_secs)
        {
            return bad("nodes: heartbeat_interval_secs <= 3600, lost_after_secs <= 86400, 1 <= request_timeout_secs <= 600".into());
        }
        if self.heartbeat_interval_secs == 0 || self.lost_after_secs <= self.heartbeat_interval_secs
        {
            return bad(
                "nodes.lost_after_secs must exceed nodes.heartbeat_interval_secs (> 0)".into()
            );
        }
        Ok(())
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

impl TicketsSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.ttl_secs == 0 || self.ttl_secs > atrium_protocol::ticket::MAX_TICKET_TTL_SECS {
            return bad("tickets.ttl_secs must be 1 to 60".into());
        }
        let gw = &self.gateway_url;
        if !gw.is_empty() {
            let rest = gw.strip_prefix("wss://").or_else(|| gw.strip_prefix("ws://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', '@', ' '])) {
                return bad(format!(
                    "tickets.gateway_url {gw:?} must be a ws:// or wss:// URL with no query"
                ));
            }
        }
        Ok(())
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

impl PoliciesSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        crate::policy::parse_utc_offset(&self.utc_offset)
            .map_err(|e| ConfigError::Invalid(format!("policies.utc_offset: {e}")))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Serve the web client from this folder instead of the copy built into the binary
    /// (for development).
    pub dir: Option<PathBuf>,
}
