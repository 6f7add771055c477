//! Desktops and their assignment to users (their sessions are in `sessions.rs`).
//!
//! Everything that must not race happens in one write transaction: on PostgreSQL with row
//! locks (`FOR UPDATE SKIP LOCKED` to take a spare, `FOR UPDATE` on the pool row to count),
//! on SQLite under its single-writer lock. A unique index also forbids two live desktops for one
//! user in one pool and two desktops for one VM.

use std::str::FromStr;

use atrium_protocol::node::{Capacity, ImageRef, VmState, VmStatus};
use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Db, DbError, DbResult, Dialect, col, parse_col, u32_col};
use crate::db::pools::Pool;

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
}

fn row_to_desktop(r: &AnyRow) -> DbResult<Desktop> {
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
    })
}

/// The outcome of asking for a user's desktop in a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// The user already had this desktop.
    Existing(Desktop),
    /// A spare was taken for the user.
    Spare(Desktop),
    /// A new desktop was placed on a node; the caller asks the node for it.
    New(Desktop),
    /// The user's stopped or failed dedicated desktop goes back to the node that holds its disk;
    /// the caller removes the old VM (if any is named) and asks the node for a new one.
    Restart(Desktop, Option<String>),
    /// The pool is at `max_size` with no spare free.
    Full,
    /// No node can host a desktop of this pool now.
    NoNode,
}

/// A desktop the caller must now ask a node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionRequest {
    pub desktop: Desktop,
    pub node_id: String,
}

/// The error of desktops failed because their node stopped heartbeating.
pub const NODE_LOST: &str = "node lost";

/// Live states: the desktop holds (or is about to hold) a VM on its node.
const LIVE: &str = "('provisioning', 'starting', 'ready')";

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

    /// Finds or makes the desktop in `pool` of the directory entry `owner_id` (signed in as
    /// `username`), in one transaction.
    pub async fn assign_desktop(
        &self,
        pool: &Pool,
        username: &str,
        owner_id: &str,
        now: i64,
    ) -> DbResult<Assignment> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT * FROM desktops WHERE pool_id = $1 AND owner_id = $2 AND state <> 'destroying'{}",
            self.for_update()
        );
        let existing = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&pool.id)
            .bind(owner_id)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(row_to_desktop)
            .transpose()?;
        if let Some(d) = existing {
            match d.state {
                // A floating desktop that failed (its node was lost, or its VM died) is removed
                // and the user gets another one below.
                DesktopState::Failed if d.persistent_disk.is_none() => {
                    sqlx::query(
                        "UPDATE desktops SET state = 'destroying', state_changed_at = $2 WHERE id = $1",
                    )
                    .bind(&d.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                // A dedicated desktop keeps its disk: it starts again on the node that holds the
                // disk, whether it was stopped or failed. If that node is gone the user is told,
                // never given an empty desktop instead.
                DesktopState::Stopped | DesktopState::Failed => {
                    let node_ok = match &d.node_id {
                        Some(n) => {
                            sqlx::query("SELECT id FROM nodes WHERE id = $1 AND state = 'up'")
                                .bind(n)
                                .fetch_optional(&mut *tx)
                                .await?
                                .is_some()
                        }
                        None => false,
                    };
                    if !node_ok {
                        tx.commit().await?;
                        return Ok(Assignment::NoNode);
                    }
                    sqlx::query(
                        "UPDATE desktops SET state = 'provisioning', vm_id = NULL, error = NULL, last_active_at = $2,
                           state_changed_at = $2, agent_user = NULL, assigned_at = $2 WHERE id = $1",
                    )
                    .bind(&d.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    let old_vm = d.vm_id.clone();
                    let d = self.get_desktop(&d.id).await?.expect("row exists");
                    return Ok(Assignment::Restart(d, old_vm));
                }
                _ => {
                    sqlx::query("UPDATE desktops SET last_active_at = $2 WHERE id = $1")
                        .bind(&d.id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    return Ok(Assignment::Existing(d));
                }
            }
        }

        // Take a spare: ready ones first, then ones still booting.
        let skip_locked = match self.dialect() {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let pick = format!(
            "SELECT id FROM desktops WHERE pool_id = $1 AND username IS NULL AND state IN {LIVE}
             ORDER BY CASE state WHEN 'ready' THEN 0 WHEN 'starting' THEN 1 ELSE 2 END, created_at, id
             LIMIT 1{skip_locked}"
        );
        let spare: Option<String> = sqlx::query(sqlx::AssertSqlSafe(pick))
            .bind(&pool.id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| col(&r, "id"))
            .transpose()?;
        if let Some(id) = spare {
            let row = sqlx::query(
                "UPDATE desktops SET username = $2, owner_id = $4, assigned_at = $3, last_active_at = $3
                 WHERE id = $1 AND username IS NULL RETURNING *",
            )
            .bind(&id)
            .bind(username)
            .bind(now)
            .bind(owner_id)
            .fetch_one(&mut *tx)
            .await?;
            let d = row_to_desktop(&row)?;
            tx.commit().await?;
            return Ok(Assignment::Spare(d));
        }

        // No spare: a new desktop, within max_size. The pool row lock serialises counting.
        let lock = format!("SELECT id FROM pools WHERE id = $1{}", self.for_update());
        if sqlx::query(sqlx::AssertSqlSafe(lock))
            .bind(&pool.id)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Ok(Assignment::Full);
        }
        let total = count(
            &mut tx,
            "SELECT COUNT(*) AS n FROM desktops WHERE pool_id = $1 AND state <> 'destroying'",
            &pool.id,
        )
        .await?;
        if total >= i64::from(pool.max_size) {
            tx.commit().await?;
            return Ok(Assignment::Full);
        }
        let Some(node_id) = self.choose_node(&mut tx, pool, now).await? else {
            tx.commit().await?;
            return Ok(Assignment::NoNode);
        };
        let d = insert_desktop(&mut tx, pool, &node_id, Some((username, owner_id)), now).await?;
        tx.commit().await?;
        Ok(Assignment::New(d))
    }

    /// Places one more spare for `pool` when it has fewer than `min_ready` and room below
    /// `max_size`. The caller asks the node for it.
    pub async fn provision_spare(
        &self,
        pool: &Pool,
        now: i64,
    ) -> DbResult<Option<ProvisionRequest>> {
        let mut tx = self.begin_write().await?;
        let lock = format!("SELECT id FROM pools WHERE id = $1{}", self.for_update());
        if sqlx::query(sqlx::AssertSqlSafe(lock))
            .bind(&pool.id)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let spares = count(
            &mut tx,
            &format!("SELECT COUNT(*) AS n FROM desktops WHERE pool_id = $1 AND username IS NULL AND state IN {LIVE}"),
            &pool.id,
        )
        .await?;
        let total = count(
            &mut tx,
            "SELECT COUNT(*) AS n FROM desktops WHERE pool_id = $1 AND state <> 'destroying'",
            &pool.id,
        )
        .await?;
        if spares >= i64::from(pool.min_ready) || total >= i64::from(pool.max_size) {
            return Ok(None);
        }
        let Some(node_id) = self.choose_node(&mut tx, pool, now).await? else {
            return Ok(None);
        };
        let d = insert_desktop(&mut tx, pool, &node_id, None, now).await?;
        tx.commit().await?;
        Ok(Some(ProvisionRequest { desktop: d, node_id }))
    }

    /// The up, undrained node with the most free memory that holds the pool's image, has the
    /// pool's vCPUs and memory free, and is not backing off after refusing a VM.
    async fn choose_node(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        pool: &Pool,
        now: i64,
    ) -> DbResult<Option<String>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT n.id, n.capacity_json,
               CAST(COALESCE(u.memory_mib, 0) AS BIGINT) AS used,
               CAST(COALESCE(u.vcpus, 0) AS BIGINT) AS used_vcpus
             FROM nodes n LEFT JOIN (
               SELECT node_id, SUM(memory_mib) AS memory_mib, SUM(vcpus) AS vcpus
               FROM desktops WHERE state IN {LIVE} GROUP BY node_id
             ) u ON u.node_id = n.id
             WHERE n.state = 'up' AND n.draining = 0 AND n.refused_until <= $1 ORDER BY n.id"
        )))
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
        let want =
            ImageRef::parse("image", &pool.image).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let mut best: Option<(u64, String)> = None;
        for r in &rows {
            let cap: String = col(r, "capacity_json")?;
            let Ok(cap) = serde_json::from_str::<Capacity>(&cap) else { continue };
            let has_image = cap.images.iter().any(|i| {
                i.name == want.name && want.version.as_ref().is_none_or(|v| *v == i.version)
            });
            if !has_image {
                continue;
            }
            // What the broker placed there, or what the node reports, whichever is more (VMs
            // the broker has forgotten still hold memory until the node removes them).
            let used: i64 = col(r, "used")?;
            let used = u64::try_from(used).unwrap_or(u64::MAX).max(cap.memory_mib_allocated);
            let free = cap.memory_mib_total.saturating_sub(used);
            if free < u64::from(pool.memory_mib) {
                continue;
            }
            // vCPUs the same way: the node refuses a VM beyond its vCPUs.
            let used_vcpus: i64 = col(r, "used_vcpus")?;
            let used_vcpus =
                u64::try_from(used_vcpus).unwrap_or(u64::MAX).max(u64::from(cap.vcpus_allocated));
            if u64::from(cap.vcpus_total).saturating_sub(used_vcpus) < u64::from(pool.vcpus) {
                continue;
            }
            if best.as_ref().is_none_or(|(f, _)| free > *f) {
                best = Some((free, col(r, "id")?));
            }
        }
        Ok(best.map(|(_, id)| id))
    }

    /// The node accepted the VM: provisioning → starting.
    pub async fn set_desktop_vm(&self, id: &str, vm_id: &str, now: i64) -> DbResult<()> {
        sqlx::query(
            "UPDATE desktops SET vm_id = $2, state = 'starting', state_changed_at = $3
             WHERE id = $1 AND state = 'provisioning'",
        )
        .bind(id)
        .bind(vm_id)
        .bind(now)
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

async fn count(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sql: &str,
    pool_id: &str,
) -> DbResult<i64> {
    let row =
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).bind(pool_id).fetch_one(&mut **tx).await?;
    col(&row, "n")
}

/// A new desktop on `node_id`: a spare, or assigned to `owner` (username, entry id).
async fn insert_desktop(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    pool: &Pool,
    node_id: &str,
    owner: Option<(&str, &str)>,
    now: i64,
) -> DbResult<Desktop> {
    let (username, owner_id) = owner.unzip();
    let id = uuid::Uuid::new_v4().to_string();
    let disk = (pool.kind == crate::db::PoolKind::Dedicated).then(|| format!("desktop-{id}"));
    let row = sqlx::query(
        "INSERT INTO desktops (id, pool_id, node_id, vm_id, state, username, owner_id, persistent_disk, agent_user,
           memory_mib, vcpus, error, created_at, ready_at, assigned_at, last_active_at, state_changed_at)
         VALUES ($1, $2, $3, NULL, 'provisioning', $4, $10, $5, NULL, $6, $7, NULL, $8, NULL, $9, $8, $8) RETURNING *",
    )
    .bind(&id)
    .bind(&pool.id)
    .bind(node_id)
    .bind(username)
    .bind(disk)
    .bind(i64::from(pool.memory_mib))
    .bind(i64::from(pool.vcpus))
    .bind(now)
    .bind(username.map(|_| now))
    .bind(owner_id)
    .fetch_one(&mut **tx)
    .await?;
    row_to_desktop(&row)
}
