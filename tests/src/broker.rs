//! Runs the real `atrium-broker` binary with a configuration in a temporary folder, and an API
//! client that keeps cookies and sends the CSRF header like the web client does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

use crate::util::{TempDir, bin_path, free_port, wait_for, workspace_root};

/// How to start a broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub ldap_url: String,
    /// `None`: SQLite in the temporary folder.
    pub database_url: Option<String>,
    /// More TOML appended to the generated file (whole sections, e.g. `[login]`).
    pub extra_toml: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Policies folder (default: the repository's `policies/`).
    pub policies_dir: Option<PathBuf>,
    /// Listen port (default: a free one).
    pub port: Option<u16>,
    /// Serve `https://` with this certificate, and call nodes only over TLS trusting it.
    pub tls: Option<std::sync::Arc<crate::pki::TestTls>>,
}

impl BrokerOptions {
    pub fn new(ldap_url: &str) -> Self {
        Self {
            ldap_url: ldap_url.to_owned(),
            database_url: None,
            extra_toml: String::new(),
            env: Vec::new(),
            policies_dir: None,
            port: None,
            tls: None,
        }
    }
}

/// The body of `POST /api/v1/admin/pools` for a console pool of `kind` (`floating` or
/// `dedicated`).
pub fn pool_json(name: &str, kind: &str, min_ready: u32, max_size: u32) -> Value {
    serde_json::json!({
        "name": name, "description": "test pool", "image": "console", "vcpus": 1, "memory_mib": 512,
        "display": "1280x800", "kind": kind, "min_ready": min_ready, "max_size": max_size,
        "idle_timeout_secs": 600, "max_session_secs": 3600
    })
}

/// A running broker; killed on drop.
#[derive(Debug)]
pub struct Broker {
    dir: TempDir,
    child: Child,
    tls: Option<std::sync::Arc<crate::pki::TestTls>>,
    /// The environment it was started with (the command line tools take the same).
    env: Vec<(String, String)>,
    pub port: u16,
    pub url: String,
}

impl Broker {
    pub async fn start(opts: BrokerOptions) -> anyhow::Result<Self> {
        crate::util::install_crypto();
        let dir = TempDir::new("broker");
        let port = opts.port.unwrap_or_else(free_port);
        let db = opts
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/broker.db", dir.path().display()));
        let policies =
            opts.policies_dir.clone().unwrap_or_else(|| workspace_root().join("policies"));
        let has = |section: &str| opts.extra_toml.contains(&format!("[{section}]"));
        let mut toml = format!(
            "[broker]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\ndata_dir = {data:?}\nreconcile_interval_secs = 1\n\n\
             [database]\nurl = {db:?}\n\n\
             [ldap]\nurl = {ldap:?}\nbind_dn = \"cn=atrium,ou=services,dc=example,dc=com\"\nbind_password = \"service-pw\"\n\
             user_base = \"ou=people,dc=example,dc=com\"\ngroup_base = \"ou=groups,dc=example,dc=com\"\ntimeout_secs = 2\n{ldap_extra}\n\
             [policies]\ndir = {policies:?}\n\n",
            data = dir.path().display().to_string(),
            ldap = opts.ldap_url,
            ldap_extra = section_body(&opts.extra_toml, "ldap"),
            policies = policies.display().to_string(),
        );
        if !has("nodes") {
            toml.push_str("[nodes]\nheartbeat_interval_secs = 1\nlost_after_secs = 3\nrequest_timeout_secs = 5\nplain_http_loopback = true\n\n");
        }
        toml.push_str(&strip_section(&opts.extra_toml, "ldap"));
        let cfg = dir.path().join("broker.toml");
        std::fs::write(&cfg, toml)?;
        let child = spawn(dir.path(), &opts.env, opts.tls.as_deref(), port)?;
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let mut me = Self {
            dir,
            child,
            env: opts.env.clone(),
            tls: opts.tls.clone(),
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
        };
        me.wait_started().await?;
        Ok(me)
    }

    /// Waits until the broker answers `/healthz`; fails at once when it exits.
    async fn wait_started(&mut self) -> anyhow::Result<()> {
        let http = self.tls.as_ref().map_or_else(reqwest::Client::new, |t| t.client());
        let health = format!("{}/healthz", self.url);
        let pid = self.child.id();
        let started = wait_for("the broker to answer /healthz", Duration::from_secs(30), || {
            let http = http.clone();
            let health = health.clone();
            async move {
                // A broker that exited answers nothing: stop waiting at once.
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
                    return Some(false);
                }
                http.get(&health)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| true)
            }
        })
        .await;
        if matches!(started, Ok(false)) {
            let status = self.child.wait()?;
            anyhow::bail!("broker exited with {status}:\n{}", self.log());
        }
        if let Err(e) = started {
            let _ = self.child.kill();
            anyhow::bail!("{e}\nbroker log:\n{}", self.log());
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            anyhow::bail!("broker exited with {status}:\n{}", self.log());
        }
        Ok(())
    }

    /// When the process has ended (a crash, a kill), starts it again on the same configuration,
    /// database and port and waits until it answers; returns how it had ended. The quick start
    /// does this every second for each of its services.
    pub async fn restart_if_dead(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(status) = self.child.try_wait()? else { return Ok(None) };
        self.child = spawn(self.dir.path(), &self.env, self.tls.as_deref(), self.port)?;
        self.wait_started().await?;
        Ok(Some(status))
    }

    /// A one-time enrolment token for node `node`, from `atrium-broker enrol-token` on this
    /// broker's configuration.
    pub fn enrolment_token(&self, node: &str) -> anyhow::Result<String> {
        let out = Command::new(bin_path("atrium-broker"))
            .arg("--config")
            .arg(self.dir.path().join("broker.toml"))
            .args(["enrol-token", "--node", node])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "atrium-broker enrol-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        anyhow::ensure!(token.starts_with("atrium-enrol-"), "enrol-token printed {token:?}");
        Ok(token)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (SIGHUP reloads policies and keys).
    pub fn signal(&self, sig: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child; no memory is involved.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client signed in as the fixture directory's administrator (carol).
    pub async fn admin(&self) -> ApiClient {
        let mut c = self.client();
        c.login_ok("carol", "carol-pw").await;
        c
    }

    pub fn client(&self) -> ApiClient {
        match &self.tls {
            Some(t) => ApiClient::with_ca(&self.url, &t.ca_pem()).expect("the test CA loads"),
            None => ApiClient::new(&self.url),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- broker log ---\n{}", self.log());
        }
    }
}

/// Starts `atrium-broker` on `dir/broker.toml`, its output appended to `dir/broker.log`.
fn spawn(
    dir: &std::path::Path,
    env: &[(String, String)],
    tls: Option<&crate::pki::TestTls>,
    port: u16,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log"))?;
    let mut cmd = Command::new(bin_path("atrium-broker"));
    cmd.arg("--config")
        .arg(dir.join("broker.toml"))
        .env("RUST_LOG", "info,atrium_broker=debug,sqlx=warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(tls) = tls {
        cmd.env("ATRIUM_BROKER_TLS_CERT", &tls.cert)
            .env("ATRIUM_BROKER_TLS_KEY", &tls.key)
            .env("ATRIUM_BROKER_PUBLIC_URL", format!("https://127.0.0.1:{port}"))
            .env("ATRIUM_NODES_CA_FILE", &tls.ca)
            .env("ATRIUM_NODES_PLAIN_HTTP_LOOPBACK", "false");
    }
    Ok(cmd.spawn()?)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// The lines of `[section]` in a TOML text (without the header).
fn section_body(toml: &str, section: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == format!("[{section}]");
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The TOML text without `[section]`.
fn strip_section(toml: &str, section: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == format!("[{section}]");
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A browser-like API client: keeps cookies, sends `X-CSRF-Token` on state-changing calls.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub http: reqwest::Client,
    /// For an `https://` base: the harness's HTTPS client (with its own cookies).
    pub https: Option<crate::https::HttpsClient>,
    pub base: String,
    pub csrf: Option<String>,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        crate::util::install_crypto();
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Self { http, https: None, base: base.to_owned(), csrf: None }
    }

    /// A client of an `https://` base, trusting the CA certificates in `ca_pem`.
    pub fn with_ca(base: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        let mut me = Self::new(base);
        me.https = Some(crate::https::HttpsClient::new(ca_pem, true, Duration::from_secs(60))?);
        Ok(me)
    }

    /// Signs in; on success remembers the CSRF token.
    pub async fn login(&mut self, username: &str, password: &str) -> anyhow::Result<Response> {
        let body = serde_json::json!({ "username": username, "password": password });
        let r = match &self.https {
            Some(h) => {
                let url = format!("{}/api/v1/auth/login", self.base);
                h.request(Method::POST, &url, &[], Some(&body)).await?
            }
            None => {
                self.http
                    .post(format!("{}/api/v1/auth/login", self.base))
                    .json(&body)
                    .send()
                    .await?
            }
        };
        if r.status().is_success() {
            let cookies: Vec<String> = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            self.csrf = cookies.iter().find_map(|c| {
                c.strip_prefix("__Host-atrium_csrf=")
                    .or_else(|| c.strip_prefix("atrium_csrf="))
                    .and_then(|v| v.split(';').next())
                    .map(str::to_owned)
            });
        }
        Ok(r)
    }

    /// Signs in and panics with the body when it fails.
    pub async fn login_ok(&mut self, username: &str, password: &str) -> Value {
        let r = self.login(username, password).await.expect("login request");
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "login {username}: {body}");
        body
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Response> {
        if let Some(h) = &self.https {
            let csrf: Vec<(&str, &str)> = match &self.csrf {
                Some(t) if method != Method::GET => vec![("x-csrf-token", t.as_str())],
                _ => Vec::new(),
            };
            let url = format!("{}{path}", self.base);
            return h.request(method, &url, &csrf, body.as_ref()).await;
        }
        let mut rb = self.http.request(method.clone(), format!("{}{path}", self.base));
        if method != Method::GET
            && let Some(t) = &self.csrf
        {
            rb = rb.header("X-CSRF-Token", t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Ok(rb.send().await?)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Response> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// GET, expecting `status`, returning the JSON body.
    pub async fn get_json(&self, path: &str, status: StatusCode) -> Value {
        let r = self.get(path).await.expect("request");
        let s = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(s, status, "GET {path}: {body}");
        body
    }

    /// A one-time enrolment token for node `node`, as an administrator makes it in the portal.
    pub async fn enrolment_token(&self, node: &str) -> String {
        let body = serde_json::json!({ "node_id": node });
        let created = self.post_json("/api/v1/admin/enrolments", body, StatusCode::CREATED).await;
        created["token"].as_str().expect("a token").to_owned()
    }

    /// POST, expecting `status`, returning the JSON body (or Null).
    /// A new API token with the `admin` scope, for a day: its secret (what scripts send as
    /// `Authorization: Bearer`).
    pub async fn admin_token(&self, name: &str) -> String {
        let created = self
            .post_json(
                "/api/v1/admin/tokens",
                serde_json::json!({ "name": name, "scope": "admin", "expires_in_days": 1 }),
                StatusCode::CREATED,
            )
            .await;
        created["token"].as_str().expect("the new token's secret").to_owned()
    }

    pub async fn post_json(&self, path: &str, body: Value, status: StatusCode) -> Value {
        let r = self.post(path, body).await.expect("request");
        let s = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(s, status, "POST {path}: {body}");
        body
    }
}

/// Waits until `pool` has `n` ready spares (as its administrator `c` sees it).
pub async fn wait_ready_spares(c: &ApiClient, pool: &str, n: u64) {
    let path = format!("/api/v1/admin/pools/{pool}");
    wait_for(&format!("{n} ready spares in {pool}"), Duration::from_secs(30), || async {
        let p = c.get_json(&path, StatusCode::OK).await;
        (p["counts"]["ready"].as_u64() == Some(n)).then_some(())
    })
    .await
    .unwrap();
}

/// Verifies a display ticket against the broker's JWKS like the display proxy does; its
/// claims.
pub async fn verify_ticket(broker: &Broker, ticket: &str) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet =
        reqwest::get(format!("{}/.well-known/jwks.json", broker.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let header = jsonwebtoken::decode_header(ticket).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("kid published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["atrium-display", "atrium-display-watermarked", "atrium-display-recorded"]);
    v.set_issuer(&["atrium-broker"]);
    jsonwebtoken::decode::<Value>(ticket, &key, &v).expect("a valid display ticket").claims
}

/// A policies folder: the repository's schema and default policies, and `extra` (Cedar) as
/// `<name>.cedar` beside them.
pub fn policies_with(name: &str, extra: &str) -> TempDir {
    let dir = TempDir::new("policies");
    for f in ["schema.cedarschema", "default.cedar"] {
        std::fs::copy(workspace_root().join("policies").join(f), dir.path().join(f))
            .expect("copying the repository's policies");
    }
    std::fs::write(dir.path().join(format!("{name}.cedar")), extra).expect("writing a policy");
    dir
}

/// Cedar that permits `actions` to everyone in pool `pool` (one policy each).
pub fn pool_policy(pool: &str, actions: &[&str]) -> String {
    actions
        .iter()
        .map(|a| {
            format!(
                "@id(\"{pool}-{a}\")\npermit (principal, action == Atrium::Action::\"{a}\", resource)\n\
                 when {{ resource is Atrium::Pool && resource.name == \"{pool}\" }};\n\n"
            )
        })
        .collect()
}

/// The code an authenticator app shows for `secret` (base32, as the set-up page shows it) at
/// time step `now/30 + offset`.
pub fn totp_code(secret: &str, offset: i64) -> String {
    use atrium_broker::mfa::totp;
    let key = data_encoding::BASE32_NOPAD.decode(secret.as_bytes()).expect("a base32 key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let step = (now / totp::STEP_SECS).saturating_add_signed(offset);
    format!("{:06}", totp::code_at(&key, step))
}
