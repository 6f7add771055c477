//! `[login]`, `[sessions]` and `[mfa]`: what signing in allows and costs, and how long it lasts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

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

impl LoginSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.window_secs > 30 * super::DAY || self.lockout_secs > 30 * super::DAY {
            return bad("login.window_secs and login.lockout_secs must be at most 30 days".into());
        }
        if self.window_secs == 0
            || self.max_failures_per_user == 0
            || self.max_failures_per_address == 0
        {
            return bad("login limits and window must be positive".into());
        }
        Ok(())
    }
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

impl SessionsSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.max_lifetime_secs > 30 * super::DAY {
            return bad("sessions.max_lifetime_secs must be at most 30 days".into());
        }
        if self.ttl_secs < 60 || self.ttl_secs > self.max_lifetime_secs {
            return bad(
                "sessions.ttl_secs must be at least 60 and at most sessions.max_lifetime_secs"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `[mfa]`: the second factor. Who must pass it is policy's (`require_mfa`, docs/policies.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaSection {
    /// The key that seals MFA secrets in the database (32 bytes, base64url; created when
    /// missing). Keep it out of the database's backups and share it between replicas like the
    /// signing keys. Empty: `<keys_dir>/mfa.key`.
    pub key_file: Option<PathBuf>,
    /// Seconds a sign-in that owes its second factor has to pass it (set it up, or type a
    /// code); after that the sign-in has ended and the user signs in again. 10 to 3600.
    pub pending_secs: u64,
}

impl Default for MfaSection {
    fn default() -> Self {
        Self { key_file: None, pending_secs: 600 }
    }
}

impl MfaSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(10..=3600).contains(&self.pending_secs) {
            return Err(ConfigError::Invalid("mfa.pending_secs must be 10 to 3600".into()));
        }
        Ok(())
    }
}
