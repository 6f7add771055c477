//! `[images]`: the image library, disk images administrators upload for the nodes
//! (`PUT /api/v1/admin/images/{name}/{version}`; docs/images.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesSection {
    /// The folder (a volume every broker replica mounts) that holds the uploaded disk images;
    /// default `<broker.data_dir>/images`.
    pub dir: Option<PathBuf>,
}

impl ImagesSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(ConfigError::Invalid("images.dir is empty".into()));
        }
        Ok(())
    }
}
