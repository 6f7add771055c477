//! Sign-in and sign-out.

use atrium_protocol::session::EndReason;
use std::net::IpAddr;

use crate::db::{
    AuditEvent, CachedUser, LoginRecord, LoginSession, MfaState, SignInMethod, now_ms,
};
use crate::error::{ApiError, ApiResult};
use crate::ldap::{DirectoryUser, LdapError};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::state::AppState;

use super::{audit, end_session, printable};

#[derive(Debug)]
pub struct SignedIn {
    pub user: CachedUser,
    pub session_token: String,
    pub csrf_token: String,
    pub max_age: u64,
    /// `Pending`: the second factor is asked before anything else.
    pub mfa: MfaState,
}

/// The lockout key of a typed username that names no directory entry: as directories compare
/// names (case-insensitively, ignoring leading, trailing and repeated spaces), so "Alice",
/// " alice" and "alice  " count as one (probing for names is limited too).
pub fn username_key(username: &str) -> String {
    let folded = username.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    format!("user:{}", printable(&folded, 256))
}

/// The lockout key of a directory entry: every name that leads to it (its `uid`, its `mail`,
/// any spelling the directory matches) shares it.
pub fn entry_key(id: &str) -> String {
    format!("entry:{}", printable(id, 256))
}

pub async fn login(
    st: &AppState,
    username: &str,
    password: &Secret,
    addr: IpAddr,
) -> ApiResult<SignedIn> {
    let addr_key = format!("addr:{addr}");
    // A locked-out address costs the directory nothing.
    let now = now_ms();
    if let (Some(until), _) = st.db.login_failure_state(&[&addr_key], now).await? {
        return Err(locked_out(st, username, addr, until, now).await);
    }
    // The entry the name leads to, found before the password is checked: attempts count
    // against the entry, so every spelling of one account shares one counter.
    let candidate = match st.directory.find(username).await {
        Ok(c) => c,
        Err(e) => return Err(directory_unavailable(st, username, addr, e).await),
    };
    let user_key = candidate.id().map_or_else(|| username_key(username), entry_key);
    // Attempts for one account take turns on this replica, so each one sees the failures
    // recorded by the one before (a burst of parallel guesses cannot all slip under the limit).
    let _turn = st.login_gate.enter(&user_key).await;
    let now = now_ms();
    let (locked, counted) = st.db.login_failure_state(&[&user_key, &addr_key], now).await?;
    if let Some(until) = locked {
        return Err(locked_out(st, username, addr, until, now).await);
    }
    match st.directory.sign_in(username, candidate, password).await {
        Ok(dir_user) => {
            let clear = counted.contains(&user_key).then_some(user_key);
            open_session(st, &dir_user, SignInMethod::Password, addr, clear, now).await
        }
        Err(LdapError::InvalidCredentials) => {
            Metrics::inc(&st.metrics.logins_failed);
            let (user_locked, addr_locked) = record_failure(st, &user_key, &addr_key, now).await?;
            audit(
                st,
                username,
                "login.failed",
                username,
                "failure",
                addr,
                serde_json::json!({ "locked_user": user_locked, "locked_address": addr_locked }),
            )
            .await;
            Err(ApiError::InvalidCredentials)
        }
        Err(e) => Err(directory_unavailable(st, username, addr, e).await),
    }
}

/// Opens a sign-in session for a user the directory or an OpenID provider vouched for: the
/// user's cached attributes, the session and its audit event are written in one group commit
/// (with `clear_failures`, the failure counter to forget), then the cookies' tokens are minted.
pub(crate) async fn open_session(
    st: &AppState,
    user: &DirectoryUser,
    method: SignInMethod,
    addr: IpAddr,
    clear_failures: Option<String>,
    now: i64,
) -> ApiResult<SignedIn> {
    let cached = CachedUser::from((user, now));
    let mfa = super::mfa_at_sign_in(st, &user.username, &user.id, &user.groups, addr).await?;
    let sid = uuid::Uuid::new_v4().to_string();
    let session = LoginSession {
        id: sid.clone(),
        username: cached.username.clone(),
        user_id: Some(user.id.clone()),
        client_addr: addr.to_string(),
        created_at: now,
        // A sign-in that owes its second factor lasts only the window to pass it (passing
        // it gives the sign-in its whole lifetime).
        expires_at: now
            + i64::try_from(
                if mfa == MfaState::Pending {
                    st.cfg.mfa.pending_secs
                } else {
                    st.cfg.sessions.max_lifetime_secs
                } * 1000,
            )
            .unwrap_or(i64::MAX / 2),
        last_seen_at: now,
        revoked_at: None,
        method,
        mfa,
    };
    let event = AuditEvent {
        id: uuid::Uuid::new_v4().to_string(),
        at: now,
        actor: cached.username.clone(),
        action: "login".into(),
        target: cached.username.clone(),
        outcome: "success".into(),
        client_addr: addr.to_string(),
        details: serde_json::json!({ "session": sid, "method": method.as_str() }).to_string(),
    };
    let expires_at = session.expires_at;
    // A password sign-in may have used an entry the directory client cached: it counts as
    // read as long ago as the cache keeps entries, so revalidation is never later for it.
    let validated_at = match method {
        SignInMethod::Password => {
            now - i64::try_from(st.cfg.ldap.cache_secs * 1000).unwrap_or(i64::MAX / 4)
        }
        _ => now,
    };
    st.login_writer
        .write(LoginRecord {
            user: cached.clone(),
            session,
            audit: event,
            clear_failures,
            validated_at,
        })
        .await?;
    let csrf_token = crate::auth::random_token();
    let (session_token, max_age) = crate::auth::mint_session_token(
        st,
        &cached.username,
        &sid,
        &crate::auth::csrf_digest(&csrf_token),
        expires_at,
    )?;
    Metrics::inc(&st.metrics.logins_ok);
    Ok(SignedIn { user: cached, session_token, csrf_token, max_age, mfa })
}

/// A failed attempt (a wrong password or code) counted against an account's key and the
/// address's, with the `[login]` limits; whether each is now locked.
pub(crate) async fn record_failure(
    st: &AppState,
    account_key: &str,
    addr_key: &str,
    now: i64,
) -> crate::db::DbResult<(bool, bool)> {
    let lw = &st.cfg.login;
    let window = i64::try_from(lw.window_secs * 1000).unwrap_or(i64::MAX / 2);
    let lockout = i64::try_from(lw.lockout_secs * 1000).unwrap_or(i64::MAX / 2);
    let db = &st.db;
    let account = db
        .record_login_failure(account_key, now, window, lw.max_failures_per_user, lockout)
        .await?;
    let addr = db
        .record_login_failure(addr_key, now, window, lw.max_failures_per_address, lockout)
        .await?;
    Ok((account, addr))
}

/// A sign-in refused by a lockout until `until`: counted, audited, and the error to return.
pub(crate) async fn locked_out(
    st: &AppState,
    username: &str,
    addr: IpAddr,
    until: i64,
    now: i64,
) -> ApiError {
    Metrics::inc(&st.metrics.logins_locked);
    audit(st, username, "login.locked", username, "denied", addr, serde_json::json!({})).await;
    let secs = u64::try_from((until - now).max(0) / 1000).unwrap_or(0) + 1;
    ApiError::LockedOut { retry_after_secs: secs, minutes: secs.div_ceil(60) }
}

/// A sign-in the directory could not answer: counted, audited, and the error to return.
async fn directory_unavailable(
    st: &AppState,
    username: &str,
    addr: IpAddr,
    e: crate::ldap::LdapError,
) -> ApiError {
    Metrics::inc(&st.metrics.logins_unavailable);
    audit(
        st,
        username,
        "login.error",
        username,
        "failure",
        addr,
        serde_json::json!({ "reason": "directory unavailable" }),
    )
    .await;
    e.into()
}

/// Ends a sign-in session and the desktop sessions opened from it.
pub async fn logout(
    st: &AppState,
    username: &str,
    user_id: &str,
    sid: &str,
    addr: IpAddr,
) -> ApiResult<()> {
    let now = now_ms();
    st.db.revoke_login_session(sid, now).await?;
    end_signed_out(st, user_id, &[sid.to_owned()], "signed out", now).await?;
    audit(st, username, "logout", username, "success", addr, serde_json::json!({ "session": sid }))
        .await;
    Ok(())
}

/// What follows the end of sign-in sessions `sids` of the entry `user_id`: their desktop
/// sessions end (viewers disconnected) with `reason`, and the user's floating desktops that no
/// other sign-in of theirs is using are recycled.
pub(crate) async fn end_signed_out(
    st: &AppState,
    user_id: &str,
    sids: &[String],
    reason: &str,
    now: i64,
) -> ApiResult<()> {
    for sid in sids {
        for s in st.db.open_sessions_of_login(sid).await? {
            end_session(st, &s, reason, EndReason::SignedOut, now).await?;
        }
    }
    for d in st.db.user_desktops(user_id).await? {
        let floating = d.persistent_disk.is_none();
        if floating && st.db.open_sessions_of_desktop(&d.id).await?.is_empty() {
            st.db.mark_destroying(&d.id, now).await?;
        }
    }
    Ok(())
}
