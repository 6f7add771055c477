//! The configuration of one VM: what the node writes to `FILE.json` for `atrium-node vmm
//! --config FILE.json`. Parsed with `deny_unknown_fields` and validated before anything is built.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most vCPUs one VM may have (APIC ids fit the MADT's `u8`; the recipe is tested with few).
pub const MAX_VCPUS: u8 = 32;
/// Smallest and largest guest memory, in MiB.
pub const MIN_MEMORY_MIB: u32 = 16;
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// Largest framebuffer geometry.
pub const MAX_FB_WIDTH: u32 = 4096;
pub const MAX_FB_HEIGHT: u32 = 2160;
/// Most disks attached to one VM.
pub const MAX_DISKS: usize = 4;
/// Longest kernel command line, in bytes (Linux's x86 `COMMAND_LINE_SIZE`).
pub const MAX_CMDLINE: usize = 2048;

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// A name for logs (the node uses the desktop's VM id).
    pub vm_id: String,
    /// What the vCPUs start.
    pub boot: BootSource,
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The linear framebuffer, if the guest has a screen.
    #[serde(default)]
    pub framebuffer: Option<FramebufferConfig>,
    /// virtio-blk disks, in the order the guest sees them (`vda`, `vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// COM1.
    pub serial: SerialConfig,
    /// The display channel (protocol `atrium_protocol::vmm_channel`); needs a framebuffer.
    #[serde(default)]
    pub display_socket: Option<PathBuf>,
    /// The guest-agent channel: JSON lines bridged to the virtio-console port
    /// `org.atrium.agent.0`.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// The control socket (`crate::control`): status, metrics, pause, resume, power button,
    /// stop.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Build everything but leave the vCPUs paused until `resume` on the control socket (the
    /// node launches VMs paused so that no output is missed).
    #[serde(default)]
    pub start_paused: bool,
    /// Where `snapshot` on the control socket writes (`crate::snapshot`): an existing
    /// directory, whose files are opened when the VM starts. Not for a restored VM.
    #[serde(default)]
    pub snapshot_dir: Option<PathBuf>,
}

/// What the VMM loads and starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BootSource {
    /// A Linux kernel (ELF `vmlinux` or `bzImage`) through the 64-bit boot protocol.
    Kernel {
        path: PathBuf,
        #[serde(default)]
        initramfs: Option<PathBuf>,
        #[serde(default)]
        cmdline: String,
    },
    /// A flat firmware image loaded at 1 MiB and started in 64-bit long mode at CPL 3
    /// (the test firmware, `crate::firmware`).
    Firmware { path: PathBuf },
    /// A snapshot of a running VM (`crate::snapshot`): its memory mapped privately, its
    /// vCPUs and devices as they were. The configuration must have the snapshot's vCPUs,
    /// memory, screen, disks and agent; sockets, logs and disk files are this VM's own.
    Snapshot { dir: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramebufferConfig {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// A shared base image is attached read-only; the guest's writes to it fail.
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Where the guest's console output goes (created or truncated; a FIFO works too).
    pub log_path: PathBuf,
    /// Bytes kept; output past this bound is counted and dropped.
    #[serde(default = "default_serial_bytes")]
    pub max_bytes: u64,
}

fn default_serial_bytes() -> u64 {
    1 << 20
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot parse the VM configuration: {0}")]
    Parse(String),
    #[error("invalid VM configuration: {0}")]
    Invalid(String),
}

impl VmmConfig {
    /// Parses and validates a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that can be checked without touching the machine.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.vm_id.is_empty()
            || self.vm_id.len() > 64
            || !self.vm_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!("vm_id {:?} must be 1 to 64 of [A-Za-z0-9_-]", self.vm_id));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("vcpus must be 1..={MAX_VCPUS}, not {}", self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return bad(format!(
                "memory_mib must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}, not {}",
                self.memory_mib
            ));
        }
        match &self.boot {
            BootSource::Kernel { cmdline, .. } => {
                if cmdline.len() >= MAX_CMDLINE {
                    return bad(format!(
                        "cmdline is {} bytes, the limit is {}",
                        cmdline.len(),
                        MAX_CMDLINE - 1
                    ));
                }
                if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return bad("cmdline must be printable ASCII".to_owned());
                }
            }
            BootSource::Firmware { .. } => {}
            BootSource::Snapshot { .. } if self.snapshot_dir.is_some() => {
                return bad("a restored VM cannot be snapshotted (its memory is the snapshot's \
                            file): snapshot_dir and a snapshot boot exclude each other"
                    .to_owned());
            }
            BootSource::Snapshot { .. } => {}
        }
        if let Some(fb) = self.framebuffer
            && (!(64..=MAX_FB_WIDTH).contains(&fb.width)
                || !(64..=MAX_FB_HEIGHT).contains(&fb.height))
        {
            return bad(format!(
                "framebuffer {}x{} is outside 64x64..={MAX_FB_WIDTH}x{MAX_FB_HEIGHT}",
                fb.width, fb.height
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return bad(format!("at most {MAX_DISKS} disks, not {}", self.disks.len()));
        }
        if self.display_socket.is_some() && self.framebuffer.is_none() {
            return bad("display_socket needs a framebuffer".to_owned());
        }
        if self.start_paused && self.control_socket.is_none() {
            return bad("start_paused needs a control_socket to resume it".to_owned());
        }
        if self.serial.max_bytes == 0 {
            return bad("serial.max_bytes must be above 0".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "vm_id": "vm-1",
            "boot": { "kind": "firmware", "path": "/fw.bin" },
            "vcpus": 1,
            "memory_mib": 64,
            "framebuffer": { "width": 640, "height": 480 },
            "serial": { "log_path": "/tmp/serial.log" },
            "display_socket": "/tmp/d.sock"
        })
    }

    #[test]
    fn a_good_config_parses() {
        let c = VmmConfig::from_json(&base().to_string()).expect("valid");
        assert_eq!(c.serial.max_bytes, 1 << 20);
        assert_eq!(c.boot, BootSource::Firmware { path: "/fw.bin".into() });
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let mut v = base();
        v["extra"] = 1.into();
        assert!(matches!(VmmConfig::from_json(&v.to_string()), Err(ConfigError::Parse(_))));
        let mut v = base();
        v["boot"]["oops"] = 1.into();
        assert!(matches!(VmmConfig::from_json(&v.to_string()), Err(ConfigError::Parse(_))));
        for (key, val) in [
            ("vcpus", serde_json::json!(0)),
            ("vcpus", serde_json::json!(33)),
            ("memory_mib", serde_json::json!(1)),
            ("vm_id", serde_json::json!("a/b")),
            ("framebuffer", serde_json::json!({"width": 10, "height": 480})),
            (
                "disks",
                serde_json::Value::Array(vec![
                    serde_json::json!({"path": "/a", "read_only": true});
                    5
                ]),
            ),
        ] {
            let mut v = base();
            v[key] = val;
            assert!(
                matches!(VmmConfig::from_json(&v.to_string()), Err(ConfigError::Invalid(_))),
                "{key}"
            );
        }
        let mut v = base();
        v["framebuffer"] = serde_json::Value::Null;
        assert!(VmmConfig::from_json(&v.to_string()).is_err(), "display without framebuffer");
        let mut v = base();
        v["boot"] = serde_json::json!({"kind": "kernel", "path": "/k", "cmdline": "a\nb"});
        assert!(VmmConfig::from_json(&v.to_string()).is_err());
        let mut v = base();
        v["boot"] = serde_json::json!({"kind": "snapshot", "dir": "/snap"});
        assert!(VmmConfig::from_json(&v.to_string()).is_ok(), "a restore");
        v["snapshot_dir"] = "/other".into();
        let err = VmmConfig::from_json(&v.to_string()).expect_err("snapshot of a restore");
        assert!(err.to_string().contains("cannot be snapshotted"), "{err}");
    }
}
