//! Leases: a named piece of shared work held by one broker replica until it expires.

use super::{Db, DbResult};

impl Db {
    /// Takes or renews the lease `name` for `holder` until `now + ttl_ms`. True when `holder`
    /// holds it now: it was free, expired, or already `holder`'s. One statement, so two
    /// replicas asking at once cannot both win.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> DbResult<bool> {
        let r = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives the lease up at once if `holder` has it (a replica that stops), so another
    /// replica need not wait for it to expire.
    pub async fn release_lease(&self, name: &str, holder: &str) -> DbResult<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Db;

    async fn db() -> (Db, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("atrium-lease-{}", uuid::Uuid::new_v4()));
        let db = Db::connect(&format!("sqlite://{}/b.db", dir.display()), 4).await.unwrap();
        (db, dir)
    }

    #[tokio::test]
    async fn one_holder_at_a_time_until_it_expires_or_is_released() {
        let (db, dir) = db().await;
        assert!(db.acquire_lease("reconcile", "a", 1_000, 10_000).await.unwrap());
        assert!(!db.acquire_lease("reconcile", "b", 2_000, 10_000).await.unwrap());
        // The holder renews.
        assert!(db.acquire_lease("reconcile", "a", 9_000, 10_000).await.unwrap());
        assert!(!db.acquire_lease("reconcile", "b", 12_000, 10_000).await.unwrap());
        // Not renewed: another takes it after expiry, and the old holder is out.
        assert!(db.acquire_lease("reconcile", "b", 19_001, 10_000).await.unwrap());
        assert!(!db.acquire_lease("reconcile", "a", 19_002, 10_000).await.unwrap());
        // Other leases are independent.
        assert!(db.acquire_lease("other", "a", 19_003, 10_000).await.unwrap());
        // A release by someone else changes nothing; by the holder it frees the lease.
        db.release_lease("reconcile", "a").await.unwrap();
        assert!(!db.acquire_lease("reconcile", "c", 19_004, 10_000).await.unwrap());
        db.release_lease("reconcile", "b").await.unwrap();
        assert!(db.acquire_lease("reconcile", "c", 19_005, 10_000).await.unwrap());
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn replicas_asking_at_once_get_one_winner() {
        let (db, dir) = db().await;
        let tries = (0..8).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.acquire_lease("reconcile", &format!("r{i}"), 1_000, 10_000).await.unwrap()
            })
        });
        let mut winners = 0;
        for t in tries {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
