//! A user's desktop in a pool, found or made in one write transaction: the user's own (a
//! failed floating one replaced, a dedicated one started again on the node that holds its
//! disk), else a spare, else a new one placed on a node within the pool's `max_size`; and the
//! spares a pool keeps ready.
//!
//! On PostgreSQL with row locks (`FOR UPDATE SKIP LOCKED` to take a spare, `FOR UPDATE` on the
//! pool row to count), on SQLite under its single-writer lock.

use super::desktops::{Desktop, DesktopState, LIVE, row_to_desktop};
use super::{Db, DbResult, Dialect, col};
use crate::db::pools::Pool;

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

impl Db {
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
}

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
