//! What the node can hold: its vCPUs and memory (configured, or read off the host; memory times
//! `[capacity] memory_overcommit`), what its VMs hold of them and really use (PSS), and the one
//! step that admits a VM only if it fits both.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atrium_protocol::node::{Capacity, fits_real_use};

use super::{Vm, VmError, VmManager, lock};
use crate::config::{DEFAULT_VCPU_OVERCOMMIT, NodeConfig};

/// The node's vCPUs and memory for VMs: `[capacity]` where set; else `vcpu_overcommit` vCPUs
/// per host CPU and the host's memory but what is reserved for the host (1 GiB unless set).
pub(super) fn totals(config: &NodeConfig) -> (u32, u64) {
    let vcpus = config.capacity.vcpus.unwrap_or_else(|| {
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        cpus.saturating_mul(config.capacity.vcpu_overcommit.unwrap_or(DEFAULT_VCPU_OVERCOMMIT))
    });
    let memory_mib = config.capacity.memory_mib.unwrap_or_else(|| {
        host_memory_mib().saturating_sub(config.capacity.reserved_memory_mib.unwrap_or(1024))
    });
    (vcpus, memory_mib)
}

impl VmManager {
    pub fn capacity(&self) -> Capacity {
        let vms: Vec<Arc<Vm>> = lock(&self.vms).values().cloned().collect();
        let (vcpus, mem) = allocated(&vms);
        Capacity {
            vcpus_total: self.vcpus_total,
            vcpus_allocated: vcpus,
            memory_mib_total: self.memory_mib_total,
            memory_mib_allocated: mem,
            memory_mib_used: (self.memory_used_kib.load(Ordering::Relaxed)
                + self.templates_resident_kib())
            .div_ceil(1024),
            memory_mib_physical: self.memory_mib_physical,
            vms: u32::try_from(vms.len()).unwrap_or(u32::MAX),
            kvm: self.kvm,
            default_runtime: self.default_runtime,
            images: self.images.list().iter().map(|i| i.info()).collect(),
            image_fetches: Vec::new(),
        }
    }

    /// Adds the VM to the table if the node has room for it, in one step.
    pub(super) fn reserve(&self, vm: &Arc<Vm>) -> Result<(), VmError> {
        let mut vms = lock(&self.vms);
        let live: Vec<Arc<Vm>> = vms.values().cloned().collect();
        let (vcpus, mem) = allocated(&live);
        if vcpus + vm.spec.vcpus > self.vcpus_total {
            return Err(VmError::Capacity(format!(
                "not enough vCPUs: {} asked, {} of {} free",
                vm.spec.vcpus,
                self.vcpus_total.saturating_sub(vcpus),
                self.vcpus_total
            )));
        }
        if mem + u64::from(vm.spec.memory_mib) > self.memory_mib_total {
            return Err(VmError::Capacity(format!(
                "not enough memory: {} MiB asked, {} of {} MiB free",
                vm.spec.memory_mib,
                self.memory_mib_total.saturating_sub(mem),
                self.memory_mib_total
            )));
        }
        // With overcommit, what the VMs really use must leave room for this one's share.
        let used = self.memory_used_mib(&live);
        if !fits_real_use(used, self.memory_mib_physical, self.memory_mib_total, vm.spec.memory_mib)
        {
            return Err(VmError::Capacity(format!(
                "not enough memory: the VMs use {used} MiB of {} MiB (memory overcommit {}), and \
                 a VM of {} MiB needs its share beside them",
                self.memory_mib_physical,
                self.memory_mib_total / self.memory_mib_physical.max(1),
                vm.spec.memory_mib
            )));
        }
        if let Some(disk) = &vm.spec.persistent_disk
            && let Some(other) = live.iter().find(|o| o.spec.persistent_disk.as_ref() == Some(disk))
        {
            return Err(VmError::Conflict(format!(
                "persistent disk {disk:?} is in use by VM {}",
                other.id
            )));
        }
        vms.insert(vm.id.clone(), Arc::clone(vm));
        Ok(())
    }
}

impl VmManager {
    /// What the VMs are counted to use for the check of a new VM, in MiB: each VM at least its
    /// share of host memory (guest memory ÷ the overcommit; a VM started since the last sample
    /// counts that much until it is read), the templates' memory, and the templates being made
    /// at their share.
    fn memory_used_mib(&self, vms: &[Arc<Vm>]) -> u64 {
        let share = |memory_mib: u32| {
            let s = u128::from(memory_mib) * u128::from(self.memory_mib_physical)
                / u128::from(self.memory_mib_total.max(1));
            u64::try_from(s).unwrap_or(u64::MAX)
        };
        let vms: u64 = vms
            .iter()
            .filter(|v| v.holds_capacity())
            .map(|v| {
                v.sampled_kib.load(Ordering::Relaxed).div_ceil(1024).max(share(v.spec.memory_mib))
            })
            .fold(0, u64::saturating_add);
        let making: u64 =
            self.templates_being_made().into_iter().map(share).fold(0, u64::saturating_add);
        vms.saturating_add(self.templates_resident_kib().div_ceil(1024)).saturating_add(making)
    }
}

/// How often the VMs' memory use is read (their page tables are walked: not on every call).
const USAGE_EVERY: Duration = Duration::from_secs(5);

/// Reads what the VMs of `manager` use (PSS) every [`USAGE_EVERY`], and sweeps its templates,
/// on a thread of its own (off the async workers), until the manager is gone.
pub(super) fn sample_usage(manager: &Arc<VmManager>) -> std::io::Result<()> {
    let weak = Arc::downgrade(manager);
    std::thread::Builder::new().name("vm-memory".into()).spawn(move || {
        while let Some(m) = weak.upgrade() {
            let vms: Vec<Arc<Vm>> = lock(&m.vms).values().cloned().collect();
            let mut kib = 0u64;
            for v in &vms {
                let own = pss_kib(v);
                v.sampled_kib.store(own, Ordering::Relaxed);
                kib = kib.saturating_add(own);
            }
            m.memory_used_kib.store(kib, Ordering::Relaxed);
            // Templates no clone started from for a while, or whose image left, go.
            m.sweep_templates();
            drop((m, vms));
            std::thread::sleep(USAGE_EVERY);
        }
    })?;
    Ok(())
}

/// The vCPUs and MiB held by the VMs that are starting or running.
fn allocated(vms: &[Arc<Vm>]) -> (u32, u64) {
    vms.iter()
        .filter(|v| v.holds_capacity())
        .fold((0, 0), |(c, m), v| (c + v.spec.vcpus, m + u64::from(v.spec.memory_mib)))
}

impl Vm {
    /// The host memory this VM's processes use now, by PSS, in KiB ([`pss_kib`]).
    pub fn memory_used_kib(&self) -> u64 {
        pss_kib(self)
    }
}

/// The host memory `vm`'s processes use, by their proportional set size (a page shared by n
/// processes counts 1/n to each), in KiB: those in its cgroup, else its main process.
fn pss_kib(vm: &Vm) -> u64 {
    let group = lock(&vm.cgroup).clone();
    let pids = match group {
        Some(g) => g.pids(),
        None => vm.handle().and_then(|h| h.pid()).into_iter().collect(),
    };
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|s| parse_pss_kib(&s))
        .sum()
}

/// The `Pss:` line of a `/proc/<pid>/smaps_rollup`, in KiB.
fn parse_pss_kib(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
            })
        })
        .map_or(0, |kb| kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_is_read_off_smaps_rollup() {
        let text = "00400000-7ffd1 ---p 00000000 00:00 0 [rollup]\nRss:  204800 kB\n\
                    Pss:  102400 kB\nPss_Anon:  90000 kB\nShared_Clean: 0 kB\n";
        assert_eq!(parse_pss_kib(text), Some(102_400));
        assert_eq!(parse_pss_kib("Rss: 1 kB\nPss_Anon: 3 kB\n"), None);
        assert_eq!(parse_pss_kib("Pss: many kB\n"), None);
        // This process's own rollup reads back as some memory.
        let own = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
        assert!(parse_pss_kib(&own).is_some_and(|k| k > 0), "{own}");
    }

    #[test]
    fn vcpus_are_the_setting_or_the_host_cpus_times_the_overcommit() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpus = u32::try_from(cpus).expect("a few CPUs");
        let mut c = NodeConfig::default();
        c.capacity.memory_mib = Some(2048);
        assert_eq!(totals(&c), (cpus * DEFAULT_VCPU_OVERCOMMIT, 2048));
        c.capacity.vcpu_overcommit = Some(1);
        assert_eq!(totals(&c).0, cpus);
        c.capacity.vcpu_overcommit = Some(8);
        assert_eq!(totals(&c).0, cpus * 8);
        // A set number of vCPUs is the node's, whatever the overcommit.
        c.capacity.vcpus = Some(3);
        assert_eq!(totals(&c).0, 3);
    }
}
