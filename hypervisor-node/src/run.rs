//! `atrium-node run`: boot one VM from an image folder, wait for its agent, take a screenshot,
//! print one JSON line, clean up. The same path as the API (the VM manager), without a server.
//! Also the measurement behind `atrium-node bench qemu`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_protocol::agent::SessionUser;
use atrium_protocol::node::{Accel, DisplaySize, RuntimeKind, VmSpec, VmState};
use serde::Serialize;
use thiserror::Error;

use crate::config::NodeConfig;
use crate::image::{Image, ImageError};
use crate::server::{ServeError, build_manager};
use crate::vm::{Vm, VmError, VmManager};

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Setup(#[from] ServeError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("the VM did not become ready: {0}")]
    NotReady(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("interrupted")]
    Interrupted,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image: PathBuf,
    pub runtime: Option<RuntimeKind>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub display: DisplaySize,
    pub timeout: Duration,
    pub screenshot: Option<PathBuf>,
    /// Stop after ready (and the screenshot); otherwise run until Ctrl-C.
    pub until_ready: bool,
    pub cgroups: bool,
    /// Measure the VM process's memory once ready (once the session is drawn, with `session`).
    pub measure_memory: bool,
    /// Sign this user in once the VM is ready, and time it (desktop images: until the session
    /// is drawn).
    pub session: Option<SessionUser>,
}

impl RunOptions {
    /// Options for a benchmark: the qemu runtime, cgroups on, until ready, nothing kept.
    pub fn bench(
        image: PathBuf,
        vcpus: u32,
        memory_mib: u32,
        display: DisplaySize,
        timeout: Duration,
    ) -> Self {
        Self {
            image,
            runtime: Some(RuntimeKind::Qemu),
            vcpus,
            memory_mib,
            display,
            timeout,
            screenshot: None,
            until_ready: true,
            cgroups: true,
            measure_memory: false,
            session: None,
        }
    }

    /// The spec of a VM of `image` with these options (a floating one, for nobody yet).
    pub fn spec(&self, image: &Image, clone: bool) -> VmSpec {
        VmSpec {
            image: image.manifest.reference(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            display: self.display,
            runtime: self.runtime,
            persistent_disk: None,
            user: None,
            clone,
        }
    }
}

/// The last line `run` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub runtime: RuntimeKind,
    pub accel: Option<Accel>,
    /// From the start of the launch to the VM running (process up, channels connected, resumed).
    pub start_ms: u64,
    /// From the start of the launch to the guest agent's ready.
    pub ready_ms: u64,
    /// From ready to the agent's confirmation of the session (with `--user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_ms: Option<u64>,
    #[serde(skip)]
    pub memory: Option<MemoryUse>,
}

/// A VM process's memory, from `/proc/<pid>/smaps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryUse {
    /// Resident memory of the whole process.
    pub rss_kib: u64,
    /// Resident part of the guest's RAM mapping.
    pub guest_rss_kib: u64,
    /// What the VM costs beyond its guest memory: `rss_kib - guest_rss_kib`.
    pub overhead_kib: u64,
}

/// Splits a process's resident memory into guest RAM (the one anonymous mapping of the guest's
/// size, give or take QEMU's alignment) and the rest.
pub fn memory_use(smaps: &str, guest_mib: u32) -> Option<MemoryUse> {
    let guest_kib = u64::from(guest_mib) * 1024;
    let mut rss = 0u64;
    let mut guest = None;
    let mut size = 0u64;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let r: u64 = v.parse().unwrap_or(0);
                rss += r;
                if guest.is_none() && size >= guest_kib && size <= guest_kib + 8 * 1024 {
                    guest = Some(r);
                }
            }
            _ => {}
        }
    }
    let guest = guest?;
    Some(MemoryUse { rss_kib: rss, guest_rss_kib: guest, overhead_kib: rss - guest })
}

async fn wait_settled(vm: &Vm, timeout: Duration) -> Result<(), RunError> {
    let mut st = vm.state_watch();
    let r = tokio::time::timeout(timeout, st.wait_for(|s| *s != VmState::Starting)).await;
    match (r, vm.state()) {
        (Ok(_), VmState::Ready) => Ok(()),
        (Err(_), _) => Err(RunError::NotReady(format!("not ready within {timeout:?}"))),
        (Ok(_), s) => {
            let info = vm.info();
            let tail: String = vm
                .console
                .text()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Err(RunError::NotReady(format!(
                "{}: {}\nlast console lines:\n{tail}",
                s.as_str(),
                info.error.unwrap_or_default()
            )))
        }
    }
}

/// A node manager for one-shot runs: a private state folder under the temp dir.
pub async fn one_shot_manager(opts: &RunOptions) -> Result<(Arc<VmManager>, PathBuf), RunError> {
    let state = std::env::temp_dir().join(format!(
        "atrium-run-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut config = NodeConfig::default();
    config.node.state_dir = state.clone();
    config.node.images_dir = opts.image.parent().map_or_else(|| PathBuf::from("/"), PathBuf::from);
    config.node.ready_timeout_secs = opts.timeout.as_secs().max(1);
    config.node.stop_grace_secs = 2;
    config.cgroup.enabled = opts.cgroups;
    let manager = build_manager(config).await?;
    Ok((manager, state))
}

/// Boots one VM and reports; cleans up whatever happens.
pub async fn run_once(opts: &RunOptions) -> Result<RunReport, RunError> {
    let image = Arc::new(Image::load(&opts.image, true)?);
    let (manager, state) = one_shot_manager(opts).await?;
    // Ctrl-C or SIGTERM still cleans up: the VM, its cgroup and the state folder.
    let result = tokio::select! {
        r = run_in(&manager, image, opts) => r,
        () = crate::server::shutdown_signal() => Err(RunError::Interrupted),
    };
    for vm in manager.list() {
        if let Err(e) = manager.delete(&vm.id).await {
            tracing::error!(vm = %vm.id, "cleaning up: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    result
}

async fn run_in(
    manager: &Arc<VmManager>,
    image: Arc<Image>,
    opts: &RunOptions,
) -> Result<RunReport, RunError> {
    let spec = opts.spec(&image, false);
    let t0 = Instant::now();
    let vm = manager.launch(spec, image).await?;
    let start_ms = elapsed_ms(t0);
    wait_settled(&vm, opts.timeout).await?;
    let ready_ms = elapsed_ms(t0);
    let session_ms = match &opts.session {
        Some(user) => {
            let t1 = Instant::now();
            manager.start_session(&vm.id, user.clone()).await?;
            let ms = elapsed_ms(t1);
            // Let the new session settle before its memory is measured.
            tokio::time::sleep(Duration::from_secs(3)).await;
            Some(ms)
        }
        None => None,
    };
    let memory = if opts.measure_memory {
        vm.handle()
            .and_then(|h| h.pid())
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok())
            .and_then(|s| memory_use(&s, opts.memory_mib))
    } else {
        None
    };
    if let Some(path) = &opts.screenshot {
        let frame = manager.screenshot(&vm.id).await?;
        std::fs::write(path, frame.to_png())
            .map_err(|source| RunError::Io { path: path.clone(), source })?;
    }
    let report = RunReport {
        runtime: vm.runtime,
        accel: vm.info().accel,
        start_ms,
        ready_ms,
        session_ms,
        memory,
    };
    if !opts.until_ready {
        let info = vm.info();
        eprintln!(
            "VM {} is ready ({}); display: {:?}. Ctrl-C ends it.",
            info.id,
            serde_json::to_string(&report).expect("reports serialize"),
            info.display_endpoint
        );
        let mut st = vm.state_watch();
        let _ = st.wait_for(|s| *s != VmState::Ready).await;
    }
    Ok(report)
}

fn elapsed_ms(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_guest_ram_from_the_rest() {
        let smaps = "\
55d0-55d1 r-xp 00000000 08:01 1 /usr/bin/qemu-system-x86_64
Size:              12000 kB
Rss:                9000 kB
7f00-7f20 rw-p 00000000 00:00 0
Size:             526336 kB
Rss:              101000 kB
7f30-7f31 rw-p 00000000 00:00 0
Size:               4096 kB
Rss:                2000 kB
";
        let m = memory_use(smaps, 512).expect("guest mapping found");
        assert_eq!(m, MemoryUse { rss_kib: 112_000, guest_rss_kib: 101_000, overhead_kib: 11_000 });
        assert_eq!(memory_use(smaps, 2048), None);
    }
}
