//! Atrium's builtin virtual machine monitor, on the rust-vmm crates (`kvm-ioctls`,
//! `vm-memory`, `vm-superio`, `linux-loader`). One process per VM; no async runtime inside:
//! one thread per vCPU, one device event loop, one control-socket thread.
//!
//! [`run`] builds a VM from a [`VmmConfig`] in one linear recipe (memory, VM, devices, boot
//! payload, vCPUs), runs it, and returns why it stopped.

pub mod config;
pub mod control;
pub mod display_client;
pub mod firmware;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod kvm_kind;
pub mod snapshot;

mod acpi;
mod arch;
mod boot;
mod builder;
mod conn;
mod devices;
mod event_loop;
mod layout;
mod main_loop;
mod memory;
mod metrics;
mod seccomp;
mod vcpu;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use builder::run;
pub use config::VmmConfig;
pub use kvm_kind::KvmKind;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum ExitReason {
    /// Stopped on request (control socket).
    Stopped,
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset; the VMM stops and the node decides whether to restart it.
    Reboot,
    /// The vCPU hit a triple fault.
    TripleFault,
    /// The guest did something KVM could not run (emulation failure, failed entry).
    GuestFault(String),
}

#[derive(Debug, Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    #[error(transparent)]
    Bus(#[from] devices::bus::BusError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
}

/// Messages to the VMM's main thread (from vCPU threads and the control socket).
#[derive(Debug)]
pub enum VmmMessage {
    Vcpu(vcpu::VcpuReport),
    Control(control::ControlRequest, std::sync::mpsc::Sender<control::ControlResponse>),
}
