//! The second factor in sign-in: who must pass it (policy, or their own enrolment), and what
//! a wrong code costs (it counts toward the account's lockout, like a wrong password).

use std::net::IpAddr;

use super::{audit, entry_key, locked_out, pool_resource};
use crate::auth::AuthUser;
use crate::db::{MfaState, Pool};
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Principal, Resource};
use crate::state::AppState;

/// Whether signing in must pass the second factor: policy asks it of the user (`require_mfa`
/// on the broker), or the user set one up.
pub async fn mfa_at_sign_in(
    st: &AppState,
    username: &str,
    user_id: &str,
    groups: &[String],
    addr: IpAddr,
) -> ApiResult<MfaState> {
    let p = Principal { username, groups };
    let required =
        st.policies.is_allowed(&p, Action::RequireMfa, Resource::Broker, &super::policy_ctx(addr));
    let enrolled = st.db.get_mfa(user_id).await?.is_some_and(|e| e.confirmed_at.is_some());
    Ok(if required || enrolled { MfaState::Pending } else { MfaState::None })
}

/// Refuses to connect to `pool` when policy requires the second factor for it and this sign-in
/// has not passed it (the web client then asks for a code, and connects again).
pub fn check_pool_mfa(
    st: &AppState,
    who: &Principal<'_>,
    mfa: MfaState,
    pool: &Pool,
    addr: IpAddr,
) -> ApiResult<()> {
    if mfa == MfaState::Verified {
        return Ok(());
    }
    let required = st.policies.is_allowed(
        who,
        Action::RequireMfa,
        pool_resource(pool),
        &super::policy_ctx(addr),
    );
    if required { Err(ApiError::MfaRequired) } else { Ok(()) }
}

/// Before a code is checked: the account may be locked out (by wrong passwords or codes).
pub async fn mfa_turn(st: &AppState, user: &AuthUser, addr: IpAddr, now: i64) -> ApiResult<()> {
    let key = entry_key(&user.id);
    if let (Some(until), _) = st.db.login_failure_state(&[&key], now).await? {
        return Err(locked_out(st, &user.username, addr, until, now).await);
    }
    Ok(())
}

/// A wrong (or used) code: counted against the account like a wrong password, audited; the
/// error to answer.
pub async fn mfa_failed(
    st: &AppState,
    user: &AuthUser,
    addr: IpAddr,
    what: &str,
    now: i64,
) -> ApiError {
    let lw = &st.cfg.login;
    let window = i64::try_from(lw.window_secs * 1000).unwrap_or(i64::MAX / 2);
    let lockout = i64::try_from(lw.lockout_secs * 1000).unwrap_or(i64::MAX / 2);
    let locked = match st
        .db
        .record_login_failure(&entry_key(&user.id), now, window, lw.max_failures_per_user, lockout)
        .await
    {
        Ok(l) => l,
        Err(e) => return e.into(),
    };
    audit(
        st,
        &user.username,
        "mfa.failed",
        &user.username,
        "failure",
        addr,
        serde_json::json!({ "with": what, "locked": locked }),
    )
    .await;
    ApiError::WrongCode
}
