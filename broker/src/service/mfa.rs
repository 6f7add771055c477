//! The second factor in sign-in: who must pass it (policy, or their own enrolment), and what
//! a wrong code costs (it counts toward the account's lockout, like a wrong password).

use std::net::IpAddr;

use super::{audit, entry_key, locked_out, pool_resource, record_failure};
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

/// The failure counter of the account's second factor: apart from the password's, and cleared
/// only by a code that passes (a new password sign-in does not give guesses back).
pub fn mfa_key(user_id: &str) -> String {
    format!("mfa:{}", crate::service::printable(user_id, 256))
}

/// Before a code is checked: the account may be locked out (by wrong codes, or wrong
/// passwords), or the address. Attempts for one account take turns on this replica (hold the
/// guard until the attempt is recorded), so a burst of guesses cannot all pass the check.
pub async fn mfa_turn(
    st: &AppState,
    user: &AuthUser,
    addr: IpAddr,
    now: i64,
) -> ApiResult<tokio::sync::OwnedMutexGuard<()>> {
    let key = mfa_key(&user.id);
    let turn = st.login_gate.enter(&key).await;
    let keys = [key.as_str(), &entry_key(&user.id), &format!("addr:{addr}")];
    if let (Some(until), _) = st.db.login_failure_state(&keys, now).await? {
        return Err(locked_out(st, &user.username, addr, until, now).await);
    }
    Ok(turn)
}

/// A code that passed: this sign-in has passed the second factor (and, if it owed it, now
/// lasts `sessions.max_lifetime_secs` from its start), and the account's count of wrong codes
/// starts again. The session's end, for its cookies; `Unauthorized` when the sign-in ended
/// while the code was being checked.
pub async fn mfa_passed(st: &AppState, user: &AuthUser, now: i64) -> ApiResult<i64> {
    let lifetime = i64::try_from(st.cfg.sessions.max_lifetime_secs * 1000).unwrap_or(i64::MAX / 2);
    let Some(expires_at) = st.db.pass_session_mfa(&user.sid, now, lifetime).await? else {
        return Err(ApiError::Unauthorized);
    };
    st.db.clear_login_failures(&mfa_key(&user.id), now).await?;
    Ok(expires_at)
}

/// A wrong (or used) code: counted against the account's second factor and the address,
/// audited; the error to answer.
pub async fn mfa_failed(
    st: &AppState,
    user: &AuthUser,
    addr: IpAddr,
    what: &str,
    now: i64,
) -> ApiError {
    let recorded = record_failure(st, &mfa_key(&user.id), &format!("addr:{addr}"), now).await;
    let locked = match recorded {
        Ok((account, address)) => account || address,
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
