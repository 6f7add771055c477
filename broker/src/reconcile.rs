//! The reconcile loop. Every broker replica runs it; each step is a transaction or idempotent,
//! so replicas do not fight: lost nodes, session timeouts, idle desktops, failed and doomed
//! desktops, and `min_ready` spares per pool.

use std::net::IpAddr;
use std::time::Duration;

use crate::db::{DesktopState, PoolKind, now_ms};
use crate::error::ApiResult;
use crate::metrics::Metrics;
use crate::service;
use crate::state::AppState;

/// Runs until the process ends.
pub async fn run(st: AppState) {
    let interval = Duration::from_secs(st.cfg.broker.reconcile_interval_secs);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes: u64 = 0;
    loop {
        ticker.tick().await;
        passes += 1;
        Metrics::inc(&st.metrics.reconcile_runs);
        if let Err(e) = pass(&st).await {
            Metrics::inc(&st.metrics.reconcile_errors);
            tracing::warn!(error = %e, "reconcile pass failed");
        }
        // Pick up rotated keys without a signal, about once a minute.
        if passes.is_multiple_of((60 / st.cfg.broker.reconcile_interval_secs.clamp(1, 60)).max(1))
            && let Err(e) = st.keys.reload()
        {
            tracing::warn!(error = %e, "could not reload signing keys");
        }
    }
}

/// One pass. Public for tests that drive time themselves.
pub async fn pass(st: &AppState) -> ApiResult<()> {
    let now = now_ms();
    let lost_after = i64::try_from(st.cfg.nodes.lost_after_secs * 1000).unwrap_or(i64::MAX / 2);
    for id in st.db.mark_lost_nodes(now - lost_after, now).await? {
        tracing::warn!(node = %id, "node lost: its desktops failed");
        service::audit(
            st,
            "system",
            "node.lost",
            &id,
            "failure",
            IpAddr::from([0, 0, 0, 0]),
            serde_json::json!({}),
        )
        .await;
    }

    for (s, reason) in st.db.expired_sessions(now).await? {
        service::end_session(st, &s, reason, now).await?;
    }

    for (d, kind) in st.db.idle_assigned_desktops(now).await? {
        match kind {
            PoolKind::Floating => st.db.mark_destroying(&d.id, now).await?,
            PoolKind::Dedicated => {
                if let Err(e) = service::remove_vm(st, &d, true).await {
                    tracing::warn!(error = %e, desktop = %d.id, "could not stop an idle dedicated desktop");
                } else {
                    service::audit(
                        st,
                        "system",
                        "desktop.stop",
                        &d.id,
                        "success",
                        IpAddr::from([0, 0, 0, 0]),
                        serde_json::json!({ "reason": "idle" }),
                    )
                    .await;
                }
            }
        }
    }

    // Failed spares and desktops stuck in provisioning (a broker died mid-request) go away.
    for d in st.db.desktops_to_reap(now - 120_000).await? {
        if d.state == DesktopState::Provisioning {
            st.db.fail_desktop(&d.id, "provisioning did not finish", now).await?;
        } else {
            st.db.mark_destroying(&d.id, now).await?;
        }
    }

    for d in st.db.desktops_in_state(DesktopState::Destroying).await? {
        if let Err(e) = service::remove_vm(st, &d, false).await {
            tracing::warn!(error = %e, desktop = %d.id, "could not remove a desktop's VM; will retry");
        }
    }

    for pool in st.db.list_pools().await? {
        // A bounded number per pass keeps one pass short.
        for _ in 0..pool.min_ready.min(8) {
            let Some(req) = st.db.provision_spare(&pool, now_ms()).await? else { break };
            let _ = service::provision(st, &pool, req.desktop, None).await;
        }
    }
    Ok(())
}
