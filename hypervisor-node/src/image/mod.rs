//! Guest images: what an image directory holds (its manifest), the images a node has, and the
//! builder that makes them from Debian packages ([`build`]).
//!
//! An image is a directory with `manifest.json` beside the files it names: a kernel, an
//! initramfs, optionally a base disk (the images Atrium builds); or a disk that the VM's
//! firmware boots (an operator's own image, [`import`]). Images are versioned; a node keeps several under its
//! `images_dir` (as `images_dir/<any>/manifest.json` or `images_dir/<any>/<any>/manifest.json`),
//! and a VM spec names `NAME` (the newest version) or `NAME@VERSION`.

pub mod build;
pub mod cpio;
pub mod debs;
pub mod desktop;
pub mod elf;
pub mod import;
pub mod modules;
pub mod resolve;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use atrium_protocol::node::{ImageInfo, ImageRef, validate_name};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Manifest format written by this builder.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid image manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: file {file} is {actual}, the manifest says {expected}")]
    FileMismatch { path: PathBuf, file: String, expected: String, actual: String },
}

/// How a disk file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// A home disk per user (dedicated desktops): the VM's persistent disk is this empty disk, which
/// the guest formats on first use, instead of a layer over the image's base. The base (the root
/// file system) then always gets a layer of the VM's own, which goes with the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeDiskSpec {
    pub size_mib: u64,
}

/// How the image boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Boot {
    /// A Linux kernel and initramfs loaded directly, no boot loader (the images Atrium builds).
    Kernel(BootSpec),
    /// The VM's firmware boots the image's disk, as a PC does (imported images).
    Firmware(FirmwareSpec),
}

/// A kernel and initramfs loaded directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: String,
}

/// The firmware a disk is booted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// UEFI: OVMF (Debian's `ovmf`).
    Uefi,
    /// A PC BIOS: SeaBIOS (QEMU's own).
    Bios,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uefi => "uefi",
            Self::Bios => "bios",
        }
    }
}

impl std::str::FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uefi" => Ok(Self::Uefi),
            "bios" => Ok(Self::Bios),
            other => Err(format!("unknown firmware {other:?} (expected uefi or bios)")),
        }
    }
}

/// A disk booted by firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSpec {
    pub firmware: Firmware,
    /// UEFI Secure Boot, with Microsoft's keys enrolled (what Windows and signed Linux boot
    /// loaders expect).
    #[serde(default)]
    pub secure_boot: bool,
    /// A virtual TPM 2.0 per VM (swtpm), as Windows 11 requires.
    #[serde(default)]
    pub tpm: bool,
}

/// Where an imported image came from, and what it has inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// The imported file's name (no folder), its format and its SHA-256.
    pub source_name: String,
    pub source_format: String,
    pub source_sha256: String,
    /// The operator says Atrium's guest agent is installed in it (readiness, sign-in,
    /// clipboard through it); else the desktop is ready when its screen has settled.
    pub agent: bool,
}

/// The image's base disk. Each VM gets a copy-on-write layer over it; the base is never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub file: String,
    pub format: DiskFormat,
    pub size_mib: u64,
    /// What the guest uses it for (`home`: mounted as the user's home; `root`: the root file
    /// system).
    pub purpose: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRecord {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRecord {
    pub sha256: String,
    /// `static`, or `dynamic` (then Debian's libc6 is in the image too).
    pub linking: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub kind: String,
    pub version: String,
    pub created_unix: u64,
    /// `atrium-node <version>, builder <n>`.
    pub builder: String,
    /// Hash of everything the image was made from (packages, agent, builder).
    pub content_key: String,
    pub boot: Boot,
    pub disk: Option<DiskSpec>,
    /// Images whose users keep a home disk of their own (absent in older manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_disk: Option<HomeDiskSpec>,
    pub min_memory_mib: u32,
    /// The agent built into the image (absent in imported images: see `imported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRecord>,
    /// Set for an operator's own image, brought in by `atrium-node image import`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<ImportRecord>,
    /// Kernel modules in the initramfs, in load order.
    pub modules: Vec<String>,
    pub packages: Vec<PackageRecord>,
    pub files: Vec<FileRecord>,
}

impl Manifest {
    /// Checks what a node relies on: names, versions and file names are safe, and every file
    /// the image boots from is listed.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!("format {} is not {MANIFEST_FORMAT}", self.format));
        }
        validate_name("name", &self.name, 64).map_err(|e| e.to_string())?;
        validate_name("version", &self.version, 64).map_err(|e| e.to_string())?;
        for f in &self.files {
            validate_name("files", &f.path, 128).map_err(|e| e.to_string())?;
        }
        let listed = |file: &str| self.files.iter().any(|f| f.path == file);
        let mut needed: Vec<&str> = self.disk.iter().map(|d| d.file.as_str()).collect();
        match &self.boot {
            Boot::Kernel(k) => {
                needed.push(&k.kernel);
                needed.extend(k.initrd.as_deref());
                if k.cmdline.contains('\n') {
                    return Err("boot.cmdline has a newline".into());
                }
                if self.agent.is_none() {
                    return Err("an image booted from its kernel has no agent record".into());
                }
            }
            Boot::Firmware(f) => {
                if self.disk.as_ref().is_none_or(|d| d.purpose != "root") {
                    return Err("an image booted by firmware needs a root disk".into());
                }
                if f.secure_boot && f.firmware != Firmware::Uefi {
                    return Err("secure_boot needs uefi firmware".into());
                }
                if self.imported.is_none() {
                    return Err("an image booted by firmware has no import record".into());
                }
                if self.home_disk.is_some() {
                    return Err("an imported image has no home disk of Atrium's".into());
                }
            }
        }
        for file in needed {
            if !listed(file) {
                return Err(format!("{file:?} is used but not listed in files"));
            }
        }
        if self.home_disk.as_ref().is_some_and(|h| h.size_mib == 0) {
            return Err("home_disk.size_mib is 0".into());
        }
        Ok(())
    }

    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The image's guest runs Atrium's agent (built in, or installed by the operator).
    pub fn has_agent(&self) -> bool {
        self.agent.is_some() || self.imported.as_ref().is_some_and(|i| i.agent)
    }

    /// Booted by firmware (an imported image).
    pub fn firmware(&self) -> Option<FirmwareSpec> {
        match self.boot {
            Boot::Firmware(f) => Some(f),
            Boot::Kernel(_) => None,
        }
    }
}

/// An image on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Each file's size and modification time when it was loaded (and, verified, hashed).
    stamps: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

impl Image {
    /// Reads and validates `dir/manifest.json`; checks that each file exists with its size.
    /// With `verify`, also checks each file's SHA-256.
    pub fn load(dir: &Path, verify: bool) -> Result<Self, ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ImageError::Io { path: path.clone(), source })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| ImageError::Manifest { path: path.clone(), message: e.to_string() })?;
        manifest
            .validate()
            .map_err(|message| ImageError::Manifest { path: path.clone(), message })?;
        let mut stamps = Vec::with_capacity(manifest.files.len());
        for f in &manifest.files {
            let fp = dir.join(&f.path);
            let meta = std::fs::metadata(&fp)
                .map_err(|source| ImageError::Io { path: fp.clone(), source })?;
            stamps.push((fp.clone(), meta.len(), meta.modified().ok()));
            if meta.len() != f.size {
                return Err(ImageError::FileMismatch {
                    path: dir.into(),
                    file: f.path.clone(),
                    expected: format!("{} bytes", f.size),
                    actual: format!("{} bytes", meta.len()),
                });
            }
            if verify {
                let actual = debs::sha256_file(&fp).map_err(|e| ImageError::Manifest {
                    path: fp.clone(),
                    message: e.to_string(),
                })?;
                if actual != f.sha256 {
                    return Err(ImageError::FileMismatch {
                        path: dir.into(),
                        file: f.path.clone(),
                        expected: format!("sha256 {}", f.sha256),
                        actual: format!("sha256 {actual}"),
                    });
                }
            }
        }
        let dir =
            dir.canonicalize().map_err(|source| ImageError::Io { path: dir.into(), source })?;
        Ok(Self { dir, manifest, stamps })
    }

    /// Checks that no file of the image changed since it was loaded (its size and modification
    /// time): a file written since is not what was hashed, and the image is not booted.
    pub fn unchanged(&self) -> Result<(), ImageError> {
        for (path, len, mtime) in &self.stamps {
            let meta = std::fs::metadata(path)
                .map_err(|source| ImageError::Io { path: path.clone(), source })?;
            if meta.len() != *len || meta.modified().ok() != *mtime {
                return Err(ImageError::FileMismatch {
                    path: self.dir.clone(),
                    file: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    expected: "the file that was verified".into(),
                    actual: "a file changed since (its size or time); it is verified again before \
                             its next use"
                        .into(),
                });
            }
        }
        Ok(())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn info(&self) -> ImageInfo {
        ImageInfo {
            name: self.manifest.name.clone(),
            version: self.manifest.version.clone(),
            kind: self.manifest.kind.clone(),
            agent: self.manifest.has_agent(),
            firmware: self.manifest.firmware().map(|f| f.firmware.as_str().to_owned()),
            sha256: self.manifest.imported.as_ref().map(|r| r.source_sha256.clone()),
        }
    }
}

/// Loaded images by folder, with the manifest's modification time.
type Loaded = HashMap<PathBuf, (Option<SystemTime>, Arc<Image>)>;

/// The images under a node's `images_dir`, reloaded when the folder changes.
///
/// A new or changed image is read and its files hashed before it is listed. Hashing a large one
/// (an operator's disk of tens of GiB) takes minutes: such an image is loaded on a thread of its
/// own while lookups go on with the images already loaded (the heartbeat, placements and VM
/// creations do not wait for it), and appears once checked. Smaller ones (up to
/// [`SYNC_LOAD_BYTES`]) are loaded by the lookup that finds them, other lookups waiting.
#[derive(Debug)]
pub struct ImageCatalog {
    root: PathBuf,
    state: Arc<CatalogState>,
    /// Images whose files add up to more than this load in the background.
    sync_limit: u64,
}

/// The largest image (all its files) a lookup loads itself; larger ones load in the background.
pub const SYNC_LOAD_BYTES: u64 = 256 << 20;

#[derive(Debug, Default)]
struct CatalogState {
    loaded: Mutex<Loaded>,
    /// Folders refused, with what their files were then: not read (nor hashed) again until one
    /// of them changes.
    refused: Mutex<Refused>,
    /// Folders being loaded in the background.
    loading: Mutex<std::collections::HashSet<PathBuf>>,
    /// Held by a test to keep background loads waiting.
    #[cfg(test)]
    gate: Mutex<()>,
}

/// Refused folders, with their files when refused and why.
type Refused = HashMap<PathBuf, (FolderStamp, String)>;

/// A folder to load: its manifest's modification time and its files then.
type ToLoad = (PathBuf, Option<SystemTime>, FolderStamp);

impl CatalogState {
    /// Loads and checks `dir` (in the background), and files the result.
    fn load(&self, (dir, mtime, stamp): ToLoad) {
        #[cfg(test)]
        drop(self.gate.lock().unwrap_or_else(PoisonError::into_inner));
        let result = Image::load(&dir, true);
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let mut loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        loading.remove(&dir);
        let _ = file_load((dir, mtime, stamp), result, &mut loaded, &mut refused);
    }
}

/// Files what loading an image folder gave: the image in `loaded`, or the folder and why in
/// `refused` (then the error, once logged).
fn file_load(
    (dir, mtime, stamp): ToLoad,
    result: Result<Image, ImageError>,
    loaded: &mut Loaded,
    refused: &mut Refused,
) -> Option<ImageError> {
    match result {
        Ok(img) => {
            tracing::info!(image = %img.manifest.reference(), dir = %dir.display(), "image loaded");
            loaded.insert(dir, (mtime, Arc::new(img)));
            None
        }
        Err(e) => {
            tracing::warn!("image refused: {e}");
            refused.insert(dir, (stamp, e.to_string()));
            Some(e)
        }
    }
}

/// Each file of a folder by name, with its size and modification time.
type FolderStamp = Vec<(std::ffi::OsString, u64, Option<SystemTime>)>;

fn folder_stamp(dir: &Path) -> FolderStamp {
    let mut stamp: FolderStamp = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.file_name(), m.len(), m.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    stamp.sort();
    stamp
}

impl ImageCatalog {
    pub fn new(root: PathBuf) -> Self {
        Self { root, state: Arc::default(), sync_limit: SYNC_LOAD_BYTES }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Rescans `images_dir` and loads every new or changed image (their manifest or any file)
    /// before it returns, verifying it (hashes checked once per change); for the node's start.
    /// Returns the images and the folders refused by this scan (each logged; a folder refused
    /// before and unchanged since is not read again).
    pub fn refresh(&self) -> (Vec<Arc<Image>>, Vec<ImageError>) {
        self.scan(u64::MAX)
    }

    /// Why the image folder `dir` was refused, if it was (and has not changed since).
    pub fn refusal(&self, dir: &Path) -> Option<String> {
        let refused = self.state.refused.lock().unwrap_or_else(PoisonError::into_inner);
        refused.get(dir).map(|(_, why)| why.clone())
    }

    /// Whether the image folder `dir` is being checked in the background.
    pub fn is_loading(&self, dir: &Path) -> bool {
        self.state.loading.lock().unwrap_or_else(PoisonError::into_inner).contains(dir)
    }

    /// Rescans; a new or changed image whose files add up to more than `sync_limit` bytes is
    /// loaded on a thread of its own (and listed once checked).
    fn scan(&self, sync_limit: u64) -> (Vec<Arc<Image>>, Vec<ImageError>) {
        let mut dirs = Vec::new();
        for level1 in read_dirs(&self.root) {
            if level1.join(MANIFEST_FILE).is_file() {
                dirs.push(level1);
            } else {
                dirs.extend(
                    read_dirs(&level1).into_iter().filter(|d| d.join(MANIFEST_FILE).is_file()),
                );
            }
        }
        let st = &self.state;
        let mut to_load: Vec<ToLoad> = Vec::new();
        let mut errors = Vec::new();
        {
            let mut loaded = st.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            let mut refused = st.refused.lock().unwrap_or_else(PoisonError::into_inner);
            let mut loading = st.loading.lock().unwrap_or_else(PoisonError::into_inner);
            let mut next = HashMap::new();
            let mut still_refused = HashMap::new();
            for dir in dirs {
                let mtime =
                    std::fs::metadata(dir.join(MANIFEST_FILE)).and_then(|m| m.modified()).ok();
                match loaded.get(&dir) {
                    // The same manifest, its files untouched: no need to hash them again.
                    Some((t, img)) if *t == mtime && img.unchanged().is_ok() => {
                        next.insert(dir, (mtime, Arc::clone(img)));
                    }
                    _ => {
                        let stamp = folder_stamp(&dir);
                        if let Some((seen, why)) = refused.remove(&dir)
                            && seen == stamp
                        {
                            // Refused already, and nothing changed since: said once, when refused.
                            still_refused.insert(dir, (seen, why));
                            continue;
                        }
                        let bytes: u64 = stamp.iter().map(|(_, len, _)| len).sum();
                        if bytes > sync_limit {
                            // Being loaded by another lookup, or taken by this one.
                            if loading.insert(dir.clone()) {
                                to_load.push((dir, mtime, stamp));
                            }
                            continue;
                        }
                        // Small: loaded here, other lookups waiting for it.
                        let result = Image::load(&dir, true);
                        let job = (dir, mtime, stamp);
                        errors.extend(file_load(job, result, &mut next, &mut still_refused));
                    }
                }
            }
            *refused = still_refused;
            *loaded = next;
        }
        for job in to_load {
            let bytes: u64 = job.2.iter().map(|(_, len, _)| len).sum();
            tracing::info!(dir = %job.0.display(), mib = bytes >> 20, "checking a new image in the background");
            let state = Arc::clone(st);
            let dir = job.0.clone();
            let spawned = std::thread::Builder::new()
                .name("image-check".into())
                .spawn(move || state.load(job));
            if let Err(e) = spawned {
                tracing::error!(dir = %dir.display(), "cannot start a thread to check an image: {e}");
                st.loading.lock().unwrap_or_else(PoisonError::into_inner).remove(&dir);
            }
        }
        let loaded = st.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let mut images: Vec<_> = loaded.values().map(|(_, i)| Arc::clone(i)).collect();
        images.sort_by(|a, b| {
            (&a.manifest.name, a.manifest.created_unix, &a.manifest.version).cmp(&(
                &b.manifest.name,
                b.manifest.created_unix,
                &b.manifest.version,
            ))
        });
        (images, errors)
    }

    /// The image a reference names: that version, or the newest of the name.
    pub fn resolve(&self, r: &ImageRef) -> Option<Arc<Image>> {
        resolve_in(&self.list(), r)
    }

    /// The images checked and ready; a large new one is checked in the background meanwhile.
    pub fn list(&self) -> Vec<Arc<Image>> {
        self.scan(self.sync_limit).0
    }
}

/// Picks from images sorted oldest first.
pub fn resolve_in(images: &[Arc<Image>], r: &ImageRef) -> Option<Arc<Image>> {
    images
        .iter()
        .rev()
        .find(|i| {
            i.manifest.name == r.name && r.version.as_ref().is_none_or(|v| *v == i.manifest.version)
        })
        .cloned()
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An image over the catalog's limit is checked on a thread of its own and listed once
    /// checked; a damaged one is refused there too, with its reason.
    #[test]
    fn a_large_image_is_checked_in_the_background() {
        let root = std::env::temp_dir().join(format!("atrium-catalog-bg-{}", uuid::Uuid::new_v4()));
        fake_image(&root.join("big/1"), "big", "1", 1);
        fake_image(&root.join("bad/1"), "bad", "1", 1);
        std::fs::write(root.join("bad/1/vmlinuz"), b"KERNEL").expect("write");
        let catalog = ImageCatalog { sync_limit: 0, ..ImageCatalog::new(root.clone()) };
        // While the check waits, lookups answer at once, without it.
        let gate = catalog.state.gate.lock().expect("the gate");
        assert!(catalog.list().is_empty());
        assert!(catalog.is_loading(&root.join("big/1")) && catalog.is_loading(&root.join("bad/1")));
        assert!(catalog.list().is_empty(), "a second lookup loaded it");
        drop(gate);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let bad = root.join("bad/1");
        loop {
            let names: Vec<String> =
                catalog.list().iter().map(|i| i.manifest.reference()).collect();
            if names == ["big@1"] && catalog.refusal(&bad).is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not loaded in the background: {names:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(catalog.refusal(&bad).unwrap_or_default().contains("sha256"));
        std::fs::remove_dir_all(root).expect("cleanup");
    }

    /// A small, valid image directory (fake kernel and initramfs bytes) for tests that need
    /// one without booting it.
    pub fn fake_image(dir: &Path, name: &str, version: &str, created: u64) {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mut files = Vec::new();
        for (f, body) in [("vmlinuz", &b"kernel"[..]), ("initrd.img", b"initrd")] {
            std::fs::write(dir.join(f), body).expect("write");
            files.push(FileRecord {
                path: f.into(),
                size: u64::try_from(body.len()).expect("small"),
                sha256: debs::sha256_file(&dir.join(f)).expect("hash"),
            });
        }
        let m = Manifest {
            format: MANIFEST_FORMAT,
            name: name.into(),
            kind: "console".into(),
            version: version.into(),
            created_unix: created,
            builder: "test".into(),
            content_key: "0".into(),
            boot: Boot::Kernel(BootSpec {
                kernel: "vmlinuz".into(),
                initrd: Some("initrd.img".into()),
                cmdline: "console=ttyS0".into(),
            }),
            disk: None,
            home_disk: None,
            min_memory_mib: 128,
            agent: Some(AgentRecord { sha256: "0".into(), linking: "static".into() }),
            imported: None,
            modules: vec![],
            packages: vec![],
            files,
        };
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec_pretty(&m).expect("json"))
            .expect("write manifest");
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("atrium-img-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn catalog_resolves_names_and_versions() {
        let root = temp("catalog");
        fake_image(&root.join("console/v1"), "console", "v1", 100);
        fake_image(&root.join("console/v2"), "console", "v2", 200);
        fake_image(&root.join("other"), "other", "1", 50);
        std::fs::create_dir_all(root.join("broken")).expect("mkdir");
        std::fs::write(root.join("broken").join(MANIFEST_FILE), b"{not json").expect("w");
        let cat = ImageCatalog::new(root.clone());
        let (images, errors) = cat.refresh();
        assert_eq!(images.len(), 3);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let newest =
            cat.resolve(&ImageRef::parse("image", "console").expect("ref")).expect("found");
        assert_eq!(newest.manifest.version, "v2");
        let v1 = cat.resolve(&ImageRef::parse("image", "console@v1").expect("ref")).expect("found");
        assert_eq!(v1.manifest.version, "v1");
        assert!(cat.resolve(&ImageRef::parse("image", "console@v3").expect("ref")).is_none());
        assert!(cat.resolve(&ImageRef::parse("image", "nope").expect("ref")).is_none());

        // A refused folder is not read again until it changes; a changed image file is.
        assert!(cat.refresh().1.is_empty(), "the unchanged broken folder was read again");
        std::fs::write(root.join("broken").join(MANIFEST_FILE), b"{still not json").expect("w");
        assert_eq!(cat.refresh().1.len(), 1, "the changed folder was not read again");
        std::fs::write(root.join("other").join("vmlinuz"), b"KERNEL").expect("w");
        let (images, errors) = cat.refresh();
        assert_eq!((images.len(), errors.len()), (2, 1), "{errors:?}");
        assert!(matches!(errors[0], ImageError::FileMismatch { .. }), "{errors:?}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn manifests_are_checked() {
        let root = temp("manifest");
        fake_image(&root, "console", "v1", 1);
        let good = Image::load(&root, true).expect("valid image");
        assert_eq!(good.info().kind, "console");

        // A file changed after the build.
        std::fs::write(root.join("vmlinuz"), b"KERNEL").expect("w");
        assert!(matches!(Image::load(&root, true), Err(ImageError::FileMismatch { .. })));
        std::fs::write(root.join("vmlinuz"), b"kern").expect("w");
        assert!(matches!(Image::load(&root, false), Err(ImageError::FileMismatch { .. })));

        let mut m = good.manifest.clone();
        m.files[0].path = "../etc/passwd".into();
        assert!(m.validate().is_err());
        let mut m = good.manifest.clone();
        if let Boot::Kernel(k) = &mut m.boot {
            k.kernel = "bzImage".into();
        }
        assert!(m.validate().unwrap_err().contains("not listed"));
        let mut m = good.manifest.clone();
        m.agent = None;
        assert!(m.validate().unwrap_err().contains("no agent record"));
        // A firmware boot needs its root disk and where it came from.
        let mut m = good.manifest.clone();
        m.boot = Boot::Firmware(FirmwareSpec {
            firmware: Firmware::Bios,
            secure_boot: false,
            tpm: false,
        });
        assert!(m.validate().unwrap_err().contains("root disk"));
        m.disk = Some(DiskSpec {
            file: "vmlinuz".into(),
            format: DiskFormat::Qcow2,
            size_mib: 1,
            purpose: "root".into(),
        });
        assert!(m.validate().unwrap_err().contains("import record"));
        m.imported = Some(ImportRecord {
            source_name: "disk.vmdk".into(),
            source_format: "vmdk".into(),
            source_sha256: "0".into(),
            agent: false,
        });
        assert!(m.validate().is_ok());
        m.agent = None;
        assert!(m.validate().is_ok() && !m.has_agent(), "an imported image without its agent");
        m.boot = Boot::Firmware(FirmwareSpec {
            firmware: Firmware::Bios,
            secure_boot: true,
            tpm: false,
        });
        assert!(m.validate().unwrap_err().contains("secure_boot"));
        let mut m = good.manifest.clone();
        m.format = 99;
        assert!(m.validate().is_err());
        let mut m = good.manifest.clone();
        m.home_disk = Some(HomeDiskSpec { size_mib: 0 });
        assert!(m.validate().is_err());
        m.home_disk = Some(HomeDiskSpec { size_mib: 4096 });
        assert!(m.validate().is_ok());
        let mut m = good.manifest;
        m.version = "a/b".into();
        assert!(m.validate().is_err());

        std::fs::write(root.join(MANIFEST_FILE), br#"{"format":1,"extra":true}"#).expect("w");
        assert!(matches!(Image::load(&root, false), Err(ImageError::Manifest { .. })));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
