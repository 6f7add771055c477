//! VM runtimes behind one trait: `qemu` ([`qemu`]: one `qemu-system-x86_64` per VM) and, later,
//! `builtin` (Atrium's rust-vmm monitor, one `atrium-node vmm` process per VM).
//!
//! The trait is runtime-neutral: a [`LaunchConfig`] says what to boot (kernel, initramfs, disk,
//! size, display) and where the VM's folder is; a [`VmHandle`] gives the VM's channels
//! ([`Endpoints`]: display, guest agent, serial console, all unix sockets the node connects to)
//! and its controls (resume, screenshot, graceful shutdown, kill, exit). The node does the rest
//! (agent protocol, console log, states, cgroups, API) the same way for every runtime.

pub mod builtin;
pub mod qemu;
pub mod qmp;

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use atrium_protocol::node::{Accel, DisplayEndpoint, DisplaySize, RuntimeKind};
use thiserror::Error;
use tokio::sync::watch;

use crate::cgroup::{CgroupError, VmCgroup};
use crate::image::DiskFormat;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("runtime {0} is not available on this node")]
    Unavailable(RuntimeKind),
    #[error("{0}")]
    Start(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("VM control: {0}")]
    Control(String),
    #[error("the VM is not running")]
    NotRunning,
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl RuntimeError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// A disk: the image's read-only base and the VM's own writable layer over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub base: PathBuf,
    pub base_format: DiskFormat,
    /// Made over `base` when missing (a persistent disk that exists is attached as it is).
    pub layer: PathBuf,
    /// Keep the layer when the VM is removed (a persistent disk).
    pub keep: bool,
}

/// A user's home disk (images that have one; see `Manifest::home_disk`): a disk of its own, no
/// backing file, made empty when missing (the guest formats it on first use) and always kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeDiskConfig {
    pub path: PathBuf,
    pub size_mib: u64,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The VM id (`vm-` and 16 hex digits).
    pub id: String,
    /// The VM's folder (owned by the node; the runtime puts its sockets here).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disk: Option<DiskConfig>,
    /// The user's home disk, attached after `disk` (dedicated desktops of images with one).
    pub home: Option<HomeDiskConfig>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub display: DisplaySize,
    /// The group the VM process must join before it runs.
    pub cgroup: Option<VmCgroup>,
}

/// Where the node reaches a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub display: DisplayEndpoint,
    /// A unix socket speaking the guest-agent protocol (`atrium_protocol::agent`).
    pub agent: PathBuf,
    /// A unix socket carrying the guest's serial console, when the runtime has one.
    pub serial: Option<PathBuf>,
}

/// How a VM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exited with status 0 (a guest that powered off).
    pub clean: bool,
    /// "exited with status 1: <last lines of the runtime's error output>", "killed by signal 9".
    pub description: String,
}

/// A screen image, 8-bit RGB, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Frame {
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            let mut w = enc.write_header().expect("PNG header of a valid size");
            w.write_image_data(&self.rgb).expect("frame data matches its size");
        }
        out
    }
}

/// One running VM.
pub trait VmHandle: Send + Sync + Debug {
    fn endpoints(&self) -> &Endpoints;
    fn accel(&self) -> Option<Accel>;
    /// The VM's main process.
    fn pid(&self) -> Option<u32>;
    /// Starts the guest (VMs are launched paused, so no output is missed).
    fn resume(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;
    fn screenshot(&self) -> BoxFuture<'_, Result<Frame, RuntimeError>>;
    /// Asks the guest to power off (ACPI power button).
    fn request_shutdown(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Ends the VM now and waits until its process is gone.
    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// `Some` once the VM process has exited.
    fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>>;
    /// Removes the files the runtime made for this VM (sockets, a layer that is not kept).
    /// Called after the process is gone.
    fn cleanup(&self) -> Result<(), RuntimeError>;
}

/// The runtimes this build has, set up for this host. (The builtin runtime joins here.)
pub fn available(
    config: &crate::config::NodeConfig,
    kvm: atrium_protocol::node::KvmKind,
) -> Vec<Arc<dyn Runtime>> {
    let mut runtimes: Vec<Arc<dyn Runtime>> =
        vec![Arc::new(qemu::QemuRuntime::new(config.qemu.clone(), kvm))];
    // The builtin VMM needs /dev/kvm (of any kind; it is the default only on hardware KVM).
    if kvm != atrium_protocol::node::KvmKind::Absent {
        match builtin::BuiltinRuntime::new(kvm) {
            Ok(b) => runtimes.push(Arc::new(b)),
            Err(e) => tracing::warn!(error = %e, "the builtin runtime is not available"),
        }
    }
    runtimes
}

/// A way to run VMs.
pub trait Runtime: Send + Sync + Debug {
    fn kind(&self) -> RuntimeKind;
    /// The accelerator VMs get, when fixed for the runtime.
    fn accel(&self) -> Option<Accel>;
    /// Why that accelerator (for the log and `/healthz`).
    fn accel_reason(&self) -> String;
    /// Starts a VM, paused.
    fn launch(&self, cfg: LaunchConfig) -> BoxFuture<'_, Result<Arc<dyn VmHandle>, RuntimeError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_as_png() {
        let f = Frame { width: 2, height: 1, rgb: vec![255, 0, 0, 0, 0, 255] };
        let png_bytes = f.to_png();
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().expect("valid png");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&buf[..6], &[255, 0, 0, 0, 0, 255]);
    }
}
