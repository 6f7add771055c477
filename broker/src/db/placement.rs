//! Where a new desktop goes: the up, undrained node that holds the pool's image, has the
//! pool's vCPUs and memory free (by what the broker placed there or what the node reports,
//! whichever is more; with the node's memory overcommit, also beside what its VMs really use)
//! and is not backing off after refusing a VM; of those, the one with the most free memory.

use atrium_protocol::node::{Capacity, ImageRef};

use super::desktops::LIVE;
use super::{Db, DbError, DbResult, col};
use crate::db::pools::Pool;

impl Db {
    /// The up, undrained node with the most free memory that holds the pool's image, has the
    /// pool's vCPUs and memory free, and is not backing off after refusing a VM.
    pub(super) async fn choose_node(
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
            // A node with memory overcommit also needs room beside what its VMs really use.
            if free < u64::from(pool.memory_mib) || !cap.real_use_allows(pool.memory_mib) {
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
}
