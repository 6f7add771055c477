//! `atrium-node vmm --config FILE.json` (one builtin-VMM process per VM) and
//! `atrium-node bench builtin --vs-qemu` (start time and memory overhead against QEMU).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atrium_vmm::config::{BootSource, FramebufferConfig, SerialConfig, VmmConfig};
use atrium_vmm::control::{self, ControlRequest};
use atrium_vmm::{ExitReason, KvmKind};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct VmmArgs {
    /// The VM's configuration (JSON, `atrium_vmm::VmmConfig`).
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs one VM in this process until it stops. Prints why as one JSON line on stdout; exits 0
/// when the guest or the node stopped it cleanly, 3 when the guest faulted.
pub fn vmm(a: &VmmArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let config = VmmConfig::from_json(&text)?;
    let reason = atrium_vmm::run(config)?;
    println!("{}", serde_json::to_string(&reason)?);
    match reason {
        ExitReason::Stopped | ExitReason::PowerOff | ExitReason::Reboot => Ok(()),
        ExitReason::TripleFault | ExitReason::GuestFault(_) => std::process::exit(3),
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The builtin VMM: process start to first serial byte of the test firmware, and memory
    /// overhead beyond guest memory touched; with --vs-qemu, QEMU in the same run; with
    /// --restore, a restore from a snapshot against a cold start.
    Builtin(BenchBuiltinArgs),
}

#[derive(Debug, Args)]
pub struct BenchBuiltinArgs {
    /// Measure qemu-system-x86_64 on the same firmware too (KVM and TCG where they run).
    #[arg(long)]
    pub vs_qemu: bool,
    /// Measure a restore from a snapshot against a cold start too (also in `bench clone`).
    #[arg(long)]
    pub restore: bool,
    /// Runs per runtime (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
}

pub fn bench(cmd: &BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Builtin(a) => bench_builtin(a),
    }
}

/// One measured start.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first_byte: Duration,
    rss_kib: u64,
    guest_kib: u64,
}

impl Sample {
    fn overhead_kib(self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_kib)
    }
}

const GUEST_MIB: u32 = 64;
const TIMEOUT: Duration = Duration::from_secs(60);

fn mkfifo(path: &Path) -> anyhow::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path; mkfifo only reads it.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error()).context("mkfifo");
    }
    // Opened before the writer exists, non-blocking, so the writer's open does not wait.
    Ok(OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?)
}

/// Reads the FIFO until `needle` appears; returns when the first byte arrived (since `t0`).
fn read_until(
    fifo: &mut File,
    needle: &str,
    t0: Instant,
    child: &mut Child,
) -> anyhow::Result<Duration> {
    let mut first = None;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd { fd: fifo.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&raw mut pfd, 1, 10) };
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            match fifo.read(&mut buf) {
                Ok(k) if k > 0 => {
                    first.get_or_insert_with(|| t0.elapsed());
                    seen.extend_from_slice(&buf[..k]);
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        return first.context("bytes were read");
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the VM exited ({status}) before {needle:?}; serial: {}",
                String::from_utf8_lossy(&seen)
            );
        }
        if t0.elapsed() > TIMEOUT {
            bail!("no {needle:?} after {TIMEOUT:?}; serial: {}", String::from_utf8_lossy(&seen));
        }
    }
}

/// Total RSS and the RSS of the mappings `is_guest` picks (name, size in KiB), from smaps.
fn rss(pid: u32, is_guest: impl Fn(&str, u64) -> bool) -> anyhow::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut guest) = (0, 0);
    let (mut name, mut size) = (String::new(), 0u64);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            name = line.split_whitespace().skip(5).collect::<Vec<_>>().join(" ");
        } else if first == "Size:" {
            size = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += kib;
            if is_guest(&name, size) {
                guest += kib;
            }
        }
    }
    Ok((total, guest))
}

fn builtin_once(dir: &Path, fw: &Path, i: u32) -> anyhow::Result<Sample> {
    let fifo_path = dir.join(format!("builtin-{i}.fifo"));
    let mut fifo = mkfifo(&fifo_path)?;
    let ctl = dir.join(format!("builtin-{i}.ctl"));
    let config = VmmConfig {
        vm_id: format!("bench-{i}"),
        boot: BootSource::Firmware { path: fw.to_path_buf() },
        vcpus: 1,
        memory_mib: GUEST_MIB,
        framebuffer: Some(FramebufferConfig { width: 1280, height: 800 }),
        disks: Vec::new(),
        serial: SerialConfig { log_path: fifo_path, max_bytes: 1 << 20 },
        display_socket: Some(dir.join(format!("builtin-{i}.display"))),
        agent_socket: Some(dir.join(format!("builtin-{i}.agent"))),
        control_socket: Some(ctl.clone()),
        start_paused: false,
        snapshot_dir: None,
    };
    let cfg_path = dir.join(format!("builtin-{i}.json"));
    std::fs::write(&cfg_path, serde_json::to_vec(&config)?)?;
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .arg("vmm")
        .arg("--config")
        .arg(&cfg_path)
        .env("ATRIUM_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("spawning atrium-node vmm")?;
    let result = (|| {
        let first_byte = read_until(&mut fifo, "atrium-fw: ready\n", t0, &mut child)?;
        std::thread::sleep(Duration::from_millis(300));
        let (rss_kib, guest_kib) = rss(child.id(), |name, _| name.starts_with("/memfd:atrium-"))?;
        Ok(Sample { first_byte, rss_kib, guest_kib })
    })();
    if control::request(&ctl, &ControlRequest::Stop).is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

fn qemu_once(dir: &Path, fw: &Path, accel: &str, i: u32) -> anyhow::Result<Sample> {
    let fifo_path = dir.join(format!("qemu-{accel}-{i}.fifo"));
    let mut fifo = mkfifo(&fifo_path)?;
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-vga",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-no-reboot", "-m", &GUEST_MIB.to_string(), "-accel", accel, "-kernel"])
        .arg(fw)
        .arg("-serial")
        .arg(format!("file:{}", fifo_path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning qemu-system-x86_64")?;
    let result = (|| {
        let first_byte = read_until(&mut fifo, "halting\n", t0, &mut child)?;
        std::thread::sleep(Duration::from_millis(300));
        let ram_kib = u64::from(GUEST_MIB) * 1024;
        // QEMU's guest RAM is an anonymous mapping of the RAM size (plus alignment).
        let (rss_kib, guest_kib) = rss(child.id(), |name, size| {
            name.is_empty() && (ram_kib..=ram_kib + 4096).contains(&size)
        })?;
        Ok(Sample { first_byte, rss_kib, guest_kib })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by_key(|s| s.first_byte);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn bench_builtin(a: &BenchBuiltinArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.runs > 0, "--runs must be at least 1");
    let kind = atrium_vmm::kvm_kind::detect();
    anyhow::ensure!(
        kind != KvmKind::Absent,
        "/dev/kvm is missing or not usable: the builtin VMM needs it"
    );
    let dir = std::env::temp_dir().join(format!("atrium-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let fw = dir.join("atrium-test-fw.bin");
    std::fs::write(&fw, atrium_vmm::firmware::TEST_FIRMWARE)?;
    println!(
        "kvm: {} (hardware virtualization: {})",
        atrium_vmm::kvm_kind::name(kind),
        kind.is_hardware()
    );
    println!(
        "firmware: atrium test firmware, {} bytes; guest memory {GUEST_MIB} MiB; {} runs each",
        atrium_vmm::firmware::TEST_FIRMWARE.len(),
        a.runs
    );

    let result = (|| {
        // Rounds interleave the runtimes, so that load from elsewhere on the machine falls on
        // both alike. QEMU runs with KVM where it can use /dev/kvm, and with TCG; the ratio is
        // taken against the faster, so it never flatters the builtin VMM.
        let accels: &[&str] = if a.vs_qemu { &["kvm", "tcg"] } else { &[] };
        let mut builtin = Vec::new();
        let mut qemu: Vec<(&str, Vec<Sample>, Option<anyhow::Error>)> =
            accels.iter().map(|&acc| (acc, Vec::new(), None)).collect();
        for i in 0..a.runs {
            builtin.push(builtin_once(&dir, &fw, i)?);
            for (accel, samples, failed) in &mut qemu {
                if failed.is_none() {
                    match qemu_once(&dir, &fw, accel, i) {
                        Ok(s) => samples.push(s),
                        Err(e) => *failed = Some(e),
                    }
                }
            }
        }
        let b = median(builtin);
        println!(
            "builtin: first serial byte {:.1} ms, RSS {:.1} MiB, guest memory touched {:.1} MiB, overhead {:.1} MiB",
            ms(b.first_byte),
            mib(b.rss_kib),
            mib(b.guest_kib),
            mib(b.overhead_kib())
        );
        let mut json = serde_json::json!({
            "kvm": atrium_vmm::kvm_kind::name(kind),
            "runs": a.runs,
            "builtin_start_ms": ms(b.first_byte),
            "overhead_mib": mib(b.overhead_kib()),
        });
        if a.vs_qemu {
            let mut best: Option<(&str, Sample)> = None;
            for (accel, samples, failed) in qemu {
                if let Some(e) = failed {
                    println!("qemu ({accel}): not usable here: {e:#}");
                    continue;
                }
                let q = median(samples);
                println!(
                    "qemu ({accel}): first serial byte {:.1} ms, RSS {:.1} MiB, guest memory touched {:.1} MiB, overhead {:.1} MiB",
                    ms(q.first_byte),
                    mib(q.rss_kib),
                    mib(q.guest_kib),
                    mib(q.overhead_kib())
                );
                json[format!("qemu_{accel}_start_ms")] = ms(q.first_byte).into();
                json[format!("qemu_{accel}_overhead_mib")] = mib(q.overhead_kib()).into();
                if best.is_none_or(|(_, s)| q.first_byte < s.first_byte) {
                    best = Some((accel, q));
                }
            }
            let (accel, q) = best.context("qemu-system-x86_64 ran with neither KVM nor TCG")?;
            let ratio = b.first_byte.as_secs_f64() / q.first_byte.as_secs_f64();
            println!("start ratio (builtin / fastest qemu, {accel}): {ratio:.3}");
            json["qemu_accel"] = accel.into();
            json["qemu_start_ms"] = ms(q.first_byte).into();
            json["qemu_overhead_mib"] = mib(q.overhead_kib()).into();
            json["start_ratio"] = ratio.into();
        }
        if a.restore {
            let r = atrium_node::bench::restore::bench_restore(a.runs as usize)?;
            crate::print_restore(&r);
            json["builtin_restore_ms"] = r.restore_ms_median.into();
            json["builtin_cold_ms"] = r.cold_ms_median.into();
            json["builtin_restore_ratio"] = r.restore_ratio.into();
        }
        println!("{json}");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
