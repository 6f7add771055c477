//! `atrium-node bench qemu`: VM start to agent-ready for an image (median of N runs through the
//! node, beside the same boot done by hand with a bare `qemu-system-x86_64` in the same run),
//! and the memory a VM costs beyond its guest memory. `bench clone` ([`clone`]): clones of a
//! template against boots, and the builtin VMM's restore against its cold start ([`restore`]).

pub mod clone;
pub mod restore;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use atrium_protocol::node::Accel;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::QemuSection;
use crate::image::Image;
use crate::run::{RunError, RunOptions, run_once};
use crate::runtime::qemu::{Paths, QemuRuntime};
use crate::runtime::{DiskConfig, LaunchBoot, LaunchConfig, Runtime};

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub image: String,
    pub accel: Option<Accel>,
    pub runs: usize,
    pub start_ms_median: u64,
    pub ready_ms_median: u64,
    /// Ready to the session drawn (desktop images, with `--user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_ms_median: Option<u64>,
    pub bare_qemu_ready_ms_median: u64,
    pub node_overhead_ms: i64,
    /// Ready through the node over ready with QEMU alone (medians): what the node adds.
    pub node_ratio: f64,
    pub qemu_rss_mib_median: f64,
    pub guest_ram_resident_mib_median: f64,
    pub memory_overhead_mib_median: f64,
    pub ready_ms_all: Vec<u64>,
    pub bare_qemu_ready_ms_all: Vec<u64>,
}

pub fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    match s.len() {
        0 => 0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2,
    }
}

fn kib_to_mib(k: u64) -> f64 {
    let whole = u32::try_from(k / 1024).unwrap_or(u32::MAX);
    let frac = u32::try_from(k % 1024).expect("below 1024");
    f64::from(whole) + f64::from(frac) / 1024.0
}

/// Boots the image with a bare QEMU (same command line as the node's, not paused, no cgroup,
/// no QMP handshake, no console log) and times it to the agent's ready.
async fn bare_boot(
    image: &Image,
    opts: &RunOptions,
    qemu: &QemuRuntime,
    dir: &Path,
) -> Result<u64, RunError> {
    let io = |what: &str| {
        let path = PathBuf::from(what);
        move |source| RunError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("bare qemu folder"))?;
    let m = &image.manifest;
    let t0 = Instant::now();
    let disk = m.disk.as_ref().map(|d| DiskConfig {
        base: image.file(&d.file),
        base_format: d.format,
        layer: dir.join("disk.qcow2"),
        keep: false,
    });
    if let Some(d) = &disk {
        let st = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b"])
            .arg(&d.base)
            .args(["-F", d.base_format.as_str()])
            .arg(&d.layer)
            .status()
            .await
            .map_err(io("qemu-img"))?;
        if !st.success() {
            return Err(RunError::NotReady("qemu-img create failed".into()));
        }
    }
    let cfg = LaunchConfig {
        id: "vm-bare".into(),
        dir: dir.to_path_buf(),
        boot: LaunchBoot::of(image),
        firmware_state: Some(dir.join("firmware")),
        disk,
        home: None,
        vcpus: opts.vcpus,
        memory_mib: opts.memory_mib,
        display: opts.display,
        sound: false,
        cgroup: None,
        memory: Default::default(),
    };
    let paths = Paths::in_dir(dir);
    qemu.prepare_firmware(&cfg).map_err(|e| RunError::NotReady(e.to_string()))?;
    let args: Vec<_> = qemu.args(&cfg, &paths, None).into_iter().filter(|a| a != "-S").collect();
    let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: runs in the child between fork and exec and only calls prctl, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // Die with the benchmark, even when it is killed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io("qemu-system-x86_64"))?;
    // Read the serial console as the node does (an unread socket would slow the guest's
    // serial output differently).
    let serial = loop {
        match tokio::net::UnixStream::connect(&paths.serial).await {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < opts.timeout => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(RunError::Io { path: paths.serial.clone(), source: e }),
        }
    };
    let drain = tokio::spawn(async move {
        let mut serial = serial;
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut serial, &mut sink).await;
    });
    let stream = loop {
        match tokio::net::UnixStream::connect(&paths.agent).await {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < opts.timeout => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => return Err(RunError::Io { path: paths.agent.clone(), source: e }),
        }
    };
    let mut lines = BufReader::new(stream).lines();
    let wait = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"type\":\"ready\"") {
                return true;
            }
        }
        false
    };
    let ready = tokio::time::timeout(opts.timeout, wait).await;
    let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let _ = child.kill().await;
    drain.abort();
    let _ = std::fs::remove_dir_all(dir);
    match ready {
        Ok(true) => Ok(ms),
        _ => Err(RunError::NotReady("bare QEMU: the agent did not say ready".into())),
    }
}

pub async fn bench_qemu(opts: &RunOptions, runs: usize) -> Result<BenchReport, RunError> {
    let image = Image::load(&opts.image, true)?;
    let kvm = crate::kvm::detect();
    let qemu = QemuRuntime::new(QemuSection::default(), kvm);
    eprintln!(
        "bench qemu: image {}, accel {} ({}), {runs} runs each, {} MiB, {}",
        image.manifest.reference(),
        qemu.accel().map_or("-".into(), |a| a.to_string()),
        qemu.accel_reason(),
        opts.memory_mib,
        opts.display
    );
    let mut ready = Vec::new();
    let mut session = Vec::new();
    let mut start = Vec::new();
    let mut rss = Vec::new();
    let mut guest = Vec::new();
    let mut overhead = Vec::new();
    let mut bare = Vec::new();
    let mut accel = None;
    let measure =
        RunOptions { until_ready: true, screenshot: None, measure_memory: true, ..opts.clone() };
    // Node and bare runs alternate, so a change in the machine's load falls on both.
    for i in 0..runs {
        let r = run_once(&measure).await?;
        eprintln!(
            "  run {}: node: start {} ms, ready {} ms{}",
            i + 1,
            r.start_ms,
            r.ready_ms,
            r.session_ms.map(|s| format!(", session drawn {s} ms later")).unwrap_or_default()
        );
        accel = r.accel;
        session.extend(r.session_ms);
        ready.push(r.ready_ms);
        start.push(r.start_ms);
        if let Some(m) = r.memory {
            rss.push(m.rss_kib);
            guest.push(m.guest_rss_kib);
            overhead.push(m.overhead_kib);
        }
        let dir = std::env::temp_dir().join(format!("atrium-bare-{}-{i}", std::process::id()));
        // Ctrl-C or SIGTERM ends the bare QEMU too (it is killed when its future is dropped).
        let ms = tokio::select! {
            r = bare_boot(&image, opts, &qemu, &dir) => r?,
            () = crate::server::shutdown_signal() => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(RunError::Interrupted);
            }
        };
        eprintln!("  run {}: bare qemu-system-x86_64: ready {ms} ms", i + 1);
        bare.push(ms);
    }
    let ready_median = median(&ready);
    let bare_median = median(&bare);
    Ok(BenchReport {
        image: image.manifest.reference(),
        accel,
        runs,
        start_ms_median: median(&start),
        ready_ms_median: ready_median,
        session_ms_median: (!session.is_empty()).then(|| median(&session)),
        bare_qemu_ready_ms_median: bare_median,
        node_overhead_ms: i64::try_from(ready_median).unwrap_or(i64::MAX)
            - i64::try_from(bare_median).unwrap_or(i64::MAX),
        node_ratio: ready_median as f64 / bare_median.max(1) as f64,
        qemu_rss_mib_median: kib_to_mib(median(&rss)),
        guest_ram_resident_mib_median: kib_to_mib(median(&guest)),
        memory_overhead_mib_median: kib_to_mib(median(&overhead)),
        ready_ms_all: ready,
        bare_qemu_ready_ms_all: bare,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[5, 1, 3]), 3);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
        assert_eq!(median(&[]), 0);
        assert!((kib_to_mib(1536) - 1.5).abs() < 1e-9);
    }
}
