//! `[ldap]`: the directory users sign in against and whose groups policies see.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

/// How a user's groups are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// Read the user's `memberOf` attribute (OpenLDAP memberof overlay, Active Directory).
    MemberOf,
    /// Search `group_base` with `group_filter`.
    Search,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapSection {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Service account that searches for users.
    pub bind_dn: String,
    pub bind_password: Secret,
    /// File holding the service account password (first line), instead of `bind_password`.
    pub bind_password_file: Option<PathBuf>,
    pub user_base: String,
    /// Filter finding one user; `{username}` is replaced by the escaped username.
    pub user_filter: String,
    /// The directory's stable id of an entry (`entryUUID`; `objectGUID` on Active Directory,
    /// read as the GUID's text form; `nsUniqueId` on 389-ds). Desktops, home disks, sign-in
    /// sessions and lockout belong to this id, not to a name that can be given to someone else.
    pub id_attribute: String,
    /// Attributes read from the user entry.
    pub username_attribute: String,
    pub display_name_attribute: String,
    pub email_attribute: String,
    pub uid_number_attribute: String,
    pub gid_number_attribute: String,
    pub group_mode: GroupMode,
    pub member_of_attribute: String,
    pub group_base: String,
    /// Filter for group search; `{dn}` (escaped user DN) and `{username}` are replaced.
    pub group_filter: String,
    /// Attribute naming a group (its value is the group name policies use).
    pub group_name_attribute: String,
    /// Upgrade `ldap://` connections with StartTLS.
    pub starttls: bool,
    /// PEM file of CA certificates for LDAPS/StartTLS; empty: the system store.
    pub ca_file: Option<PathBuf>,
    /// Connect and operation timeout.
    pub timeout_secs: u64,
    /// Pooled connections kept open to the directory.
    pub pool_size: usize,
    /// How long a user's entry (DN, attributes, groups) found by a search is reused for later
    /// sign-ins. The password is checked by the directory at every sign-in regardless; group
    /// changes apply after at most this long. 0 searches at every sign-in.
    pub cache_secs: u64,
    /// While users are signed in, their entry is read again at most this long after it was
    /// last read: a user deleted, disabled (excluded by `user_filter`) or replaced loses their
    /// sessions, one whose groups changed loses what the groups granted (administration at
    /// once, desktop sessions of pools no longer allowed end).
    pub revalidate_secs: u64,
}

impl Default for LdapSection {
    fn default() -> Self {
        Self {
            url: "ldap://127.0.0.1:389".into(),
            bind_dn: String::new(),
            bind_password: Secret::default(),
            bind_password_file: None,
            user_base: String::new(),
            user_filter: "(&(objectClass=inetOrgPerson)(uid={username}))".into(),
            id_attribute: "entryUUID".into(),
            username_attribute: "uid".into(),
            display_name_attribute: "cn".into(),
            email_attribute: "mail".into(),
            uid_number_attribute: "uidNumber".into(),
            gid_number_attribute: "gidNumber".into(),
            group_mode: GroupMode::MemberOf,
            member_of_attribute: "memberOf".into(),
            group_base: String::new(),
            group_filter: "(|(&(objectClass=groupOfNames)(member={dn}))(&(objectClass=posixGroup)(memberUid={username})))".into(),
            group_name_attribute: "cn".into(),
            starttls: false,
            ca_file: None,
            timeout_secs: 5,
            pool_size: 8,
            cache_secs: 60,
            revalidate_secs: 300,
        }
    }
}

impl LdapSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(self.url.starts_with("ldap://") || self.url.starts_with("ldaps://")) {
            return bad(format!("ldap.url {:?} must start with ldap:// or ldaps://", self.url));
        }
        if self.url.starts_with("ldaps://") && self.starttls {
            return bad("ldap.starttls cannot be combined with an ldaps:// url".into());
        }
        let id_attr = &self.id_attribute;
        if id_attr.is_empty()
            || id_attr.len() > 64
            || !id_attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';')
        {
            return bad(format!("ldap.id_attribute must be an attribute name, not {id_attr:?}"));
        }
        if !self.user_filter.contains("{username}") {
            return bad("ldap.user_filter must contain {username}".into());
        }
        if !self.user_filter.starts_with('(') || !self.user_filter.ends_with(')') {
            return bad("ldap.user_filter must be a parenthesised LDAP filter".into());
        }
        if self.group_base.trim().is_empty() {
            // In member_of mode too: a group of an administrators' name made anywhere in the
            // directory (a delegated OU, self-service groups) must not grant anything.
            return bad("ldap.group_base is required: only groups under it count".into());
        }
        if self.timeout_secs == 0 || self.timeout_secs > 120 {
            return bad("ldap.timeout_secs must be 1 to 120".into());
        }
        if self.cache_secs > 3600 {
            return bad("ldap.cache_secs must be at most 3600".into());
        }
        if !(1..=86_400).contains(&self.revalidate_secs) {
            return bad("ldap.revalidate_secs must be 1 to 86400".into());
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            return bad("ldap.pool_size must be 1 to 256".into());
        }
        Ok(())
    }
}
