//! Single sign-on: the user an OpenID provider vouched for becomes a sign-in session, as the
//! directory entry a claim names or as the provider's subject with the claims' groups.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::{SignedIn, audit, entry_key, open_session};
use crate::config::OidcUsers;
use crate::db::{SignInMethod, now_ms};
use crate::error::ApiError;
use crate::ldap::{DirectoryUser, LdapError};
use crate::metrics::Metrics;
use crate::oidc::{Oidc, OidcError};
use crate::state::AppState;

/// Most groups taken from a token.
const MAX_GROUPS: usize = 1024;
/// Longest claim value kept (display name, email, group name).
const MAX_VALUE: usize = 256;

/// Why a single sign-on failed.
#[derive(Debug)]
pub enum SsoFailure {
    Oidc(OidcError),
    /// The directory, needed to find the user, did not answer.
    DirectoryUnavailable,
    /// The account is locked out (failed attempts).
    Locked,
    Internal(ApiError),
}

impl SsoFailure {
    /// The short code the web client turns into a message.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Oidc(e) => e.code(),
            Self::DirectoryUnavailable => "directory",
            Self::Locked => "locked",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<OidcError> for SsoFailure {
    fn from(e: OidcError) -> Self {
        Self::Oidc(e)
    }
}

impl From<ApiError> for SsoFailure {
    fn from(e: ApiError) -> Self {
        Self::Internal(e)
    }
}

impl From<crate::db::DbError> for SsoFailure {
    fn from(e: crate::db::DbError) -> Self {
        Self::Internal(e.into())
    }
}

/// Finishes a sign-in at the provider: the code exchanged (with the PKCE verifier), the ID
/// token checked against the nonce, the user found, the session opened. Every failure is
/// audited (with its reason, never a code or token) and counted.
pub async fn oidc_sign_in(
    st: &AppState,
    oidc: &Oidc,
    code: &str,
    verifier: &str,
    nonce: &str,
    addr: IpAddr,
) -> Result<SignedIn, SsoFailure> {
    let result = sign_in(st, oidc, code, verifier, nonce, addr).await;
    if let Err(e) = &result {
        Metrics::inc(&st.metrics.logins_failed);
        let reason = match e {
            SsoFailure::Oidc(e) => e.to_string(),
            SsoFailure::DirectoryUnavailable => "directory unavailable".into(),
            SsoFailure::Locked => "locked out".into(),
            SsoFailure::Internal(e) => e.to_string(),
        };
        tracing::warn!(reason = %reason, "single sign-on refused");
        audit(
            st,
            "-",
            "login.failed",
            "-",
            "failure",
            addr,
            serde_json::json!({ "method": "oidc", "reason": reason }),
        )
        .await;
    }
    result
}

async fn sign_in(
    st: &AppState,
    oidc: &Oidc,
    code: &str,
    verifier: &str,
    nonce: &str,
    addr: IpAddr,
) -> Result<SignedIn, SsoFailure> {
    let tokens = oidc.exchange(code, verifier).await?;
    let mut claims = oidc.verify_id_token(&tokens.id_token, nonce).await?;
    let cfg = oidc.config();
    let wanted: Vec<&str> = match cfg.users {
        OidcUsers::Directory => vec![cfg.directory_claim()],
        OidcUsers::Claims => vec![&cfg.username_claim, &cfg.groups_claim, &cfg.display_name_claim],
    };
    // Claims the ID token left out (some providers put profile claims in userinfo only).
    if wanted.iter().any(|c| !claims.contains_key(*c))
        && let Some(access) = &tokens.access_token
    {
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("").to_owned();
        if let Some(more) = oidc.userinfo(access, &sub).await? {
            for (k, v) in more {
                claims.entry(k).or_insert(v);
            }
        }
    }
    let user = match cfg.users {
        OidcUsers::Claims => {
            let user = user_from_claims(oidc.issuer(), cfg, &claims)?;
            // The name is the provider's to give (and some let users change it): it must not
            // be another account's, a directory user's or another subject's.
            if let Some(known) = st.db.get_user(&user.username).await?
                && known.directory_id.as_deref() != Some(user.id.as_str())
            {
                return Err(OidcError::User(format!(
                    "the name {:?} belongs to another account here",
                    crate::service::printable(&user.username, 64)
                ))
                .into());
            }
            user
        }
        OidcUsers::Directory => {
            let name = string_claim(&claims, cfg.directory_claim())?;
            // An e-mail address names the entry only when the provider checked it.
            if cfg.directory_claim() == "email"
                && claims.get("email_verified").and_then(Value::as_bool) != Some(true)
            {
                return Err(OidcError::User(
                    "the provider has not verified the e-mail address that names the directory                      entry (email_verified)"
                        .into(),
                )
                .into());
            }
            match st.directory.lookup(&name).await {
                Ok(u) => u,
                Err(LdapError::InvalidCredentials) => {
                    return Err(OidcError::User(format!(
                        "{:?} (claim {}) is not a user of the directory, or may not sign in",
                        crate::service::printable(&name, 64),
                        cfg.directory_claim()
                    ))
                    .into());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "directory lookup for single sign-on failed");
                    return Err(SsoFailure::DirectoryUnavailable);
                }
            }
        }
    };
    // An account locked by failed attempts stays locked, however the user signs in.
    let now = now_ms();
    if st.db.login_failure_state(&[&entry_key(&user.id)], now).await?.0.is_some() {
        return Err(SsoFailure::Locked);
    }
    Ok(open_session(st, &user, SignInMethod::Oidc, addr, None, now).await?)
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<String, OidcError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_VALUE => Ok(s.clone()),
        Some(_) => Err(OidcError::User(format!("the claim {name} is not a usable name"))),
        None => Err(OidcError::User(format!(
            "the provider did not send the claim {name} (check the scopes and the claim mapping)"
        ))),
    }
}

/// A user from the ID token alone: named by `username_claim`, in the groups of
/// `groups_claim`, identified by the provider's subject.
pub fn user_from_claims(
    issuer: &str,
    cfg: &crate::config::OidcSection,
    claims: &Map<String, Value>,
) -> Result<DirectoryUser, OidcError> {
    let username = string_claim(claims, &cfg.username_claim)?;
    // It becomes a login name in the desktop.
    let probe = atrium_protocol::agent::SessionUser {
        username: username.clone(),
        display_name: None,
        uid: None,
        gid: None,
        keyboard_layout: None,
    };
    if let Err(e) = probe.validate() {
        return Err(OidcError::User(format!(
            "the claim {} ({:?}) cannot be a username: {e}",
            cfg.username_claim,
            crate::service::printable(&username, 64)
        )));
    }
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| crate::service::printable(s, MAX_VALUE))
    };
    let groups = match claims.get(&cfg.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(g)) => vec![g.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_GROUPS => {
            a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => {
            return Err(OidcError::User(format!(
                "the claim {} is not a list of at most {MAX_GROUPS} group names",
                cfg.groups_claim
            )));
        }
    };
    if groups.iter().any(|g| g.is_empty() || g.len() > MAX_VALUE || g.chars().any(char::is_control))
    {
        return Err(OidcError::User(format!(
            "the claim {} holds an unusable group name",
            cfg.groups_claim
        )));
    }
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    Ok(DirectoryUser {
        id: subject_id(issuer, sub),
        dn: String::new(),
        username,
        display_name: text(&cfg.display_name_claim),
        email: text("email"),
        uid_number: None,
        gid_number: None,
        groups,
    })
}

/// The stable id of a provider's subject: `oidc:` and a digest of issuer and `sub` (a subject
/// is unique only within its issuer).
pub fn subject_id(issuer: &str, sub: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(issuer.as_bytes());
    h.update([0]);
    h.update(sub.as_bytes());
    let d = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize());
    format!("oidc:{}", &d[..22])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::OidcSection;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn users_from_claims_are_checked() {
        let cfg = OidcSection::default();
        let u = user_from_claims(
            "https://idp",
            &cfg,
            &claims(json!({ "sub": "s1", "preferred_username": "carol", "name": "Carol C",
                             "email": "c@x", "groups": ["staff", "admins"] })),
        )
        .unwrap();
        assert_eq!(u.username, "carol");
        assert_eq!(u.groups, ["staff", "admins"]);
        assert_eq!(u.display_name.as_deref(), Some("Carol C"));
        assert_eq!(u.id, subject_id("https://idp", "s1"));
        assert_ne!(u.id, subject_id("https://other", "s1"));
        let one = user_from_claims(
            "https://idp",
            &cfg,
            &claims(json!({ "sub": "s1", "preferred_username": "carol", "groups": "staff" })),
        )
        .unwrap();
        assert_eq!(one.groups, ["staff"]);

        for bad in [
            json!({ "sub": "s1" }),
            json!({ "sub": "s1", "preferred_username": "-rf" }),
            json!({ "sub": "s1", "preferred_username": "a b" }),
            json!({ "sub": "s1", "preferred_username": 7 }),
            json!({ "sub": "s1", "preferred_username": "carol", "groups": {"a": 1} }),
            json!({ "sub": "s1", "preferred_username": "carol", "groups": ["a\nb"] }),
        ] {
            let e = user_from_claims("https://idp", &cfg, &claims(bad.clone()));
            assert!(matches!(e, Err(OidcError::User(_))), "{bad} gave {e:?}");
        }
    }
}
