//! `[oidc]`: single sign-on through an OpenID provider (Entra ID, Okta, Keycloak, ADFS,
//! Google...). Off while `issuer_url` is empty. docs/sso.md has the provider setups.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

/// Where an OpenID user's uid, gid and groups come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OidcUsers {
    /// The directory: the value of `directory_claim` is looked up with `ldap.user_filter`; the
    /// user is that entry (the same desktops as a password sign-in), and a name the directory
    /// does not know (or its filter excludes, a disabled account say) cannot sign in.
    Directory,
    /// The ID token's claims alone: the username from `username_claim`, groups from
    /// `groups_claim`; the user is the provider's subject (`sub`).
    Claims,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcSection {
    /// The provider's issuer (`https://login.microsoftonline.com/TENANT/v2.0`,
    /// `https://KEYCLOAK/realms/REALM`...); its `/.well-known/openid-configuration` is read.
    /// Empty: single sign-on is off. `http://` only to a loopback address.
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// File whose first line is the client secret (a mounted secret), instead of
    /// `client_secret`.
    pub client_secret_file: Option<PathBuf>,
    /// Shown on the sign-in page as "Sign in with <display_name>".
    pub display_name: String,
    /// Scopes asked for; `openid` is always sent.
    pub scopes: Vec<String>,
    /// The claim that gives the username (`preferred_username`; `upn` or `email` on some
    /// providers).
    pub username_claim: String,
    /// The claim that lists the user's groups (a list of names; a single name is one group).
    pub groups_claim: String,
    /// The claim that gives the display name.
    pub display_name_claim: String,
    pub users: OidcUsers,
    /// With `users = "directory"`: the claim whose value names the directory entry (looked up
    /// with `ldap.user_filter`). Empty: `username_claim`.
    pub directory_claim: String,
    /// Where the provider sends the browser back; register it at the provider. Empty:
    /// `<broker.public_url>/api/v1/auth/oidc/callback`.
    pub redirect_url: String,
    /// Where the provider sends the browser after signing out there (RP-initiated logout);
    /// register it at the provider. Empty: `<broker.public_url>/`.
    pub post_logout_redirect_url: String,
    /// Sign-out also ends the user's session at the provider, when it offers that
    /// (`end_session_endpoint`).
    pub provider_logout: bool,
    /// PEM file of CA certificates for the provider's TLS; empty: the system store.
    pub ca_file: Option<PathBuf>,
    /// Timeout of each call to the provider (discovery, keys, token, userinfo).
    pub timeout_secs: u64,
    /// Signature algorithms accepted on ID tokens, among those the provider publishes. Empty:
    /// all it publishes that Atrium supports (RS256/384/512, PS256/384/512, ES256/384, EdDSA).
    pub algorithms: Vec<String>,
}

impl Default for OidcSection {
    fn default() -> Self {
        Self {
            issuer_url: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: None,
            display_name: "your company account".into(),
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            display_name_claim: "name".into(),
            users: OidcUsers::Directory,
            directory_claim: String::new(),
            redirect_url: String::new(),
            post_logout_redirect_url: String::new(),
            provider_logout: true,
            ca_file: None,
            timeout_secs: 10,
            algorithms: Vec::new(),
        }
    }
}

/// The ID token signature algorithms Atrium checks.
pub const SUPPORTED_ALGORITHMS: &[&str] =
    &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// A claim name: what a JSON key in a token can reasonably be.
fn is_claim_name(c: &str) -> bool {
    !c.is_empty() && c.len() <= 128 && c.chars().all(|c| c.is_ascii_graphic())
}

impl OidcSection {
    /// Whether single sign-on is configured.
    pub fn enabled(&self) -> bool {
        !self.issuer_url.is_empty()
    }

    /// The claim naming the directory entry.
    pub fn directory_claim(&self) -> &str {
        if self.directory_claim.is_empty() { &self.username_claim } else { &self.directory_claim }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !self.enabled() {
            return Ok(());
        }
        if let Err(e) = check_url(&self.issuer_url) {
            return bad(format!("oidc.issuer_url: {e}"));
        }
        if self.client_id.is_empty() || self.client_id.len() > 512 {
            return bad("oidc.client_id is required (at most 512 bytes)".into());
        }
        if self.client_secret.expose().is_empty() {
            return bad("oidc.client_secret (or client_secret_file) is required".into());
        }
        if self.display_name.trim().is_empty() || self.display_name.chars().count() > 64 {
            return bad("oidc.display_name must be 1 to 64 characters".into());
        }
        if self.scopes.len() > 32
            || self.scopes.iter().any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic()))
        {
            return bad("oidc.scopes must be at most 32 scope names (no spaces)".into());
        }
        for (name, claim) in [
            ("username_claim", &self.username_claim),
            ("groups_claim", &self.groups_claim),
            ("display_name_claim", &self.display_name_claim),
        ] {
            if !is_claim_name(claim) {
                return bad(format!("oidc.{name} must be a claim name, not {claim:?}"));
            }
        }
        if !self.directory_claim.is_empty() && !is_claim_name(&self.directory_claim) {
            return bad(format!(
                "oidc.directory_claim must be a claim name, not {:?}",
                self.directory_claim
            ));
        }
        for (name, url) in [
            ("redirect_url", &self.redirect_url),
            ("post_logout_redirect_url", &self.post_logout_redirect_url),
        ] {
            if !url.is_empty()
                && let Err(e) = check_url(url)
            {
                return bad(format!("oidc.{name}: {e}"));
            }
        }
        if !(1..=60).contains(&self.timeout_secs) {
            return bad("oidc.timeout_secs must be 1 to 60".into());
        }
        if let Some(a) =
            self.algorithms.iter().find(|a| !SUPPORTED_ALGORITHMS.contains(&a.as_str()))
        {
            return bad(format!(
                "oidc.algorithms: {a:?} is not one of {}",
                SUPPORTED_ALGORITHMS.join(", ")
            ));
        }
        Ok(())
    }
}

/// An `https://` URL, or `http://` to a loopback address (one host, tests); no fragment.
pub fn check_url(url: &str) -> Result<(), String> {
    atrium_door::client::check_url(url, true)?;
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains('#') {
        return Err(format!("{url:?} must be an https:// URL without a fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_urls_must_be_https_unless_loopback() {
        assert!(check_url("https://login.example.com/tenant/v2.0").is_ok());
        assert!(check_url("http://127.0.0.1:9000").is_ok());
        assert!(check_url("http://localhost:9000/realms/x").is_ok());
        assert!(check_url("http://idp.example.com").is_err());
        assert!(check_url("http://127.0.0.1@evil.com/").is_err());
        assert!(check_url("wss://x").is_err());
        assert!(check_url("https://x/#frag").is_err());
    }
}
