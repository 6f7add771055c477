//! Directory sign-in: search-then-bind against OpenLDAP or Active Directory.
//!
//! A pooled service-account connection finds the user's entry with the configured filter (the
//! username escaped), a second pool of connections binds as that entry's DN with the password,
//! and the user's groups come from `memberOf` or from a group search. Every call has a timeout:
//! a directory that is down or slow is [`LdapError::Unavailable`], never a hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{GroupMode, LdapSection};
use crate::secret::Secret;

/// LDAP result code for a bad DN or password.
const RC_INVALID_CREDENTIALS: u32 = 49;
/// LDAP result code for a search base that does not exist.
const RC_NO_SUCH_OBJECT: u32 = 32;
/// Longest username accepted before anything is asked of the directory.
pub const MAX_USERNAME: usize = 256;
/// Longest password accepted.
pub const MAX_PASSWORD: usize = 1024;

#[derive(Debug, Error)]
pub enum LdapError {
    /// Unknown user, wrong password, empty password: callers must not tell which.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The directory cannot be reached or did not answer in time.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// The directory answered something unexpected.
    #[error("directory error: {0}")]
    Directory(String),
}

/// A signed-in directory user, as read from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    /// The entry's stable id (`ldap.id_attribute`): what desktops and sessions belong to.
    pub id: String,
    pub dn: String,
    pub username: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub uid_number: Option<u32>,
    pub gid_number: Option<u32>,
    /// Group names (the value of `group_name_attribute`, e.g. the group's `cn`).
    pub groups: Vec<String>,
}

/// Longest attribute value (display name, email, group name) kept from the directory.
const MAX_ATTRIBUTE: usize = 256;
/// Longest user DN accepted.
const MAX_DN: usize = 1024;
/// Longest stable id accepted.
const MAX_ID: usize = 256;

/// What a typed username names in the directory, before its password is checked.
#[derive(Debug)]
pub enum Candidate {
    /// An entry found earlier (within `ldap.cache_secs`).
    Cached(DirectoryUser),
    /// An entry found now, and its stable id.
    Found { entry: SearchEntry, id: String },
    /// No entry, several, or a name that is not one.
    Unknown,
}

impl Candidate {
    /// The stable id of the entry, if the name leads to one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Cached(u) => Some(&u.id),
            Self::Found { id, .. } => Some(id),
            Self::Unknown => None,
        }
    }
}

/// A binary id as text: Active Directory's `objectGUID` (16 bytes, the first three fields
/// little-endian) as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, anything else in hex.
pub fn binary_id(attribute: &str, b: &[u8]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|x| format!("{x:02x}")).collect::<String>();
    match <[u8; 16]>::try_from(b) {
        Ok(g) if attribute.eq_ignore_ascii_case("objectGUID") => format!(
            "{}-{}-{}-{}-{}",
            hex(&[g[3], g[2], g[1], g[0]]),
            hex(&[g[5], g[4]]),
            hex(&[g[7], g[6]]),
            hex(&g[8..10]),
            hex(&g[10..16])
        ),
        _ => hex(&b[..b.len().min(MAX_ID / 2)]),
    }
}
/// Most groups kept for one user.
const MAX_GROUPS: usize = 1000;

/// A display attribute as stored: control characters as spaces, cut at [`MAX_ATTRIBUTE`]
/// bytes (on a character boundary).
fn clean_attribute(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > MAX_ATTRIBUTE {
            break;
        }
        out.push(c);
    }
    out
}

/// Which identity a pooled connection is bound as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    /// Bound as the service account; used for searches.
    Service,
    /// Used only for user binds (its identity changes with each bind).
    UserBind,
}

#[derive(Debug)]
struct ConnPool {
    kind: PoolKind,
    idle: Mutex<Vec<Ldap>>,
    permits: Arc<Semaphore>,
}

/// A connection checked out of a pool; returned by [`Directory::put_back`] when it is healthy.
struct Checkout {
    ldap: Ldap,
    _permit: OwnedSemaphorePermit,
}

/// The directory client. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: LdapSection,
    tls: Option<Arc<rustls::ClientConfig>>,
    service: ConnPool,
    binder: ConnPool,
    /// Users found by search, by lower-cased username, with when they were found.
    cache: Mutex<HashMap<String, (std::time::Instant, DirectoryUser)>>,
}

/// Most users the entry cache holds before it is emptied.
const CACHE_MAX: usize = 50_000;

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("url", &self.inner.cfg.url).finish_non_exhaustive()
    }
}

impl Directory {
    /// Builds the client. Connections are opened lazily, so a directory that is down at start-up
    /// does not stop the broker.
    pub fn new(cfg: &LdapSection) -> Result<Self, LdapError> {
        let tls = match &cfg.ca_file {
            Some(path) => Some(Arc::new(tls_config(path)?)),
            None => None,
        };
        let pool = |kind| ConnPool {
            kind,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(cfg.pool_size)),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                tls,
                service: pool(PoolKind::Service),
                binder: pool(PoolKind::UserBind),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.timeout_secs)
    }

    /// The entry a typed username names, found before any password is checked, so that the
    /// caller can count attempts against the entry (its stable id) however the name was
    /// written. A name that is malformed, unknown or ambiguous is [`Candidate::Unknown`].
    pub async fn find(&self, username: &str) -> Result<Candidate, LdapError> {
        if username.is_empty()
            || username.len() > MAX_USERNAME
            || username.chars().any(char::is_control)
        {
            return Ok(Candidate::Unknown);
        }
        if let Some(cached) = self.cached(&username.to_lowercase()) {
            return Ok(Candidate::Cached(cached));
        }
        match self.find_user(username).await {
            Ok(entry) => {
                let id = self.entry_id(&entry)?;
                Ok(Candidate::Found { entry, id })
            }
            Err(LdapError::InvalidCredentials) => Ok(Candidate::Unknown),
            Err(e) => Err(e),
        }
    }

    /// Signs the `candidate` [`Self::find`] gave for `username` in: checks the password with a
    /// bind as its DN and reads its groups.
    pub async fn sign_in(
        &self,
        username: &str,
        candidate: Candidate,
        password: &Secret,
    ) -> Result<DirectoryUser, LdapError> {
        // Refused before any bind: an empty password would be an unauthenticated bind, which
        // directories answer with success.
        if password.is_empty() || password.expose().len() > MAX_PASSWORD {
            return Err(LdapError::InvalidCredentials);
        }
        let key = username.to_lowercase();
        let (entry, id) = match candidate {
            Candidate::Unknown => return Err(LdapError::InvalidCredentials),
            Candidate::Found { entry, id } => (entry, id),
            Candidate::Cached(cached) => match self.bind_and_read_id(&cached.dn, password).await {
                // The password is right for the entry at that DN now. It is the cached entry
                // only if the id still matches: an entry deleted and re-created keeps its DN
                // but not its id, and must not be taken for the old one.
                Ok(id) if id.as_deref() == Some(cached.id.as_str()) => return Ok(cached),
                Ok(_) => {
                    self.forget(&key);
                    let entry = self.find_user(username).await?;
                    let id = self.entry_id(&entry)?;
                    (entry, id)
                }
                // The entry may have moved or been renamed since it was cached: look again,
                // and go on only if the name still leads to the same entry (the attempt was
                // counted against that one).
                Err(LdapError::InvalidCredentials) => {
                    self.forget(&key);
                    let entry = self.find_user(username).await?;
                    let id = self.entry_id(&entry)?;
                    if id != cached.id {
                        return Err(LdapError::InvalidCredentials);
                    }
                    (entry, id)
                }
                Err(e) => return Err(e),
            },
        };
        self.bind_as(&entry.dn, password).await?;
        let user = self.to_user(entry, id).await?;
        self.remember(key, &user);
        Ok(user)
    }

    /// Binds as `dn`, then reads the stable id of the entry at `dn` (a base-object search as
    /// the service account). In that order: an entry re-created between the two shows as a
    /// changed id, never as the old entry with the new one's password.
    async fn bind_and_read_id(
        &self,
        dn: &str,
        password: &Secret,
    ) -> Result<Option<String>, LdapError> {
        self.bind_as(dn, password).await?;
        let attrs = [self.inner.cfg.id_attribute.as_str()];
        Ok(self.search_base(dn, &attrs).await?.and_then(|e| self.entry_id(&e).ok()))
    }

    /// An entry's stable id (`ldap.id_attribute`), as text: a text value as it is, an
    /// `objectGUID` in the GUID's usual form, another binary value in hex.
    fn entry_id(&self, entry: &SearchEntry) -> Result<String, LdapError> {
        let name = &self.inner.cfg.id_attribute;
        // A GUID is binary, though its 16 bytes are now and then valid UTF-8 (and then come as
        // text): read it as bytes either way, so that one entry always has one id.
        let guid = name.eq_ignore_ascii_case("objectGUID");
        let id = match first_attr(&entry.attrs, name) {
            Some(text) if guid => binary_id(name, text.as_bytes()),
            Some(text) => text,
            None => {
                let bin = entry
                    .bin_attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .and_then(|(_, v)| v.first());
                match bin {
                    Some(b) => binary_id(name, b),
                    None => {
                        return Err(LdapError::Directory(format!(
                            "the user entry has no {name} (set ldap.id_attribute to the \
                             directory's stable id attribute)"
                        )));
                    }
                }
            }
        };
        if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
            return Err(LdapError::Directory(format!(
                "the user entry's {name} is empty, too long or has control characters"
            )));
        }
        Ok(id)
    }

    fn cached(&self, key: &str) -> Option<DirectoryUser> {
        let ttl = Duration::from_secs(self.inner.cfg.cache_secs);
        let cache = self.inner.cache.lock().expect("cache lock");
        cache.get(key).filter(|(at, _)| at.elapsed() < ttl).map(|(_, u)| u.clone())
    }

    fn remember(&self, key: String, user: &DirectoryUser) {
        if self.inner.cfg.cache_secs == 0 {
            return;
        }
        let ttl = Duration::from_secs(self.inner.cfg.cache_secs);
        let mut cache = self.inner.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (std::time::Instant::now(), user.clone()));
    }

    fn forget(&self, key: &str) {
        self.inner.cache.lock().expect("cache lock").remove(key);
    }

    /// Looks a user up without a password (cache refresh, admin views).
    pub async fn lookup(&self, username: &str) -> Result<DirectoryUser, LdapError> {
        if username.is_empty()
            || username.len() > MAX_USERNAME
            || username.chars().any(char::is_control)
        {
            return Err(LdapError::InvalidCredentials);
        }
        let entry = self.find_user(username).await?;
        let id = self.entry_id(&entry)?;
        self.to_user(entry, id).await
    }

    /// Checks that the service account can bind and search (for `/healthz`).
    pub async fn check(&self) -> Result<(), LdapError> {
        let conn = self.checkout(&self.inner.service).await?;
        self.put_back(&self.inner.service, conn);
        Ok(())
    }

    async fn find_user(&self, username: &str) -> Result<SearchEntry, LdapError> {
        let cfg = &self.inner.cfg;
        let filter = cfg.user_filter.replace("{username}", &ldap_escape(username));
        let mut attrs = vec![
            cfg.id_attribute.as_str(),
            cfg.username_attribute.as_str(),
            cfg.display_name_attribute.as_str(),
            cfg.email_attribute.as_str(),
            cfg.uid_number_attribute.as_str(),
            cfg.gid_number_attribute.as_str(),
        ];
        if cfg.group_mode == GroupMode::MemberOf {
            attrs.push(cfg.member_of_attribute.as_str());
        }
        let mut entries = self.search(&cfg.user_base, &filter, &attrs).await?;
        match entries.len() {
            0 => Err(LdapError::InvalidCredentials),
            1 => Ok(entries.remove(0)),
            n => {
                tracing::warn!(
                    matches = n,
                    "user filter matched several entries; refusing the sign-in"
                );
                Err(LdapError::InvalidCredentials)
            }
        }
    }

    async fn to_user(&self, entry: SearchEntry, id: String) -> Result<DirectoryUser, LdapError> {
        let cfg = &self.inner.cfg;
        let attr = |name: &str| first_attr(&entry.attrs, name);
        let username = attr(&cfg.username_attribute).ok_or_else(|| {
            LdapError::Directory(format!("user entry has no {}", cfg.username_attribute))
        })?;
        let groups: Vec<String> = match cfg.group_mode {
            // Only groups under group_base count (it is required): a group of the right name
            // made elsewhere (a delegated OU, self-service groups) grants nothing.
            GroupMode::MemberOf => all_attr(&entry.attrs, &cfg.member_of_attribute)
                .into_iter()
                .filter(|dn| dn_is_under(dn, &cfg.group_base))
                .filter_map(|dn| group_name_from_dn(&dn, &cfg.group_name_attribute))
                .collect(),
            GroupMode::Search => {
                let filter = cfg
                    .group_filter
                    .replace("{dn}", &ldap_escape(entry.dn.as_str()))
                    .replace("{username}", &ldap_escape(username.as_str()));
                let found = self
                    .search(&cfg.group_base, &filter, &[cfg.group_name_attribute.as_str()])
                    .await?;
                found
                    .iter()
                    .filter_map(|g| first_attr(&g.attrs, &cfg.group_name_attribute))
                    .collect()
            }
        };
        // What the directory answers is stored, shown and put in tokens: control characters
        // (NUL breaks PostgreSQL text) and oversized values are kept out, so one odd entry
        // cannot fail the sign-ins written in the same batch as its own.
        let mut groups: Vec<String> = groups
            .into_iter()
            .filter(|g| g.len() <= MAX_ATTRIBUTE && !g.chars().any(char::is_control))
            .collect();
        groups.sort();
        groups.dedup();
        if groups.len() > MAX_GROUPS {
            tracing::warn!(user = %username, groups = groups.len(), "only the first {MAX_GROUPS} groups are kept");
            groups.truncate(MAX_GROUPS);
        }
        if entry.dn.len() > MAX_DN || entry.dn.chars().any(char::is_control) {
            return Err(LdapError::Directory(
                "the user's DN is too long or has control characters".into(),
            ));
        }
        let text = |name: &str| attr(name).map(|v| clean_attribute(&v));
        Ok(DirectoryUser {
            id,
            username,
            display_name: text(&cfg.display_name_attribute),
            email: text(&cfg.email_attribute),
            uid_number: attr(&cfg.uid_number_attribute).and_then(|v| v.parse().ok()),
            gid_number: attr(&cfg.gid_number_attribute).and_then(|v| v.parse().ok()),
            groups,
            dn: entry.dn,
        })
    }

    async fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, LdapError> {
        self.search_in(base, Scope::Subtree, filter, attrs, false).await
    }

    /// The entry at `dn` itself (`None`: there is none).
    async fn search_base(
        &self,
        dn: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, LdapError> {
        let found = self.search_in(dn, Scope::Base, "(objectClass=*)", attrs, true).await?;
        Ok(found.into_iter().next())
    }

    /// A search; with `missing_ok`, a base that does not exist is no entries (for a lookup of
    /// one entry by its DN), otherwise the directory error it is (a wrong `user_base`).
    async fn search_in(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        missing_ok: bool,
    ) -> Result<Vec<SearchEntry>, LdapError> {
        let pool = &self.inner.service;
        // One retry on a fresh connection: an idle connection may have been closed by the server.
        for attempt in 0..2 {
            let mut conn = self.checkout(pool).await?;
            let res = tokio::time::timeout(self.timeout(), async {
                conn.ldap
                    .with_timeout(self.timeout())
                    .search(base, scope, filter, attrs.to_vec())
                    .await
            })
            .await;
            match res {
                Err(_) => {
                    return Err(LdapError::Unavailable(
                        "the directory did not answer in time".into(),
                    ));
                }
                Ok(Err(e)) if attempt == 0 && is_connection_error(&e) => continue,
                Ok(Err(e)) => return Err(classify(e)),
                Ok(Ok(result)) => {
                    let (entries, res) = (result.0, result.1);
                    if missing_ok && res.rc == RC_NO_SUCH_OBJECT {
                        self.put_back(pool, conn);
                        return Ok(Vec::new());
                    }
                    if res.rc != 0 && res.rc != 4 {
                        // 4: size limit exceeded still returns entries; anything else is an error.
                        self.put_back(pool, conn);
                        return Err(LdapError::Directory(format!(
                            "search failed with code {}: {}",
                            res.rc, res.text
                        )));
                    }
                    self.put_back(pool, conn);
                    let parsed = entries
                        .into_iter()
                        .map(|e| std::panic::catch_unwind(|| SearchEntry::construct(e)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| LdapError::Directory("malformed search entry".into()))?;
                    return Ok(parsed);
                }
            }
        }
        Err(LdapError::Unavailable("lost the connection to the directory".into()))
    }

    async fn bind_as(&self, dn: &str, password: &Secret) -> Result<(), LdapError> {
        let pool = &self.inner.binder;
        for attempt in 0..2 {
            let mut conn = self.checkout(pool).await?;
            let res = tokio::time::timeout(self.timeout(), async {
                conn.ldap.with_timeout(self.timeout()).simple_bind(dn, password.expose()).await
            })
            .await;
            match res {
                Err(_) => {
                    return Err(LdapError::Unavailable(
                        "the directory did not answer in time".into(),
                    ));
                }
                Ok(Err(e)) if attempt == 0 && is_connection_error(&e) => continue,
                Ok(Err(e)) => return Err(classify(e)),
                Ok(Ok(r)) => {
                    self.put_back(pool, conn);
                    return match r.rc {
                        0 => Ok(()),
                        RC_INVALID_CREDENTIALS => Err(LdapError::InvalidCredentials),
                        // 53 (unwilling to perform) is what some directories answer for
                        // disabled accounts; treat as a failed sign-in, without detail.
                        53 => Err(LdapError::InvalidCredentials),
                        rc => Err(LdapError::Directory(format!(
                            "bind failed with code {rc}: {}",
                            r.text
                        ))),
                    };
                }
            }
        }
        Err(LdapError::Unavailable("lost the connection to the directory".into()))
    }

    async fn checkout(&self, pool: &ConnPool) -> Result<Checkout, LdapError> {
        let permit = tokio::time::timeout(self.timeout(), pool.permits.clone().acquire_owned())
            .await
            .map_err(|_| LdapError::Unavailable("all directory connections are busy".into()))?
            .expect("the semaphore is never closed");
        let idle = pool.idle.lock().expect("pool lock").pop();
        let ldap = match idle {
            Some(l) => l,
            None => self.connect(pool.kind).await?,
        };
        Ok(Checkout { ldap, _permit: permit })
    }

    fn put_back(&self, pool: &ConnPool, conn: Checkout) {
        pool.idle.lock().expect("pool lock").push(conn.ldap);
    }

    async fn connect(&self, kind: PoolKind) -> Result<Ldap, LdapError> {
        let cfg = &self.inner.cfg;
        let mut settings =
            LdapConnSettings::new().set_conn_timeout(self.timeout()).set_starttls(cfg.starttls);
        if let Some(tls) = &self.inner.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) =
            tokio::time::timeout(self.timeout(), LdapConnAsync::with_settings(settings, &cfg.url))
                .await
                .map_err(|_| {
                    LdapError::Unavailable("connecting to the directory timed out".into())
                })?
                .map_err(|e| {
                    LdapError::Unavailable(format!("cannot connect to the directory: {e}"))
                })?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "directory connection closed");
            }
        });
        if kind == PoolKind::Service && !cfg.bind_dn.is_empty() {
            if cfg.bind_password.is_empty() {
                return Err(LdapError::Directory(
                    "ldap.bind_dn is set but its password is empty".into(),
                ));
            }
            let r = tokio::time::timeout(
                self.timeout(),
                ldap.with_timeout(self.timeout())
                    .simple_bind(&cfg.bind_dn, cfg.bind_password.expose()),
            )
            .await
            .map_err(|_| LdapError::Unavailable("the directory did not answer in time".into()))?
            .map_err(classify)?;
            if r.rc != 0 {
                tracing::error!(rc = r.rc, "the service account cannot bind to the directory");
                return Err(LdapError::Unavailable(format!(
                    "the service account cannot bind (code {})",
                    r.rc
                )));
            }
        }
        Ok(ldap)
    }
}

fn is_connection_error(e: &ldap3::LdapError) -> bool {
    matches!(
        e,
        ldap3::LdapError::Io { .. }
            | ldap3::LdapError::OpSend { .. }
            | ldap3::LdapError::ResultRecv { .. }
    )
}

fn classify(e: ldap3::LdapError) -> LdapError {
    match e {
        ldap3::LdapError::Timeout { .. } => {
            LdapError::Unavailable("the directory did not answer in time".into())
        }
        e if is_connection_error(&e) => {
            LdapError::Unavailable(format!("connection to the directory failed: {e}"))
        }
        e => LdapError::Directory(e.to_string()),
    }
}

fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, LdapError> {
    let pem = std::fs::read(ca_file).map_err(|e| {
        LdapError::Directory(format!("cannot read ldap.ca_file {}: {e}", ca_file.display()))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| {
            LdapError::Directory(format!("ldap.ca_file {}: {e}", ca_file.display()))
        })?;
        roots.add(cert).map_err(|e| {
            LdapError::Directory(format!("ldap.ca_file {}: {e}", ca_file.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(LdapError::Directory(format!(
            "ldap.ca_file {} holds no certificate",
            ca_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Directory(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Attribute names are case-insensitive in LDAP.
fn find_attr<'a>(attrs: &'a HashMap<String, Vec<String>>, name: &str) -> Option<&'a Vec<String>> {
    attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn first_attr(attrs: &HashMap<String, Vec<String>>, name: &str) -> Option<String> {
    find_attr(attrs, name).and_then(|v| v.first()).cloned()
}

fn all_attr(attrs: &HashMap<String, Vec<String>>, name: &str) -> Vec<String> {
    find_attr(attrs, name).cloned().unwrap_or_default()
}

/// The group name in a group DN: the value of its first RDN when that RDN's attribute is
/// `name_attr` (`cn=admins,ou=groups,...` gives `admins`); otherwise the whole DN.
pub fn group_name_from_dn(dn: &str, name_attr: &str) -> Option<String> {
    let first = split_first_rdn(dn)?;
    let (attr, value) = first.split_once('=')?;
    if attr.trim().eq_ignore_ascii_case(name_attr) {
        Some(unescape_dn_value(value.trim()))
    } else {
        Some(dn.to_owned())
    }
}

/// The RDNs of a DN in a comparable form, split at unescaped commas only (an escaped `\,`
/// is part of a value, not a separator): attribute and value trimmed, the value unescaped,
/// both lower case.
fn comparable_rdns(dn: &str) -> Vec<String> {
    let mut rdns = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    let mut push = |part: &str| {
        let (a, v) = part.split_once('=').unwrap_or((part, ""));
        let v = unescape_dn_value(v.trim());
        rdns.push(format!("{}={}", a.trim().to_lowercase(), v.to_lowercase()));
    };
    for (i, c) in dn.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' if !escaped => {
                push(&dn[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
    }
    push(&dn[start..]);
    rdns
}

/// Whether `dn` is `base` or below it, comparing whole RDNs.
pub fn dn_is_under(dn: &str, base: &str) -> bool {
    let (dn, base) = (comparable_rdns(dn), comparable_rdns(base));
    dn.len() >= base.len() && dn[dn.len() - base.len()..] == base[..]
}

/// The first RDN of a DN, honouring backslash escapes.
fn split_first_rdn(dn: &str) -> Option<&str> {
    let mut escaped = false;
    for (i, c) in dn.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' | '+' if !escaped => return Some(&dn[..i]),
            _ => escaped = false,
        }
    }
    if dn.is_empty() { None } else { Some(dn) }
}

fn unescape_dn_value(v: &str) -> String {
    let mut out = Vec::with_capacity(v.len());
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
            } else {
                out.push(b[i + 1]);
                i += 2;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_ids_read_as_text() {
        // The objectGUID Microsoft documents for {6f1e4b30-2b3d-4a8e-9c1f-0a1b2c3d4e5f}.
        let guid = [
            0x30, 0x4b, 0x1e, 0x6f, 0x3d, 0x2b, 0x8e, 0x4a, 0x9c, 0x1f, 0x0a, 0x1b, 0x2c, 0x3d,
            0x4e, 0x5f,
        ];
        assert_eq!(binary_id("objectGUID", &guid), "6f1e4b30-2b3d-4a8e-9c1f-0a1b2c3d4e5f");
        assert_eq!(binary_id("objectguid", &guid), "6f1e4b30-2b3d-4a8e-9c1f-0a1b2c3d4e5f");
        // Any other binary attribute, or a GUID of the wrong length, is hex, bounded.
        assert_eq!(binary_id("someId", &[0xde, 0xad]), "dead");
        assert_eq!(binary_id("objectGUID", &[1, 2, 3]), "010203");
        assert_eq!(binary_id("x", &[0xff; 1000]).len(), MAX_ID);
    }

    #[test]
    fn group_names_come_from_the_first_rdn() {
        assert_eq!(group_name_from_dn("cn=admins,ou=groups,dc=x", "cn").as_deref(), Some("admins"));
        assert_eq!(
            group_name_from_dn("CN=Domain Users,CN=Users,DC=corp", "cn").as_deref(),
            Some("Domain Users")
        );
        assert_eq!(group_name_from_dn("cn=a\\,b,ou=g", "cn").as_deref(), Some("a,b"));
        assert_eq!(group_name_from_dn("cn=caf\\c3\\a9,ou=g", "cn").as_deref(), Some("café"));
        assert_eq!(group_name_from_dn("ou=x,dc=y", "cn").as_deref(), Some("ou=x,dc=y"));
        assert_eq!(group_name_from_dn("", "cn"), None);
        assert_eq!(group_name_from_dn("garbage", "cn"), None);
    }

    #[test]
    fn directory_text_is_cleaned_before_it_is_kept() {
        assert_eq!(clean_attribute("Alice\0Andersen\n"), "Alice Andersen ");
        let long = "é".repeat(200);
        let kept = clean_attribute(&long);
        assert!(kept.len() <= MAX_ATTRIBUTE && long.starts_with(&kept) && !kept.is_empty());
    }

    #[test]
    fn groups_must_be_under_the_group_base() {
        let base = "ou=Groups, dc=example,dc=com";
        assert!(dn_is_under("cn=admins,ou=groups,dc=example,dc=com", base));
        assert!(dn_is_under("CN=Admins, OU=Groups, DC=Example, DC=Com", base));
        assert!(!dn_is_under("cn=admins,ou=mine,dc=example,dc=com", base));
        assert!(!dn_is_under("cn=admins,ou=xgroups,dc=example,dc=com", base));
        // An escaped comma is part of a value: this group is in an OU named
        // "x,ou=groups" under dc=example,dc=com, not under ou=groups.
        assert!(!dn_is_under(r"cn=atrium-admins,ou=x\,ou=groups,dc=example,dc=com", base));
        assert!(dn_is_under(r"cn=a\,b,ou=groups,dc=example,dc=com", base));
        // Escaped and plain spellings of the same value compare equal.
        assert!(dn_is_under(r"cn=x,ou=Gr\6fups,dc=example,dc=com", base));
        assert!(!dn_is_under("dc=com", base));
    }

    #[test]
    fn filters_escape_the_username() {
        let f = "(uid={username})".replace("{username}", &ldap_escape("*)(uid=admin\\"));
        assert_eq!(f, "(uid=\\2a\\29\\28uid=admin\\5c)");
        let f = "(uid={username})".replace("{username}", &ldap_escape("a\0b"));
        assert_eq!(f, "(uid=a\\00b)");
    }
}
