//! The broker's configuration: one TOML file, every key overridable from the environment as
//! `ATRIUM_<SECTION>_<KEY>` (for example `ATRIUM_LDAP_BIND_PASSWORD`). Documented in
//! `docs/configuration.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use atrium_protocol::config::{EnvKeys, EnvSpec};
use atrium_protocol::net::IpNet;
use serde::{Deserialize, Serialize};

pub use atrium_protocol::config::ConfigError;

use crate::secret::Secret;

mod images;
mod ldap;
mod oidc;
mod recordings;
mod service;
mod signin;
mod watermark;

pub use images::ImagesSection;
pub use ldap::{GroupMode, LdapSection};
pub use oidc::{OidcSection, OidcUsers, SUPPORTED_ALGORITHMS, check_url};
pub use recordings::RecordingsSection;
pub use service::{
    BrokerSection, DatabaseSection, NodesSection, PoliciesSection, TicketsSection, WebSection,
};
pub use signin::{LoginSection, MfaSection, SessionsSection};
pub use watermark::WatermarkSection;

const DAY: u64 = 86_400;

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
    pub watermark: WatermarkSection,
    pub recordings: RecordingsSection,
    pub images: ImagesSection,
}

/// The largest request head (request line and headers) a listener reads: cookies, a bearer
/// token and a long query fit many times over.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// How long requests in flight get to finish once a listener closes.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(10);

const SECTIONS: &[&str] = &[
    "broker",
    "database",
    "ldap",
    "oidc",
    "mfa",
    "sessions",
    "tickets",
    "login",
    "policies",
    "nodes",
    "web",
    "watermark",
    "recordings",
    "images",
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
        // First what says most about a file written for another version or setup.
        self.broker.validate()?;
        self.nodes.validate()?;
        if !self.login.password && !self.oidc.enabled() {
            return bad("no way to sign in: set login.password = true or configure [oidc]".into());
        }
        if self.uses_directory() {
            self.ldap.validate()?;
        }
        self.oidc.validate()?;
        self.database.validate()?;
        self.tickets.validate()?;
        self.policies.validate()?;
        self.sessions.validate()?;
        self.login.validate()?;
        self.mfa.validate()?;
        self.watermark.validate()?;
        self.recordings.validate()?;
        self.images.validate()?;
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

    /// The folder that holds session recordings.
    pub fn recordings_dir(&self) -> PathBuf {
        self.recordings.dir.clone().unwrap_or_else(|| self.broker.data_dir.join("recordings"))
    }

    /// The folder that holds the image library.
    pub fn images_dir(&self) -> PathBuf {
        self.images.dir.clone().unwrap_or_else(|| self.broker.data_dir.join("images"))
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
    fn a_watermark_template_uses_known_placeholders_and_settings_in_range() {
        let (_d, p) = write(
            "[ldap]\nurl = \"ldap://10.0.0.1\"\ngroup_base = \"ou=groups,dc=x\"\n[watermark]\ntemplate = \"{name} ({user})\\n{client} {pool}\\n{time}\"\nopacity = 40\n",
        );
        let c = Config::load_with_env(Some(&p), &[]).unwrap();
        assert_eq!(c.watermark.template, "{name} ({user})\n{client} {pool}\n{time}");
        assert_eq!((c.watermark.opacity, c.watermark.size, c.watermark.spacing), (40, 20, 16));
        for (toml, want) in [
            ("template = \"{user} {password}\"", "unknown placeholder"),
            ("template = \"a\\nb\\nc\\nd\"", "1-3 lines"),
            ("template = \"  \"", "1-3 lines"),
            ("template = \"a\\tb\"", "control characters"),
            ("opacity = 0", "watermark.opacity"),
            ("size = 200", "watermark.size"),
            ("angle = 120", "watermark.angle"),
            ("spacing = 1", "watermark.spacing"),
        ] {
            let (_d, p) = write(&format!(
                "[ldap]\nurl = \"ldap://10.0.0.1\"\ngroup_base = \"ou=groups,dc=x\"\n[watermark]\n{toml}\n"
            ));
            let e = Config::load_with_env(Some(&p), &[]).unwrap_err().to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
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

    #[test]
    fn a_sign_in_owing_its_second_factor_has_a_bounded_window() {
        let (_d, p) = write("[ldap]\ngroup_base = \"ou=g\"\n");
        let load =
            |v: &str| Config::load_with_env(Some(&p), &env(&[("ATRIUM_MFA_PENDING_SECS", v)]));
        assert_eq!(Config::load_with_env(Some(&p), &[]).unwrap().mfa.pending_secs, 600);
        assert_eq!(load("60").unwrap().mfa.pending_secs, 60);
        for bad in ["0", "9", "3601"] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("mfa.pending_secs"), "{bad}: {e}");
        }
    }
}
