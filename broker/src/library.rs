//! The image library as the broker keeps it (docs/images.md, "Through the broker"): an
//! upload's bytes streamed to the library's folder (a volume every broker replica mounts) and
//! hashed as they come, within the room the volume has ([`receive`]); named and recorded by one
//! step a client cannot cut short ([`keep`]); served to nodes as they are, the node checking
//! them against the hash kept ([`file_for_node`]); and what a crash left swept by the reconcile
//! loop ([`sweep`]). The routes are in `http::images`.

use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use atrium_protocol::node::LibraryImage;
use axum::body::Body;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::db::{LibraryEntry, now_ms};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The longest an upload may go without a byte arriving. An upload as a whole has no time
/// limit (it is exempt from the broker's request time limit: a large disk takes a while).
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// Removes a partly written upload when dropped (a failure, a client gone).
#[derive(Debug)]
pub struct Partial(pub Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Checks an image's name and version (they name folders on the nodes).
pub fn check_ref(name: &str, version: &str) -> ApiResult<()> {
    atrium_protocol::node::validate_name("name", name, 64)?;
    atrium_protocol::node::validate_name("version", version, 64)?;
    Ok(())
}

/// Room an upload leaves free on the library's volume (the broker's database may share it).
pub const RESERVE_BYTES: u64 = 1 << 30;
/// How often (in bytes received) an upload looks at the room left.
const ROOM_CHECK_BYTES: u64 = 256 << 20;

/// Refuses an upload of `more` bytes (yet to come) that would leave less than
/// [`RESERVE_BYTES`] free on the library's volume.
pub fn check_room(dir: &FsPath, more: u64) -> ApiResult<()> {
    match atrium_protocol::volume::free_bytes(dir) {
        Some(free) if free < more.saturating_add(RESERVE_BYTES) => {
            Err(ApiError::unavailable(format!(
                "the image library's volume has {} MiB free: not enough for this image and 1 GiB to spare",
                free >> 20
            )))
        }
        _ => Ok(()),
    }
}

/// Writes `body` to `path`, hashing it; at most `max` bytes, each chunk within
/// [`UPLOAD_IDLE`] of the last, while the volume keeps its reserve. Its size and hex SHA-256.
pub async fn receive(body: Body, path: &FsPath, max: u64) -> ApiResult<(u64, String)> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| ApiError::internal("writing an uploaded image", e))?;
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let next = tokio::time::timeout(UPLOAD_IDLE, stream.next())
            .await
            .map_err(|_| ApiError::BadRequest("the upload stalled (no data for 60 s)".into()))?;
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("the upload broke off: {e}")))?;
        let before = size;
        size += chunk.len() as u64;
        if size > max {
            return Err(ApiError::BadRequest(format!("an image may be at most {max} bytes")));
        }
        if size / ROOM_CHECK_BYTES != before / ROOM_CHECK_BYTES {
            check_room(path.parent().unwrap_or(FsPath::new("/")), 0)?;
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal("writing an uploaded image", e))?;
    }
    file.sync_all().await.map_err(|e| ApiError::internal("writing an uploaded image", e))?;
    Ok((size, data_encoding::HEXLOWER.encode(&hasher.finalize())))
}

/// Names the received file `file` and writes the image's row; on a failure the file goes.
pub async fn keep(
    st: &AppState,
    mut partial: Partial,
    part: &FsPath,
    file: &FsPath,
    entry: &LibraryEntry,
) -> ApiResult<()> {
    tokio::fs::rename(part, file)
        .await
        .map_err(|e| ApiError::internal("naming an uploaded image", e))?;
    partial.0 = Some(file.to_owned());
    match st.db.insert_library_image(entry).await {
        Ok(()) => {}
        Err(crate::db::DbError::Conflict(_)) => return Err(conflict(entry)),
        Err(e) => {
            // An error that came after the row was written (a connection lost on the way back)
            // leaves the row: then the file stays with it.
            let row = st.db.library_image(&entry.name, &entry.version).await.ok().flatten();
            if row.is_none_or(|r| r.file != entry.file) {
                return Err(e.into());
            }
        }
    }
    partial.0 = None;
    Ok(())
}

pub fn conflict(e: &LibraryEntry) -> ApiError {
    ApiError::Conflict(format!(
        "{}@{} was uploaded before: a version is uploaded once, even after its removal (nodes \
         know an image by it): choose another version",
        e.name, e.version
    ))
}

/// An image's file for a node, streamed; `None` when the library has no such image. The file
/// is served as it is: the node checks its SHA-256 against the heartbeat's.
pub async fn file_for_node(
    st: &AppState,
    name: &str,
    version: &str,
) -> ApiResult<Option<(LibraryImage, axum::response::Response)>> {
    check_ref(name, version)?;
    let Some(entry) = st.db.library_image(name, version).await? else { return Ok(None) };
    let path = st.cfg.images_dir().join(&entry.file);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(&format!("opening {}", path.display()), e))?;
    // A file cut short or grown since would end the body early or late: said plainly instead.
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    if len != entry.size_bytes {
        tracing::error!(image = %format!("{name}@{version}"), file = %path.display(), len, size = entry.size_bytes,
            "an image of the library has changed size since its upload");
        return Err(ApiError::Internal(format!(
            "the library's file of {name}@{version} has {len} bytes, not the {} uploaded",
            entry.size_bytes
        )));
    }
    // A read error ends the stream (the node sees a body shorter than its length).
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let size = entry.size_bytes;
    let resp = axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_LENGTH, size)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal("an image's response", e))?;
    Ok(Some((entry.wire(), resp)))
}

/// Files of the library's folder that no image names: uploads a crash or a restart cut off
/// (`.part`), and files of images removed whose deletion failed. Only those untouched for
/// [`SWEEP_AFTER`], so that an upload going on at another replica is left alone (it writes
/// at least every [`UPLOAD_IDLE`]).
pub async fn sweep(st: &AppState) -> ApiResult<()> {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = now_ms();
    if now - LAST.load(std::sync::atomic::Ordering::Relaxed) < 600_000 {
        return Ok(());
    }
    LAST.store(now, std::sync::atomic::Ordering::Relaxed);
    let dir = st.cfg.images_dir();
    let Ok(mut entries) = tokio::fs::read_dir(&dir).await else { return Ok(()) };
    let named: std::collections::HashSet<String> =
        st.db.library_files().await?.into_iter().collect();
    while let Ok(Some(e)) = entries.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.ends_with(".disk") || name.ends_with(".disk.part");
        if !ours || named.contains(&name) {
            continue;
        }
        let old = e
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= SWEEP_AFTER);
        if old {
            match tokio::fs::remove_file(e.path()).await {
                Ok(()) => {
                    tracing::info!(file = %name, "removed a file of the image library that no image names")
                }
                Err(err) => {
                    tracing::warn!(file = %name, error = %err, "cannot remove a stray file of the image library")
                }
            }
        }
    }
    Ok(())
}

/// How long a file of the library's folder that no image names stays before [`sweep`].
pub const SWEEP_AFTER: Duration = Duration::from_secs(3600);
