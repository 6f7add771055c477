//! The image library: one row per uploaded disk image (its bytes are a file in the images
//! folder; see `crate::http::images`).

use atrium_protocol::node::LibraryImage;
use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Db, DbError, DbResult, col};

/// An image of the library as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LibraryEntry {
    pub name: String,
    pub version: String,
    /// The file in the images folder that holds its bytes.
    #[serde(skip)]
    pub file: String,
    /// SHA-256 of the file as uploaded, hex.
    pub sha256: String,
    pub size_bytes: u64,
    /// `qcow2`, `vmdk`, `vhdx` or `raw`, when the uploader said.
    pub format: Option<String>,
    /// `uefi` or `bios`.
    pub firmware: String,
    pub secure_boot: bool,
    pub tpm: bool,
    pub agent: bool,
    pub min_memory_mib: u32,
    pub uploaded_by: String,
    /// Milliseconds since the Unix epoch.
    pub uploaded_at: i64,
}

impl LibraryEntry {
    /// What a node's heartbeat reply carries of it.
    pub fn wire(self) -> LibraryImage {
        LibraryImage {
            name: self.name,
            version: self.version,
            sha256: self.sha256,
            size_bytes: self.size_bytes,
            format: self.format,
            firmware: self.firmware,
            secure_boot: self.secure_boot,
            tpm: self.tpm,
            agent: self.agent,
            min_memory_mib: self.min_memory_mib,
        }
    }
}

fn from_row(r: &AnyRow) -> DbResult<LibraryEntry> {
    let size: i64 = col(r, "size_bytes")?;
    let memory: i64 = col(r, "min_memory_mib")?;
    Ok(LibraryEntry {
        name: col(r, "name")?,
        version: col(r, "version")?,
        file: col(r, "file")?,
        sha256: col(r, "sha256")?,
        size_bytes: u64::try_from(size)
            .map_err(|_| DbError::Corrupt(format!("images.size_bytes {size}")))?,
        format: col(r, "format")?,
        firmware: col(r, "firmware")?,
        secure_boot: col::<i64>(r, "secure_boot")? != 0,
        tpm: col::<i64>(r, "tpm")? != 0,
        agent: col::<i64>(r, "agent")? != 0,
        min_memory_mib: u32::try_from(memory)
            .map_err(|_| DbError::Corrupt(format!("images.min_memory_mib {memory}")))?,
        uploaded_by: col(r, "uploaded_by")?,
        uploaded_at: col(r, "uploaded_at")?,
    })
}

impl Db {
    /// Adds an image; one of the same name and version is a [`DbError::Conflict`].
    pub async fn insert_library_image(&self, e: &LibraryEntry) -> DbResult<()> {
        let size = i64::try_from(e.size_bytes)
            .map_err(|_| DbError::Corrupt(format!("an image of {} bytes", e.size_bytes)))?;
        let result = sqlx::query(
            "INSERT INTO images (name, version, file, sha256, size_bytes, format, firmware,
               secure_boot, tpm, agent, min_memory_mib, uploaded_by, uploaded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&e.name)
        .bind(&e.version)
        .bind(&e.file)
        .bind(&e.sha256)
        .bind(size)
        .bind(e.format.clone())
        .bind(&e.firmware)
        .bind(i64::from(e.secure_boot))
        .bind(i64::from(e.tpm))
        .bind(i64::from(e.agent))
        .bind(i64::from(e.min_memory_mib))
        .bind(&e.uploaded_by)
        .bind(e.uploaded_at)
        .execute(self.pool())
        .await;
        match result.map_err(DbError::from) {
            Ok(_) => Ok(()),
            Err(err) if err.is_unique_violation() => {
                Err(DbError::Conflict(format!("image {}@{}", e.name, e.version)))
            }
            Err(err) => Err(err),
        }
    }

    /// An image of the library (not one removed).
    pub async fn library_image(&self, name: &str, version: &str) -> DbResult<Option<LibraryEntry>> {
        let row = sqlx::query(
            "SELECT * FROM images WHERE name = $1 AND version = $2 AND deleted_at IS NULL",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Whether `name`@`version` was ever uploaded (even if removed since).
    pub async fn library_image_known(&self, name: &str, version: &str) -> DbResult<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM images WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_one(self.pool())
            .await?;
        Ok(col::<i64>(&row, "n")? > 0)
    }

    /// Every image of the library (not those removed), by name and upload time.
    pub async fn library_images(&self) -> DbResult<Vec<LibraryEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM images WHERE deleted_at IS NULL ORDER BY name, uploaded_at, version",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Marks an image removed (its row stays, so its name and version are not used again);
    /// whether it was there.
    pub async fn delete_library_image(
        &self,
        name: &str,
        version: &str,
        now: i64,
    ) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE images SET deleted_at = $3 WHERE name = $1 AND version = $2 AND deleted_at IS NULL",
        )
        .bind(name)
        .bind(version)
        .bind(now)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// How many images the library holds.
    pub async fn count_library_images(&self) -> DbResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM images WHERE deleted_at IS NULL")
            .fetch_one(self.pool())
            .await?;
        col(&row, "n")
    }

    /// The files of the library's images (not those removed).
    pub async fn library_files(&self) -> DbResult<Vec<String>> {
        let rows = sqlx::query("SELECT file FROM images WHERE deleted_at IS NULL")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| col(r, "file")).collect()
    }
}
