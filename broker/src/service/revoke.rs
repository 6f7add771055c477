//! Taking access away while people are signed in: an administrator signs a user out
//! everywhere; the directory says a user is gone, disabled or in other groups now.

use atrium_protocol::session::EndReason;
use std::net::IpAddr;

use super::{audit, end_session, end_signed_out, pool_resource};
use crate::db::now_ms;
use crate::error::ApiResult;
use crate::policy::{Action, Principal, RequestContext};
use crate::state::AppState;

/// Ends every sign-in session of the entry `user_id` (named `username`), their desktop
/// sessions (viewers disconnected at once) and their unused floating desktops; audited as
/// `user.signout` by `actor` with `reason`. The number of sign-in sessions ended.
pub async fn sign_out_everywhere(
    st: &AppState,
    username: &str,
    user_id: &str,
    actor: &str,
    reason: &str,
    addr: IpAddr,
) -> ApiResult<usize> {
    let now = now_ms();
    let sids = st.db.revoke_user_sessions(user_id, now).await?;
    end_signed_out(st, user_id, &sids, reason, now).await?;
    audit(
        st,
        actor,
        "user.signout",
        username,
        "success",
        addr,
        serde_json::json!({ "sessions": sids.len(), "reason": reason }),
    )
    .await;
    Ok(sids.len())
}

/// Ends the open desktop sessions of `username` on pools that policy no longer lets a member
/// of `groups` use (checked as at connect, from the session's client address). Their number.
pub async fn end_disallowed_sessions(
    st: &AppState,
    username: &str,
    groups: &[String],
) -> ApiResult<usize> {
    let now = now_ms();
    let principal = Principal { username, groups };
    let mut ended = 0;
    for s in st.db.open_sessions_of_user(username).await? {
        let Some(pool) = st.db.get_pool(&s.pool_id).await? else { continue };
        let ctx = RequestContext {
            client_ip: s.client_addr.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            now_secs: now / 1000,
        };
        if !st.policies.is_allowed(&principal, Action::Connect, pool_resource(&pool), &ctx) {
            end_session(st, &s, "no longer allowed", EndReason::Other, now).await?;
            ended += 1;
        }
    }
    Ok(ended)
}
