//! A VM's end: stop (the guest asked to power off, ended after the grace time), delete
//! (everything of it removed but a persistent disk), and the teardown both share with a start
//! that failed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use atrium_protocol::node::{VmInfo, VmState};

use super::{Vm, VmError, VmManager, lock};
use crate::runtime::RuntimeError;

impl VmManager {
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
    pub(super) async fn teardown(&self, vm: &Vm) -> Result<(), VmError> {
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
        // Its template's files go with the last VM holding it.
        lock(&vm.template).take();
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
        // Its folder, and its firmware's state unless that is kept with its persistent disk.
        let firmware = self.firmware_state(vm).filter(|_| vm.spec.persistent_disk.is_none());
        for dir in std::iter::once(vm.dir.clone()).chain(firmware) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(VmError::Internal(format!(
                        "removing {}: {e}",
                        dir.display()
                    )));
                }
            }
        }
        if vm.state() != VmState::Failed {
            vm.set_state(VmState::Stopped, None);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Removes a VM's cgroup off the async workers: removal waits (up to seconds) for the killed
/// processes to leave the group.
pub(super) async fn remove_cgroup(
    g: crate::cgroup::VmCgroup,
) -> Result<(), crate::cgroup::CgroupError> {
    match tokio::task::spawn_blocking(move || g.remove()).await {
        Ok(r) => r,
        Err(e) => Err(crate::cgroup::CgroupError::Busy(
            std::path::PathBuf::from(e.to_string()),
            Vec::new(),
        )),
    }
}
