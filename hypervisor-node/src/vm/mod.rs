//! The VMs of this node: the table of them, each one's state, and the node's settings they
//! run under. A VM's start is one recipe in [`start`] (reserve capacity ([`capacity`]), its
//! folder, cgroup and disks ([`disks`]), a runtime's launch, the serial console and the guest
//! agent, resume); [`monitor`] follows it (ready, died, health pings); [`stop`] ends it (nothing
//! left behind); what is asked of a running guest (session, clipboard, screen size,
//! screenshot) is in [`guest`], files in and out in [`files`] and [`downloads`]; VMs started
//! as clones of a booted template instead of a boot in [`templates`].
//!
//! Layout under `state_dir`: `vms/<id>/` (the runtime's sockets, the VM's disk layer, and
//! `vm.json` while it runs; removed with the VM) and `disks/<disk>.qcow2` + `disks/<disk>.json`
//! (persistent disks, kept); `firmware/<id>/` or `firmware/disk-<disk>/` (what the firmware of
//! an imported image keeps: UEFI variables, the TPM's state; removed with the VM, or kept with
//! its persistent disk); `templates/<id>/` (a template's frozen disk layer and saved
//! devices, while the node runs). A restarted node takes running VMs back ([`adopt`]).

mod adopt;
mod capacity;
mod disks;
mod downloads;
mod files;
mod guest;
mod monitor;
mod settle;
mod start;
mod stop;
mod templates;

pub use self::downloads::Download;
pub use self::files::StagedFile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use atrium_protocol::node::{
    Accel, FieldError, KvmKind, RuntimeKind, VmInfo, VmSpec, VmState, VmStatus,
};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent_link::{AgentError, AgentLink};
use crate::cgroup::{CgroupManager, VmCgroup};
use crate::config::NodeConfig;
use crate::console::ConsoleLog;
use crate::image::{Image, ImageCatalog};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeError, VmHandle};

/// The kernel module of the sound card the qemu runtime gives a guest that loads it.
const SOUND_MODULE: &str = "snd_hda_intel";
/// Bytes of serial console kept per VM.
const CONSOLE_BYTES: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("image {reference:?} is not on this node (it has: {available})")]
    ImageNotFound { reference: String, available: String },
    #[error("{0}")]
    Capacity(String),
    #[error("{0}")]
    Conflict(String),
    #[error("there is no VM {0:?} on this node")]
    NotFound(String),
    #[error("VM {id} is {state}, not ready")]
    NotReady { id: String, state: &'static str },
    #[error(
        "VM {id} runs an image without Atrium's guest agent: no clipboard, files or screen \
         sizes (its user signs in to its OS)"
    )]
    NoAgent { id: String },
    #[error("the guest agent of VM {id} did not {what} within {secs} s")]
    AgentTimeout { id: String, what: &'static str, secs: u64 },
    #[error("starting VM {id} failed: {message}")]
    Start { id: String, message: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Internal(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone)]
struct Status {
    state: VmState,
    error: Option<String>,
    ready_at_ms: Option<u64>,
    accel: Option<Accel>,
    user: Option<String>,
    /// Grows with each session asked for or ended: a confirmation that arrives after a newer
    /// request does not overwrite what that request recorded.
    session_gen: u64,
}

/// One VM of this node.
#[derive(Debug)]
pub struct Vm {
    pub id: String,
    pub spec: VmSpec,
    pub image: Arc<Image>,
    pub runtime: RuntimeKind,
    pub created_at_ms: u64,
    dir: PathBuf,
    status: Mutex<Status>,
    state_tx: watch::Sender<VmState>,
    handle: Mutex<Option<Arc<dyn VmHandle>>>,
    agent: Mutex<Option<Arc<AgentLink>>>,
    pub console: Arc<ConsoleLog>,
    cgroup: Mutex<Option<VmCgroup>>,
    /// A stop or delete was asked for: the VM's end is not a failure.
    stopping: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Serializes stop and delete of this VM.
    ops: tokio::sync::Mutex<()>,
    /// Serializes session requests and sign-outs: what the guest is sent last is what the node
    /// records last.
    session_op: tokio::sync::Mutex<()>,
    /// Serializes writes of the VM's record: an older status never lands after a newer one.
    persisting: Mutex<()>,
    /// Started as a clone of a template (not booted).
    cloned: AtomicBool,
    /// The template it was cloned from, held while the VM is on the node.
    template: Mutex<Option<Arc<templates::Template>>>,
    /// Its processes' PSS as last sampled, in KiB ([`capacity::sample_usage`]).
    sampled_kib: AtomicU64,
}

impl Vm {
    pub fn state(&self) -> VmState {
        lock(&self.status).state
    }

    pub fn state_watch(&self) -> watch::Receiver<VmState> {
        self.state_tx.subscribe()
    }

    pub fn handle(&self) -> Option<Arc<dyn VmHandle>> {
        lock(&self.handle).clone()
    }

    pub fn agent(&self) -> Option<Arc<AgentLink>> {
        lock(&self.agent).clone()
    }

    /// Its image runs Atrium's guest agent (else the node has no channel into the guest: no
    /// sign-in, clipboard or files, and readiness from the screen).
    pub fn has_agent(&self) -> bool {
        self.image.manifest.has_agent()
    }

    /// The VM's folder (sockets, disk layer).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn set_state(&self, state: VmState, error: Option<String>) {
        let mut s = lock(&self.status);
        s.state = state;
        if error.is_some() {
            s.error = error;
        }
        if state == VmState::Ready && s.ready_at_ms.is_none() {
            s.ready_at_ms = Some(now_ms());
        }
        drop(s);
        self.state_tx.send_replace(state);
    }

    pub fn info(&self) -> VmInfo {
        let s = lock(&self.status).clone();
        let display_endpoint = self.handle().map_or_else(
            || atrium_protocol::node::DisplayEndpoint::VncUnix {
                path: self.dir.join("vnc.sock").display().to_string(),
            },
            |h| h.endpoints().display.clone(),
        );
        VmInfo {
            id: self.id.clone(),
            state: s.state,
            runtime: self.runtime,
            accel: s.accel,
            image: self.image.manifest.reference(),
            vcpus: self.spec.vcpus,
            memory_mib: self.spec.memory_mib,
            display: self.spec.display,
            // The qemu runtime's VGA changes mode; the builtin VMM's framebuffer keeps its size.
            screen: if self.runtime == RuntimeKind::Qemu {
                self.agent().and_then(|a| a.view.screen.borrow().1)
            } else {
                None
            },
            sound: self.has_sound(),
            persistent_disk: self.spec.persistent_disk.clone(),
            user: s.user,
            created_at_ms: self.created_at_ms,
            ready_at_ms: s.ready_at_ms,
            error: s.error,
            display_endpoint,
            cloned: self.cloned.load(Ordering::Relaxed),
            agent: self.has_agent(),
        }
    }

    /// The qemu runtime gives a sound card to a guest whose image loads its driver.
    fn has_sound(&self) -> bool {
        self.runtime == RuntimeKind::Qemu
            && self.image.manifest.modules.iter().any(|m| m == SOUND_MODULE)
    }

    fn holds_capacity(&self) -> bool {
        matches!(self.state(), VmState::Starting | VmState::Ready)
    }
}

/// Everything the node runs.
#[derive(Debug)]
pub struct VmManager {
    config: NodeConfig,
    node_id: String,
    kvm: KvmKind,
    runtimes: Vec<Arc<dyn Runtime>>,
    default_runtime: RuntimeKind,
    images: ImageCatalog,
    cgroups: Option<CgroupManager>,
    vms: Mutex<BTreeMap<String, Arc<Vm>>>,
    vcpus_total: u32,
    /// Guest memory handed out: `memory_mib_physical` × `[capacity] memory_overcommit`.
    memory_mib_total: u64,
    /// Host memory for VMs.
    memory_mib_physical: u64,
    pub metrics: Metrics,
    draining: AtomicBool,
    ping_seq: AtomicU64,
    /// What the VMs use (PSS, KiB), as last sampled ([`capacity::sample_usage`]).
    memory_used_kib: AtomicU64,
    templates: templates::Templates,
    /// `state_dir/templates`.
    templates_dir: PathBuf,
}

impl VmManager {
    /// Sets up the node: checks folders, detects cgroups. What an earlier run left is taken
    /// back or removed by [`Self::take_back_leftovers`].
    pub fn new(
        config: NodeConfig,
        kvm: KvmKind,
        runtimes: Vec<Arc<dyn Runtime>>,
        default_runtime: RuntimeKind,
    ) -> Result<Arc<Self>, VmError> {
        let internal =
            |what: &str, e: &dyn std::fmt::Display| VmError::Internal(format!("{what}: {e}"));
        let state = &config.node.state_dir;
        for dir in [state.join("vms"), state.join("disks"), state.join("firmware")] {
            std::fs::create_dir_all(&dir).map_err(|e| internal(&dir.display().to_string(), &e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| internal(&dir.display().to_string(), &e))?;
        }
        let cgroups = if config.cgroup.enabled {
            let m = CgroupManager::detect(&config.cgroup.root, &config.cgroup.parent)
                .map_err(|e| internal("cgroups (set cgroup.enabled = false to run without)", &e))?;
            tracing::info!("VM limits: {}", m.describe());
            Some(m)
        } else {
            tracing::warn!(
                "cgroup.enabled = false: VMs run without memory, CPU and process limits"
            );
            None
        };

        let templates_dir = templates::Templates::prepare(&config.node.state_dir, cgroups.as_ref())
            .map_err(|e| internal("the templates folder", &e))?;
        let (vcpus_total, memory_mib_physical) = capacity::totals(&config);
        let memory_mib_total = memory_mib_physical
            .saturating_mul(u64::from(config.capacity.memory_overcommit.unwrap_or(1)));
        let manager = Self {
            node_id: config.node_id(),
            images: ImageCatalog::new(config.node.images_dir.clone()),
            config,
            kvm,
            runtimes,
            default_runtime,
            cgroups,
            vms: Mutex::new(BTreeMap::new()),
            vcpus_total,
            memory_mib_total,
            memory_mib_physical,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            ping_seq: AtomicU64::new(1),
            memory_used_kib: AtomicU64::new(0),
            templates: templates::Templates::default(),
            templates_dir,
        };
        let manager = Arc::new(manager);
        capacity::sample_usage(&manager)
            .map_err(|e| internal("starting the thread that reads VMs' memory use", &e))?;
        Ok(manager)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn kvm(&self) -> KvmKind {
        self.kvm
    }

    pub fn default_runtime(&self) -> RuntimeKind {
        self.default_runtime
    }

    pub fn runtimes(&self) -> &[Arc<dyn Runtime>] {
        &self.runtimes
    }

    pub fn images(&self) -> &ImageCatalog {
        &self.images
    }

    pub fn cgroups(&self) -> Option<&CgroupManager> {
        self.cgroups.as_ref()
    }

    pub fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::SeqCst) != draining {
            tracing::info!(draining, "the broker changed this node's draining state");
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Vm>, VmError> {
        lock(&self.vms).get(id).cloned().ok_or_else(|| VmError::NotFound(id.to_owned()))
    }

    pub fn list(&self) -> Vec<VmInfo> {
        let vms: Vec<Arc<Vm>> = lock(&self.vms).values().cloned().collect();
        vms.iter().map(|v| v.info()).collect()
    }

    pub fn statuses(&self) -> Vec<VmStatus> {
        self.list()
            .into_iter()
            .map(|i| VmStatus { id: i.id, state: i.state, error: i.error })
            .collect()
    }

    fn runtime(&self, kind: RuntimeKind) -> Result<Arc<dyn Runtime>, VmError> {
        self.runtimes.iter().find(|r| r.kind() == kind).cloned().ok_or_else(|| {
            VmError::Invalid(FieldError::new(
                "runtime",
                format!("runtime {kind} is not available on this node"),
            ))
        })
    }
}
