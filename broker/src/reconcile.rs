//! The reconcile loop: lost nodes, session timeouts, idle desktops, failed and doomed
//! desktops, and `min_ready` spares per pool. Every broker replica runs the loop, but only the
//! replica holding the `reconcile` lease in the database does a pass (renewing the lease while
//! the pass runs), so the work is done once however many replicas there are; if that replica
//! dies, another takes the lease once it expires. Lease times are the replicas' clocks: keep
//! them in step (NTP). Each step is still a transaction or a conditional update, so even two
//! passes at once would not fight. A step that fails is logged and the others still run.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::db::{DesktopState, now_ms};
use crate::error::ApiResult;
use crate::metrics::Metrics;
use crate::service;
use crate::state::AppState;

/// How long a failed desktop waits before it is cleaned up (a node back from a short outage
/// restores its desktops meanwhile).
const FAILED_GRACE_MS: i64 = 60_000;
/// A desktop still provisioning after this long was abandoned (a broker died mid-request).
const STUCK_MS: i64 = 120_000;

/// The lease's name.
const LEASE: &str = "reconcile";

/// How long the lease lasts without renewal: three passes, and never under 10 s (a replica
/// that stops passing for that long, with no release, hands the work over).
fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(10))
}

/// Runs until the process ends.
pub async fn run(st: AppState) {
    let interval = Duration::from_secs(st.cfg.broker.reconcile_interval_secs);
    let ttl_ms = i64::try_from(lease_ttl(interval).as_millis()).unwrap_or(i64::MAX / 4);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut contact = Contact::new(Instant::now(), interval * 2 + Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let mut holding = false;
    loop {
        ticker.tick().await;
        ticks += 1;
        // Pick up rotated keys without a signal, about once a minute (every replica signs).
        if ticks.is_multiple_of((60 / st.cfg.broker.reconcile_interval_secs.clamp(1, 60)).max(1))
            && let Err(e) = st.keys.reload()
        {
            tracing::warn!(error = %e, "could not reload signing keys");
        }
        let held = match st.db.acquire_lease(LEASE, &st.instance, now_ms(), ttl_ms).await {
            Ok(h) => {
                contact.reached(Instant::now());
                h
            }
            Err(e) => {
                Metrics::inc(&st.metrics.reconcile_errors);
                tracing::warn!(error = %e, "cannot take the reconcile lease");
                contact.lost();
                false
            }
        };
        if held != holding {
            holding = held;
            if held {
                tracing::info!(instance = %st.instance, "this broker now runs the reconcile loop");
            } else {
                tracing::info!(instance = %st.instance, "another broker runs the reconcile loop");
            }
        }
        if !held {
            continue;
        }
        Metrics::inc(&st.metrics.reconcile_runs);
        // Right after a (re)start, or after the database was out of reach, nodes have not had
        // the time to record a heartbeat: judging them lost then would fail every desktop.
        let judge_nodes =
            contact.steady_for(Instant::now()) >= Duration::from_secs(st.cfg.nodes.lost_after_secs);
        // A pass may outlast the lease (a node that takes its time to answer): it is renewed
        // while the pass runs, so no other replica starts one meanwhile.
        let work = pass(&st, judge_nodes);
        tokio::pin!(work);
        let mut renew = tokio::time::interval(interval);
        renew.tick().await;
        loop {
            tokio::select! {
                () = &mut work => break,
                _ = renew.tick() => {
                    match st.db.acquire_lease(LEASE, &st.instance, now_ms(), ttl_ms).await {
                        Ok(_) => contact.reached(Instant::now()),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot renew the reconcile lease during a pass");
                            contact.lost();
                        }
                    }
                }
            }
        }
    }
}

/// How long this replica has reached the database without a break. Nodes heartbeat through
/// the database, so while it is out of reach (or this process is stalled) their heartbeats
/// are lost too: silence over such a break says nothing about the nodes.
struct Contact {
    /// Since when the database has been reached without a break.
    since: Instant,
    /// The last time it was reached; `None` after a failure.
    last: Option<Instant>,
    /// A longer gap between two contacts counts as a break (the process was stalled).
    max_gap: Duration,
}

impl Contact {
    fn new(now: Instant, max_gap: Duration) -> Self {
        Self { since: now, last: Some(now), max_gap }
    }

    fn reached(&mut self, now: Instant) {
        match self.last {
            Some(last) if now.saturating_duration_since(last) <= self.max_gap => {}
            _ => self.since = now,
        }
        self.last = Some(now);
    }

    fn lost(&mut self) {
        self.last = None;
    }

    fn steady_for(&self, now: Instant) -> Duration {
        if self.last.is_none() {
            return Duration::ZERO;
        }
        now.saturating_duration_since(self.since)
    }
}

/// Gives up the reconcile lease (at shutdown), so another replica takes over at its next tick.
pub async fn release(st: &AppState) {
    if let Err(e) = st.db.release_lease(LEASE, &st.instance).await {
        tracing::warn!(error = %e, "could not give up the reconcile lease; it will expire");
    }
}

fn system() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

/// One pass: each step runs even when another failed.
pub async fn pass(st: &AppState, judge_nodes: bool) {
    let steps: [(&str, ApiResult<()>); 9] = [
        ("lost nodes", if judge_nodes { lost_nodes(st).await } else { Ok(()) }),
        ("session timeouts", session_timeouts(st).await),
        ("idle desktops", idle_desktops(st).await),
        ("failed desktops", failed_desktops(st).await),
        ("spares", spares(st).await),
        ("old sign-in records", prune_logins(st).await),
        ("directory revalidation", crate::revalidate::pass(st).await),
        ("recordings", crate::recordings::housekeep(st).await),
        ("image library", crate::library::sweep(st).await),
    ];
    for (step, result) in steps {
        if let Err(e) = result {
            Metrics::inc(&st.metrics.reconcile_errors);
            tracing::warn!(error = %e, step, "reconcile step failed");
        }
    }
}

async fn lost_nodes(st: &AppState) -> ApiResult<()> {
    let now = now_ms();
    let lost_after = i64::try_from(st.cfg.nodes.lost_after_secs * 1000).unwrap_or(i64::MAX / 2);
    for node in st.db.mark_lost_nodes(now - lost_after, now).await? {
        tracing::warn!(node = %node.id, sessions = node.sessions.len(), "node lost: its desktops failed");
        service::audit(
            st,
            "system",
            "node.lost",
            &node.id,
            "failure",
            system(),
            serde_json::json!({}),
        )
        .await;
        for s in &node.sessions {
            service::audit(
                st,
                &s.username,
                "session.end",
                &s.desktop_id,
                "success",
                system(),
                serde_json::json!({ "session": s.id, "reason": "node lost", "node": node.id }),
            )
            .await;
        }
    }
    Ok(())
}

/// Sign-in records past any use: failure counters out of their window and lockout, and
/// sign-in sessions expired a day ago or more (the audit log keeps the history); and the ids of
/// node requests that have expired.
async fn prune_logins(st: &AppState) -> ApiResult<()> {
    let now = now_ms();
    let window = i64::try_from(st.cfg.login.window_secs * 1000).unwrap_or(i64::MAX / 2);
    let n = st.db.prune_logins(now, window, now - 86_400_000).await?;
    let spent = st.db.prune_node_requests(now).await?;
    if n + spent > 0 {
        tracing::debug!(
            rows = n,
            node_requests = spent,
            "old sign-in and node request records pruned"
        );
    }
    Ok(())
}

async fn session_timeouts(st: &AppState) -> ApiResult<()> {
    let now = now_ms();
    for (s, (reason, why)) in st.db.expired_sessions(now).await? {
        service::end_session(st, &s, reason, why, now).await?;
    }
    Ok(())
}

/// Desktops nobody has been connected to for their pool's disconnect time are logged off.
async fn idle_desktops(st: &AppState) -> ApiResult<()> {
    let now = now_ms();
    for (d, kind) in st.db.idle_assigned_desktops(now).await? {
        // The same cutoff the query used; a reconnect since then keeps the desktop.
        let cutoff = d.last_active_at + 1;
        service::log_off(st, &d, kind, cutoff, now, "disconnect timeout").await?;
    }
    // Desktops marked for destruction: their VMs go, then their rows.
    for d in st.db.desktops_in_state(DesktopState::Destroying).await? {
        if let Err(e) = service::remove_vm(st, &d, false).await {
            tracing::warn!(error = %e, desktop = %d.id, "could not remove a desktop's VM; will retry");
        }
    }
    Ok(())
}

async fn failed_desktops(st: &AppState) -> ApiResult<()> {
    let now = now_ms();
    for d in st.db.desktops_to_reap(now - FAILED_GRACE_MS, now - STUCK_MS).await? {
        match d.state {
            DesktopState::Provisioning => {
                st.db.fail_desktop(&d.id, "provisioning did not finish", now).await?;
            }
            // A dedicated desktop keeps its disk: its VM goes, the desktop waits, stopped, for
            // its user to connect again.
            _ if d.persistent_disk.is_some() && d.username.is_some() => {
                service::stop_vm_of(st, &d).await;
            }
            _ => st.db.mark_destroying(&d.id, now).await?,
        }
    }
    Ok(())
}

async fn spares(st: &AppState) -> ApiResult<()> {
    for pool in st.db.list_pools().await? {
        // A bounded number per pass keeps one pass short.
        for _ in 0..pool.min_ready.min(8) {
            let Some(req) = st.db.provision_spare(&pool, now_ms()).await? else { break };
            let _ = service::provision(st, &pool, req.desktop, None).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_secs(5);

    #[test]
    fn steady_contact_counts_from_the_start() {
        let t0 = Instant::now();
        let mut c = Contact::new(t0, GAP);
        for s in 1..=10 {
            c.reached(t0 + Duration::from_secs(2 * s));
        }
        assert_eq!(c.steady_for(t0 + Duration::from_secs(20)), Duration::from_secs(20));
    }

    #[test]
    fn a_failure_starts_the_count_again_at_the_next_contact() {
        let t0 = Instant::now();
        let mut c = Contact::new(t0, GAP);
        c.reached(t0 + Duration::from_secs(2));
        c.lost();
        assert_eq!(c.steady_for(t0 + Duration::from_secs(4)), Duration::ZERO);
        c.reached(t0 + Duration::from_secs(6));
        assert_eq!(c.steady_for(t0 + Duration::from_secs(9)), Duration::from_secs(3));
    }

    #[test]
    fn a_long_gap_between_contacts_is_a_break() {
        let t0 = Instant::now();
        let mut c = Contact::new(t0, GAP);
        c.reached(t0 + Duration::from_secs(30));
        assert_eq!(c.steady_for(t0 + Duration::from_secs(31)), Duration::from_secs(1));
        c.reached(t0 + Duration::from_secs(35));
        assert_eq!(c.steady_for(t0 + Duration::from_secs(35)), Duration::from_secs(5));
    }
}
