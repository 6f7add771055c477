//! Which KVM serves `/dev/kvm`: hardware virtualization (`kvm_intel`, `kvm_amd`) or PVM
//! (`kvm_pvm`, a shadow-paging hypervisor under which guest kernel mode is emulated). The kinds
//! are the protocol's [`KvmKind`], which the node reports to the broker.

use std::path::Path;

pub use atrium_protocol::node::KvmKind;

/// Reads `/sys/module` and checks `/dev/kvm` can be opened.
pub fn detect() -> KvmKind {
    detect_in(Path::new("/sys/module"), Path::new("/dev/kvm"))
}

/// The same decision on other paths (tests).
pub fn detect_in(sys_module: &Path, dev_kvm: &Path) -> KvmKind {
    let usable = std::fs::OpenOptions::new().read(true).write(true).open(dev_kvm).is_ok();
    if !usable {
        return KvmKind::Absent;
    }
    if sys_module.join("kvm_pvm").exists() {
        KvmKind::Pvm
    } else if sys_module.join("kvm_intel").exists() {
        KvmKind::Vmx
    } else if sys_module.join("kvm_amd").exists() {
        KvmKind::Svm
    } else {
        KvmKind::Unknown
    }
}

/// The module behind a kind, for logs.
pub fn name(kind: KvmKind) -> &'static str {
    match kind {
        KvmKind::Vmx => "kvm_intel",
        KvmKind::Svm => "kvm_amd",
        KvmKind::Pvm => "kvm_pvm",
        KvmKind::Unknown => "kvm (unknown module)",
        KvmKind::Absent => "none",
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
        assert_eq!(detect_in(&sys, &dir.join("missing")), KvmKind::Absent);
        assert_eq!(detect_in(&sys, &fake_kvm), KvmKind::Unknown);
        std::fs::create_dir_all(sys.join("kvm_intel")).expect("dir");
        assert_eq!(detect_in(&sys, &fake_kvm), KvmKind::Vmx);
        assert!(KvmKind::Vmx.is_hardware());
        std::fs::create_dir_all(sys.join("kvm_pvm")).expect("dir");
        assert_eq!(detect_in(&sys, &fake_kvm), KvmKind::Pvm);
        assert!(!KvmKind::Pvm.is_hardware());
        std::fs::remove_dir_all(dir).ok();
    }
}
