//! The VMs of this node: create (reserve capacity, lay out the VM's folder, cgroup and disk,
//! launch through a runtime, connect the serial console and the guest agent, resume), watch
//! (ready, died, health pings), stop, delete (nothing left behind); what is asked of a running
//! guest (session, clipboard, screen size, screenshot) is in [`guest`].
//!
//! Layout under `state_dir`: `vms/<id>/` (the runtime's sockets, the VM's disk layer, and
//! `vm.json` while it runs; removed with the VM) and `disks/<disk>.qcow2` + `disks/<disk>.json`
//! (persistent disks, kept). A restarted node takes running VMs back ([`adopt`]).

mod adopt;
mod downloads;
mod files;
mod guest;

pub use self::downloads::Download;
pub use self::files::StagedFile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atrium_protocol::agent::HostMessage;
use atrium_protocol::node::{
    Accel, Capacity, FieldError, ImageRef, KvmKind, RuntimeKind, VmInfo, VmSpec, VmState, VmStatus,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent_link::{AgentError, AgentLink};
use crate::cgroup::{CgroupManager, Limits, VmCgroup};
use crate::config::NodeConfig;
use crate::console::{self, ConsoleLog};
use crate::image::{Image, ImageCatalog};
use crate::metrics::Metrics;
use crate::runtime::{
    DiskConfig, ExitInfo, HomeDiskConfig, LaunchConfig, Runtime, RuntimeError, VmHandle,
};

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

/// What a persistent disk was made from (`disks/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DiskMeta {
    image: String,
    created_unix: u64,
    /// A home disk of its own (the image has `home_disk`), not a layer over the image's base:
    /// it is not tied to the image's version.
    #[serde(default)]
    home: bool,
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
    memory_mib_total: u64,
    pub metrics: Metrics,
    draining: AtomicBool,
    ping_seq: AtomicU64,
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
        for dir in [config.node.state_dir.join("vms"), config.node.state_dir.join("disks")] {
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
        let vcpus_total = config.capacity.vcpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        });
        let memory_mib_total = config.capacity.memory_mib.unwrap_or_else(|| {
            host_memory_mib().saturating_sub(config.capacity.reserved_memory_mib.unwrap_or(1024))
        });
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
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            ping_seq: AtomicU64::new(1),
        };
        Ok(Arc::new(manager))
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

    fn runtime(&self, kind: RuntimeKind) -> Result<Arc<dyn Runtime>, VmError> {
        self.runtimes.iter().find(|r| r.kind() == kind).cloned().ok_or_else(|| {
            VmError::Invalid(FieldError::new(
                "runtime",
                format!("runtime {kind} is not available on this node"),
            ))
        })
    }

    fn disk_paths(&self, disk: &str) -> (PathBuf, PathBuf) {
        let d = self.config.node.state_dir.join("disks");
        (d.join(format!("{disk}.qcow2")), d.join(format!("{disk}.json")))
    }

    /// `POST /api/v1/vms`: checks the spec, finds the image, and starts the VM.
    pub async fn create(self: &Arc<Self>, spec: VmSpec) -> Result<VmInfo, VmError> {
        let mut image_ref = spec.validate()?;
        let mut home_disk = None;
        // A persistent disk stays with the image version it was made from.
        if let Some(disk) = &spec.persistent_disk {
            let (_, meta_path) = self.disk_paths(disk);
            if let Ok(text) = std::fs::read_to_string(&meta_path) {
                let meta: DiskMeta = serde_json::from_str(&text)
                    .map_err(|e| VmError::Internal(format!("{}: {e}", meta_path.display())))?;
                let made_from = ImageRef::parse("image", &meta.image)?;
                // A layer needs the very base it was made over; a home disk only the same kind
                // of image (any version: the desktop can be updated under a user's home).
                let version_differs = !meta.home
                    && image_ref
                        .version
                        .as_ref()
                        .is_some_and(|v| Some(v) != made_from.version.as_ref());
                if made_from.name != image_ref.name || version_differs {
                    return Err(VmError::Conflict(format!(
                        "persistent disk {disk:?} was made from image {}, not {image_ref}",
                        meta.image
                    )));
                }
                if !meta.home {
                    image_ref = made_from;
                }
                home_disk = Some(meta.home);
            }
        }
        let image = self.images.resolve(&image_ref).ok_or_else(|| VmError::ImageNotFound {
            reference: image_ref.to_string(),
            available: {
                let names: Vec<String> =
                    self.images.list().iter().map(|i| i.manifest.reference()).collect();
                if names.is_empty() { "no images".into() } else { names.join(", ") }
            },
        })?;
        // A home disk is no layer, and a layer no home disk.
        if let (Some(home), Some(disk)) = (home_disk, &spec.persistent_disk)
            && home != image.manifest.home_disk.is_some()
        {
            return Err(VmError::Conflict(format!(
                "persistent disk {disk:?} is {}, and image {} has {}",
                if home { "a home disk" } else { "a layer over an image" },
                image.manifest.reference(),
                if home { "no home disks" } else { "home disks" }
            )));
        }
        let vm = self.launch(spec, image).await?;
        Ok(vm.info())
    }

    /// Starts a VM of `image` (already resolved: `atrium-node run` names a folder).
    pub async fn launch(
        self: &Arc<Self>,
        spec: VmSpec,
        image: Arc<Image>,
    ) -> Result<Arc<Vm>, VmError> {
        spec.validate()?;
        let kind = spec.runtime.unwrap_or(self.default_runtime);
        let runtime = self.runtime(kind)?;
        if spec.memory_mib < image.manifest.min_memory_mib {
            return Err(FieldError::new(
                "memory_mib",
                format!(
                    "image {} needs at least {} MiB",
                    image.manifest.reference(),
                    image.manifest.min_memory_mib
                ),
            )
            .into());
        }
        let id = format!("vm-{:016x}", rand::random::<u64>());
        let (state_tx, _) = watch::channel(VmState::Starting);
        let vm = Arc::new(Vm {
            dir: self.config.node.state_dir.join("vms").join(&id),
            id: id.clone(),
            spec,
            image,
            runtime: kind,
            created_at_ms: now_ms(),
            status: Mutex::new(Status {
                state: VmState::Starting,
                error: None,
                ready_at_ms: None,
                accel: runtime.accel(),
                user: None,
                session_gen: 0,
            }),
            state_tx,
            handle: Mutex::new(None),
            agent: Mutex::new(None),
            console: Arc::new(ConsoleLog::new(CONSOLE_BYTES)),
            cgroup: Mutex::new(None),
            stopping: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            ops: tokio::sync::Mutex::new(()),
            session_op: tokio::sync::Mutex::new(()),
            persisting: Mutex::new(()),
        });
        self.reserve(&vm)?;
        tracing::info!(vm = %id, image = %vm.image.manifest.reference(), runtime = %kind, vcpus = vm.spec.vcpus, memory_mib = vm.spec.memory_mib, "starting VM");
        if let Err(e) = self.start(&vm, runtime.as_ref()).await {
            tracing::error!(vm = %id, "starting the VM failed: {e}");
            self.metrics.start_failures.fetch_add(1, Ordering::Relaxed);
            vm.stopping.store(true, Ordering::SeqCst);
            if let Err(e2) = self.teardown(&vm).await {
                tracing::error!(vm = %id, "cleaning up after the failed start: {e2}");
            }
            lock(&self.vms).remove(&id);
            return Err(VmError::Start { id, message: e.to_string() });
        }
        self.metrics.created.fetch_add(1, Ordering::Relaxed);
        vm.persist();
        Ok(vm)
    }

    /// Adds the VM to the table if the node has room for it, in one step.
    fn reserve(&self, vm: &Arc<Vm>) -> Result<(), VmError> {
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

    async fn start(self: &Arc<Self>, vm: &Arc<Vm>, runtime: &dyn Runtime) -> Result<(), VmError> {
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |e: std::io::Error| VmError::Internal(format!("{what}: {e}"))
        };
        std::fs::create_dir_all(&vm.dir).map_err(io(&vm.dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&vm.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&vm.dir))?;
        }
        let cgroup = match &self.cgroups {
            Some(m) => {
                let limits = Limits {
                    memory_bytes: (u64::from(vm.spec.memory_mib)
                        + self.config.qemu.memory_overhead_mib)
                        << 20,
                    cpus: vm.spec.vcpus,
                    pids: self.config.cgroup.pids_max,
                };
                let g = m.create(&vm.id, limits).map_err(RuntimeError::from)?;
                *lock(&vm.cgroup) = Some(g.clone());
                Some(g)
            }
            None => None,
        };
        let m = &vm.image.manifest;
        // The persistent disk is the user's home disk when the image has one, else the layer
        // over the image's base.
        let persistent = match &vm.spec.persistent_disk {
            Some(name) => {
                let (path, meta_path) = self.disk_paths(name);
                if !meta_path.exists() {
                    let meta = DiskMeta {
                        image: m.reference(),
                        created_unix: now_ms() / 1000,
                        home: m.home_disk.is_some(),
                    };
                    std::fs::write(&meta_path, serde_json::to_vec(&meta).expect("serializes"))
                        .map_err(io(&meta_path))?;
                }
                Some(path)
            }
            None => None,
        };
        let (layer_keep, home) = match (&m.home_disk, persistent) {
            (Some(h), Some(path)) => (None, Some(HomeDiskConfig { path, size_mib: h.size_mib })),
            (Some(_), None) => (None, None),
            (None, kept) => (kept, None),
        };
        let disk = m.disk.as_ref().map(|d| {
            let base = vm.image.file(&d.file);
            match layer_keep {
                Some(layer) => DiskConfig { base, base_format: d.format, layer, keep: true },
                None => DiskConfig {
                    base,
                    base_format: d.format,
                    layer: vm.dir.join("disk.qcow2"),
                    keep: false,
                },
            }
        });
        let cfg = LaunchConfig {
            id: vm.id.clone(),
            dir: vm.dir.clone(),
            kernel: vm.image.file(&m.boot.kernel),
            initrd: m.boot.initrd.as_ref().map(|i| vm.image.file(i)),
            cmdline: m.boot.cmdline.clone(),
            disk,
            home,
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            display: vm.spec.display,
            sound: vm.has_sound(),
            cgroup,
        };
        let handle = runtime.launch(cfg).await?;
        *lock(&vm.handle) = Some(Arc::clone(&handle));
        lock(&vm.status).accel = handle.accel();
        if let Some(serial) = &handle.endpoints().serial {
            let task = console::follow(serial, Arc::clone(&vm.console))
                .await
                .map_err(|e| VmError::Internal(format!("connecting to the serial console: {e}")))?;
            lock(&vm.tasks).push(task);
        }
        let agent = Arc::new(AgentLink::connect(&handle.endpoints().agent, &vm.id).await?);
        *lock(&vm.agent) = Some(Arc::clone(&agent));
        handle.resume().await?;
        let monitor = tokio::spawn(Arc::clone(self).monitor(
            Arc::clone(vm),
            handle,
            Arc::clone(&agent),
            false,
        ));
        let pinger = tokio::spawn(Arc::clone(self).pinger(agent, vm.id.clone()));
        lock(&vm.tasks).extend([monitor, pinger]);
        Ok(())
    }

    /// Watches one VM: ready (unless `already_ready`: a VM taken back), the ready timeout, and
    /// its end.
    async fn monitor(
        self: Arc<Self>,
        vm: Arc<Vm>,
        handle: Arc<dyn VmHandle>,
        agent: Arc<AgentLink>,
        already_ready: bool,
    ) {
        let mut exit = handle.exit_watch();
        let mut ready = agent.view.ready.clone();
        let timeout = tokio::time::sleep(Duration::from_secs(self.config.node.ready_timeout_secs));
        tokio::pin!(timeout);
        let mut is_ready = already_ready;
        loop {
            tokio::select! {
                r = async { exit.wait_for(Option::is_some).await.ok().and_then(|i| i.clone()) } => {
                    let info = r.unwrap_or(ExitInfo { clean: false, description: "the VM ended".into() });
                    self.on_exit(&vm, &info);
                    // The process is gone: give back its cgroup now.
                    let group = lock(&vm.cgroup).take();
                    if let Some(g) = group
                        && let Err(e) = remove_cgroup(g).await
                    {
                        tracing::error!(vm = %vm.id, "removing the VM's cgroup: {e}");
                    }
                    return;
                }
                r = async { ready.wait_for(|r| *r).await.map(drop) }, if !is_ready => {
                    if r.is_err() {
                        // The agent's connection closed: the exit branch tells why.
                        is_ready = true;
                        continue;
                    }
                    is_ready = true;
                    if vm.state() == VmState::Starting {
                        vm.set_state(VmState::Ready, None);
                        vm.persist();
                        let secs = Duration::from_millis(now_ms().saturating_sub(vm.created_at_ms)).as_secs_f64();
                        self.metrics.record_ready(secs);
                        tracing::info!(vm = %vm.id, seconds = secs, "VM is ready");
                        if let Some(user) = vm.spec.user.clone() {
                            let this = Arc::clone(&self);
                            let id = vm.id.clone();
                            tokio::spawn(async move {
                                if let Err(e) = this.start_session(&id, user).await {
                                    tracing::warn!(vm = %id, "telling the guest about its user failed: {e}");
                                }
                            });
                        }
                    }
                }
                () = &mut timeout, if !is_ready => {
                    is_ready = true;
                    let secs = self.config.node.ready_timeout_secs;
                    tracing::error!(vm = %vm.id, "the guest agent did not report ready within {secs} s");
                    self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                    vm.set_state(VmState::Failed, Some(format!("the guest agent did not report ready within {secs} s")));
                    vm.stopping.store(true, Ordering::SeqCst);
                    if let Err(e) = handle.kill().await {
                        tracing::error!(vm = %vm.id, "ending the VM failed: {e}");
                    }
                }
            }
        }
    }

    fn on_exit(&self, vm: &Vm, info: &ExitInfo) {
        // A VM that has ended is not taken back by a restarted node.
        let _ = std::fs::remove_file(vm.dir.join("vm.json"));
        let state = vm.state();
        if vm.stopping.load(Ordering::SeqCst) {
            if state != VmState::Failed {
                vm.set_state(VmState::Stopped, None);
            }
            tracing::info!(vm = %vm.id, "VM stopped: {}", info.description);
        } else if matches!(state, VmState::Starting | VmState::Ready) {
            // The guest powered itself off cleanly: stopped; anything else is a failure.
            if info.clean {
                vm.set_state(VmState::Stopped, None);
                tracing::info!(vm = %vm.id, "{}", info.description);
            } else {
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(vm = %vm.id, "VM died: {}", info.description);
                vm.set_state(VmState::Failed, Some(info.description.clone()));
            }
        }
    }

    /// Pings the guest agent; a missing answer is logged and counted.
    async fn pinger(self: Arc<Self>, agent: Arc<AgentLink>, id: String) {
        let every = Duration::from_secs(self.config.node.ping_interval_secs);
        let mut missed = 0u32;
        loop {
            tokio::time::sleep(every).await;
            if !*agent.view.connected.borrow() {
                return;
            }
            let before = *agent.view.last_pong.borrow();
            let n = self.ping_seq.fetch_add(1, Ordering::Relaxed);
            if agent.send(HostMessage::Ping { id: n }).await.is_err() {
                return;
            }
            let mut pong = agent.view.last_pong.clone();
            let answered =
                tokio::time::timeout(every, pong.wait_for(|p| *p != before)).await.is_ok();
            if answered {
                missed = 0;
            } else if *agent.view.ready.borrow() {
                missed += 1;
                self.metrics.missed_pings.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(vm = %id, missed, "the guest agent did not answer a ping");
            }
        }
    }

    /// `POST /api/v1/vms/{id}/stop`: asks the guest to power off, ends it after the grace time.
    pub async fn stop(&self, id: &str) -> Result<VmInfo, VmError> {
        let vm = self.get(id)?;
        let _op = vm.ops.lock().await;
        if !matches!(vm.state(), VmState::Starting | VmState::Ready) {
            return Ok(vm.info());
        }
        vm.stopping.store(true, Ordering::SeqCst);
        if let Some(h) = vm.handle() {
            let mut exit = h.exit_watch();
            if let Err(e) = h.request_shutdown().await {
                tracing::warn!(vm = %id, "asking the guest to power off failed: {e}");
            }
            let grace = Duration::from_secs(self.config.node.stop_grace_secs);
            if tokio::time::timeout(grace, exit.wait_for(Option::is_some)).await.is_err() {
                tracing::info!(vm = %id, "the guest did not power off within {grace:?}; ending it");
                h.kill().await?;
            }
            // The monitor records the end; wait for it so the answer shows it.
            let mut st = vm.state_watch();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                st.wait_for(|s| *s != VmState::Starting && *s != VmState::Ready),
            )
            .await;
        }
        if matches!(vm.state(), VmState::Starting | VmState::Ready) {
            vm.set_state(VmState::Stopped, None);
        }
        Ok(vm.info())
    }

    /// `DELETE /api/v1/vms/{id}`: ends the VM and removes everything of it but a persistent
    /// disk.
    pub async fn delete(&self, id: &str) -> Result<(), VmError> {
        let vm = self.get(id)?;
        let _op = vm.ops.lock().await;
        vm.stopping.store(true, Ordering::SeqCst);
        let result = self.teardown(&vm).await;
        lock(&self.vms).remove(id);
        self.metrics.deleted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(vm = %id, "VM deleted");
        result
    }

    /// Ends the VM's process, its tasks and agent link, and removes its cgroup and folder.
    async fn teardown(&self, vm: &Vm) -> Result<(), VmError> {
        let mut first_error: Option<VmError> = None;
        let handle = lock(&vm.handle).take();
        if let Some(h) = &handle
            && let Err(e) = h.kill().await
        {
            first_error.get_or_insert(e.into());
        }
        for t in lock(&vm.tasks).drain(..) {
            t.abort();
        }
        lock(&vm.agent).take();
        if let Some(h) = &handle
            && let Err(e) = h.cleanup()
        {
            first_error.get_or_insert(e.into());
        }
        // The monitor may be removing it already (the VM's end woke it first): remove it here
        // too (removal is idempotent), so that a delete answers once nothing of the VM is left.
        let group =
            lock(&vm.cgroup).take().or_else(|| self.cgroups.as_ref().map(|m| m.existing(&vm.id)));
        if let Some(g) = group
            && let Err(e) = remove_cgroup(g).await
        {
            first_error.get_or_insert(RuntimeError::from(e).into());
        }
        match std::fs::remove_dir_all(&vm.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error.get_or_insert(VmError::Internal(format!(
                    "removing {}: {e}",
                    vm.dir.display()
                )));
            }
        }
        if vm.state() != VmState::Failed {
            vm.set_state(VmState::Stopped, None);
        }
        first_error.map_or(Ok(()), Err)
    }
}

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

/// Removes a VM's cgroup off the async workers: removal waits (up to seconds) for the killed
/// processes to leave the group.
async fn remove_cgroup(g: crate::cgroup::VmCgroup) -> Result<(), crate::cgroup::CgroupError> {
    match tokio::task::spawn_blocking(move || g.remove()).await {
        Ok(r) => r,
        Err(e) => Err(crate::cgroup::CgroupError::Busy(
            std::path::PathBuf::from(e.to_string()),
            Vec::new(),
        )),
    }
}
