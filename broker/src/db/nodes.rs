//! Node agents: registration by heartbeat, draining, loss.

use std::str::FromStr;

use atrium_protocol::node::{Capacity, NodeHeartbeat};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Db, DbError, DbResult, col, parse_col};
use crate::db::pools::bool_col;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Up,
    Lost,
}

impl FromStr for NodeState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "up" => Ok(Self::Up),
            "lost" => Ok(Self::Lost),
            _ => Err(()),
        }
    }
}

/// A node as the broker knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub api_url: String,
    pub display_url: String,
    pub state: NodeState,
    pub draining: bool,
    #[schema(value_type = Object)]
    pub capacity: Capacity,
    pub registered_at: i64,
    pub last_heartbeat_at: i64,
    /// VMs refused in a row; the node gets no new VM until `refused_until` (ms since 1970;
    /// 0 when it is not backing off).
    pub refusals: i64,
    pub refused_until: i64,
}

impl Node {
    /// Where the broker calls this node's API.
    pub fn api(&self) -> crate::nodeclient::NodeAt<'_> {
        crate::nodeclient::NodeAt { id: &self.id, url: &self.api_url }
    }
}

fn row_to_node(r: &sqlx::any::AnyRow) -> DbResult<Node> {
    let cap: String = col(r, "capacity_json")?;
    Ok(Node {
        id: col(r, "id")?,
        api_url: col(r, "api_url")?,
        display_url: col(r, "display_url")?,
        state: parse_col(r, "state")?,
        draining: bool_col(r, "draining")?,
        capacity: serde_json::from_str(&cap)
            .map_err(|e| DbError::Corrupt(format!("capacity_json: {e}")))?,
        registered_at: col(r, "registered_at")?,
        last_heartbeat_at: col(r, "last_heartbeat_at")?,
        refusals: col(r, "refusals")?,
        refused_until: col(r, "refused_until")?,
    })
}

/// How long a node is left alone after refusing `refusals` VMs in a row: 5 s, doubled each
/// time, at most 5 minutes.
pub fn refusal_backoff_ms(refusals: i64) -> i64 {
    let doublings = u32::try_from(refusals.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    (5_000_i64 << doublings).min(300_000)
}

impl Db {
    /// Notes that `node` refused a VM: it is left alone for a back-off that grows with each
    /// refusal in a row. Returns how many refusals in a row it has now, and the back-off.
    pub async fn note_refusal(&self, node: &str, now: i64) -> DbResult<(i64, i64)> {
        let mut tx = self.begin_write().await?;
        let sql = format!("SELECT refusals FROM nodes WHERE id = $1{}", self.for_update());
        let Some(r) =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(node).fetch_optional(&mut *tx).await?
        else {
            return Ok((0, 0));
        };
        let refusals: i64 = col(&r, "refusals")?;
        let refusals = refusals.saturating_add(1);
        let backoff = refusal_backoff_ms(refusals);
        sqlx::query("UPDATE nodes SET refusals = $2, refused_until = $3 WHERE id = $1")
            .bind(node)
            .bind(refusals)
            .bind(now.saturating_add(backoff))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((refusals, backoff))
    }

    /// Notes that `node` accepted a VM: any back-off ends.
    pub async fn note_acceptance(&self, node: &str) -> DbResult<()> {
        sqlx::query(
            "UPDATE nodes SET refusals = 0, refused_until = 0 WHERE id = $1 AND refusals <> 0",
        )
        .bind(node)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Registers or refreshes a node. Returns whether it is draining and whether it was new or
    /// back from lost. A node that is up keeps the URLs it registered with: a heartbeat naming
    /// other URLs is refused ([`DbError::Conflict`]), so a stolen node token cannot redirect an
    /// up node's users elsewhere; a lost node may come back from new URLs.
    pub async fn heartbeat_node(&self, hb: &NodeHeartbeat, now: i64) -> DbResult<(bool, bool)> {
        let cap = serde_json::to_string(&hb.capacity).expect("capacity serializes");
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT state, draining, api_url, display_url FROM nodes WHERE id = $1{}",
            self.for_update()
        );
        let prev = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&hb.node_id)
            .fetch_optional(&mut *tx)
            .await?;
        let (draining, came_up) = match &prev {
            Some(r) => {
                let lost = parse_col::<NodeState>(r, "state")? == NodeState::Lost;
                let api: String = col(r, "api_url")?;
                let display: String = col(r, "display_url")?;
                if !lost && (api != hb.api_url || display != hb.display_url) {
                    return Err(DbError::Conflict(format!(
                        "node {} is up at {api} / {display}",
                        hb.node_id
                    )));
                }
                (bool_col(r, "draining")?, lost)
            }
            None => (false, true),
        };
        sqlx::query(
            "INSERT INTO nodes (id, api_url, display_url, state, draining, capacity_json, registered_at, last_heartbeat_at)
             VALUES ($1, $2, $3, 'up', 0, $4, $5, $5)
             ON CONFLICT (id) DO UPDATE SET api_url = excluded.api_url, display_url = excluded.display_url,
               state = 'up', capacity_json = excluded.capacity_json, last_heartbeat_at = excluded.last_heartbeat_at",
        )
        .bind(&hb.node_id)
        .bind(&hb.api_url)
        .bind(&hb.display_url)
        .bind(cap)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((draining, came_up))
    }

    /// Forgets a node with no live desktop. `Ok(false)`: no such node.
    pub async fn delete_node(&self, id: &str) -> DbResult<bool> {
        let mut tx = self.begin_write().await?;
        let live: i64 = col(
            &sqlx::query(
                "SELECT COUNT(*) AS n FROM desktops WHERE node_id = $1 AND state IN ('provisioning', 'starting', 'ready', 'stopped')",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?,
            "n",
        )?;
        if live > 0 {
            return Err(DbError::Conflict(format!("{live} desktop(s) still live on node {id}")));
        }
        let r = sqlx::query("DELETE FROM nodes WHERE id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM desktops WHERE node_id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Whether a node has desktops whose VM creation may be in flight.
    pub async fn node_is_provisioning(&self, id: &str) -> DbResult<bool> {
        Ok(sqlx::query(
            "SELECT id FROM desktops WHERE node_id = $1 AND state = 'provisioning' LIMIT 1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .is_some())
    }

    pub async fn list_nodes(&self) -> DbResult<Vec<Node>> {
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY id").fetch_all(self.pool()).await?;
        rows.iter().map(row_to_node).collect()
    }

    pub async fn get_node(&self, id: &str) -> DbResult<Option<Node>> {
        let row = sqlx::query("SELECT * FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(row_to_node).transpose()
    }

    /// Returns whether the node exists.
    pub async fn set_node_draining(&self, id: &str, draining: bool) -> DbResult<bool> {
        let r = sqlx::query("UPDATE nodes SET draining = $1 WHERE id = $2")
            .bind(i64::from(draining))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Marks nodes silent since `before` as lost, fails their live desktops and ends the
    /// sessions on them. Returns each node newly lost with the sessions that ended (for the
    /// audit log).
    pub async fn mark_lost_nodes(&self, before: i64, now: i64) -> DbResult<Vec<LostNode>> {
        let mut tx = self.begin_write().await?;
        let rows =
            sqlx::query("SELECT id FROM nodes WHERE state = 'up' AND last_heartbeat_at < $1")
                .bind(before)
                .fetch_all(&mut *tx)
                .await?;
        let ids: Vec<String> = rows.iter().map(|r| col(r, "id")).collect::<DbResult<_>>()?;
        let mut lost = Vec::with_capacity(ids.len());
        for id in &ids {
            sqlx::query("UPDATE nodes SET state = 'lost' WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE desktops SET state = 'failed', error = 'node lost', state_changed_at = $2
                 WHERE node_id = $1 AND state IN ('provisioning', 'starting', 'ready')",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let ended = sqlx::query(
                "UPDATE desktop_sessions SET ended_at = $2, end_reason = 'node lost'
                 WHERE node_id = $1 AND ended_at IS NULL
                 RETURNING id, username, desktop_id",
            )
            .bind(id)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            let sessions = ended
                .iter()
                .map(|r| {
                    Ok(EndedSession {
                        id: col(r, "id")?,
                        username: col(r, "username")?,
                        desktop_id: col(r, "desktop_id")?,
                    })
                })
                .collect::<DbResult<_>>()?;
            lost.push(LostNode { id: id.clone(), sessions });
        }
        tx.commit().await?;
        Ok(lost)
    }
}

/// A node found lost, and the sessions that ended with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostNode {
    pub id: String,
    pub sessions: Vec<EndedSession>,
}

/// A desktop session ended by the broker itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSession {
    pub id: String,
    pub username: String,
    pub desktop_id: String,
}

#[cfg(test)]
mod tests {
    use super::refusal_backoff_ms;

    #[test]
    fn the_back_off_doubles_up_to_five_minutes() {
        let b: Vec<i64> = (1..=9).map(refusal_backoff_ms).collect();
        assert_eq!(b, [5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000]);
        assert_eq!(refusal_backoff_ms(i64::MAX), 300_000);
        assert_eq!(refusal_backoff_ms(0), 5_000);
    }
}
