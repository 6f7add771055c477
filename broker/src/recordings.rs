//! Session recordings as the broker keeps them.
//!
//! A recording is opened when the broker mints a ticket that policy records
//! ([`open`]). The viewer's display proxy sends its chunks through its node, signed by the
//! node's key; each is checked ([`atrium_protocol::recording::parse_chunk`]), linked into the
//! recording's hash chain and written to the recordings folder (a volume every broker replica
//! mounts) before the database takes it ([`accept_chunk`]). The database keeps every chunk's
//! SHA-256 and link, so playback checks each chunk it serves ([`read_chunk`]) and [`verify`]
//! walks the whole chain: a chunk changed, removed or reordered in the folder shows.
//! The reconcile loop ends recordings whose proxy went silent and deletes expired ones
//! ([`housekeep`]).

use std::path::{Path, PathBuf};

use atrium_protocol::recording::{self, MAX_CHUNKS};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::db::{Chunk, Desktop, Recording, RecordingState, Stored, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The chain's link before the first chunk.
pub const ZERO_LINK: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Recordings deleted per housekeeping pass (the rest wait for the next).
const EXPIRE_BATCH: u32 = 100;

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

async fn audit_as(
    st: &AppState,
    actor: &str,
    action: &str,
    target: &str,
    details: serde_json::Value,
) {
    let nowhere = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    crate::service::audit(st, actor, action, target, "success", nowhere, details).await;
}

/// The folder of one recording.
fn folder(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// A chunk's file: its number and the start of its hash, so a second upload with other bytes
/// can never overwrite the one the database took.
fn chunk_path(root: &Path, id: &str, n: i64, sha256: &str) -> PathBuf {
    folder(root, id).join(format!("{n:08}-{}.chunk", &sha256[..16.min(sha256.len())]))
}

/// Opens a recording of the viewer `session_id` is about to connect with: its row, recording.
pub async fn open(
    st: &AppState,
    d: &Desktop,
    username: &str,
    session_id: &str,
    pool: &str,
    input: bool,
) -> ApiResult<String> {
    let (Some(node_id), Some(vm_id)) = (&d.node_id, &d.vm_id) else {
        return Err(ApiError::unavailable("the desktop has no VM yet"));
    };
    let now = now_ms();
    let r = Recording {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: session_id.to_owned(),
        desktop_id: d.id.clone(),
        username: username.to_owned(),
        pool: pool.to_owned(),
        node_id: node_id.clone(),
        vm_id: vm_id.clone(),
        input,
        started_at: now,
        updated_at: now,
        ended_at: None,
        state: RecordingState::Recording,
        chunks: 0,
        bytes: 0,
        duration_ms: 0,
        head: ZERO_LINK.into(),
    };
    st.db.insert_recording(&r).await?;
    Ok(r.id)
}

/// Checks a recording id from a URL (400 naming `id` when it cannot be one).
pub fn check_id(id: &str) -> ApiResult<()> {
    atrium_protocol::ticket::validate_recording_id(id)
        .map_err(|m| ApiError::Validation { field: "id".into(), message: m })
}

/// Recording `id`, when it is node `node_id`'s: a node's credential reaches only the
/// recordings of its own VMs.
async fn nodes_recording(st: &AppState, node_id: &str, id: &str) -> ApiResult<Recording> {
    let r = st
        .db
        .get_recording(id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such recording".into()))?;
    if r.node_id != node_id {
        return Err(ApiError::Forbidden("the recording is not this node's".into()));
    }
    Ok(r)
}

/// Takes chunk `n` of recording `id` from node `node_id`: the recording must be this node's
/// and at `n`, the chunk well formed and not earlier than the one before. `last` ends the
/// recording. A retry of a chunk already taken is accepted again.
pub async fn accept_chunk(
    st: &AppState,
    node_id: &str,
    id: &str,
    n: u64,
    last: bool,
    body: &[u8],
) -> ApiResult<()> {
    let r = nodes_recording(st, node_id, id).await?;
    if n >= MAX_CHUNKS {
        return Err(ApiError::Conflict(format!("a recording has at most {MAX_CHUNKS} chunks")));
    }
    let n = i64::try_from(n).expect("bounded by MAX_CHUNKS");
    let not_before =
        if n == r.chunks { u32::try_from(r.duration_ms).unwrap_or(u32::MAX) } else { 0 };
    let records = recording::parse_chunk(body, not_before)
        .map_err(|e| ApiError::BadRequest(format!("chunk {n}: {e}")))?;
    let summary = recording::summarise(&records);
    let sha = hex(&Sha256::digest(body));
    // A retry of a chunk taken before is compared by its hash alone: its link is not stored.
    let prev = if n == r.chunks { r.head.as_str() } else { ZERO_LINK };
    let prev = unhex32(prev).ok_or_else(|| ApiError::internal("a stored link", "not hex"))?;
    let sha_bytes = unhex32(&sha).expect("a SHA-256 in hex");
    let link = hex(&recording::chain(id, u64::try_from(n).unwrap_or(0), &sha_bytes, &prev));
    let chunk = Chunk {
        n,
        t_first: i64::from(summary.t_first),
        t_last: i64::from(summary.t_last),
        bytes: i64::try_from(body.len()).unwrap_or(i64::MAX),
        sha256: sha.clone(),
        link,
        keys: summary.keys.iter().map(|&(t, o)| (t, u64::try_from(o).unwrap_or(0))).collect(),
    };
    let cap = i64::try_from(st.cfg.recordings.max_recording_mib.saturating_mul(1 << 20))
        .unwrap_or(i64::MAX);
    if n == r.chunks && r.bytes.saturating_add(chunk.bytes) > cap {
        return Err(ApiError::Conflict(format!(
            "the recording has reached recordings.max_recording_mib ({} MiB)",
            st.cfg.recordings.max_recording_mib
        )));
    }
    if r.state != RecordingState::Complete && n == r.chunks {
        write_file(&chunk_path(&st.cfg.recordings_dir(), id, n, &sha), body)
            .await
            .map_err(|e| ApiError::internal("writing a recording chunk", e))?;
    }
    match st.db.add_recording_chunk(id, &chunk, last, now_ms()).await? {
        Stored::Added => {
            if last {
                audit_as(
                    st,
                    &format!("node:{node_id}"),
                    "recording.end",
                    id,
                    serde_json::json!({ "user": r.username, "chunks": n + 1, "state": "complete" }),
                )
                .await;
            }
            Ok(())
        }
        Stored::Again => Ok(()),
        Stored::Conflict(why) => Err(ApiError::Conflict(why)),
    }
}

/// Ends a recording with no more chunks to send (its viewer left before a chunk was due).
pub async fn end(st: &AppState, node_id: &str, id: &str) -> ApiResult<()> {
    let r = nodes_recording(st, node_id, id).await?;
    if st.db.end_recording(id, now_ms()).await? {
        audit_as(
            st,
            &format!("node:{node_id}"),
            "recording.end",
            id,
            serde_json::json!({ "user": r.username, "chunks": r.chunks, "state": "complete" }),
        )
        .await;
    }
    Ok(())
}

/// Writes a file whole or not at all: a temporary file, synced, then renamed.
async fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.to_owned();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let dir = path.parent().expect("a chunk's folder");
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Why a chunk cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkProblem {
    #[error("chunk {0} is missing from the recordings folder")]
    Missing(i64),
    #[error("chunk {0} was changed after it was recorded (its hash differs)")]
    Changed(i64),
    #[error("chunk {0} cannot be read: {1}")]
    Unreadable(i64, String),
}

/// The bytes of a stored chunk, checked against the hash the database took.
pub async fn read_chunk(st: &AppState, id: &str, c: &Chunk) -> Result<Vec<u8>, ChunkProblem> {
    let path = chunk_path(&st.cfg.recordings_dir(), id, c.n, &c.sha256);
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ChunkProblem::Missing(c.n));
        }
        Err(e) => return Err(ChunkProblem::Unreadable(c.n, e.to_string())),
    };
    if hex(&Sha256::digest(&bytes)) != c.sha256 {
        return Err(ChunkProblem::Changed(c.n));
    }
    Ok(bytes)
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Integrity {
    /// Every chunk is there, unchanged, in order, and the chain ends at the recording's head.
    pub intact: bool,
    /// What is wrong, when not intact.
    pub problem: Option<String>,
    pub chunks_checked: i64,
}

/// Walks a recording's chain: every chunk's file against its hash, every link from the one
/// before, the last link against the recording's head.
pub async fn verify(st: &AppState, r: &Recording) -> ApiResult<Integrity> {
    let chunks = st.db.recording_chunks(&r.id).await?;
    let bad = |problem: String, checked: i64| Integrity {
        intact: false,
        problem: Some(problem),
        chunks_checked: checked,
    };
    let mut prev = [0u8; 32];
    for (i, c) in (0i64..).zip(&chunks) {
        if c.n != i {
            return Ok(bad(format!("chunk {i} is missing from the database"), i));
        }
        if let Err(p) = read_chunk(st, &r.id, c).await {
            return Ok(bad(p.to_string(), i));
        }
        let sha = unhex32(&c.sha256).unwrap_or_default();
        let link = hex(&recording::chain(&r.id, u64::try_from(i).unwrap_or(0), &sha, &prev));
        if link != c.link {
            return Ok(bad(format!("chunk {i}'s link in the chain does not hold"), i));
        }
        prev = unhex32(&link).unwrap_or_default();
    }
    let n = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
    if n != r.chunks || hex(&prev) != r.head && !(n == 0 && r.head == ZERO_LINK) {
        return Ok(bad("the chain does not end at the recording's head".into(), n));
    }
    Ok(Integrity { intact: true, problem: None, chunks_checked: n })
}

/// Marks recordings whose proxy went silent incomplete, and deletes those past their retention
/// (files first, then rows), each audited.
pub async fn housekeep(st: &AppState) -> ApiResult<()> {
    let now = now_ms();
    let silent = i64::try_from(st.cfg.recordings.close_after_secs * 1000).unwrap_or(i64::MAX);
    for id in st.db.close_stale_recordings(now - silent, now).await? {
        audit_as(
            st,
            "system",
            "recording.end",
            &id,
            serde_json::json!({ "state": "incomplete", "why": "no chunk came for recordings.close_after_secs; a later chunk continues it" }),
        )
        .await;
    }
    let keep = i64::from(st.cfg.recordings.retention_days) * 86_400_000;
    let root = st.cfg.recordings_dir();
    for r in st.db.expired_recordings(now - keep, EXPIRE_BATCH).await? {
        match tokio::fs::remove_dir_all(folder(&root, &r.id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(recording = %r.id, error = %e, "cannot delete an expired recording");
                continue;
            }
        }
        st.db.delete_recording(&r.id).await?;
        audit_as(
            st,
            "system",
            "recording.expire",
            &r.id,
            serde_json::json!({ "user": r.username, "started_at": r.started_at, "retention_days": st.cfg.recordings.retention_days }),
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_a_link() {
        let b = [0xab; 32];
        assert_eq!(unhex32(&hex(&b)), Some(b));
        assert_eq!(unhex32(ZERO_LINK), Some([0; 32]));
        assert_eq!(unhex32("ab"), None);
        assert_eq!(unhex32(&"zz".repeat(32)), None);
        let p = chunk_path(Path::new("/r"), "id", 7, &"f".repeat(64));
        assert_eq!(p, PathBuf::from("/r/id/00000007-ffffffffffffffff.chunk"));
    }
}
