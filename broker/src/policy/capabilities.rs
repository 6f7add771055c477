//! What a display ticket allows, from the permits that decided it and their annotations
//! (`@max_file_mb`, `@max_session_mb`, `@file_types`, `@scan`, `@max_bytes`, `@images`), and
//! the check of those annotations at load.

use atrium_protocol::filetype::{Kinds, NO_KIND, parse_kinds};
use atrium_protocol::ticket::Capabilities;
use cedar_policy::Policy;

use super::{Action, Policies, Principal, RequestContext, Resource};

/// The annotation on a permit of `file_upload` or `file_download` that limits a file's size,
/// in MiB.
const MAX_FILE_MB: &str = "max_file_mb";
/// Largest `@max_file_mb`: 1 TiB.
const MAX_FILE_MB_LIMIT: u64 = 1 << 20;
/// The annotation on a permit of `file_upload` or `file_download` that limits what all files
/// of a session may move that way, in MiB.
const MAX_SESSION_MB: &str = "max_session_mb";
/// The annotation on a permit of `file_upload` or `file_download` that names the kinds of
/// file allowed (`@file_types("pdf, image")`; atrium_protocol::filetype).
const FILE_TYPES: &str = "file_types";
/// The annotation on a permit of `file_upload` or `file_download` that turns scanning off
/// (`@scan("off")`).
const SCAN: &str = "scan";
/// The annotation on a permit of `clipboard_copy_out` or `clipboard_paste_in` that limits the
/// clipboard text or image crossing, in bytes.
const MAX_BYTES: &str = "max_bytes";
/// The annotation on a permit of `clipboard_copy_out` or `clipboard_paste_in` that lets only
/// text cross, no images (`@images("off")`).
const IMAGES: &str = "images";
/// Largest `@max_bytes`: the protocol's limit for clipboard images (text stops at its own,
/// smaller one whatever the policy says).
const MAX_BYTES_LIMIT: u64 = atrium_protocol::agent::MAX_CLIPBOARD_IMAGE as u64;

/// The smallest number annotated `key` on any of the permits (checked at load).
fn smallest(permits: &[Vec<(String, String)>], key: &str) -> Option<u64> {
    permits
        .iter()
        .filter_map(|a| a.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse::<u64>().ok()))
        .min()
}

/// Uploads' (or downloads') rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileRules {
    max_bytes: u64,
    session_max_bytes: u64,
    types: Kinds,
    scan: bool,
}

/// The rules from the permits that allow uploads (or downloads): the smallest `@max_file_mb`
/// and `@max_session_mb` of them (none: no limit but the desktop's disk), only the kinds every
/// `@file_types` among them names (none: any kind), and `@scan("off")` only when every one
/// says so (scanning is the default). Where several permits apply, the strictest wins.
fn file_rules(permits: &[Vec<(String, String)>]) -> FileRules {
    let scan = permits.iter().any(|a| a.iter().all(|(k, v)| k != SCAN || v != "off"));
    let types = permits
        .iter()
        .filter_map(|a| a.iter().find(|(k, _)| k == FILE_TYPES))
        .filter_map(|(_, v)| parse_kinds(v).ok())
        .fold(None, |all: Option<Kinds>, k| Some(all.map_or(k, |a| a & k)));
    FileRules {
        max_bytes: smallest(permits, MAX_FILE_MB).map_or(0, |mb| mb << 20),
        session_max_bytes: smallest(permits, MAX_SESSION_MB).map_or(0, |mb| mb << 20),
        // Permits whose kinds have nothing in common allow none.
        types: match types {
            None => 0,
            Some(0) => NO_KIND,
            Some(k) => k,
        },
        scan,
    }
}

/// No file may cross this way (the rules of a denied direction).
const NO_FILES: FileRules = FileRules { max_bytes: 0, session_max_bytes: 0, types: 0, scan: true };

/// An error naming the policy when one of its annotations has a value that means nothing.
pub(super) fn check_annotations(p: &Policy) -> Result<(), String> {
    if let Some(v) = p.annotation(MAX_FILE_MB)
        && !v.parse::<u64>().is_ok_and(|mb| (1..=MAX_FILE_MB_LIMIT).contains(&mb))
    {
        return Err(format!(
            "policy {}: @{MAX_FILE_MB}({v:?}) is not a number of MiB from 1 to \
             {MAX_FILE_MB_LIMIT}",
            p.id()
        ));
    }
    if let Some(v) = p.annotation(MAX_SESSION_MB)
        && !v.parse::<u64>().is_ok_and(|mb| (1..=MAX_FILE_MB_LIMIT).contains(&mb))
    {
        return Err(format!(
            "policy {}: @{MAX_SESSION_MB}({v:?}) is not a number of MiB from 1 to \
             {MAX_FILE_MB_LIMIT}",
            p.id()
        ));
    }
    if let Some(v) = p.annotation(FILE_TYPES)
        && let Err(e) = parse_kinds(v)
    {
        return Err(format!("policy {}: @{FILE_TYPES}({v:?}) {e}", p.id()));
    }
    if let Some(v) = p.annotation(MAX_BYTES)
        && !v.parse::<u64>().is_ok_and(|b| (1..=MAX_BYTES_LIMIT).contains(&b))
    {
        return Err(format!(
            "policy {}: @{MAX_BYTES}({v:?}) is not a number of bytes from 1 to \
             {MAX_BYTES_LIMIT}",
            p.id()
        ));
    }
    for key in [SCAN, IMAGES] {
        if let Some(v) = p.annotation(key)
            && v != "on"
            && v != "off"
        {
            return Err(format!("policy {}: @{key}({v:?}) is neither \"on\" nor \"off\"", p.id()));
        }
    }
    Ok(())
}

impl Policies {
    /// The session capabilities policy grants `who` on a pool.
    pub fn capabilities(
        &self,
        who: &Principal<'_>,
        pool: Resource<'_>,
        ctx: &RequestContext,
    ) -> Capabilities {
        let uploads = self.permits(who, Action::FileUpload, pool, ctx);
        let up = uploads.as_deref().map_or(NO_FILES, file_rules);
        let downloads = self.permits(who, Action::FileDownload, pool, ctx);
        let down = downloads.as_deref().map_or(NO_FILES, file_rules);
        let copy_out = self.permits(who, Action::ClipboardCopyOut, pool, ctx);
        let paste_in = self.permits(who, Action::ClipboardPasteIn, pool, ctx);
        let bytes = |p: &Option<Vec<Vec<(String, String)>>>| {
            p.as_deref()
                .and_then(|p| smallest(p, MAX_BYTES))
                .map_or(0, |b| u32::try_from(b).expect("checked at load: at most MAX_BYTES_LIMIT"))
        };
        // Images cross where the clipboard does, unless a permit that applies says
        // `@images("off")` (the strictest wins).
        let images = |p: &Option<Vec<Vec<(String, String)>>>| {
            p.as_deref()
                .is_some_and(|p| p.iter().all(|a| a.iter().all(|(k, v)| k != IMAGES || v != "off")))
        };
        Capabilities {
            view_only: false,
            clipboard_copy_out: copy_out.is_some(),
            clipboard_paste_in: paste_in.is_some(),
            clipboard_out_max_bytes: bytes(&copy_out),
            clipboard_in_max_bytes: bytes(&paste_in),
            clipboard_out_images: images(&copy_out),
            clipboard_in_images: images(&paste_in),
            file_upload: uploads.is_some(),
            file_download: downloads.is_some(),
            shadow: false,
            audio: self.is_allowed(who, Action::Audio, pool, ctx),
            upload_max_bytes: up.max_bytes,
            scan_files: up.scan,
            upload_types: up.types,
            upload_session_max_bytes: up.session_max_bytes,
            download_max_bytes: down.max_bytes,
            scan_downloads: down.scan,
            download_types: down.types,
            download_session_max_bytes: down.session_max_bytes,
        }
    }
}
