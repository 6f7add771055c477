//! A VM's disks: a throwaway layer over the image's base in the VM's folder, or a persistent
//! disk kept under `disks/` (`<disk>.qcow2` and what it was made from, `<disk>.json`): a layer
//! over the image's base, or the user's home disk when the image has `home_disk`.

use std::path::PathBuf;

use atrium_protocol::node::{ImageRef, VmSpec};
use serde::{Deserialize, Serialize};

use super::{Vm, VmError, VmManager, now_ms};
use crate::image::Image;
use crate::runtime::{DiskConfig, HomeDiskConfig};

/// What a persistent disk was made from (`disks/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DiskMeta {
    image: String,
    created_unix: u64,
    /// A home disk of its own (the image has `home_disk`), not a layer over the image's base:
    /// it is not tied to the image's version.
    #[serde(default)]
    home: bool,
}

/// The persistent disk a VM asks for, as found on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExistingDisk {
    /// None asked for, or not made yet (the VM's start makes it).
    New,
    /// A home disk (`true`) or a layer over an image's base (`false`).
    Made { home: bool },
}

impl VmManager {
    fn disk_paths(&self, disk: &str) -> (PathBuf, PathBuf) {
        let d = self.config.node.state_dir.join("disks");
        (d.join(format!("{disk}.qcow2")), d.join(format!("{disk}.json")))
    }

    /// The image a VM of `spec` runs: `image_ref`, unless its persistent disk is a layer made
    /// over another version (a layer needs the very base it was made over; a home disk only
    /// the same kind of image, in any version: the desktop can be updated under a user's home).
    pub(super) fn image_for_disk(
        &self,
        spec: &VmSpec,
        image_ref: ImageRef,
    ) -> Result<(ImageRef, ExistingDisk), VmError> {
        let Some(disk) = &spec.persistent_disk else { return Ok((image_ref, ExistingDisk::New)) };
        let (_, meta_path) = self.disk_paths(disk);
        let Ok(text) = std::fs::read_to_string(&meta_path) else {
            return Ok((image_ref, ExistingDisk::New));
        };
        let meta: DiskMeta = serde_json::from_str(&text)
            .map_err(|e| VmError::Internal(format!("{}: {e}", meta_path.display())))?;
        let made_from = ImageRef::parse("image", &meta.image)?;
        let version_differs = !meta.home
            && image_ref.version.as_ref().is_some_and(|v| Some(v) != made_from.version.as_ref());
        if made_from.name != image_ref.name || version_differs {
            return Err(VmError::Conflict(format!(
                "persistent disk {disk:?} was made from image {}, not {image_ref}",
                meta.image
            )));
        }
        let image_ref = if meta.home { image_ref } else { made_from };
        Ok((image_ref, ExistingDisk::Made { home: meta.home }))
    }

    /// The disks of `vm`'s start: the persistent disk is the user's home disk when the image
    /// has one, else the layer over the image's base; a persistent disk's record is written the
    /// first time.
    pub(super) fn attach_disks(
        &self,
        vm: &Vm,
    ) -> Result<(Option<DiskConfig>, Option<HomeDiskConfig>), VmError> {
        let m = &vm.image.manifest;
        let persistent = match &vm.spec.persistent_disk {
            Some(name) => {
                let (path, meta_path) = self.disk_paths(name);
                if !meta_path.exists() {
                    let meta = DiskMeta {
                        image: m.reference(),
                        created_unix: now_ms() / 1000,
                        home: m.home_disk.is_some(),
                    };
                    std::fs::write(&meta_path, serde_json::to_vec(&meta).expect("serializes"))
                        .map_err(|e| VmError::Internal(format!("{}: {e}", meta_path.display())))?;
                }
                Some(path)
            }
            None => None,
        };
        let (layer_keep, home) = match (&m.home_disk, persistent) {
            (Some(h), Some(path)) => (None, Some(HomeDiskConfig { path, size_mib: h.size_mib })),
            (Some(_), None) => (None, None),
            (None, kept) => (kept, None),
        };
        let disk = m.disk.as_ref().map(|d| {
            let base = vm.image.file(&d.file);
            match layer_keep {
                Some(layer) => DiskConfig { base, base_format: d.format, layer, keep: true },
                None => DiskConfig {
                    base,
                    base_format: d.format,
                    layer: vm.dir.join("disk.qcow2"),
                    keep: false,
                },
            }
        });
        Ok((disk, home))
    }
}

/// A home disk is no layer, and a layer no home disk.
pub(super) fn check_disk_kind(
    spec: &VmSpec,
    existing: ExistingDisk,
    image: &Image,
) -> Result<(), VmError> {
    if let (ExistingDisk::Made { home }, Some(disk)) = (existing, &spec.persistent_disk)
        && home != image.manifest.home_disk.is_some()
    {
        return Err(VmError::Conflict(format!(
            "persistent disk {disk:?} is {}, and image {} has {}",
            if home { "a home disk" } else { "a layer over an image" },
            image.manifest.reference(),
            if home { "no home disks" } else { "home disks" }
        )));
    }
    Ok(())
}
