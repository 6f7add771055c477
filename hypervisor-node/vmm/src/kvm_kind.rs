//! Which KVM serves `/dev/kvm`: hardware virtualization (`kvm_intel`, `kvm_amd`) or PVM
//! (`kvm_pvm`, a shadow-paging hypervisor under which guest kernel mode is emulated).

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    Intel,
    Amd,
    Pvm,
    /// `/dev/kvm` exists but no known module is loaded.
    Unknown,
    /// No usable `/dev/kvm`.
    None,
}

impl KvmKind {
    /// Reads `/sys/module` and checks `/dev/kvm` can be opened.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"), Path::new("/dev/kvm"))
    }

    /// The same decision on other paths (tests).
    pub fn detect_in(sys_module: &Path, dev_kvm: &Path) -> Self {
        let usable = std::fs::OpenOptions::new().read(true).write(true).open(dev_kvm).is_ok();
        if !usable {
            return Self::None;
        }
        if sys_module.join("kvm_pvm").exists() {
            Self::Pvm
        } else if sys_module.join("kvm_intel").exists() {
            Self::Intel
        } else if sys_module.join("kvm_amd").exists() {
            Self::Amd
        } else {
            Self::Unknown
        }
    }

    /// Hardware virtualization: guests run at native speed in every ring. Only then is the
    /// builtin runtime the node's default for Linux desktops.
    pub fn is_hardware(self) -> bool {
        matches!(self, Self::Intel | Self::Amd)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Intel => "kvm_intel",
            Self::Amd => "kvm_amd",
            Self::Pvm => "kvm_pvm",
            Self::Unknown => "kvm (unknown module)",
            Self::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_reads_the_module_folders() {
        let dir = std::env::temp_dir().join(format!("atrium-kvmkind-{}", std::process::id()));
        let sys = dir.join("module");
        std::fs::create_dir_all(&sys).expect("tmp");
        let fake_kvm = dir.join("kvm");
        std::fs::write(&fake_kvm, b"").expect("file");
        assert_eq!(KvmKind::detect_in(&sys, &dir.join("missing")), KvmKind::None);
        assert_eq!(KvmKind::detect_in(&sys, &fake_kvm), KvmKind::Unknown);
        std::fs::create_dir_all(sys.join("kvm_intel")).expect("dir");
        assert_eq!(KvmKind::detect_in(&sys, &fake_kvm), KvmKind::Intel);
        assert!(KvmKind::Intel.is_hardware());
        std::fs::create_dir_all(sys.join("kvm_pvm")).expect("dir");
        assert_eq!(KvmKind::detect_in(&sys, &fake_kvm), KvmKind::Pvm);
        assert!(!KvmKind::Pvm.is_hardware());
        std::fs::remove_dir_all(dir).ok();
    }
}
