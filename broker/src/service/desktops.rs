//! Connect, session ends, provisioning and destruction of desktops.

use std::net::IpAddr;

use atrium_protocol::agent::SessionUser;
use atrium_protocol::node::VmSpec;
use atrium_protocol::session::EndReason;
use atrium_protocol::ticket::{Capabilities, DisplayClaims, ISSUER, Record, Watermark};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::{
    Assignment, Desktop, DesktopSession, DesktopState, Node, Pool, PoolKind, logon_start, now_ms,
};
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::policy::{Action, Principal};
use crate::state::AppState;

use super::{Watched, audit, policy_ctx, pool_resource, printable, render_watermark};

/// Ends a desktop session: viewers are disconnected and told `why`; a floating desktop is
/// destroyed (the pool refills), unless the user only disconnected or went idle: then it is
/// kept for them for the pool's disconnect time, as a dedicated one is. `reason` is what the
/// session row and the audit log say.
pub async fn end_session(
    st: &AppState,
    s: &DesktopSession,
    reason: &str,
    why: EndReason,
    now: i64,
) -> ApiResult<()> {
    let Some(s) = st.db.end_desktop_session(&s.id, reason, now).await? else { return Ok(()) };
    let node = match &s.node_id {
        Some(n) => st.db.get_node(n).await?,
        None => None,
    };
    if let Some(node) = node
        && let Err(e) = st.nodes.end_display_session(&node.id, &node.display_url, &s.id, why).await
    {
        tracing::warn!(error = %e, session = %s.id, "could not tell the display proxy to end the session");
    }
    let kept = matches!(why, EndReason::Disconnected | EndReason::Idle);
    match st.db.get_pool(&s.pool_id).await?.map(|p| p.kind) {
        Some(PoolKind::Floating) if !kept => st.db.mark_destroying(&s.desktop_id, now).await?,
        // At its maximum length a dedicated desktop is logged off too: stopped, its disk kept
        // (its next start begins a new logon).
        Some(PoolKind::Dedicated) if why == EndReason::MaxLength => {
            if let Some(d) = st.db.get_desktop(&s.desktop_id).await? {
                log_off(st, &d, PoolKind::Dedicated, i64::MAX, now, "maximum session length")
                    .await?;
            }
        }
        _ => {}
    }
    audit(
        st,
        &s.username,
        "session.end",
        &s.desktop_id,
        "success",
        IpAddr::from([0, 0, 0, 0]),
        serde_json::json!({ "session": s.id, "reason": reason }),
    )
    .await;
    Ok(())
}

/// Logs off a desktop nobody is connected to, unless it was used since `cutoff`: a floating one
/// is recycled (marked for destruction), a dedicated one stopped, its VM removed and its disk
/// kept. Audited as `desktop.recycle` or `desktop.stop` with `reason`. Returns whether it was.
pub async fn log_off(
    st: &AppState,
    d: &Desktop,
    kind: PoolKind,
    cutoff: i64,
    now: i64,
    reason: &str,
) -> ApiResult<bool> {
    let action = match kind {
        PoolKind::Floating if st.db.destroy_if_idle(&d.id, cutoff, now).await? => "desktop.recycle",
        PoolKind::Dedicated if st.db.stop_if_idle(&d.id, cutoff, now).await? => {
            stop_vm_of(st, d).await;
            "desktop.stop"
        }
        _ => return Ok(false),
    };
    let details = serde_json::json!({ "reason": reason, "user": d.username, "pool": d.pool_id });
    audit(st, "system", action, &d.id, "success", IpAddr::from([0, 0, 0, 0]), details).await;
    Ok(true)
}

/// Removes a stopped dedicated desktop's VM from its node, best effort: a VM left behind is an
/// orphan the next heartbeat's sweep removes.
pub async fn stop_vm_of(st: &AppState, d: &Desktop) {
    if let (Some(node_id), Some(vm)) = (&d.node_id, &d.vm_id)
        && let Ok(Some(node)) = st.db.get_node(node_id).await
        && let Err(e) = st.nodes.delete_vm(node.api(), vm).await
    {
        tracing::warn!(error = %e, vm = %vm, "could not remove a stopped desktop's VM");
    }
    let _ = st.db.mark_stopped(&d.id, now_ms()).await;
}

/// What `POST /pools/{pool}/connect` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectResponse {
    pub desktop_id: String,
    pub pool: String,
    /// `ready`: `ws_url` and `ticket` are set. `starting`: ask again after `retry_after_ms`.
    pub status: String,
    /// How the desktop was found: `existing`, `spare`, `new` or `restarted`.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The desktop session id.
    pub session_id: String,
    #[schema(value_type = Object)]
    pub capabilities: Capabilities,
    /// The session's time limits, for the viewer's warnings (the broker enforces them).
    pub limits: SessionLimits,
    /// The desktop's OS runs Atrium's guest agent. Without one the user signs in to the OS
    /// themselves, and the clipboard and file transfer are off (left out of `capabilities`).
    pub agent: bool,
}

/// A session's time limits, as the viewer warns of them. The broker ends the session by its
/// own clock whatever the viewer does; these let the viewer say so in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct SessionLimits {
    /// Without keyboard or pointer input for this long, the session is disconnected.
    pub idle_timeout_secs: u64,
    /// The viewer warns this long before the idle time runs out, with "I'm still here".
    pub idle_warning_secs: u64,
    /// The session ends this many seconds from now (its maximum length, counted from the
    /// user's logon on the desktop: a reconnect does not start it again).
    pub ends_in_secs: u64,
    /// The viewer warns this long before the end.
    pub end_warning_secs: u64,
    /// A desktop nobody is connected to is kept this long, then logged off.
    pub disconnect_timeout_secs: u64,
}

/// How long before the idle time runs out the viewer warns (half the idle time when shorter).
pub const IDLE_WARNING_SECS: u64 = 60;
/// How long before the maximum session length the viewer warns.
pub const END_WARNING_SECS: u64 = 600;

impl SessionLimits {
    /// The limits of `session` on `desktop` in `pool`, `now`.
    pub fn of(pool: &Pool, session: &DesktopSession, desktop: &Desktop, now: i64) -> Self {
        let start = logon_start(session, desktop.assigned_at);
        let ends_at = start.saturating_add(
            i64::try_from(pool.max_session_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        );
        Self {
            idle_timeout_secs: pool.idle_timeout_secs,
            idle_warning_secs: IDLE_WARNING_SECS.min(pool.idle_timeout_secs / 2),
            ends_in_secs: u64::try_from(ends_at.saturating_sub(now) / 1000).unwrap_or(0),
            end_warning_secs: END_WARNING_SECS,
            disconnect_timeout_secs: pool.disconnect_timeout_secs,
        }
    }
}

#[derive(Debug)]
pub struct Connecting<'a> {
    pub username: &'a str,
    /// The directory entry's stable id (what the desktop will belong to).
    pub user_id: &'a str,
    pub login_sid: &'a str,
    pub groups: &'a [String],
    pub display_name: Option<&'a str>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub addr: IpAddr,
    /// The XKB layout of the user's keyboard (`us`, `de`...), applied when their session starts.
    pub keyboard_layout: Option<&'a str>,
    /// Where the sign-in stands with the second factor (a pool may require it).
    pub mfa: crate::db::MfaState,
}
pub async fn connect(
    st: &AppState,
    who: &Connecting<'_>,
    pool_name: &str,
) -> ApiResult<ConnectResponse> {
    let pool = st
        .db
        .get_pool(pool_name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no pool {pool_name:?}")))?;
    let principal = Principal { username: who.username, groups: who.groups };
    let ctx = policy_ctx(who.addr);
    if !st.policies.is_allowed(&principal, Action::Connect, pool_resource(&pool), &ctx) {
        Metrics::inc(&st.metrics.connects_refused);
        audit(
            st,
            who.username,
            "desktop.connect",
            &pool.name,
            "denied",
            who.addr,
            serde_json::json!({}),
        )
        .await;
        return Err(ApiError::Forbidden(format!("you may not use pool {}", pool.name)));
    }
    super::check_pool_mfa(st, &principal, who.mfa, &pool, who.addr)?;
    let now = now_ms();
    let (desktop, source) = match st
        .db
        .assign_desktop(&pool, who.username, who.user_id, now)
        .await?
    {
        Assignment::Existing(d) => {
            Metrics::inc(&st.metrics.connects_existing);
            (d, "existing")
        }
        Assignment::Spare(d) => {
            Metrics::inc(&st.metrics.connects_spare);
            (d, "spare")
        }
        Assignment::New(d) => {
            Metrics::inc(&st.metrics.connects_new);
            let d = provision(st, &pool, d, Some(who)).await?;
            (d, "new")
        }
        Assignment::Restart(d, old_vm) => {
            Metrics::inc(&st.metrics.connects_new);
            if let (Some(vm), Some(node_id)) = (&old_vm, &d.node_id)
                && let Some(node) = st.db.get_node(node_id).await?
                && let Err(e) = st.nodes.delete_vm(node.api(), vm).await
            {
                tracing::warn!(error = %e, vm = %vm, "could not remove the failed VM before restarting its desktop");
            }
            let d = provision(st, &pool, d, Some(who)).await?;
            (d, "restarted")
        }
        Assignment::Full => {
            Metrics::inc(&st.metrics.connects_refused);
            audit(
                st,
                who.username,
                "desktop.connect",
                &pool.name,
                "failure",
                who.addr,
                serde_json::json!({ "reason": "pool full" }),
            )
            .await;
            return Err(ApiError::Unavailable {
                message: format!("every desktop of pool {} is in use: try again later", pool.name),
                retry_after_secs: Some(30),
            });
        }
        Assignment::NoNode => {
            Metrics::inc(&st.metrics.connects_refused);
            audit(
                st,
                who.username,
                "desktop.connect",
                &pool.name,
                "failure",
                who.addr,
                serde_json::json!({ "reason": "no node" }),
            )
            .await;
            return Err(ApiError::Unavailable {
                message: format!("no node can start a desktop of pool {} now", pool.name),
                retry_after_secs: Some(30),
            });
        }
    };
    let session = st
        .db
        .open_desktop_session(&desktop, who.username, who.login_sid, &who.addr.to_string(), now)
        .await?;
    if source != "existing" {
        audit(
            st,
            who.username,
            "desktop.assign",
            &desktop.id,
            "success",
            who.addr,
            serde_json::json!({ "pool": pool.name, "source": source, "node": desktop.node_id, "vm": desktop.vm_id }),
        )
        .await;
    }
    let mut caps = st.policies.capabilities(&principal, pool_resource(&pool), &ctx);
    // The desktop's node, read once for what it says of the image and for telling its agent.
    let node = match &desktop.node_id {
        Some(id) => st.db.get_node(id).await.ok().flatten(),
        None => None,
    };
    let agent = has_agent(node.as_ref(), &desktop, &pool);
    if !agent {
        without_agent(&mut caps);
    }
    let mut resp = ConnectResponse {
        desktop_id: desktop.id.clone(),
        pool: pool.name.clone(),
        status: "starting".into(),
        source: source.into(),
        ws_url: None,
        ticket: None,
        ticket_expires_in: None,
        retry_after_ms: Some(1000),
        session_id: session.id.clone(),
        capabilities: caps,
        limits: SessionLimits::of(&pool, &session, &desktop, now),
        agent,
    };
    match desktop.state {
        DesktopState::Ready => {
            tell_agent(st, &desktop, node.as_ref(), who).await;
            let watermark = st
                .policies
                .is_allowed(&principal, Action::Watermark, pool_resource(&pool), &ctx)
                .then(|| {
                    let client = who.addr.to_string();
                    let watched = Watched {
                        username: who.username,
                        display_name: who.display_name,
                        client: &client,
                        pool: &pool.name,
                    };
                    render_watermark(&st.cfg.watermark, watched, None)
                });
            let record = open_recording(st, &pool, &desktop, who, &session.id).await?;
            let (ws_url, ticket) =
                mint_ticket(st, &desktop, who.username, &session.id, caps, watermark, record)
                    .await?;
            resp.status = "ready".into();
            resp.ws_url = Some(ws_url);
            resp.ticket = Some(ticket);
            resp.ticket_expires_in = Some(st.cfg.tickets.ttl_secs);
            resp.retry_after_ms = None;
        }
        DesktopState::Provisioning | DesktopState::Starting => {}
        DesktopState::Failed | DesktopState::Stopped | DesktopState::Destroying => {
            return Err(ApiError::unavailable("your desktop could not be started: try again"));
        }
    }
    Ok(resp)
}

/// Opens a recording of this connection when policy records the user in this pool (with their
/// input when policy says so too).
async fn open_recording(
    st: &AppState,
    pool: &Pool,
    desktop: &Desktop,
    who: &Connecting<'_>,
    session_id: &str,
) -> ApiResult<Option<Record>> {
    let principal = Principal { username: who.username, groups: who.groups };
    let ctx = policy_ctx(who.addr);
    if !st.policies.is_allowed(&principal, Action::Record, pool_resource(pool), &ctx) {
        return Ok(None);
    }
    let input = st.policies.is_allowed(&principal, Action::RecordInput, pool_resource(pool), &ctx);
    let id =
        crate::recordings::open(st, desktop, who.username, session_id, &pool.name, input).await?;
    audit(
        st,
        who.username,
        "recording.start",
        &id,
        "success",
        who.addr,
        serde_json::json!({ "desktop": desktop.id, "pool": pool.name, "input": input }),
    )
    .await;
    Ok(Some(Record { id, input }))
}

/// Tells the guest agent who signed in, once per assignment; `node` is the desktop's.
async fn tell_agent(st: &AppState, d: &Desktop, node: Option<&Node>, who: &Connecting<'_>) {
    if d.agent_user.as_deref() == Some(who.username) {
        return;
    }
    let (Some(node), Some(vm)) = (node, &d.vm_id) else { return };
    let user = SessionUser {
        username: who.username.to_owned(),
        display_name: who.display_name.map(str::to_owned),
        uid: who.uid,
        gid: who.gid,
        keyboard_layout: who.keyboard_layout.map(str::to_owned),
    };
    if user.validate().is_err() {
        tracing::warn!(user = %printable(who.username, 64), "username cannot be passed to a guest; the desktop will not greet them");
        return;
    }
    match st.nodes.send_session(node.api(), vm, &user).await {
        Ok(()) => {
            let _ = st.db.set_agent_user(&d.id, who.username).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, desktop = %d.id, "could not tell the guest agent who signed in")
        }
    }
}

/// Mints a display ticket for a ready desktop: `(ws_url, ticket)`. The ticket names the node's
/// display proxy, where a gateway relays the viewer.
pub async fn mint_ticket(
    st: &AppState,
    d: &Desktop,
    username: &str,
    session_id: &str,
    caps: Capabilities,
    watermark: Option<Watermark>,
    record: Option<Record>,
) -> ApiResult<(String, String)> {
    let (Some(node_id), Some(vm)) = (&d.node_id, &d.vm_id) else {
        return Err(ApiError::unavailable("the desktop has no VM yet"));
    };
    let node = st
        .db
        .get_node(node_id)
        .await?
        .ok_or_else(|| ApiError::unavailable("the desktop's node is gone"))?;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = DisplayClaims {
        iss: ISSUER.into(),
        aud: DisplayClaims::audience(watermark.is_some(), record.is_some()).into(),
        sub: username.to_owned(),
        iat: now,
        nbf: now.saturating_sub(1),
        exp: now + st.cfg.tickets.ttl_secs,
        jti: uuid::Uuid::new_v4().to_string(),
        desktop: d.id.clone(),
        vm: vm.clone(),
        node: node.id.clone(),
        sid: session_id.to_owned(),
        caps,
        proxy: Some(node.display_url.trim_end_matches('/').to_owned()),
        watermark,
        record,
    };
    let ticket =
        st.keys.sign(&claims).map_err(|e| ApiError::internal("signing a display ticket", e))?;
    Metrics::inc(&st.metrics.tickets_issued);
    // Through the gateways when there are some; else straight to the node's display proxy.
    let base = match st.cfg.tickets.gateway_url.as_str() {
        "" => node.display_url.as_str(),
        gateway => gateway,
    };
    Ok((format!("{}/ws/{vm}", base.trim_end_matches('/')), ticket))
}

/// Whether the desktop's image runs Atrium's guest agent, as its node reports the image (the
/// version the desktop runs, else the pool's image by name). `true` when unknown: a node that
/// does not say runs only images with one.
fn has_agent(node: Option<&Node>, desktop: &Desktop, pool: &Pool) -> bool {
    let Some(node) = node else { return true };
    let wanted = desktop.image.as_deref().unwrap_or(&pool.image);
    let (name, version) = wanted.split_once('@').map_or((wanted, None), |(n, v)| (n, Some(v)));
    node.capacity
        .images
        .iter()
        .filter(|i| i.name == name && version.is_none_or(|v| v == i.version))
        .map(|i| i.agent)
        .next_back()
        .unwrap_or(true)
}

/// What a viewer cannot have of a desktop without an agent: the clipboard and files cross
/// through the agent.
fn without_agent(caps: &mut Capabilities) {
    caps.clipboard_copy_out = false;
    caps.clipboard_paste_in = false;
    caps.clipboard_out_images = false;
    caps.clipboard_in_images = false;
    caps.file_upload = false;
    caps.file_download = false;
}

/// Asks the desktop's node for its VM. On failure the desktop is marked failed.
pub async fn provision(
    st: &AppState,
    pool: &Pool,
    d: Desktop,
    who: Option<&Connecting<'_>>,
) -> ApiResult<Desktop> {
    let now = now_ms();
    let node = match &d.node_id {
        Some(n) => st.db.get_node(n).await?,
        None => None,
    };
    let Some(node) = node else {
        st.db.fail_desktop(&d.id, "no node", now).await?;
        return Err(ApiError::unavailable("no node for the desktop"));
    };
    let user = who.map(|w| SessionUser {
        username: w.username.to_owned(),
        display_name: w.display_name.map(str::to_owned),
        uid: w.uid,
        gid: w.gid,
        keyboard_layout: w.keyboard_layout.map(str::to_owned),
    });
    let spec = VmSpec {
        image: pool.image.clone(),
        vcpus: pool.vcpus,
        memory_mib: pool.memory_mib,
        display: pool.display,
        runtime: pool.runtime,
        persistent_disk: d.persistent_disk.clone(),
        user: user.filter(|u| u.validate().is_ok()),
        clone: pool.clone && pool.kind == PoolKind::Floating && d.persistent_disk.is_none(),
    };
    match st.nodes.create_vm(node.api(), &spec).await {
        Ok(vm) => {
            st.db.set_desktop_vm(&d.id, &vm, now_ms()).await?;
            // The node takes desktops again: its back-off is over (a write only after refusals).
            if node.refusals != 0
                && let Err(e) = st.db.note_acceptance(&node.id).await
            {
                tracing::warn!(error = %e, node = %node.id, "could not clear the node's back-off");
            }
            if let Some(w) = who
                && spec.user.is_some()
            {
                st.db.set_agent_user(&d.id, w.username).await?;
            }
            tracing::info!(desktop = %d.id, node = %node.id, vm = %vm.id, pool = %pool.name, "desktop VM created");
            Ok(st.db.get_desktop(&d.id).await?.unwrap_or(d))
        }
        Err(e) => {
            Metrics::inc(&st.metrics.provision_failures);
            st.db.fail_desktop(&d.id, &e.to_string(), now_ms()).await?;
            // The node is left alone for a while; a burst of refusals is one audit row.
            let (refusals, backoff_ms) = st.db.note_refusal(&node.id, now_ms()).await?;
            tracing::warn!(error = %e, desktop = %d.id, node = %node.id, refusals, backoff_ms, "node refused to create a desktop VM");
            if refusals <= 1 {
                audit(
                    st,
                    "system",
                    "desktop.provision",
                    &d.id,
                    "failure",
                    IpAddr::from([0, 0, 0, 0]),
                    serde_json::json!({ "node": node.id, "error": e.to_string(), "backoff_secs": backoff_ms / 1000 }),
                )
                .await;
            }
            Err(ApiError::unavailable("a node could not start your desktop: try again"))
        }
    }
}

/// Removes a desktop's VM from its node and forgets the desktop (or, for a dedicated desktop
/// being stopped, keeps it with its disk).
pub async fn remove_vm(st: &AppState, d: &Desktop, keep_desktop: bool) -> ApiResult<()> {
    let now = now_ms();
    if let (Some(node_id), Some(vm)) = (&d.node_id, &d.vm_id)
        && let Some(node) = st.db.get_node(node_id).await?
        && node.state == crate::db::NodeState::Up
    {
        st.nodes
            .delete_vm(node.api(), vm)
            .await
            .map_err(|e| ApiError::unavailable(format!("node {node_id}: {e}")))?;
    }
    if keep_desktop {
        st.db.mark_stopped(&d.id, now).await?;
    } else {
        st.db.delete_desktop(&d.id).await?;
    }
    Ok(())
}
