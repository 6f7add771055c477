//! `[recordings]`: where session recordings are kept (policy action `record` says which
//! sessions are recorded) and for how long.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingsSection {
    /// The folder (a volume every broker replica mounts) that holds the recordings' chunks;
    /// default `<broker.data_dir>/recordings`.
    pub dir: Option<PathBuf>,
    /// Days a recording is kept from its start; the broker deletes it after that (1-3650).
    pub retention_days: u32,
    /// A recording that has had no chunk for this long is marked incomplete (its display
    /// proxy stopped without ending it; a later chunk continues it), in seconds (60-86400).
    pub close_after_secs: u64,
    /// The most one recording may store, in MiB (1-1048576): beyond it the broker refuses its
    /// chunks and the viewer's connection ends. Bounds what a stolen node credential can
    /// write into the recordings open on its node.
    pub max_recording_mib: u64,
}

impl Default for RecordingsSection {
    fn default() -> Self {
        Self { dir: None, retention_days: 90, close_after_secs: 300, max_recording_mib: 20_480 }
    }
}

impl RecordingsSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=3650).contains(&self.retention_days) {
            return Err(ConfigError::Invalid("recordings.retention_days must be 1-3650".into()));
        }
        if !(60..=86_400).contains(&self.close_after_secs) {
            return Err(ConfigError::Invalid(
                "recordings.close_after_secs must be 60-86400".into(),
            ));
        }
        if !(1..=1 << 20).contains(&self.max_recording_mib) {
            return Err(ConfigError::Invalid(
                "recordings.max_recording_mib must be 1-1048576".into(),
            ));
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(ConfigError::Invalid("recordings.dir is empty".into()));
        }
        Ok(())
    }
}
