//! `GET /metrics`: the node's counters and gauges in Prometheus' text format.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use atrium_protocol::node::VmState;

use crate::vm::VmManager;

#[derive(Debug, Default)]
pub struct Metrics {
    pub created: AtomicU64,
    pub deleted: AtomicU64,
    pub failed: AtomicU64,
    pub start_failures: AtomicU64,
    pub missed_pings: AtomicU64,
    /// VMs an earlier run of the node left running, taken back at start.
    pub taken_back: AtomicU64,
    /// VMs started as clones of a template.
    pub cloned: AtomicU64,
    /// Templates made, and those whose making failed.
    pub templates_made: AtomicU64,
    pub template_failures: AtomicU64,
    /// Seconds from create to agent-ready: (sum, count).
    ready: Mutex<(f64, u64)>,
}

impl Metrics {
    pub fn record_ready(&self, seconds: f64) {
        let mut r = self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.0 += seconds;
        r.1 += 1;
    }

    /// Renders every metric, with the VM table's gauges taken now.
    pub fn render(&self, node: &VmManager) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "atrium_node_vms_created_total",
            "VMs started.",
            self.created.load(Ordering::Relaxed),
        );
        counter(
            "atrium_node_vms_deleted_total",
            "VMs deleted.",
            self.deleted.load(Ordering::Relaxed),
        );
        counter(
            "atrium_node_vms_failed_total",
            "VMs that died or never became ready.",
            self.failed.load(Ordering::Relaxed),
        );
        counter(
            "atrium_node_vm_start_failures_total",
            "VM starts that failed before the VM ran.",
            self.start_failures.load(Ordering::Relaxed),
        );
        counter(
            "atrium_node_vms_taken_back_total",
            "VMs an earlier run of the node left running, taken back at start.",
            self.taken_back.load(Ordering::Relaxed),
        );
        counter(
            "atrium_node_vms_cloned_total",
            "VMs started as clones of a template (no boot).",
            self.cloned.load(Ordering::Relaxed),
        );
        counter(
            "atrium_node_templates_made_total",
            "Templates booted and saved for clones.",
            self.templates_made.load(Ordering::Relaxed),
        );
        counter(
            "atrium_node_template_failures_total",
            "Templates whose making failed (VMs of their kind boot meanwhile).",
            self.template_failures.load(Ordering::Relaxed),
        );
        counter(
            "atrium_node_agent_missed_pings_total",
            "Health pings a guest agent did not answer.",
            self.missed_pings.load(Ordering::Relaxed),
        );
        let (sum, count) = *self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP atrium_node_vm_ready_seconds Time from VM create to guest agent ready.\n\
             # TYPE atrium_node_vm_ready_seconds summary\n\
             atrium_node_vm_ready_seconds_sum {sum}\natrium_node_vm_ready_seconds_count {count}"
        );
        let vms = node.list();
        let _ = writeln!(
            out,
            "# HELP atrium_node_vms VMs on this node by state.\n# TYPE atrium_node_vms gauge"
        );
        for state in [VmState::Starting, VmState::Ready, VmState::Stopped, VmState::Failed] {
            let n = vms.iter().filter(|v| v.state == state).count();
            let _ = writeln!(out, "atrium_node_vms{{state=\"{}\"}} {n}", state.as_str());
        }
        let c = node.capacity();
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("atrium_node_vcpus_total", "vCPUs this node hands out.", u64::from(c.vcpus_total));
        gauge("atrium_node_vcpus_allocated", "vCPUs of running VMs.", u64::from(c.vcpus_allocated));
        gauge(
            "atrium_node_memory_mib_total",
            "Guest memory this node hands out.",
            c.memory_mib_total,
        );
        gauge(
            "atrium_node_memory_mib_allocated",
            "Guest memory of running VMs.",
            c.memory_mib_allocated,
        );
        gauge(
            "atrium_node_memory_mib_used",
            "Host memory the VMs use (their processes' PSS: shared pages counted once) and their templates.",
            c.memory_mib_used,
        );
        gauge(
            "atrium_node_templates",
            "Templates clones start from now (one per image version and VM size).",
            u64::try_from(node.templates_made()).unwrap_or(u64::MAX),
        );
        gauge(
            "atrium_node_draining",
            "1 when the broker drained this node.",
            u64::from(node.draining()),
        );
        out
    }
}
