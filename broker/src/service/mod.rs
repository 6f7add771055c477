//! The broker's operations, shared by the HTTP handlers and the reconcile loop: sign-in and
//! sign-out ([`signin`]), connect, session ends, provisioning and destruction of desktops
//! ([`desktops`]).

mod desktops;
mod mfa;
mod revoke;
mod signin;
mod sso;
mod watermark;

pub use desktops::*;
pub use mfa::*;
pub use revoke::*;
pub use signin::*;
pub use sso::*;
pub use watermark::{Watched, render as render_watermark};

use std::net::IpAddr;

use crate::db::{AuditEvent, Pool, now_ms};
use crate::policy::{RequestContext, Resource};
use crate::state::AppState;

pub use atrium_protocol::text::printable;

/// Records an audit event; a failure to record is logged, never hidden.
pub async fn audit(
    st: &AppState,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    addr: IpAddr,
    details: serde_json::Value,
) {
    let e = AuditEvent::now(actor, action, target, outcome, addr.to_string(), &details);
    if let Err(err) = st.db.insert_audit(st.db.pool(), &e).await {
        tracing::error!(error = %err, action, "could not write an audit event");
    }
}

/// What a successful sign-in returns (the cookies go in headers).
pub fn policy_ctx(addr: IpAddr) -> RequestContext {
    RequestContext { client_ip: addr, now_secs: now_ms() / 1000 }
}

pub fn pool_resource(p: &Pool) -> Resource<'_> {
    Resource::Pool { name: &p.name, kind: p.kind.as_str(), image: &p.image }
}
