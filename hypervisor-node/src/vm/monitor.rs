//! A running VM watched: ready (the guest agent says so, or without one its screen settled:
//! [`super::settle`]) or failed (it did not within the ready timeout), its end recorded as a
//! stop or a failure, and its agent pinged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atrium_protocol::agent::HostMessage;
use atrium_protocol::node::VmState;

use super::settle::Readiness;
use super::stop::remove_cgroup;
use super::templates::Kind;
use super::{Vm, VmManager, lock, now_ms};
use crate::agent_link::AgentLink;
use crate::runtime::{ExitInfo, VmHandle};

impl VmManager {
    /// Starts watching `vm` (its monitor and its agent's pinger, ended with the VM): ready
    /// unless `already_ready` (a VM taken back). `agent` is `None` for an image without one.
    pub(super) fn watch(
        self: &Arc<Self>,
        vm: &Arc<Vm>,
        handle: Arc<dyn VmHandle>,
        agent: Option<Arc<AgentLink>>,
        already_ready: bool,
    ) {
        let readiness = match &agent {
            Some(a) => Readiness::Agent(a.view.ready.clone()),
            None => {
                let (r, sampler) = Readiness::screen(Arc::clone(&handle), Arc::clone(&vm.console));
                if already_ready {
                    sampler.abort();
                } else {
                    lock(&vm.tasks).push(sampler);
                }
                r
            }
        };
        let monitor = tokio::spawn(Arc::clone(self).monitor(
            Arc::clone(vm),
            handle,
            agent.clone(),
            readiness,
            already_ready,
        ));
        lock(&vm.tasks).push(monitor);
        if let Some(agent) = agent {
            let pinger = tokio::spawn(Arc::clone(self).pinger(agent, vm.id.clone()));
            lock(&vm.tasks).push(pinger);
        }
    }

    /// Watches one VM: ready (unless `already_ready`: a VM taken back), the ready timeout, and
    /// its end.
    async fn monitor(
        self: Arc<Self>,
        vm: Arc<Vm>,
        handle: Arc<dyn VmHandle>,
        agent: Option<Arc<AgentLink>>,
        mut ready: Readiness,
        already_ready: bool,
    ) {
        let mut exit = handle.exit_watch();
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
                r = ready.wait(), if !is_ready => {
                    is_ready = true;
                    match r {
                        Ok(()) => {}
                        // The agent's connection closed: the exit branch tells why.
                        Err(None) => continue,
                        Err(Some(why)) => {
                            self.fail_starting(&vm, handle.as_ref(), why).await;
                            continue;
                        }
                    }
                    if let Some(agent) = &agent
                        && vm.cloned.load(Ordering::Relaxed) && vm.state() == VmState::Starting
                        && let Err(e) = self.renew(&vm, agent).await
                    {
                        // A stop or delete meanwhile is not the clone's failure.
                        if vm.stopping.load(Ordering::SeqCst) {
                            continue;
                        }
                        let held = lock(&vm.template).clone();
                        if let Some(t) = held {
                            self.retire_template(&Kind::of(&vm, vm.runtime), &t, &format!("a clone was not made its own: {e}"));
                        }
                        self.fail_starting(&vm, handle.as_ref(), format!("making the clone its own failed: {e}")).await;
                        continue;
                    }
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
                    let why = format!("{} within {secs} s", ready.awaited());
                    self.fail_starting(&vm, handle.as_ref(), why).await;
                }
            }
        }
    }

    /// A starting VM that cannot become ready: failed with `why`, and ended.
    async fn fail_starting(&self, vm: &Vm, handle: &dyn VmHandle, why: String) {
        tracing::error!(vm = %vm.id, "{why}");
        self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        vm.set_state(VmState::Failed, Some(why));
        vm.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = handle.kill().await {
            tracing::error!(vm = %vm.id, "ending the VM failed: {e}");
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
}
