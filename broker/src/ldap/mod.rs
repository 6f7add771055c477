//! Directory sign-in: search-then-bind against OpenLDAP or Active Directory.
//!
//! A pooled service-account connection finds the user's entry with the configured filter (the
//! username escaped), a second pool of connections binds as that entry's DN with the password,
//! and the user's groups come from `memberOf` or from a group search. Every call has a timeout:
//! a directory that is down or slow is [`LdapError::Unavailable`], never a hang.

mod conn;
mod dn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{SearchEntry, ldap_escape};
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::config::{GroupMode, LdapSection};
use crate::secret::Secret;

use conn::{ConnPool, PoolKind, tls_config};
pub use dn::{dn_is_under, group_name_from_dn};

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

/// A signed-in user's entry, read again.
#[derive(Debug)]
pub enum Revalidated {
    /// Still there, still passing the user filter: as it is now.
    Same(DirectoryUser),
    /// Deleted, or its DN now holds another entry.
    Gone,
    /// There, but the user filter no longer matches it (a disabled account, or a filter that
    /// cannot match with `{username}` as `*`).
    Excluded,
}

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

    /// The entry at `dn` as it is now, for checking again a user who is signed in: still the
    /// entry `id` and still passing the user filter (its `{username}` matching any value, so
    /// that a term such as "not disabled" still counts); [`Revalidated::Gone`] when it was
    /// deleted or replaced; [`Revalidated::Excluded`] when it is there but the filter no longer
    /// matches it (disabled).
    pub async fn revalidate(&self, dn: &str, id: &str) -> Result<Revalidated, LdapError> {
        if dn.is_empty() || dn.len() > MAX_DN {
            return Ok(Revalidated::Gone);
        }
        let filter = self.inner.cfg.user_filter.replace("{username}", "*");
        let attrs = self.user_attributes();
        let found = self.search_in(dn, ldap3::Scope::Base, &filter, &attrs, true).await?;
        // The sign-in cache forgets the entry under every name: what is read now counts.
        self.inner.cache.lock().expect("cache lock").retain(|_, (_, u)| u.id != id);
        if let Some(entry) = found.into_iter().next() {
            if self.entry_id(&entry)? != id {
                return Ok(Revalidated::Gone);
            }
            return self.to_user(entry, id.to_owned()).await.map(Revalidated::Same);
        }
        // Not matched: is the entry there at all?
        let id_attr = [self.inner.cfg.id_attribute.as_str()];
        match self.search_base(dn, &id_attr).await? {
            Some(e) if self.entry_id(&e).is_ok_and(|i| i == id) => Ok(Revalidated::Excluded),
            _ => Ok(Revalidated::Gone),
        }
    }

    /// The attributes read from a user's entry.
    fn user_attributes(&self) -> Vec<&str> {
        let cfg = &self.inner.cfg;
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
        attrs
    }

    async fn find_user(&self, username: &str) -> Result<SearchEntry, LdapError> {
        let cfg = &self.inner.cfg;
        let filter = cfg.user_filter.replace("{username}", &ldap_escape(username));
        let attrs = self.user_attributes();
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
    fn directory_text_is_cleaned_before_it_is_kept() {
        assert_eq!(clean_attribute("Alice\0Andersen\n"), "Alice Andersen ");
        let long = "é".repeat(200);
        let kept = clean_attribute(&long);
        assert!(kept.len() <= MAX_ATTRIBUTE && long.starts_with(&kept) && !kept.is_empty());
    }

    #[test]
    fn filters_escape_the_username() {
        let f = "(uid={username})".replace("{username}", &ldap_escape("*)(uid=admin\\"));
        assert_eq!(f, "(uid=\\2a\\29\\28uid=admin\\5c)");
        let f = "(uid={username})".replace("{username}", &ldap_escape("a\0b"));
        assert_eq!(f, "(uid=a\\00b)");
    }
}
