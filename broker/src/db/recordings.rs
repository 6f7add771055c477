//! Session recordings: one row per recorded viewer stream, and one per chunk with its hash and
//! its link in the recording's chain (the chunks' bytes are files; see `crate::recordings`).

use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Db, DbError, DbResult, col};

/// Where a recording is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Its viewer is connected; chunks are still coming.
    Recording,
    /// Its viewer left and the proxy sent the last chunk.
    Complete,
    /// No chunk came for `recordings.close_after_secs`: its proxy or node stopped (or the
    /// screen stayed still that long; a later chunk continues it).
    Incomplete,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "recording",
            Self::Complete => "complete",
            Self::Incomplete => "incomplete",
        }
    }

    fn parse(s: &str) -> DbResult<Self> {
        match s {
            "recording" => Ok(Self::Recording),
            "complete" => Ok(Self::Complete),
            "incomplete" => Ok(Self::Incomplete),
            other => Err(DbError::Corrupt(format!("recordings.state {other:?}"))),
        }
    }
}

/// A recording as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Recording {
    pub id: String,
    pub session_id: String,
    pub desktop_id: String,
    pub username: String,
    pub pool: String,
    pub node_id: String,
    pub vm_id: String,
    /// The viewer's keys and pointer were recorded too.
    pub input: bool,
    /// Milliseconds since the Unix epoch.
    pub started_at: i64,
    pub updated_at: i64,
    pub ended_at: Option<i64>,
    pub state: RecordingState,
    pub chunks: i64,
    pub bytes: i64,
    /// From the start to the last record.
    pub duration_ms: i64,
    /// The last link of the chain (hex), 64 zeros before the first chunk.
    pub head: String,
}

/// One chunk as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Chunk {
    pub n: i64,
    pub t_first: i64,
    pub t_last: i64,
    pub bytes: i64,
    /// Hex SHA-256 of the chunk's bytes.
    pub sha256: String,
    /// Hex link of the chain up to this chunk.
    pub link: String,
    /// Key frames in it: `[t_ms, offset]`.
    #[schema(value_type = Vec<Vec<u64>>)]
    pub keys: Vec<(u32, u64)>,
}

/// A filter over the recordings.
#[derive(Debug, Clone, Default)]
pub struct RecordingFilter {
    /// Exact username.
    pub username: Option<String>,
    /// Started at or after (ms).
    pub since: Option<i64>,
    /// Started at or before (ms).
    pub until: Option<i64>,
    pub limit: u32,
}

/// What storing a chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// It is chunk `n` now.
    Added,
    /// The same chunk was stored before (a retry).
    Again,
    /// Another chunk has this number, or the recording is not at `n`.
    Conflict(String),
}

fn recording_from_row(r: &AnyRow) -> DbResult<Recording> {
    Ok(Recording {
        id: col(r, "id")?,
        session_id: col(r, "session_id")?,
        desktop_id: col(r, "desktop_id")?,
        username: col(r, "username")?,
        pool: col(r, "pool")?,
        node_id: col(r, "node_id")?,
        vm_id: col(r, "vm_id")?,
        input: col::<i64>(r, "input")? != 0,
        started_at: col(r, "started_at")?,
        updated_at: col(r, "updated_at")?,
        ended_at: col(r, "ended_at")?,
        state: RecordingState::parse(&col::<String>(r, "state")?)?,
        chunks: col(r, "chunks")?,
        bytes: col(r, "bytes")?,
        duration_ms: col(r, "duration_ms")?,
        head: col(r, "head")?,
    })
}

fn chunk_from_row(r: &AnyRow) -> DbResult<Chunk> {
    let keys: String = col(r, "keys")?;
    Ok(Chunk {
        n: col(r, "n")?,
        t_first: col(r, "t_first")?,
        t_last: col(r, "t_last")?,
        bytes: col(r, "bytes")?,
        sha256: col(r, "sha256")?,
        link: col(r, "link")?,
        keys: serde_json::from_str(&keys)
            .map_err(|_| DbError::Corrupt(format!("recording_chunks.keys {keys:?}")))?,
    })
}

impl Db {
    pub async fn insert_recording(&self, r: &Recording) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO recordings (id, session_id, desktop_id, username, pool, node_id, vm_id,
               input, started_at, updated_at, state, head)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)",
        )
        .bind(&r.id)
        .bind(&r.session_id)
        .bind(&r.desktop_id)
        .bind(&r.username)
        .bind(&r.pool)
        .bind(&r.node_id)
        .bind(&r.vm_id)
        .bind(i64::from(r.input))
        .bind(r.started_at)
        .bind(r.state.as_str())
        .bind(&r.head)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn get_recording(&self, id: &str) -> DbResult<Option<Recording>> {
        let row = sqlx::query("SELECT * FROM recordings WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(recording_from_row).transpose()
    }

    /// Newest first.
    pub async fn list_recordings(&self, f: &RecordingFilter) -> DbResult<Vec<Recording>> {
        let rows = sqlx::query(
            "SELECT * FROM recordings
             WHERE ($1 = '' OR username = $1) AND started_at >= $2 AND started_at <= $3
             ORDER BY started_at DESC, id DESC LIMIT $4",
        )
        .bind(f.username.clone().unwrap_or_default())
        .bind(f.since.unwrap_or(0))
        .bind(f.until.unwrap_or(i64::MAX))
        .bind(i64::from(f.limit.clamp(1, 1000)))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(recording_from_row).collect()
    }

    pub async fn recording_chunks(&self, id: &str) -> DbResult<Vec<Chunk>> {
        let rows = sqlx::query("SELECT * FROM recording_chunks WHERE recording_id = $1 ORDER BY n")
            .bind(id)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(chunk_from_row).collect()
    }

    pub async fn recording_chunk(&self, id: &str, n: i64) -> DbResult<Option<Chunk>> {
        let row = sqlx::query("SELECT * FROM recording_chunks WHERE recording_id = $1 AND n = $2")
            .bind(id)
            .bind(n)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(chunk_from_row).transpose()
    }

    /// Appends chunk `c` to recording `id` if the recording is not complete and at `c.n` (its
    /// `head` is the link `c.link` was made from); `last` ends it as complete.
    pub async fn add_recording_chunk(
        &self,
        id: &str,
        c: &Chunk,
        last: bool,
        now: i64,
    ) -> DbResult<Stored> {
        let mut tx = self.begin_write().await?;
        let sql = format!("SELECT * FROM recordings WHERE id = $1{}", self.for_update());
        let Some(row) =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await?
        else {
            return Ok(Stored::Conflict("no such recording".into()));
        };
        let r = recording_from_row(&row)?;
        if c.n < r.chunks {
            let same = sqlx::query(
                "SELECT sha256 FROM recording_chunks WHERE recording_id = $1 AND n = $2",
            )
            .bind(id)
            .bind(c.n)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| col::<String>(&row, "sha256"))
            .transpose()?;
            return Ok(if same.as_deref() == Some(c.sha256.as_str()) {
                Stored::Again
            } else {
                Stored::Conflict(format!("chunk {} is stored with other bytes", c.n))
            });
        }
        // An incomplete recording was only silent (an idle screen, a broker out of reach): its
        // next chunk continues it.
        if r.state == RecordingState::Complete {
            return Ok(Stored::Conflict("the recording is complete".into()));
        }
        if c.n != r.chunks {
            return Ok(Stored::Conflict(format!("the next chunk is {}, not {}", r.chunks, c.n)));
        }
        let keys = serde_json::to_string(&c.keys).expect("numbers serialise");
        sqlx::query(
            "INSERT INTO recording_chunks (recording_id, n, t_first, t_last, bytes, sha256, link, keys)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(c.n)
        .bind(c.t_first)
        .bind(c.t_last)
        .bind(c.bytes)
        .bind(&c.sha256)
        .bind(&c.link)
        .bind(keys)
        .execute(&mut *tx)
        .await?;
        let state = if last { RecordingState::Complete } else { RecordingState::Recording };
        sqlx::query(
            "UPDATE recordings SET chunks = chunks + 1, bytes = bytes + $2, duration_ms = $3,
               head = $4, updated_at = $5, state = $6,
               ended_at = CASE WHEN $6 = 'recording' THEN NULL ELSE $5 END
             WHERE id = $1",
        )
        .bind(id)
        .bind(c.bytes)
        .bind(c.t_last)
        .bind(&c.link)
        .bind(now)
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Stored::Added)
    }

    /// Ends a recording as complete (its viewer left with nothing more to send); whether it
    /// was recording.
    pub async fn end_recording(&self, id: &str, now: i64) -> DbResult<bool> {
        let r = sqlx::query(
            "UPDATE recordings SET state = 'complete', ended_at = $2, updated_at = $2
             WHERE id = $1 AND state = 'recording'",
        )
        .bind(id)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends as incomplete every recording with no chunk since `before`; their ids.
    pub async fn close_stale_recordings(&self, before: i64, now: i64) -> DbResult<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE recordings SET state = 'incomplete', ended_at = $2
             WHERE state = 'recording' AND updated_at < $1 RETURNING id",
        )
        .bind(before)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| col(r, "id")).collect()
    }

    /// Recordings that started before `before` and are not being written (at most `limit`),
    /// oldest first.
    pub async fn expired_recordings(&self, before: i64, limit: u32) -> DbResult<Vec<Recording>> {
        let rows = sqlx::query(
            "SELECT * FROM recordings WHERE started_at < $1 AND state <> 'recording'
             ORDER BY started_at LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(recording_from_row).collect()
    }

    /// Forgets a recording and its chunks (their files are deleted first).
    pub async fn delete_recording(&self, id: &str) -> DbResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM recording_chunks WHERE recording_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recordings WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
