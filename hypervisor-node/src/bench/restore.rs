//! The builtin VMM restoring a snapshot against its cold start, with Atrium's test firmware, in
//! the same run and interleaved (part of `atrium-node bench clone`, and `atrium-node bench
//! builtin --restore` alone): from spawning `atrium-node vmm` to the guest's agent answering a
//! ping. A cold start boots the firmware (which sets up its devices and says hello first); a
//! restore maps the snapshot's memory and carries on where the snapshot was taken.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atrium_protocol::agent::{AgentMessage, HostMessage};
use atrium_vmm::config::{BootSource, FramebufferConfig, SerialConfig, VmmConfig};
use atrium_vmm::control::{self, ControlRequest, ControlResponse};
use serde::Serialize;

/// The firmware VM's memory, as `bench builtin` uses.
const GUEST_MIB: u32 = 64;
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub kvm: String,
    pub runs: usize,
    /// Pausing the template VM and writing its snapshot.
    pub snapshot_ms: u64,
    /// Guest memory the snapshot wrote (the pages the firmware touched).
    pub snapshot_memory_kib: u64,
    pub cold_ms_median: f64,
    pub restore_ms_median: f64,
    /// Restore over cold start.
    pub restore_ratio: f64,
    pub cold_ms_all: Vec<f64>,
    pub restore_ms_all: Vec<f64>,
}

fn config(dir: &Path, name: &str, boot: BootSource) -> VmmConfig {
    VmmConfig {
        vm_id: name.into(),
        boot,
        vcpus: 1,
        memory_mib: GUEST_MIB,
        framebuffer: Some(FramebufferConfig { width: 1280, height: 800 }),
        disks: Vec::new(),
        serial: SerialConfig { log_path: dir.join(format!("{name}.serial")), max_bytes: 1 << 20 },
        display_socket: Some(dir.join(format!("{name}.display"))),
        agent_socket: Some(dir.join(format!("{name}.agent"))),
        control_socket: Some(dir.join(format!("{name}.ctl"))),
        start_paused: false,
        snapshot_dir: None,
    }
}

/// A VMM process, stopped (and reaped) on drop.
struct Running {
    child: Child,
    control: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if control::request(&self.control, &ControlRequest::Stop).is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Spawns `atrium-node vmm` for `config` and waits until its agent answers a ping; returns the
/// process and the ms from spawn to the answer. A booting guest is pinged once it said it is
/// ready (the driver's set-up resets the port, dropping what was sent before); a restored one
/// at once.
fn start(dir: &Path, config: &VmmConfig) -> anyhow::Result<(Running, f64)> {
    let path = dir.join(format!("{}.json", config.vm_id));
    std::fs::write(&path, serde_json::to_vec(config)?)?;
    let agent = config.agent_socket.clone().context("an agent socket")?;
    let t0 = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .arg("vmm")
        .arg("--config")
        .arg(&path)
        .env("ATRIUM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("spawning atrium-node vmm")?;
    let control = config.control_socket.clone().context("a control socket")?;
    let mut vm = Running { child, control };
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&agent) {
            break s;
        }
        if let Some(status) = vm.child.try_wait()? {
            bail!("{} exited ({status}) before its agent socket appeared", config.vm_id);
        }
        if t0.elapsed() > TIMEOUT {
            bail!("{}: no agent socket after {TIMEOUT:?}", config.vm_id);
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let mut next = || -> anyhow::Result<Option<AgentMessage>> {
        let mut text = String::new();
        if reader.read_line(&mut text)? == 0 {
            bail!("{}: the agent channel closed", config.vm_id);
        }
        Ok(serde_json::from_str(text.trim()).ok())
    };
    if !matches!(config.boot, BootSource::Snapshot { .. }) {
        while !matches!(next()?, Some(AgentMessage::Ready)) {}
    }
    let mut line = serde_json::to_vec(&HostMessage::Ping { id: 1 })?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    while !matches!(next()?, Some(AgentMessage::Pong { id: 1 })) {}
    Ok((vm, t0.elapsed().as_secs_f64() * 1000.0))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// Boots a template, snapshots it, then interleaves `runs` cold starts and restores.
pub fn bench_restore(runs: usize) -> anyhow::Result<RestoreReport> {
    anyhow::ensure!(runs > 0, "at least one run");
    let kind = atrium_vmm::kvm_kind::detect();
    anyhow::ensure!(
        kind != atrium_vmm::KvmKind::Absent,
        "/dev/kvm is missing or not usable: the builtin VMM needs it"
    );
    let dir = std::env::temp_dir().join(format!("atrium-bench-restore-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, runs, kind);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(dir: &Path, runs: usize, kind: atrium_vmm::KvmKind) -> anyhow::Result<RestoreReport> {
    let fw = dir.join("atrium-test-fw.bin");
    std::fs::write(&fw, atrium_vmm::firmware::TEST_FIRMWARE)?;
    let snap = dir.join("snapshot");
    std::fs::create_dir_all(&snap)?;
    let mut template = config(dir, "template", BootSource::Firmware { path: fw.clone() });
    template.snapshot_dir = Some(snap.clone());
    let (vm, _) = start(dir, &template)?;
    let t0 = Instant::now();
    let (snapshot_memory_kib, snapshot_ms) =
        match control::request(&vm.control, &ControlRequest::Snapshot)? {
            ControlResponse::Snapshot { memory_bytes, .. } => {
                (memory_bytes / 1024, u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX))
            }
            other => bail!("the template's snapshot answered {other:?}"),
        };
    drop(vm);
    let (mut cold, mut restored) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let boot = BootSource::Firmware { path: fw.clone() };
        let (vm, ms) = start(dir, &config(dir, &format!("cold-{i}"), boot))?;
        drop(vm);
        cold.push(ms);
        let boot = BootSource::Snapshot { dir: snap.clone() };
        let (vm, ms) = start(dir, &config(dir, &format!("restore-{i}"), boot))?;
        drop(vm);
        restored.push(ms);
    }
    let (c, r) = (median(&cold), median(&restored));
    Ok(RestoreReport {
        kvm: atrium_vmm::kvm_kind::name(kind).into(),
        runs,
        snapshot_ms,
        snapshot_memory_kib,
        cold_ms_median: c,
        restore_ms_median: r,
        restore_ratio: if c > 0.0 { (r / c * 1000.0).round() / 1000.0 } else { 0.0 },
        cold_ms_all: cold,
        restore_ms_all: restored,
    })
}
