//! A VM's start, one linear recipe: check the spec and find the image, reserve capacity, lay
//! out the VM's folder, create its cgroup, attach its disks, take its template (a clone),
//! launch it through a runtime, attach the serial console and the guest agent, resume it, and
//! watch it (a clone is made its own before it is ready).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use atrium_protocol::node::{FieldError, RuntimeKind, VmInfo, VmSpec, VmState};
use tokio::sync::watch;

use super::disks::check_disk_kind;
use super::templates::Kind;
use super::{CONSOLE_BYTES, Status, Vm, VmError, VmManager, lock, now_ms};
use crate::agent_link::AgentLink;
use crate::cgroup::{Limits, VmCgroup};
use crate::console::{self, ConsoleLog};
use crate::image::Image;
use crate::runtime::{LaunchBoot, LaunchConfig, Runtime, RuntimeError, VmHandle};

impl VmManager {
    /// `POST /api/v1/vms`: checks the spec, finds the image, and starts the VM.
    pub async fn create(self: &Arc<Self>, spec: VmSpec) -> Result<VmInfo, VmError> {
        let image_ref = spec.validate()?;
        // A persistent disk stays with the image version it was made from.
        let (image_ref, existing) = self.image_for_disk(&spec, image_ref)?;
        let image = self.images.resolve(&image_ref).ok_or_else(|| VmError::ImageNotFound {
            reference: image_ref.to_string(),
            available: {
                let names: Vec<String> =
                    self.images.list().iter().map(|i| i.manifest.reference()).collect();
                if names.is_empty() { "no images".into() } else { names.join(", ") }
            },
        })?;
        check_disk_kind(&spec, existing, &image)?;
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
        // What was hashed is what boots: a file written since the image was loaded is refused.
        image
            .unchanged()
            .map_err(|e| VmError::Conflict(format!("image {}: {e}", image.manifest.reference())))?;
        let kind = spec.runtime.unwrap_or(self.default_runtime);
        let runtime = self.runtime(kind)?;
        if kind != RuntimeKind::Qemu && image.manifest.firmware().is_some() {
            return Err(VmError::Conflict(format!(
                "image {} is booted by firmware, which only the qemu runtime does (the {kind} \
                 runtime boots kernels)",
                image.manifest.reference()
            )));
        }
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
            cloned: AtomicBool::new(false),
            template: Mutex::new(None),
            sampled_kib: std::sync::atomic::AtomicU64::new(0),
        });
        self.reserve(&vm)?;
        tracing::info!(vm = %id, image = %vm.image.manifest.reference(), runtime = %kind, vcpus = vm.spec.vcpus, memory_mib = vm.spec.memory_mib, "starting VM");
        if let Err(e) = self.start(&vm, runtime).await {
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

    /// The steps of a reserved VM's start; what one leaves behind when a later one fails is
    /// removed by [`Self::teardown`].
    async fn start(
        self: &Arc<Self>,
        vm: &Arc<Vm>,
        runtime: Arc<dyn Runtime>,
    ) -> Result<(), VmError> {
        create_dir(&vm.dir)?;
        let cgroup = self.create_cgroup(vm)?;
        let (disk, home) = self.attach_disks(vm)?;
        let mut cfg = LaunchConfig {
            id: vm.id.clone(),
            dir: vm.dir.clone(),
            boot: LaunchBoot::of(&vm.image),
            firmware_state: self.firmware_state(vm),
            disk,
            home,
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            display: vm.spec.display,
            sound: vm.has_sound(),
            cgroup,
            memory: Default::default(),
        };
        // A clone, when its template is made (else a boot while it is being made); the qemu
        // runtime's alone, of images booted from their kernel (an imported image's firmware
        // keeps state of its own, its variables in flash, that templates do not carry yet).
        let boot = cfg.clone();
        let template = if vm.spec.clone
            && runtime.kind() == RuntimeKind::Qemu
            && vm.image.manifest.firmware().is_none()
        {
            self.template_for(vm, Arc::clone(&runtime))
        } else {
            None
        };
        if let Some(t) = &template {
            Self::clone_launch(vm, t, &mut cfg);
        }
        let handle = match (runtime.launch(cfg).await, template) {
            (Ok(h), Some(t)) => {
                vm.cloned.store(true, Ordering::Relaxed);
                *lock(&vm.template) = Some(t);
                self.metrics.cloned.fetch_add(1, Ordering::Relaxed);
                h
            }
            (Ok(h), None) => h,
            // A template that does not restore (a changed QEMU, its state unreadable) goes;
            // this VM boots. Other failures are the VM's, as for a boot.
            (Err(RuntimeError::Restore(why)), Some(t)) => {
                let kind = Kind::of(vm, runtime.kind());
                self.retire_template(&kind, &t, &format!("a clone did not restore: {why}"));
                let _ = std::fs::remove_file(vm.dir.join("disk.qcow2"));
                runtime.launch(boot).await?
            }
            (Err(e), _) => return Err(e.into()),
        };
        *lock(&vm.handle) = Some(Arc::clone(&handle));
        lock(&vm.status).accel = handle.accel();
        attach_console(vm, handle.as_ref()).await?;
        // An image without an agent is ready when its screen settles (the monitor samples it).
        let agent = if vm.has_agent() {
            Some(Arc::new(AgentLink::connect(&handle.endpoints().agent, &vm.id).await?))
        } else {
            None
        };
        lock(&vm.agent).clone_from(&agent);
        handle.resume().await?;
        if let Some(agent) = &agent
            && vm.cloned.load(Ordering::Relaxed)
        {
            // A clone's agent waits for its new host to speak before it says hello and ready.
            let ping = self.ping_seq.fetch_add(1, Ordering::Relaxed);
            agent.send(atrium_protocol::agent::HostMessage::Ping { id: ping }).await?;
        }
        self.watch(vm, handle, agent, false);
        Ok(())
    }

    /// Where the firmware of a VM booted by firmware keeps its state (UEFI variables, the
    /// virtual TPM's): with its persistent disk (kept: a dedicated desktop's boot entries,
    /// Secure Boot updates and BitLocker's keys), else in a folder that goes with the VM
    /// ([`Self::teardown`]).
    pub(super) fn firmware_state(&self, vm: &Vm) -> Option<PathBuf> {
        vm.image.manifest.firmware()?;
        let dir = self.config.node.state_dir.join("firmware");
        Some(match &vm.spec.persistent_disk {
            Some(disk) => dir.join(format!("disk-{disk}")),
            None => dir.join(&vm.id),
        })
    }

    /// A VM's limits: its memory with the runtime's overhead, its CPUs, processes.
    pub(super) fn limits(&self, vcpus: u32, memory_mib: u32) -> Limits {
        Limits {
            memory_bytes: (u64::from(memory_mib) + self.config.qemu.memory_overhead_mib) << 20,
            cpus: vcpus,
            pids: self.config.cgroup.pids_max,
        }
    }

    /// The VM's cgroup (memory with the runtime's overhead, CPUs, processes), when the node
    /// has cgroups.
    fn create_cgroup(&self, vm: &Vm) -> Result<Option<VmCgroup>, VmError> {
        let Some(m) = &self.cgroups else { return Ok(None) };
        let limits = self.limits(vm.spec.vcpus, vm.spec.memory_mib);
        let g = m.create(&vm.id, limits).map_err(RuntimeError::from)?;
        *lock(&vm.cgroup) = Some(g.clone());
        Ok(Some(g))
    }
}

/// The VM's folder, readable by the node only.
pub(super) fn create_dir(dir: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| VmError::Internal(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Follows the VM's serial console into its log, when the runtime gives it one, and the
/// firmware's debug port when the VM has one.
async fn attach_console(vm: &Vm, handle: &dyn VmHandle) -> Result<(), VmError> {
    console::follow_all(handle.endpoints(), &vm.console, |task| lock(&vm.tasks).push(task))
        .await
        .map_err(|e| VmError::Internal(format!("connecting to the serial console: {e}")))
}
