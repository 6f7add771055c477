//! Desktop pools.

use std::str::FromStr;

use atrium_protocol::node::{DisplaySize, ImageRef, RuntimeKind, validate_name};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Db, DbError, DbResult, big, col, parse_col, u32_col, u64_col};

/// What happens to a desktop when its session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// Destroyed at sign-out; a fresh one takes its place.
    Floating,
    /// The user keeps the same desktop and disk.
    Dedicated,
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Floating => "floating",
            Self::Dedicated => "dedicated",
        }
    }
}

impl FromStr for PoolKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "floating" => Ok(Self::Floating),
            "dedicated" => Ok(Self::Dedicated),
            _ => Err(()),
        }
    }
}

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Image reference on the nodes: `NAME` or `NAME@VERSION`.
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// `WIDTHxHEIGHT`.
    #[schema(value_type = String, example = "1280x800")]
    pub display: DisplaySize,
    /// `qemu` or `builtin`; absent: the node's default.
    #[schema(value_type = Option<String>)]
    pub runtime: Option<RuntimeKind>,
    pub kind: PoolKind,
    pub min_ready: u32,
    pub max_size: u32,
    /// No keyboard or pointer input for this long: the session is disconnected (a warning a
    /// minute before).
    pub idle_timeout_secs: u64,
    /// A session ends this long after it started (a warning ten minutes before).
    pub max_session_secs: u64,
    /// A desktop nobody is connected to is logged off after this long (0: at once).
    pub disconnect_timeout_secs: u64,
    /// Desktops start as clones of their node's template for the pool's image and size (no
    /// boot); floating pools only.
    pub clone: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an administrator sends to create or replace a pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    #[schema(value_type = String, example = "1280x800")]
    pub display: DisplaySize,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub runtime: Option<RuntimeKind>,
    pub kind: PoolKind,
    pub min_ready: u32,
    pub max_size: u32,
    pub idle_timeout_secs: u64,
    pub max_session_secs: u64,
    /// Absent: [`DEFAULT_DISCONNECT_TIMEOUT_SECS`].
    #[serde(default = "default_disconnect_timeout")]
    pub disconnect_timeout_secs: u64,
    /// Start desktops as clones of a template (floating pools only). Absent when a pool is
    /// made: `true` for a floating pool that does not ask for the builtin runtime, `false`
    /// otherwise; absent when it is replaced: the pool keeps its own (as far as its new kind
    /// and runtime allow).
    #[serde(default)]
    pub clone: Option<bool>,
}

/// A pool's disconnect time when its administrator did not choose one.
pub const DEFAULT_DISCONNECT_TIMEOUT_SECS: u64 = 1800;

fn default_disconnect_timeout() -> u64 {
    DEFAULT_DISCONNECT_TIMEOUT_SECS
}

/// Live counts of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct PoolCounts {
    /// Booted spares, free to take.
    pub ready: u32,
    /// Spares still booting.
    pub starting: u32,
    /// Desktops assigned to users.
    pub in_use: u32,
    /// All desktops of the pool (not being destroyed).
    pub total: u32,
}

impl PoolInput {
    /// Whether the pool's desktops start as clones: as asked, or by default for floating pools
    /// (the builtin runtime does not clone).
    pub fn clones(&self) -> bool {
        self.clone.unwrap_or(
            self.kind == PoolKind::Floating && self.runtime != Some(RuntimeKind::Builtin),
        )
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), atrium_protocol::node::FieldError> {
        use atrium_protocol::node::FieldError;
        validate_name("name", &self.name, 64)?;
        if self.description.len() > 1000 {
            return Err(FieldError::new("description", "must be at most 1000 characters"));
        }
        ImageRef::parse("image", &self.image)?;
        if self.vcpus == 0 || self.vcpus > atrium_protocol::node::MAX_VCPUS {
            return Err(FieldError::new("vcpus", "must be 1 to 64"));
        }
        if !(atrium_protocol::node::MIN_MEMORY_MIB..=atrium_protocol::node::MAX_MEMORY_MIB)
            .contains(&self.memory_mib)
        {
            return Err(FieldError::new("memory_mib", "must be 64 to 1048576"));
        }
        self.display.validate().map_err(|m| FieldError::new("display", m))?;
        if self.max_size == 0 || self.max_size > 10_000 {
            return Err(FieldError::new("max_size", "must be 1 to 10000"));
        }
        if self.min_ready > self.max_size {
            return Err(FieldError::new("min_ready", "must not exceed max_size"));
        }
        if !(60..=30 * 86_400).contains(&self.idle_timeout_secs) {
            return Err(FieldError::new("idle_timeout_secs", "must be 60 to 2592000"));
        }
        if !(60..=30 * 86_400).contains(&self.max_session_secs) {
            return Err(FieldError::new("max_session_secs", "must be 60 to 2592000"));
        }
        // 0: logged off as soon as the session ends as disconnected (or idle).
        if self.disconnect_timeout_secs > 30 * 86_400 {
            return Err(FieldError::new("disconnect_timeout_secs", "must be 0 to 2592000"));
        }
        if self.clone == Some(true) && self.kind != PoolKind::Floating {
            return Err(FieldError::new(
                "clone",
                "only floating desktops start as clones (a dedicated desktop keeps its own disk)",
            ));
        }
        if self.clone == Some(true) && self.runtime == Some(RuntimeKind::Builtin) {
            return Err(FieldError::new(
                "clone",
                "the builtin runtime does not clone desktops yet",
            ));
        }
        Ok(())
    }
}

fn row_to_pool(r: &sqlx::any::AnyRow) -> DbResult<Pool> {
    let runtime: Option<String> = col(r, "runtime")?;
    let display: String = col(r, "display")?;
    Ok(Pool {
        id: col(r, "id")?,
        name: col(r, "name")?,
        description: col(r, "description")?,
        image: col(r, "image")?,
        vcpus: u32_col(r, "vcpus")?,
        memory_mib: u32_col(r, "memory_mib")?,
        display: display.parse().map_err(DbError::Corrupt)?,
        runtime: runtime.map(|s| s.parse()).transpose().map_err(DbError::Corrupt)?,
        kind: parse_col(r, "kind")?,
        min_ready: u32_col(r, "min_ready")?,
        max_size: u32_col(r, "max_size")?,
        idle_timeout_secs: u64_col(r, "idle_timeout_secs")?,
        max_session_secs: u64_col(r, "max_session_secs")?,
        disconnect_timeout_secs: u64_col(r, "disconnect_timeout_secs")?,
        clone: u64_col(r, "clone_desktops")? != 0,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
    })
}

impl Db {
    pub async fn list_pools(&self) -> DbResult<Vec<Pool>> {
        let rows = sqlx::query("SELECT * FROM pools ORDER BY name").fetch_all(self.pool()).await?;
        rows.iter().map(row_to_pool).collect()
    }

    pub async fn get_pool(&self, id_or_name: &str) -> DbResult<Option<Pool>> {
        let row = sqlx::query("SELECT * FROM pools WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(row_to_pool).transpose()
    }

    pub async fn create_pool(&self, input: &PoolInput, now: i64) -> DbResult<Pool> {
        let id = uuid::Uuid::new_v4().to_string();
        let r = sqlx::query(
            "INSERT INTO pools (id, name, description, image, vcpus, memory_mib, display, runtime, kind,
               min_ready, max_size, idle_timeout_secs, max_session_secs, created_at, updated_at,
               disconnect_timeout_secs, clone_desktops)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $16)",
        )
        .bind(&id)
        .bind(&input.name)
        .bind(&input.description)
        .bind(&input.image)
        .bind(i64::from(input.vcpus))
        .bind(i64::from(input.memory_mib))
        .bind(input.display.to_string())
        .bind(input.runtime.map(|r| r.to_string()))
        .bind(input.kind.as_str())
        .bind(i64::from(input.min_ready))
        .bind(i64::from(input.max_size))
        .bind(big(input.idle_timeout_secs))
        .bind(big(input.max_session_secs))
        .bind(now)
        .bind(big(input.disconnect_timeout_secs))
        .bind(i64::from(input.clones()))
        .execute(self.pool())
        .await;
        match r {
            Err(e) => {
                let e = DbError::from(e);
                if e.is_unique_violation() {
                    return Err(DbError::Conflict(format!("pool {:?}", input.name)));
                }
                Err(e)
            }
            Ok(_) => Ok(self.get_pool(&id).await?.expect("just inserted")),
        }
    }

    /// Replaces a pool's settings. `None` when it does not exist. Without `clone` the pool
    /// keeps its own (a client that does not know the field never turns clones on), as far
    /// as its new kind and runtime allow.
    pub async fn update_pool(
        &self,
        id: &str,
        input: &PoolInput,
        now: i64,
    ) -> DbResult<Option<Pool>> {
        // Asked for (0 or 1), or -1: keep the pool's own, times whether the new kind and
        // runtime allow clones. One statement: nothing can change the pool in between.
        let allowed =
            input.kind == PoolKind::Floating && input.runtime != Some(RuntimeKind::Builtin);
        let asked = input.clone.map_or(-1, i64::from);
        let r = sqlx::query(
            "UPDATE pools SET name = $2, description = $3, image = $4, vcpus = $5, memory_mib = $6, display = $7,
               runtime = $8, kind = $9, min_ready = $10, max_size = $11, idle_timeout_secs = $12,
               max_session_secs = $13, updated_at = $14, disconnect_timeout_secs = $15,
               clone_desktops = CASE WHEN $16 < 0 THEN clone_desktops * $17 ELSE $16 END
             WHERE id = $1",
        )
        .bind(id)
        .bind(&input.name)
        .bind(&input.description)
        .bind(&input.image)
        .bind(i64::from(input.vcpus))
        .bind(i64::from(input.memory_mib))
        .bind(input.display.to_string())
        .bind(input.runtime.map(|r| r.to_string()))
        .bind(input.kind.as_str())
        .bind(i64::from(input.min_ready))
        .bind(i64::from(input.max_size))
        .bind(big(input.idle_timeout_secs))
        .bind(big(input.max_session_secs))
        .bind(now)
        .bind(big(input.disconnect_timeout_secs))
        .bind(asked)
        .bind(i64::from(allowed))
        .execute(self.pool())
        .await;
        match r {
            Err(e) => {
                let e = DbError::from(e);
                if e.is_unique_violation() {
                    return Err(DbError::Conflict(format!("pool {:?}", input.name)));
                }
                Err(e)
            }
            Ok(r) if r.rows_affected() == 0 => Ok(None),
            Ok(_) => self.get_pool(id).await,
        }
    }

    /// Deletes a pool with no desktop in use; its spares are marked for destruction. Returns
    /// `Ok(false)` when the pool does not exist and `Conflict` when desktops are assigned.
    pub async fn delete_pool(&self, id: &str, now: i64) -> DbResult<bool> {
        let mut tx = self.begin_write().await?;
        let sql = format!("SELECT id FROM pools WHERE id = $1{}", self.for_update());
        if sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await?.is_none()
        {
            return Ok(false);
        }
        let in_use: i64 = col(
            &sqlx::query(
                "SELECT COUNT(*) AS n FROM desktops WHERE pool_id = $1 AND username IS NOT NULL AND state NOT IN ('destroying', 'failed')",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?,
            "n",
        )?;
        if in_use > 0 {
            return Err(DbError::Conflict(format!("{in_use} desktop(s) of this pool are in use")));
        }
        sqlx::query("UPDATE desktops SET state = 'destroying', state_changed_at = $2 WHERE pool_id = $1 AND state <> 'destroying'")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM pools WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn pool_counts(&self, pool_id: &str) -> DbResult<PoolCounts> {
        let rows = sqlx::query(
            "SELECT state, username IS NOT NULL AS assigned, COUNT(*) AS n FROM desktops
             WHERE pool_id = $1 AND state <> 'destroying' GROUP BY state, username IS NOT NULL",
        )
        .bind(pool_id)
        .fetch_all(self.pool())
        .await?;
        let mut c = PoolCounts::default();
        for r in &rows {
            let state: String = col(r, "state")?;
            let assigned: bool = bool_col(r, "assigned")?;
            let n = u32_col(r, "n")?;
            c.total += n;
            if assigned {
                c.in_use += n;
            } else if state == "ready" {
                c.ready += n;
            } else if state == "starting" || state == "provisioning" {
                c.starting += n;
            }
        }
        Ok(c)
    }
}

/// A boolean expression column: PostgreSQL gives a BOOLEAN, SQLite an integer.
pub(crate) fn bool_col(r: &sqlx::any::AnyRow, name: &str) -> DbResult<bool> {
    use sqlx::Row;
    if let Ok(b) = r.try_get::<bool, _>(name) {
        return Ok(b);
    }
    let v: i64 = r.try_get(name)?;
    Ok(v != 0)
}
