//! What the node can hold: its vCPUs and memory (configured, or read off the host), what its
//! VMs hold of them, and the one step that admits a VM only if it fits.

use std::sync::Arc;

use atrium_protocol::node::Capacity;

use super::{Vm, VmError, VmManager, lock};
use crate::config::NodeConfig;

/// The node's vCPUs and memory for VMs: `[capacity]` where set; else one vCPU per host CPU
/// and the host's memory but what is reserved for the host (1 GiB unless set).
pub(super) fn totals(config: &NodeConfig) -> (u32, u64) {
    let vcpus = config.capacity.vcpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
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
            vms: u32::try_from(vms.len()).unwrap_or(u32::MAX),
            kvm: self.kvm,
            default_runtime: self.default_runtime,
            images: self.images.list().iter().map(|i| i.info()).collect(),
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

/// The vCPUs and MiB held by the VMs that are starting or running.
fn allocated(vms: &[Arc<Vm>]) -> (u32, u64) {
    vms.iter()
        .filter(|v| v.holds_capacity())
        .fold((0, 0), |(c, m), v| (c + v.spec.vcpus, m + u64::from(v.spec.memory_mib)))
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

