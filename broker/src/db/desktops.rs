//! The desktops table: each desktop's state, node and VM, what nodes report of their VMs, and
//! the idle reaper's conditional updates. How a user gets one is in `assignment.rs`, where a
//! new one goes in `placement.rs`, its sessions in `sessions.rs`. A unique index forbids two
//! live desktops for one user in one pool and two desktops for one VM.

use std::str::FromStr;

use atrium_protocol::node::{VmState, VmStatus};
use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Db, DbResult, col, parse_col, u32_col};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesktopState {
    /// A node was chosen and asked for a VM.
    Provisioning,
    /// The VM runs; its agent has not said ready.
    Starting,
    Ready,
    /// Dedicated desktop whose VM was stopped; its disk is kept on its node.
    Stopped,
    Failed,
    /// Being removed from its node.
    Destroying,
}

impl DesktopState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Destroying => "destroying",
        }
    }
}

impl FromStr for DesktopState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "provisioning" => Self::Provisioning,
            "starting" => Self::Starting,
            "ready" => Self::Ready,
            "stopped" => Self::Stopped,
            "failed" => Self::Failed,
            "destroying" => Self::Destroying,
            _ => return Err(()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Desktop {
    pub id: String,
    pub pool_id: String,
    pub node_id: Option<String>,
    pub vm_id: Option<String>,
    pub state: DesktopState,
    pub username: Option<String>,
    /// The directory entry (stable id) the desktop and its disk belong to; the username is
    /// what it was called when assigned.
    pub owner_id: Option<String>,
    pub persistent_disk: Option<String>,
    pub agent_user: Option<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub error: Option<String>,
    pub created_at: i64,
    pub ready_at: Option<i64>,
    /// When the user's current logon on it began: a spare or new desktop given to them, or
    /// their dedicated desktop started again (the pool's maximum session length counts from
    /// it).
    pub assigned_at: Option<i64>,
    pub last_active_at: i64,
    pub state_changed_at: i64,
    /// The image its VM runs (`NAME@VERSION`, as its node reported at the start).
    pub image: Option<String>,
    /// Its VM started as a clone of the node's template (not booted).
    pub cloned: bool,
}

pub(super) fn row_to_desktop(r: &AnyRow) -> DbResult<Desktop> {
    Ok(Desktop {
        id: col(r, "id")?,
        pool_id: col(r, "pool_id")?,
        node_id: col(r, "node_id")?,
        vm_id: col(r, "vm_id")?,
        state: parse_col(r, "state")?,
        username: col(r, "username")?,
        owner_id: col(r, "owner_id")?,
        persistent_disk: col(r, "persistent_disk")?,
        agent_user: col(r, "agent_user")?,
        memory_mib: u32_col(r, "memory_mib")?,
        vcpus: u32_col(r, "vcpus")?,
        error: col(r, "error")?,
        created_at: col(r, "created_at")?,
        ready_at: col(r, "ready_at")?,
        assigned_at: col(r, "assigned_at")?,
        last_active_at: col(r, "last_active_at")?,
        state_changed_at: col(r, "state_changed_at")?,
        image: col(r, "image")?,
        cloned: crate::db::u64_col(r, "cloned")? != 0,
    })
}

/// The error of desktops failed because their node stopped heartbeating.
pub const NODE_LOST: &str = "node lost";

/// Live states: the desktop holds (or is about to hold) a VM on its node.
pub(super) const LIVE: &str = "('provisioning', 'starting', 'ready')";

impl Db {
    pub async fn get_desktop(&self, id: &str) -> DbResult<Option<Desktop>> {
        let row = sqlx::query("SELECT * FROM desktops WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(row_to_desktop).transpose()
    }

    pub async fn list_desktops(&self) -> DbResult<Vec<Desktop>> {
        let rows = sqlx::query("SELECT * FROM desktops ORDER BY created_at")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row_to_desktop).collect()
    }

    /// The desktops of a directory entry (by its stable id).
    pub async fn user_desktops(&self, owner_id: &str) -> DbResult<Vec<Desktop>> {
        let rows = sqlx::query("SELECT * FROM desktops WHERE owner_id = $1 AND state <> 'destroying' ORDER BY created_at")
            .bind(owner_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row_to_desktop).collect()
    }

    pub async fn desktops_in_state(&self, state: DesktopState) -> DbResult<Vec<Desktop>> {
        let rows = sqlx::query("SELECT * FROM desktops WHERE state = $1")
            .bind(state.as_str())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row_to_desktop).collect()
    }

    /// The node accepted the VM: provisioning → starting, with its id, the image version it
    /// runs and whether it was cloned.
    pub async fn set_desktop_vm(
        &self,
        id: &str,
        vm: &atrium_protocol::node::VmInfo,
        now: i64,
    ) -> DbResult<()> {
        sqlx::query(
            "UPDATE desktops SET vm_id = $2, state = 'starting', state_changed_at = $3, image = $4,
               cloned = $5
             WHERE id = $1 AND state = 'provisioning'",
        )
        .bind(id)
        .bind(&vm.id)
        .bind(now)
        .bind(&vm.image)
        .bind(i64::from(vm.cloned))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn fail_desktop(&self, id: &str, error: &str, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE desktops SET state = 'failed', error = $2, state_changed_at = $3 WHERE id = $1 AND state <> 'destroying'",
        )
        .bind(id)
        .bind(error)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn mark_destroying(&self, id: &str, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE desktops SET state = 'destroying', state_changed_at = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A dedicated desktop's VM was removed; its disk stays on its node.
    pub async fn mark_stopped(&self, id: &str, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE desktops SET state = 'stopped', vm_id = NULL, agent_user = NULL, state_changed_at = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn delete_desktop(&self, id: &str) -> DbResult<()> {
        sqlx::query("DELETE FROM desktops WHERE id = $1").bind(id).execute(self.pool()).await?;
        Ok(())
    }

    pub async fn set_agent_user(&self, id: &str, username: &str) -> DbResult<()> {
        sqlx::query("UPDATE desktops SET agent_user = $2 WHERE id = $1")
            .bind(id)
            .bind(username)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Applies the VM states a node reported. Desktops whose VM the node no longer has (and
    /// that are older than `grace_ms`) fail. Returns the VM ids the node runs that no desktop
    /// owns (orphans, to be removed).
    pub async fn apply_vm_statuses(
        &self,
        node_id: &str,
        vms: &[VmStatus],
        now: i64,
        grace_ms: i64,
    ) -> DbResult<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query("SELECT * FROM desktops WHERE node_id = $1 AND vm_id IS NOT NULL")
            .bind(node_id)
            .fetch_all(&mut *tx)
            .await?;
        let desktops: Vec<Desktop> = rows.iter().map(row_to_desktop).collect::<DbResult<_>>()?;
        for d in &desktops {
            let vm = d.vm_id.as_deref().expect("selected with a vm");
            let reported = vms.iter().find(|v| v.id == vm);
            // Every transition names the state it leaves, so a concurrent change (a sign-out
            // marking the desktop for destruction) is never overwritten.
            match (d.state, reported.map(|v| v.state)) {
                (DesktopState::Starting, Some(VmState::Ready)) => {
                    sqlx::query(
                        "UPDATE desktops SET state = 'ready', ready_at = $2, state_changed_at = $2
                         WHERE id = $1 AND state = 'starting'",
                    )
                    .bind(&d.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                // Back from a lost node: the VM kept running, so the desktop is usable again.
                (DesktopState::Failed, Some(state @ (VmState::Ready | VmState::Starting)))
                    if d.error.as_deref() == Some(NODE_LOST) =>
                {
                    sqlx::query(
                        "UPDATE desktops SET state = $2, error = NULL, state_changed_at = $3
                         WHERE id = $1 AND state = 'failed' AND error = $4",
                    )
                    .bind(&d.id)
                    .bind(if state == VmState::Ready { "ready" } else { "starting" })
                    .bind(now)
                    .bind(NODE_LOST)
                    .execute(&mut *tx)
                    .await?;
                }
                (
                    DesktopState::Starting | DesktopState::Ready,
                    Some(VmState::Failed | VmState::Stopped),
                ) => {
                    let err = reported
                        .and_then(|v| v.error.clone())
                        .unwrap_or_else(|| "the VM stopped".into());
                    sqlx::query(
                        "UPDATE desktops SET state = 'failed', error = $2, state_changed_at = $3
                         WHERE id = $1 AND state IN ('starting', 'ready')",
                    )
                    .bind(&d.id)
                    .bind(err)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                (DesktopState::Starting | DesktopState::Ready, None)
                    if now - d.state_changed_at > grace_ms =>
                {
                    sqlx::query(
                        "UPDATE desktops SET state = 'failed', error = 'the VM vanished from its node', state_changed_at = $2
                         WHERE id = $1 AND state IN ('starting', 'ready')",
                    )
                    .bind(&d.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
        }
        tx.commit().await?;
        let orphans = vms
            .iter()
            .filter(|v| !desktops.iter().any(|d| d.vm_id.as_deref() == Some(v.id.as_str())))
            .map(|v| v.id.clone())
            .collect();
        Ok(orphans)
    }

    /// Assigned desktops nobody has been connected to for their pool's disconnect time (since
    /// their last session ended, or their last input).
    pub async fn idle_assigned_desktops(
        &self,
        now: i64,
    ) -> DbResult<Vec<(Desktop, crate::db::PoolKind)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT d.*, p.disconnect_timeout_secs, p.kind AS pool_kind FROM desktops d JOIN pools p ON p.id = d.pool_id
             WHERE d.username IS NOT NULL AND d.state IN {LIVE}
               AND NOT EXISTS (SELECT 1 FROM desktop_sessions s WHERE s.desktop_id = d.id AND s.ended_at IS NULL)"
        )))
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let d = row_to_desktop(r)?;
            let disconnect: i64 = col(r, "disconnect_timeout_secs")?;
            if now - d.last_active_at > disconnect.saturating_mul(1000) {
                out.push((d, parse_col(r, "pool_kind")?));
            }
        }
        Ok(out)
    }

    /// Desktops to clean up: failed ones (spares that failed on a running node at once, the
    /// others after `failed_before`, so a node back from a short outage can restore them), and
    /// ones stuck in provisioning since `stuck_before` (a broker
    /// died mid-request). A failed dedicated desktop is only stopped by the caller: its disk stays.
    pub async fn desktops_to_reap(
        &self,
        failed_before: i64,
        stuck_before: i64,
    ) -> DbResult<Vec<Desktop>> {
        let rows = sqlx::query(
            "SELECT * FROM desktops WHERE
               (state = 'failed' AND (state_changed_at < $1 OR (username IS NULL AND COALESCE(error, '') <> $3)))
               OR (state = 'provisioning' AND state_changed_at < $2)",
        )
        .bind(failed_before)
        .bind(stuck_before)
        .bind(NODE_LOST)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row_to_desktop).collect()
    }

    /// Marks an idle desktop for destruction, unless it was used again since `cutoff` or has an
    /// open session (a reconnect racing the reconcile loop wins). Returns whether it was marked.
    pub async fn destroy_if_idle(&self, id: &str, cutoff: i64, now: i64) -> DbResult<bool> {
        self.mark_if_idle(id, cutoff, now, "state = 'destroying'").await
    }

    /// Like [`Db::destroy_if_idle`], for a dedicated desktop: it becomes `stopped` (its VM is
    /// removed next, its disk kept). Returns whether it was marked.
    pub async fn stop_if_idle(&self, id: &str, cutoff: i64, now: i64) -> DbResult<bool> {
        self.mark_if_idle(id, cutoff, now, "state = 'stopped', agent_user = NULL").await
    }

    /// Applies `set` (a fixed SQL assignment) to an idle desktop under [`IDLE_GUARD`].
    async fn mark_if_idle(
        &self,
        id: &str,
        cutoff: i64,
        now: i64,
        set: &'static str,
    ) -> DbResult<bool> {
        let r = sqlx::query(sqlx::AssertSqlSafe(IDLE_GUARD.replace("{SET}", set)))
            .bind(id)
            .bind(cutoff)
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

/// The conditional update of the idle reaper (`{SET}` is filled in by the caller).
static IDLE_GUARD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE desktops SET {{SET}}, state_changed_at = $3
         WHERE id = $1 AND state IN {LIVE} AND last_active_at < $2
           AND NOT EXISTS (SELECT 1 FROM desktop_sessions s WHERE s.desktop_id = desktops.id AND s.ended_at IS NULL)"
    )
});
