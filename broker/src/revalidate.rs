//! Directory state checked again while people are signed in: each signed-in user's entry is
//! read again at most `ldap.revalidate_secs` after it was last read (a reconcile step, so once
//! across replicas). A user whose entry was deleted, disabled (the user filter no longer
//! matches it) or replaced by another of the same name is signed out everywhere; one whose
//! groups changed keeps the new groups (administration follows at once, every request checks
//! policy with them) and loses the desktop sessions of pools policy no longer grants.

use std::net::{IpAddr, Ipv4Addr};

use crate::db::{CachedUser, now_ms};
use crate::error::ApiResult;
use crate::ldap::LdapError;
use crate::service;
use crate::state::AppState;

/// Most users checked in one pass (one directory search each).
const PER_PASS: i64 = 50;

/// One pass: the users most overdue, up to [`PER_PASS`].
pub async fn pass(st: &AppState) -> ApiResult<()> {
    if !st.cfg.uses_directory() {
        return Ok(());
    }
    let now = now_ms();
    let every = i64::try_from(st.cfg.ldap.revalidate_secs * 1000).unwrap_or(i64::MAX / 2);
    for user in st.db.users_to_revalidate(now - every, now, PER_PASS).await? {
        let Some(id) = user.directory_id.clone() else { continue };
        match st.directory.revalidate(&user.dn, &id).await {
            Ok(Some(fresh)) if fresh.username == user.username => {
                let fresh = CachedUser::from((&fresh, user.last_login_at));
                st.db.refresh_user(&fresh, now_ms()).await?;
                if fresh.groups != user.groups {
                    let ended =
                        service::end_disallowed_sessions(st, &fresh.username, &fresh.groups)
                            .await?;
                    tracing::info!(user = %user.username, ended, "groups changed in the directory");
                    service::audit(
                        st,
                        "system",
                        "user.groups_changed",
                        &user.username,
                        "success",
                        system(),
                        serde_json::json!({ "from": user.groups, "to": fresh.groups, "sessions_ended": ended }),
                    )
                    .await;
                }
            }
            Err(LdapError::Unavailable(e)) => {
                // The directory is down or slow: try again next pass; nobody is signed out
                // for an outage.
                tracing::warn!(error = %e, "cannot check signed-in users against the directory");
                return Ok(());
            }
            // Deleted, disabled, replaced by another entry, renamed (they sign in again under
            // the new name), or an entry that can no longer be read as a user (it could not
            // sign in either): signed out.
            other => {
                let reason = match other {
                    Ok(_) => "no longer in the directory",
                    Err(_) => "its directory entry can no longer be read",
                };
                let n = service::sign_out_everywhere(
                    st,
                    &user.username,
                    &id,
                    "system",
                    reason,
                    system(),
                )
                .await?;
                tracing::info!(user = %user.username, sessions = n, reason, "signed out by the directory");
            }
        }
    }
    Ok(())
}

fn system() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
