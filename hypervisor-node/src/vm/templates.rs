//! Instant clones: one template per image version and VM size, made on the first clone asked
//! for, and every later VM of that kind restored from it instead of booted.
//!
//! A template boots like any VM but with its RAM in a file, its disk layer kept; once its
//! agent says ready the node lets go of the agent, saves the devices (not the RAM) and ends it.
//! What is left ([`Template`]) is the RAM as a sealed copy, the saved devices, and the disk layer,
//! frozen: each clone maps the RAM privately (pages shared until written), loads the devices,
//! and writes to a layer of its own over the frozen one. A clone is then made its own (the
//! agent's `renew`: random bytes, clock, machine-id, host name) before it is ready.
//!
//! While a template is being made, the VMs asked for boot as before (the template's boot is not
//! anyone's wait). A template whose making failed, or whose clone could not be restored or made
//! its own, is not tried again for [`RETRY_AFTER`]. A new version of an image gets templates of
//! its own; a template no clone started from for [`UNUSED_FOR`], or whose image left the node,
//! goes at the next sweep (every few seconds); running clones keep theirs (each holds it; its
//! files go with the last). Templates live in `state_dir/templates/` and not across a node
//! restart: clones taken back keep running on the files they have open, and the next clone
//! asked for makes a new template.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use atrium_protocol::agent::HostMessage;
use atrium_protocol::node::{DisplaySize, RuntimeKind};

use super::{Vm, VmError, VmManager, lock, now_ms};
use crate::agent_link::AgentLink;
use crate::image::{DiskFormat, Image};
use crate::runtime::{
    DiskConfig, GuestMemory, LaunchBoot, LaunchConfig, Runtime, SealedMemory, VmHandle,
};

/// How long after a failed template its kind is not tried again (VMs boot meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(300);
/// A template no clone started from for this long goes (an older image version's, a size no
/// pool asks for any more); clones that hold it keep its files until they end.
const UNUSED_FOR: Duration = Duration::from_secs(1800);
/// How long a clone's agent has to take its renewal.
const RENEW_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a renewal waits for its answer before it is sent again.
const RENEW_AGAIN: Duration = Duration::from_secs(3);
/// Time for a template's agent to see its host go before the save: it then waits for the next
/// host (a clone's node) to speak first, and greets it.
const LET_GO: Duration = Duration::from_secs(1);

/// What a template is a template of: clones of it need the very same image, CPUs, memory,
/// screen and sound card.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Kind {
    runtime: RuntimeKind,
    /// `NAME@VERSION`.
    image: String,
    vcpus: u32,
    memory_mib: u32,
    display: DisplaySize,
    sound: bool,
}

impl Kind {
    pub(super) fn of(vm: &Vm, runtime: RuntimeKind) -> Self {
        Self {
            runtime,
            image: vm.image.manifest.reference(),
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            display: vm.spec.display,
            sound: vm.has_sound(),
        }
    }
}

/// A made template: what clones start from. Its folder goes when the last holder lets go.
#[derive(Debug)]
pub(super) struct Template {
    _folder: Folder,
    memory: Arc<SealedMemory>,
    state: PathBuf,
    /// The template's disk layer, frozen (clones write to layers of their own over it).
    disk: Option<PathBuf>,
}

/// A template's folder, removed when dropped.
#[derive(Debug)]
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing template {}: {e}", self.0.display());
        }
    }
}

/// A kind's template: being made (by the task of that generation), made (and when a clone last
/// started from it), or failed lately.
#[derive(Debug)]
enum Slot {
    Making { generation: u64 },
    Made { template: Arc<Template>, used: Instant },
    Failed { at: Instant },
}

/// The node's templates.
#[derive(Debug, Default)]
pub(super) struct Templates {
    slots: Mutex<HashMap<Kind, Slot>>,
    /// Tells a template's making apart from a later one of the same kind.
    generations: AtomicU64,
    /// The node is stopping: no template is made any more (read and set under `slots`).
    closed: AtomicBool,
    /// Every template made that still exists: in a slot, or held by clones only.
    alive: Mutex<Vec<Weak<Template>>>,
}

/// Whether a slot stays at a sweep at `now`: a template stays while clones start from it and
/// its image is on the node; a failure is forgotten once it may be tried again.
fn keeps(slot: &Slot, image_present: bool, now: Instant) -> bool {
    match slot {
        Slot::Making { .. } => true,
        Slot::Made { used, .. } => {
            image_present && now.saturating_duration_since(*used) < UNUSED_FOR
        }
        Slot::Failed { at } => now.saturating_duration_since(*at) < RETRY_AFTER,
    }
}

impl Templates {
    /// The folder of templates, emptied: a template lives no longer than the node that made
    /// it. Template processes an earlier run left (killed with that run, or not) are ended.
    pub(super) fn prepare(
        state_dir: &Path,
        cgroups: Option<&crate::cgroup::CgroupManager>,
    ) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = state_dir.join("templates");
        end_processes_in(&dir);
        // Their cgroups (named as the template) go too, once their processes have.
        if let Some(m) = cgroups {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if id.starts_with("vm-")
                    && let Err(e) = m.existing(&id).remove()
                {
                    tracing::warn!(template = %id, "removing a leftover template's cgroup: {e}");
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }
}

/// Makes a template's disk layer the node's and read-only: clones read it (their QEMU opens it
/// before it drops root, as a backing file) and write to layers of their own.
fn freeze(layer: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| VmError::Internal(format!("freezing {}: {e}", layer.display()));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(layer, Some(0), Some(0)).map_err(io)?;
    }
    std::fs::set_permissions(layer, std::fs::Permissions::from_mode(0o400)).map_err(io)
}

/// Ends every VM process (QEMU names its guest `atrium-vm-...`) whose working folder is under
/// `dir` (a VM process runs in its folder): templates an earlier run of the node left.
fn end_processes_in(dir: &Path) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        // Its start time first: the pidfd opened after the checks is refused unless it names
        // the process that was checked.
        let Some(started) = crate::runtime::process_started(pid) else { continue };
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else { continue };
        let is_vm = std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("guest=atrium-vm-"));
        if cwd.starts_with(&dir)
            && is_vm
            && let Ok(process) = crate::runtime::Foreign::open(pid, started)
        {
            tracing::warn!(pid, "ending a template's process an earlier run of the node left");
            let _ = process.signal(libc::SIGKILL);
        }
    }
}

impl VmManager {
    /// At the node's stop: no more templates; those made and being made are ended and their
    /// files removed (clones that run on keep the files they have open).
    pub fn end_templates(&self) {
        let slots = {
            let mut slots = lock(&self.templates.slots);
            self.templates.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut *slots)
        };
        drop(slots);
        end_processes_in(&self.templates_dir);
        for entry in std::fs::read_dir(&self.templates_dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }

    /// The host memory the templates' RAM takes (their sealed copies), in KiB: those clones
    /// start from and those only running clones still hold.
    pub fn templates_resident_kib(&self) -> u64 {
        let mut alive = lock(&self.templates.alive);
        alive.retain(|w| w.strong_count() > 0);
        alive.iter().filter_map(Weak::upgrade).map(|t| t.memory.resident() / 1024).sum()
    }

    /// The guest memory of each template being made (it boots as a VM of that size).
    pub(super) fn templates_being_made(&self) -> Vec<u32> {
        lock(&self.templates.slots)
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Making { .. }))
            .map(|(k, _)| k.memory_mib)
            .collect()
    }

    /// Drops the templates no clone started from for [`UNUSED_FOR`] or whose image left the
    /// node, and failures that may be tried again (their files go outside the lock). `except`:
    /// the kind a clone is being started of now.
    pub(super) fn sweep_templates_except(&self, except: Option<&Kind>) {
        let present: HashSet<String> =
            self.images.list().iter().map(|i| i.manifest.reference()).collect();
        let now = Instant::now();
        let gone: Vec<Slot> = {
            let mut slots = lock(&self.templates.slots);
            let stale: Vec<Kind> = slots
                .iter()
                .filter(|(k, s)| Some(*k) != except && !keeps(s, present.contains(&k.image), now))
                .map(|(k, _)| k.clone())
                .collect();
            stale.iter().filter_map(|k| slots.remove(k)).collect()
        };
        drop(gone);
    }

    /// [`Self::sweep_templates_except`] nothing.
    pub(super) fn sweep_templates(&self) {
        self.sweep_templates_except(None);
    }

    /// How many templates clones can start from now.
    pub fn templates_made(&self) -> usize {
        lock(&self.templates.slots).values().filter(|s| matches!(s, Slot::Made { .. })).count()
    }

    /// The template `vm` (asked as a clone, of `runtime`) can start from, when there is one;
    /// otherwise the template of its kind is made in the background (once) and `None` says:
    /// boot. Templates no clone started from for a while, or of images no longer on the node,
    /// go on the way.
    pub(super) fn template_for(
        self: &Arc<Self>,
        vm: &Vm,
        runtime: Arc<dyn Runtime>,
    ) -> Option<Arc<Template>> {
        let kind = Kind::of(vm, runtime.kind());
        self.sweep_templates_except(Some(&kind));
        let mut slots = lock(&self.templates.slots);
        if self.templates.closed.load(Ordering::SeqCst) {
            return None;
        }
        let found = match slots.get_mut(&kind) {
            Some(Slot::Made { template, used }) => {
                *used = Instant::now();
                Some(Some(Arc::clone(template)))
            }
            Some(Slot::Making { .. }) => Some(None),
            // The sweep spares this kind: a failure old enough is tried again here.
            Some(Slot::Failed { at }) if at.elapsed() < RETRY_AFTER => Some(None),
            Some(Slot::Failed { .. }) | None => None,
        };
        if let Some(found) = found {
            return found;
        }
        let generation = self.templates.generations.fetch_add(1, Ordering::Relaxed);
        slots.insert(kind.clone(), Slot::Making { generation });
        drop(slots);
        let this = Arc::clone(self);
        let image = Arc::clone(&vm.image);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let made = this.make_template(&kind, &image, runtime.as_ref()).await;
            let mut slots = lock(&this.templates.slots);
            // Dropped meanwhile (the node stops): not kept.
            let Some(slot) = slots.get_mut(&kind) else { return };
            if !matches!(slot, Slot::Making { generation: g } if *g == generation) {
                return;
            }
            match made {
                Ok(t) => {
                    let t = Arc::new(t);
                    lock(&this.templates.alive).push(Arc::downgrade(&t));
                    this.metrics.templates_made.fetch_add(1, Ordering::Relaxed);
                    let secs = t0.elapsed().as_secs_f64();
                    tracing::info!(image = %kind.image, vcpus = kind.vcpus, memory_mib = kind.memory_mib, seconds = secs, "template made: VMs of its kind start as clones");
                    *slot = Slot::Made { template: t, used: Instant::now() };
                }
                Err(e) => {
                    this.metrics.template_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(image = %kind.image, "making a template failed (VMs of its kind boot; tried again in {} s): {e}", RETRY_AFTER.as_secs());
                    *slot = Slot::Failed { at: Instant::now() };
                }
            }
        });
        None
    }

    /// A clone of `template` (of `kind`) could not be restored or made its own: the template
    /// goes (VMs of its kind boot), and is made again after [`RETRY_AFTER`]. Nothing changes
    /// when the kind's slot holds another template by now (or one being made).
    pub(super) fn retire_template(&self, kind: &Kind, template: &Arc<Template>, why: &str) {
        let old = {
            let mut slots = lock(&self.templates.slots);
            match slots.get(kind) {
                Some(Slot::Made { template: t, .. }) if Arc::ptr_eq(t, template) => {}
                _ => return,
            }
            slots.insert(kind.clone(), Slot::Failed { at: Instant::now() })
        };
        self.metrics.template_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(image = %kind.image, "retiring a template (VMs of its kind boot; made again in {} s): {why}", RETRY_AFTER.as_secs());
        drop(old);
    }

    /// Boots a template of `kind`, waits for its agent, saves it and ends it.
    async fn make_template(
        &self,
        kind: &Kind,
        image: &Image,
        runtime: &dyn Runtime,
    ) -> Result<Template, VmError> {
        // The longest socket path of a template or a clone: a clone's state socket
        // (vms/<id>/screens/state.sock); unix socket paths are at most 107 bytes.
        let longest = self.config.node.state_dir.as_os_str().len()
            + "/vms/vm-0123456789abcdef/screens/state.sock".len();
        if longest > 107 {
            return Err(VmError::Internal(format!(
                "node.state_dir {} is too long for a clone's sockets (107 bytes at most)",
                self.config.node.state_dir.display()
            )));
        }
        let id = format!("vm-{:016x}", rand::random::<u64>());
        let dir = self.templates_dir.join(&id);
        super::start::create_dir(&dir)?;
        // From here on the folder goes with `folder`, or with the template made.
        let folder = Folder(dir.clone());
        let state = dir.join("state");
        let m = &image.manifest;
        let disk = m.disk.as_ref().map(|d| DiskConfig {
            base: image.file(&d.file),
            base_format: d.format,
            layer: dir.join("disk.qcow2"),
            keep: true,
        });
        let memory_file = dir.join("memory");
        // Held to the same limits as a VM of its size while it runs.
        let cgroup = match &self.cgroups {
            Some(m) => Some(
                m.create(&id, self.limits(kind.vcpus, kind.memory_mib))
                    .map_err(crate::runtime::RuntimeError::from)?,
            ),
            None => None,
        };
        let cfg = LaunchConfig {
            id: id.clone(),
            dir: dir.clone(),
            boot: LaunchBoot::of(image),
            firmware_state: None,
            disk: disk.clone(),
            home: None,
            vcpus: kind.vcpus,
            memory_mib: kind.memory_mib,
            display: kind.display,
            sound: kind.sound,
            cgroup: cgroup.clone(),
            memory: GuestMemory::Template { file: memory_file.clone() },
        };
        tracing::info!(vm = %id, image = %kind.image, "booting a template");
        let ran = self.run_template(runtime, cfg, &id, &state).await;
        if let Some(g) = cgroup
            && let Err(e) = super::stop::remove_cgroup(g).await
        {
            tracing::error!(vm = %id, "removing a template's cgroup: {e}");
        }
        ran?;
        // What QEMU made for its own user while it ran is not kept (the uid goes to other VMs).
        let _ = std::fs::remove_dir_all(dir.join("screens"));
        if let Some(d) = &disk {
            freeze(&d.layer)?;
        }
        // Reading the template's whole RAM is not done on the node's async workers.
        let file = memory_file.clone();
        let memory = tokio::task::spawn_blocking(move || SealedMemory::from_file(&file))
            .await
            .map_err(|e| VmError::Internal(format!("sealing the template's memory: {e}")))?
            .map_err(|e| VmError::Internal(format!("sealing the template's memory: {e}")))?;
        // The sealed copy is what clones map; the file is no one's any more.
        std::fs::remove_file(&memory_file)
            .map_err(|e| VmError::Internal(format!("{}: {e}", memory_file.display())))?;
        Ok(Template {
            _folder: folder,
            memory: Arc::new(memory),
            state,
            disk: disk.map(|d| d.layer),
        })
    }

    /// Launches the template, boots and saves it, and ends it whatever happened.
    async fn run_template(
        &self,
        runtime: &dyn Runtime,
        cfg: LaunchConfig,
        id: &str,
        state: &Path,
    ) -> Result<(), VmError> {
        let handle = runtime.launch(cfg).await?;
        let saved = if self.templates.closed.load(Ordering::SeqCst) {
            Err(VmError::Internal("the node is stopping".into()))
        } else {
            self.boot_and_save(handle.as_ref(), id, state).await
        };
        let ended = handle.kill().await;
        let cleaned = handle.cleanup();
        saved?;
        ended?;
        Ok(cleaned?)
    }

    /// Resumes a launched template, waits until its agent says ready, lets go of the agent and
    /// saves the template's devices to `state`.
    async fn boot_and_save(
        &self,
        handle: &dyn VmHandle,
        id: &str,
        state: &Path,
    ) -> Result<(), VmError> {
        let agent = AgentLink::connect(&handle.endpoints().agent, id).await?;
        handle.resume().await?;
        let secs = self.config.node.ready_timeout_secs;
        let mut ready = agent.view.ready.clone();
        let mut exit = handle.exit_watch();
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(secs), ready.wait_for(|r| *r)) => match r {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(VmError::Internal("the template's agent went away".into())),
                Err(_) => return Err(VmError::AgentTimeout { id: id.to_owned(), what: "say ready", secs }),
            },
            e = exit.wait_for(Option::is_some) => {
                let why = e.ok().and_then(|i| i.clone()).map_or_else(|| "ended".into(), |i| i.description);
                return Err(VmError::Internal(format!("the template {why}")));
            }
        }
        drop(ready);
        drop(agent);
        tokio::time::sleep(LET_GO).await;
        handle.save_template(state).await?;
        Ok(())
    }

    /// What a clone of `template` is launched with: its memory and devices, and a layer of its
    /// own over the template's frozen disk.
    pub(super) fn clone_launch(vm: &Vm, template: &Template, cfg: &mut LaunchConfig) {
        cfg.memory = GuestMemory::Clone {
            memory: Arc::clone(&template.memory),
            state: template.state.clone(),
        };
        cfg.disk = template.disk.as_ref().map(|frozen| DiskConfig {
            base: frozen.clone(),
            base_format: DiskFormat::Qcow2,
            layer: vm.dir.join("disk.qcow2"),
            keep: false,
        });
    }

    /// Makes a restored clone whose agent said ready its own: random bytes from this host's
    /// kernel, the clock, the VM id as host name. The VM is ready only once the agent says
    /// renewed.
    pub(super) async fn renew(&self, vm: &Vm, agent: &AgentLink) -> Result<(), VmError> {
        let mut renewed = agent.view.renewed.clone();
        let mut error = agent.view.last_error.clone();
        error.mark_unchanged();
        let deadline = tokio::time::Instant::now() + RENEW_TIMEOUT;
        // Sent again until answered: one that reached the agent just before it said hello
        // again (the clone's agent saw its host come back) is not read. A repeat is harmless:
        // the agent takes the new bytes and clock and keeps its machine-id.
        loop {
            // From the host's kernel, not a user-space generator.
            let mut entropy = vec![0u8; 48];
            rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut entropy)
                .map_err(|e| VmError::Internal(format!("random bytes for a clone: {e}")))?;
            agent
                .send(HostMessage::Renew { entropy, time_ms: now_ms(), hostname: vm.id.clone() })
                .await?;
            let wait =
                RENEW_AGAIN.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let answered = tokio::time::timeout(wait, async {
                tokio::select! {
                    r = renewed.wait_for(Option::is_some) => r.map(drop).map_err(|_| VmError::Internal("the clone's agent went away".into())),
                    r = error.changed() => {
                        let said = r.ok().and_then(|()| error.borrow().clone()).unwrap_or_default();
                        Err(VmError::Internal(format!("the clone's agent refused its renewal: {said}")))
                    }
                }
            })
            .await;
            match answered {
                Ok(r) => return r,
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(VmError::AgentTimeout {
                        id: vm.id.clone(),
                        what: "take its renewal",
                        secs: RENEW_TIMEOUT.as_secs(),
                    });
                }
                Err(_) => {
                    tracing::info!(vm = %vm.id, "no answer to the clone's renewal yet: sending it again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_keeps_templates_in_use_and_forgets_old_failures() {
        let then = Instant::now();
        let later = |d: Duration| then + d + Duration::from_secs(1);
        assert!(keeps(&Slot::Making { generation: 1 }, false, later(UNUSED_FOR)));
        assert!(keeps(&Slot::Failed { at: then }, true, then), "a fresh failure is forgotten");
        assert!(!keeps(&Slot::Failed { at: then }, true, later(RETRY_AFTER)), "an old one stays");
        let dir = std::env::temp_dir().join(format!("atrium-tpl-sweep-{}", std::process::id()));
        let memfile = dir.with_extension("mem");
        std::fs::write(&memfile, [1u8; 4096]).unwrap();
        let made = Slot::Made {
            template: Arc::new(Template {
                _folder: Folder(dir.clone()),
                memory: Arc::new(SealedMemory::from_file(&memfile).unwrap()),
                state: dir.join("state"),
                disk: None,
            }),
            used: then,
        };
        std::fs::remove_file(&memfile).unwrap();
        assert!(keeps(&made, true, then), "a template in use went");
        assert!(!keeps(&made, false, then), "a template of an image gone stays");
        assert!(!keeps(&made, true, later(UNUSED_FOR)), "a template no clone starts from stays");
    }

    #[test]
    fn a_template_takes_its_folder_with_it() {
        let dir = std::env::temp_dir().join(format!("atrium-tpl-drop-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        std::fs::write(dir.join("state"), b"x").unwrap();
        let held = Arc::new(Folder(dir.clone()));
        let clone_holds = Arc::clone(&held);
        drop(held);
        assert!(dir.exists(), "a template went while a clone held it");
        drop(clone_holds);
        assert!(!dir.exists(), "the last holder let go and the template's folder stayed");
    }
}
