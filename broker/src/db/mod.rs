//! Storage through sqlx's `Any` driver: SQLite (one file, the default) or PostgreSQL, with the
//! same SQL. Migrations are embedded and applied at start-up. Where the two differ (row locks),
//! [`Dialect`] picks the statement.

mod assignment;
mod audit;
mod desktops;
pub mod enrolments;
mod images;
mod leases;
mod logins;
mod mfa;
mod nodes;
mod placement;
mod pools;
mod recordings;
mod sessions;
mod tokens;
mod users;

use std::str::FromStr;
use std::time::Duration;

pub use assignment::{Assignment, ProvisionRequest};
pub use audit::{AuditEvent, AuditFilter};
pub use desktops::{Desktop, DesktopState};
pub use images::LibraryEntry;
pub use logins::{LoginRecord, LoginSession, LoginWriter, SignInMethod};
pub use mfa::{MfaEnrolment, MfaState};
pub use nodes::{Node, NodeState};
pub use pools::{Pool, PoolCounts, PoolInput, PoolKind};
pub use recordings::{Chunk, Recording, RecordingFilter, RecordingState, Stored};
pub use sessions::{DesktopSession, OpenSessionView, logon_start};
pub use tokens::{ApiToken, TokenScope};
pub use users::{CachedUser, UserSummary};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration { version: i64, name: &'static str, source: sqlx::Error },
    #[error("unsupported database url (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("{0} already exists")]
    Conflict(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl DbError {
    /// Whether the database could not be reached or is going away: no connection in time, a
    /// broken connection, or PostgreSQL's connection-exception and shutdown codes. The request
    /// may work again later; nothing it did was kept (a transaction is rolled back with its
    /// connection).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Sqlx(e) => match e {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                    // 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown,
                    // cannot connect now; 53300: too many connections.
                    c.starts_with("08")
                        || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
                }),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether the error is a unique-constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Self::Sqlx(sqlx::Error::Database(d)) => d.is_unique_violation(),
            Self::Conflict(_) => true,
            _ => false,
        }
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// Which SQL engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The broker's database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
}

/// Embedded, numbered migrations. Never edit one that has shipped: add the next.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial schema", include_str!("../../migrations/0001_initial.sql")),
    (2, "leases", include_str!("../../migrations/0002_leases.sql")),
    (3, "node back-off", include_str!("../../migrations/0003_node_backoff.sql")),
    (4, "node identity", include_str!("../../migrations/0004_node_identity.sql")),
    (5, "directory ids", include_str!("../../migrations/0005_directory_ids.sql")),
    (6, "node request replay", include_str!("../../migrations/0006_node_request_replay.sql")),
    (7, "sign-in method", include_str!("../../migrations/0007_signin_method.sql")),
    (8, "revalidation", include_str!("../../migrations/0008_revalidation.sql")),
    (9, "api tokens", include_str!("../../migrations/0009_api_tokens.sql")),
    (10, "mfa", include_str!("../../migrations/0010_mfa.sql")),
    (11, "recordings", include_str!("../../migrations/0011_recordings.sql")),
    (12, "time limits", include_str!("../../migrations/0012_time_limits.sql")),
    (13, "clones", include_str!("../../migrations/0013_clones.sql")),
    (14, "image library", include_str!("../../migrations/0014_images.sql")),
];

/// The schema version this build needs (the last migration).
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// PostgreSQL advisory lock key held while migrating ("atrium" in ASCII): replicas starting
/// together migrate one after another.
const MIGRATION_LOCK: i64 = 0x0000_6174_7269_756d;

impl Db {
    /// Connects and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> DbResult<Self> {
        Self::connect_with(url, max_connections, Duration::from_secs(30)).await
    }

    /// Connects with requests waiting at most `acquire_timeout` for a connection (a request
    /// while the database is away fails after that, as unavailable), and migrates.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> DbResult<Self> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            let path = rest.split('?').next().unwrap_or(rest);
            if let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| DbError::Sqlx(sqlx::Error::Io(e)))?;
            }
            let url = if rest.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
            (Dialect::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_owned())
        } else {
            return Err(DbError::UnsupportedUrl);
        };
        let opts = AnyPoolOptions::new().acquire_timeout(acquire_timeout);
        let pool = match dialect {
            Dialect::Sqlite => {
                opts.max_connections(max_connections.clamp(1, 4))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = NORMAL",
                                "PRAGMA busy_timeout = 10000",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Dialect::Postgres => opts.max_connections(max_connections.max(1)).connect(&url).await?,
        };
        let db = Self { pool, dialect };
        db.migrate().await?;
        Ok(db)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so two writers queue instead of failing on upgrade.
    pub async fn begin_write(&self) -> DbResult<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        })
    }

    /// `FOR UPDATE` where the engine has row locks; nothing on SQLite, whose write transaction
    /// already excludes other writers.
    pub(crate) fn for_update(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Checks the database answers (for `/healthz`).
    pub async fn ping(&self) -> DbResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The schema version applied (for readiness): the highest migration recorded.
    pub async fn schema_version(&self) -> DbResult<i64> {
        let v: Option<i64> = sqlx::query("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(v.unwrap_or(0))
    }

    /// Applies the migrations not yet recorded, each in its own transaction. On PostgreSQL the
    /// whole run holds an advisory lock, so replicas started at once take turns: the first
    /// migrates, the others find the work done.
    async fn migrate(&self) -> DbResult<()> {
        let mut conn = self.pool.acquire().await?;
        if self.dialect == Dialect::Postgres {
            // A replica stuck holding the lock must not hold the others' start forever.
            sqlx::query("SET lock_timeout = '300s'").execute(&mut *conn).await?;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        let result = self.migrate_on(&mut conn).await;
        if self.dialect == Dialect::Postgres {
            // Unlocking lets the next replica in at once; closing the session releases the
            // lock even if the unlock failed, and never lends a locked connection to a request.
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await;
            let _ = conn.close().await;
        }
        result
    }

    async fn migrate_on(&self, conn: &mut sqlx::pool::PoolConnection<sqlx::Any>) -> DbResult<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut **conn)
        .await?;
        for &(version, name, sql) in MIGRATIONS {
            let mut tx = match self.dialect {
                Dialect::Sqlite => {
                    sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await?
                }
                Dialect::Postgres => sqlx::Connection::begin(&mut **conn).await?,
            };
            let done: Option<i64> =
                sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
            if done.is_some() {
                continue;
            }
            for stmt in split_statements(sql) {
                sqlx::query(sqlx::AssertSqlSafe(stmt))
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| DbError::Migration { version, name, source })?;
            }
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, name, "applied database migration");
        }
        Ok(())
    }
}

/// Splits a migration into statements at `;` line ends, dropping `--` comments.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let line = match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        };
        if line.trim().is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if line.trim_end().ends_with(';') {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_millis()).expect("time fits in i64 milliseconds")
}

/// Reads a column, naming it in the error.
pub(crate) fn col<'r, T>(row: &'r AnyRow, name: &str) -> DbResult<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name).map_err(DbError::from)
}

/// Parses a text column into an enum.
pub(crate) fn parse_col<T: FromStr>(row: &AnyRow, name: &str) -> DbResult<T> {
    let s: String = col(row, name)?;
    s.parse().map_err(|_| DbError::Corrupt(format!("{name} = {s:?}")))
}

/// A u32 from a BIGINT column.
pub(crate) fn u32_col(row: &AnyRow, name: &str) -> DbResult<u32> {
    let v: i64 = col(row, name)?;
    u32::try_from(v).map_err(|_| DbError::Corrupt(format!("{name} = {v}")))
}

/// A u64 from a BIGINT column.
pub(crate) fn u64_col(row: &AnyRow, name: &str) -> DbResult<u64> {
    let v: i64 = col(row, name)?;
    u64::try_from(v).map_err(|_| DbError::Corrupt(format!("{name} = {v}")))
}

/// Converts a count or size to BIGINT.
pub(crate) fn big(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements() {
        let s = split_statements(
            "-- c\nCREATE TABLE a (x BIGINT); -- t\n\nCREATE INDEX i\n  ON a (x);\n",
        );
        assert_eq!(s.len(), 2);
        assert!(s[1].contains("ON a (x);"));
        assert!(split_statements(MIGRATIONS[0].2).len() > 10);
    }

    #[tokio::test]
    async fn sqlite_migrates_once() {
        let dir = std::env::temp_dir().join(format!("atrium-db-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}/b.db", dir.display());
        let db = Db::connect(&url, 4).await.unwrap();
        db.ping().await.unwrap();
        drop(db);
        let db = Db::connect(&url, 4).await.unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(n, SCHEMA_VERSION);
        assert_eq!(db.schema_version().await.unwrap(), SCHEMA_VERSION);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
