//! Directory state checked again while people are signed in: each signed-in user's entry is
//! read again at most `ldap.revalidate_secs` after it was last read (a reconcile step, so once
//! across replicas). A user whose entry was deleted or replaced by another of the same name,
//! or that the user filter no longer matches (disabled), is signed out everywhere; one whose
//! groups changed keeps the new groups (administration follows at once, every request checks
//! policy with them) and loses the desktop sessions of pools policy no longer grants.
//!
//! Only a definite answer signs anyone out. A directory that is down, slow or answers an error
//! puts the user back in the queue (checked again within 30 s) and signs nobody out; and when the
//! filter excludes most of a pass's users at once, it is taken for a filter that cannot match
//! with `{username}` as `*`, not for a mass disablement: nobody is signed out and an error says
//! so.

use std::net::{IpAddr, Ipv4Addr};

use crate::db::{CachedUser, now_ms};
use crate::error::ApiResult;
use crate::ldap::{LdapError, Revalidated};
use crate::service;
use crate::state::AppState;

/// Most users checked in one pass (one or two directory searches each).
const PER_PASS: i64 = 50;
/// A user the directory could not answer about is checked again this much later (at most).
const RETRY_MS: i64 = 30_000;
/// With at least this many users excluded in one pass, and more than half of those checked,
/// the filter is suspected rather than the users.
const SUSPECT_EXCLUDED: usize = 3;

/// One pass: the users most overdue, up to [`PER_PASS`].
pub async fn pass(st: &AppState) -> ApiResult<()> {
    if !st.cfg.uses_directory() {
        return Ok(());
    }
    let now = now_ms();
    let every = i64::try_from(st.cfg.ldap.revalidate_secs * 1000).unwrap_or(i64::MAX / 2);
    // Back in the queue: checked again in RETRY_MS (or one period, if shorter), so one user the
    // directory cannot answer about does not hold up the others.
    let retry_at = now - every + RETRY_MS.min(every);
    let due = st.db.users_to_revalidate(now - every, now, PER_PASS).await?;
    let mut checked = 0usize;
    let mut excluded = Vec::new();
    for user in due {
        let Some(id) = user.directory_id.clone() else { continue };
        match st.directory.revalidate(&user.dn, &id).await {
            Ok(Revalidated::Same(fresh)) if fresh.username == user.username => {
                checked += 1;
                let fresh = CachedUser::from((&fresh, user.last_login_at));
                st.db.refresh_user(&fresh, now_ms()).await?;
                if fresh.groups != user.groups {
                    groups_changed(st, &user, &fresh).await?;
                }
            }
            // Renamed (signs in again under the new name), deleted or replaced.
            Ok(Revalidated::Same(_) | Revalidated::Gone) => {
                checked += 1;
                sign_out(st, &user, &id, "no longer in the directory").await?;
            }
            Ok(Revalidated::Excluded) => {
                checked += 1;
                excluded.push((user, id));
            }
            Err(e @ LdapError::Unavailable(_)) => {
                // Down or slow: this user waits, nobody is signed out. The rest of the pass
                // would wait as long, so it stops here.
                tracing::warn!(error = %e, "cannot check signed-in users against the directory");
                st.db.set_validated_at(&user.username, retry_at).await?;
                break;
            }
            Err(e) => {
                tracing::error!(user = %user.username, error = %e, "cannot check a signed-in user against the directory");
                st.db.set_validated_at(&user.username, retry_at).await?;
            }
        }
    }
    if excluded.len() >= SUSPECT_EXCLUDED && excluded.len() * 2 > checked {
        tracing::error!(
            excluded = excluded.len(),
            checked,
            "ldap.user_filter with {{username}} as * matches most signed-in users' entries no \
             longer: taken for a filter that cannot be used this way, not for disabled \
             accounts; nobody signed out (deleted entries still are)"
        );
        for (user, _) in excluded {
            st.db.set_validated_at(&user.username, retry_at).await?;
        }
        return Ok(());
    }
    for (user, id) in excluded {
        sign_out(st, &user, &id, "excluded by the directory's user filter (disabled)").await?;
    }
    Ok(())
}

async fn groups_changed(st: &AppState, before: &CachedUser, now: &CachedUser) -> ApiResult<()> {
    let ended = service::end_disallowed_sessions(st, &now.username, &now.groups).await?;
    tracing::info!(user = %now.username, ended, "groups changed in the directory");
    service::audit(
        st,
        "system",
        "user.groups_changed",
        &now.username,
        "success",
        system(),
        serde_json::json!({ "from": before.groups, "to": now.groups, "sessions_ended": ended }),
    )
    .await;
    Ok(())
}

async fn sign_out(st: &AppState, user: &CachedUser, id: &str, reason: &str) -> ApiResult<()> {
    let n =
        service::sign_out_everywhere(st, &user.username, id, "system", reason, system()).await?;
    tracing::info!(user = %user.username, sessions = n, reason, "signed out by the directory");
    Ok(())
}

fn system() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
