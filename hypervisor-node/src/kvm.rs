//! What `/dev/kvm` is on this host, and which accelerator and runtime that leads to.
//!
//! Hardware KVM (`kvm_intel`, `kvm_amd`) runs a guest kernel at native speed. `kvm_pvm` runs
//! guest user mode natively but guest kernel mode under KVM's instruction emulator, 1,000-2,000
//! times slower and missing instructions a stock kernel uses (XSAVE; QEMU's `-cpu host` aborts on
//! MSR 0x10a): there, QEMU's software emulation (TCG) is the faster and working choice.

use std::path::Path;

use atrium_protocol::node::{Accel, KvmKind, RuntimeKind};

use crate::config::{AccelChoice, DefaultRuntime};

/// Detects the kind of `/dev/kvm` from the loaded modules.
pub fn detect() -> KvmKind {
    detect_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

pub fn detect_at(dev: &Path, modules: &Path) -> KvmKind {
    atrium_vmm::kvm_kind::detect_in(modules, dev)
}

pub fn kind_name(kind: KvmKind) -> &'static str {
    match kind {
        KvmKind::Vmx => "vmx",
        KvmKind::Svm => "svm",
        KvmKind::Pvm => "pvm",
        KvmKind::Unknown => "unknown",
        KvmKind::Absent => "absent",
    }
}

/// The accelerator QEMU gets, and why (for the log and `/healthz`).
pub fn choose_accel(kind: KvmKind, choice: AccelChoice) -> (Accel, String) {
    match choice {
        AccelChoice::Kvm => {
            let why = if kind.is_hardware() {
                "configured qemu.accel = kvm; /dev/kvm has hardware virtualization".to_owned()
            } else {
                format!(
                    "configured qemu.accel = kvm although /dev/kvm is {}: guests may fail to boot",
                    kind_name(kind)
                )
            };
            (Accel::Kvm, why)
        }
        AccelChoice::Tcg => (Accel::Tcg, "configured qemu.accel = tcg".into()),
        AccelChoice::Auto => match kind {
            KvmKind::Vmx => (Accel::Kvm, "/dev/kvm has hardware virtualization (kvm_intel)".into()),
            KvmKind::Svm => (Accel::Kvm, "/dev/kvm has hardware virtualization (kvm_amd)".into()),
            KvmKind::Pvm => (
                Accel::Tcg,
                "/dev/kvm is kvm_pvm: guest kernels would run under KVM's instruction emulator \
                 (1,000-2,000x slower, no XSAVE), so QEMU uses software emulation (TCG)"
                    .into(),
            ),
            KvmKind::Unknown => (
                Accel::Tcg,
                "/dev/kvm is of an unknown kind (no kvm_intel or kvm_amd module): using TCG".into(),
            ),
            KvmKind::Absent => (Accel::Tcg, "no usable /dev/kvm: using TCG".into()),
        },
    }
}

/// The runtime for specs that name none: `qemu`, unless the operator chose `builtin`. The
/// builtin runtime has not been shown running the graphical desktop image on a hardware KVM
/// host and takes no home disks, so a node never picks it by itself: a pool (or a VM spec) asks
/// for it by name. `auto` is kept in configurations for that day, and means `qemu` until then.
pub fn default_runtime(choice: DefaultRuntime) -> RuntimeKind {
    match choice {
        DefaultRuntime::Auto | DefaultRuntime::Qemu => RuntimeKind::Qemu,
        DefaultRuntime::Builtin => RuntimeKind::Builtin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_module_serving_dev_kvm() {
        let d = std::env::temp_dir().join(format!("atrium-kvm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("module")).expect("mkdir");
        let dev = d.join("kvm");
        assert_eq!(detect_at(&dev, &d.join("module")), KvmKind::Absent);
        std::fs::write(&dev, b"").expect("fake device");
        assert_eq!(detect_at(&dev, &d.join("module")), KvmKind::Unknown);
        std::fs::create_dir_all(d.join("module/kvm_intel")).expect("mkdir");
        assert_eq!(detect_at(&dev, &d.join("module")), KvmKind::Vmx);
        std::fs::create_dir_all(d.join("module/kvm_pvm")).expect("mkdir");
        assert_eq!(detect_at(&dev, &d.join("module")), KvmKind::Pvm);
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn pvm_and_missing_kvm_use_tcg() {
        assert_eq!(choose_accel(KvmKind::Vmx, AccelChoice::Auto).0, Accel::Kvm);
        assert_eq!(choose_accel(KvmKind::Svm, AccelChoice::Auto).0, Accel::Kvm);
        let (accel, why) = choose_accel(KvmKind::Pvm, AccelChoice::Auto);
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("kvm_pvm"));
        assert_eq!(choose_accel(KvmKind::Absent, AccelChoice::Auto).0, Accel::Tcg);
        assert_eq!(choose_accel(KvmKind::Vmx, AccelChoice::Tcg).0, Accel::Tcg);
        assert!(choose_accel(KvmKind::Pvm, AccelChoice::Kvm).1.contains("may fail"));
    }

    #[test]
    fn qemu_is_the_default_unless_the_operator_chose_builtin() {
        assert_eq!(default_runtime(DefaultRuntime::Auto), RuntimeKind::Qemu);
        assert_eq!(default_runtime(DefaultRuntime::Qemu), RuntimeKind::Qemu);
        assert_eq!(default_runtime(DefaultRuntime::Builtin), RuntimeKind::Builtin);
    }
}
