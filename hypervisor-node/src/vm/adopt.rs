//! A node that restarts (a crash, `kill -9`, an upgrade) takes back the VMs an earlier run
//! left running, so that no user's desktop ends with the node agent.
//!
//! While a VM runs, its folder holds `vm.json` ([`VmRecord`]): its spec and image, its state
//! and signed-in user, and what the runtime needs to find its process again ([`Adoptable`]).
//! At start the node reads each VM folder: a VM whose process is still the one recorded (pid
//! and start time) is taken back — QMP, the serial console and the guest agent reconnected
//! (the agent says hello and ready again when a host speaks to it), its cgroup and uid kept.
//! Anything else in `vms/` (no record, a bad one, a process that is gone, a runtime that cannot
//! take VMs back) is ended and removed, as before.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrium_protocol::agent::HostMessage;
use atrium_protocol::node::{ImageRef, RuntimeKind, VmSpec, VmState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{CONSOLE_BYTES, Status, Vm, VmManager, lock};
use crate::agent_link::AgentLink;
use crate::console::{self, ConsoleLog};
use crate::runtime::{Adoptable, Foreign};

/// The file in a VM's folder that describes it while it runs.
const RECORD: &str = "vm.json";
/// Largest record read back (a spec and a few names).
const MAX_RECORD: u64 = 64 * 1024;

/// What a restarted node needs to take a running VM back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VmRecord {
    id: String,
    spec: VmSpec,
    /// The image it was started from (`NAME@VERSION`).
    image: String,
    runtime: RuntimeKind,
    created_at_ms: u64,
    state: VmState,
    ready_at_ms: Option<u64>,
    user: Option<String>,
    process: Adoptable,
    /// Started as a clone of a template.
    #[serde(default)]
    cloned: bool,
}

impl Vm {
    /// Writes this VM's record (atomically), or removes it when its runtime cannot take it back
    /// or it no longer runs. Failures are logged: the VM runs on, it just would not be taken
    /// back by a restarted node.
    pub(super) fn persist(&self) {
        let path = self.dir.join(RECORD);
        let _one_at_a_time = lock(&self.persisting);
        let status = lock(&self.status).clone();
        let process = self.handle().and_then(|h| h.adoptable());
        let live = matches!(status.state, VmState::Starting | VmState::Ready);
        let Some(process) = process.filter(|_| live && !self.stopping.load(Ordering::SeqCst))
        else {
            let _ = std::fs::remove_file(&path);
            return;
        };
        let record = VmRecord {
            id: self.id.clone(),
            spec: self.spec.clone(),
            image: self.image.manifest.reference(),
            runtime: self.runtime,
            created_at_ms: self.created_at_ms,
            state: status.state,
            ready_at_ms: status.ready_at_ms,
            user: status.user,
            process,
            cloned: self.cloned.load(Ordering::Relaxed),
        };
        // A name of its own: two updates at once must not write into one file.
        let tmp = self.dir.join(format!("{RECORD}.{:016x}.tmp", rand::random::<u64>()));
        let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::error!(vm = %self.id, "writing {}: {e}", path.display());
        }
    }
}

impl VmManager {
    /// Whether VM `id` runs on and would be taken back by a restarted node (it has a record).
    pub fn can_be_taken_back(&self, id: &str) -> bool {
        self.get(id).is_ok_and(|vm| vm.dir.join(RECORD).exists())
    }

    /// Takes back every VM an earlier run of this node left running; ends and removes what
    /// cannot be taken back. Only VMs with a folder in this node's `state_dir` are touched:
    /// another node on the host keeps its own.
    pub async fn take_back_leftovers(self: &Arc<Self>) {
        let vms = self.config.node.state_dir.join("vms");
        // All at once: each may wait seconds for its sockets, and the node answers nothing and
        // sends no heartbeat until every VM is back.
        let mut all = tokio::task::JoinSet::new();
        for entry in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
            let this = Arc::clone(self);
            all.spawn(async move {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let record = read_record(&path);
                let result = match &record {
                    Ok(r) if r.id == name => this.take_back(&path, r).await,
                    Ok(r) => Err(format!("its record names VM {:?}", r.id)),
                    Err(e) => Err(e.clone()),
                };
                (name, path, record.ok(), result)
            });
        }
        while let Some(joined) = all.join_next().await {
            let Ok((name, path, record, result)) = joined else { continue };
            match result {
                Ok(()) => {
                    self.metrics.taken_back.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(vm = %name, "took back a VM an earlier run of the node left running");
                }
                Err(why) => {
                    tracing::warn!(vm = %name, "removing a VM left by an earlier run: {why}");
                    self.remove_leftover(&name, &path, record.as_ref());
                }
            }
        }
    }

    async fn take_back(self: &Arc<Self>, dir: &Path, r: &VmRecord) -> Result<(), String> {
        if !r.id.starts_with("vm-") {
            return Err(format!("{:?} is not a VM id", r.id));
        }
        if !matches!(r.state, VmState::Starting | VmState::Ready) {
            return Err(format!("it was {}", r.state.as_str()));
        }
        let image_ref = ImageRef::parse("image", &r.image).map_err(|e| e.to_string())?;
        let image = self
            .images
            .resolve(&image_ref)
            .ok_or_else(|| format!("its image {} is no longer on this node", r.image))?;
        let runtime = self.runtime(r.runtime).map_err(|e| e.to_string())?;
        let handle = runtime.adopt(dir, &r.process).await.map_err(|e| e.to_string())?;
        let (state_tx, _) = watch::channel(r.state);
        let vm = Arc::new(Vm {
            dir: dir.to_owned(),
            id: r.id.clone(),
            spec: r.spec.clone(),
            image,
            runtime: r.runtime,
            created_at_ms: r.created_at_ms,
            status: std::sync::Mutex::new(Status {
                state: r.state,
                error: None,
                ready_at_ms: r.ready_at_ms,
                accel: handle.accel(),
                user: r.user.clone(),
                session_gen: 0,
            }),
            state_tx,
            handle: std::sync::Mutex::new(Some(Arc::clone(&handle))),
            agent: std::sync::Mutex::new(None),
            console: Arc::new(ConsoleLog::new(CONSOLE_BYTES)),
            cgroup: std::sync::Mutex::new(self.cgroups.as_ref().map(|m| m.existing(&r.id))),
            stopping: AtomicBool::new(false),
            tasks: std::sync::Mutex::new(Vec::new()),
            ops: tokio::sync::Mutex::new(()),
            session_op: tokio::sync::Mutex::new(()),
            persisting: std::sync::Mutex::new(()),
            cloned: AtomicBool::new(r.cloned),
            // Its template went with the node that made it; the clone runs on the files it has
            // open.
            template: std::sync::Mutex::new(None),
            sampled_kib: std::sync::atomic::AtomicU64::new(0),
        });
        let connected = async {
            console::follow_all(handle.endpoints(), &vm.console, |t| lock(&vm.tasks).push(t))
                .await
                .map_err(|e| format!("reconnecting the serial console: {e}"))?;
            if !vm.has_agent() {
                return Ok(None);
            }
            let agent = AgentLink::connect(&handle.endpoints().agent, &vm.id)
                .await
                .map_err(|e| format!("reconnecting the guest agent: {e}"))?;
            // A host speaking again makes the agent say hello (and ready, if it is).
            let ping = self.ping_seq.fetch_add(1, Ordering::Relaxed);
            agent.send(HostMessage::Ping { id: ping }).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(Some(Arc::new(agent)))
        };
        let agent = match connected.await {
            Ok(a) => a,
            Err(e) => {
                vm.stopping.store(true, Ordering::SeqCst);
                let _ = handle.kill().await;
                for t in lock(&vm.tasks).drain(..) {
                    t.abort();
                }
                return Err(e);
            }
        };
        lock(&vm.agent).clone_from(&agent);
        lock(&self.vms).insert(vm.id.clone(), Arc::clone(&vm));
        let already_ready = r.state == VmState::Ready;
        self.watch(&vm, handle, agent, already_ready);
        vm.persist();
        Ok(())
    }

    /// Ends what is left of a VM that cannot be taken back: its process (through its cgroup,
    /// or its recorded pid if that is still the VM's), its cgroup and its folder.
    fn remove_leftover(&self, name: &str, dir: &Path, record: Option<&VmRecord>) {
        if let Some(p) = record.map(|r| &r.process)
            && let Ok(f) = Foreign::open(p.pid, p.started)
        {
            let _ = f.signal(libc::SIGKILL);
        }
        if let Some(cg) = &self.cgroups
            && name.starts_with("vm-")
            && let Err(e) = cg.existing(name).remove()
        {
            tracing::error!(vm = %name, "could not remove its cgroup: {e}");
        }
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::error!("could not remove {}: {e}", dir.display());
        }
        // A floating desktop's firmware state (a dedicated one's is named after its disk).
        let firmware = self.config.node.state_dir.join("firmware").join(name);
        if name.starts_with("vm-")
            && let Err(e) = std::fs::remove_dir_all(&firmware)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!("could not remove {}: {e}", firmware.display());
        }
    }
}

fn read_record(dir: &Path) -> Result<VmRecord, String> {
    use std::io::Read;
    let path = dir.join(RECORD);
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_RECORD).read_to_end(&mut text))
        .map_err(|e| format!("no record ({e})"))?;
    serde_json::from_slice(&text).map_err(|e| format!("a bad record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("atrium-rec-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_record(&dir).unwrap_err().contains("no record"));
        let r = VmRecord {
            id: "vm-1".into(),
            spec: serde_json::from_value(serde_json::json!({
                "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768"
            }))
            .unwrap(),
            image: "console@1".into(),
            runtime: RuntimeKind::Qemu,
            created_at_ms: 1,
            state: VmState::Ready,
            ready_at_ms: Some(2),
            user: Some("alice".into()),
            process: Adoptable { pid: 42, started: 7, layer: None, uid: Some(200_000) },
            cloned: true,
        };
        std::fs::write(dir.join(RECORD), serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(read_record(&dir).unwrap(), r);
        for bad in [&b"{"[..], b"{\"id\":\"vm-1\"}", &[b' '; 70 * 1024][..]] {
            std::fs::write(dir.join(RECORD), bad).unwrap();
            assert!(read_record(&dir).unwrap_err().contains("bad record"));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
