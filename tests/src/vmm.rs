//! A harness for the builtin VMM: starts `atrium-node vmm --config FILE.json` (one process per
//! VM, as the node does) in a temporary directory, and speaks its sockets: the display channel
//! (`atrium_protocol::vmm_channel`, with the framebuffer memfd), the agent channel (JSON lines)
//! and the control socket.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atrium_protocol::vmm_channel::{VmmEvent, VmmRequest, frame_len};
use atrium_vmm::config::{BootSource, DiskConfig, FramebufferConfig, SerialConfig, VmmConfig};
use atrium_vmm::control::{self, ControlRequest, ControlResponse};

use crate::{TempDir, bin_path};

/// A VM configuration rooted in a temporary directory.
#[derive(Debug)]
pub struct VmmGuestBuilder {
    pub dir: TempDir,
    pub config: VmmConfig,
}

impl VmmGuestBuilder {
    /// The test firmware with a 640x480 screen and every socket.
    pub fn firmware(name: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new(name);
        let fw = dir.path().join("fw.bin");
        std::fs::write(&fw, atrium_vmm::firmware::TEST_FIRMWARE)?;
        Ok(Self::with_boot(dir, BootSource::Firmware { path: fw }, 64))
    }

    /// A Linux kernel.
    pub fn kernel(name: &str, kernel: &Path, cmdline: &str, memory_mib: u32) -> Self {
        let dir = TempDir::new(name);
        let boot = BootSource::Kernel {
            path: kernel.to_path_buf(),
            initramfs: None,
            cmdline: cmdline.into(),
        };
        let mut b = Self::with_boot(dir, boot, memory_mib);
        b.config.display_socket = None;
        b.config.agent_socket = None;
        b
    }

    /// A VM restored from the snapshot in `snapshot`, shaped like `like` (vCPUs, memory,
    /// screen, disks' modes, agent), with sockets and logs of its own.
    pub fn restore(name: &str, snapshot: &Path, like: &VmmConfig) -> Self {
        let dir = TempDir::new(name);
        let boot = BootSource::Snapshot { dir: snapshot.to_path_buf() };
        let mut b = Self::with_boot(dir, boot, like.memory_mib);
        b.config.vcpus = like.vcpus;
        b.config.framebuffer = like.framebuffer;
        b.config.disks = like.disks.clone();
        if like.agent_socket.is_none() {
            b.config.agent_socket = None;
        }
        if like.display_socket.is_none() {
            b.config.display_socket = None;
        }
        b
    }

    fn with_boot(dir: TempDir, boot: BootSource, memory_mib: u32) -> Self {
        let p = |n: &str| dir.path().join(n);
        let config = VmmConfig {
            vm_id: "test-vm".into(),
            boot,
            vcpus: 1,
            memory_mib,
            framebuffer: Some(FramebufferConfig { width: 640, height: 480 }),
            disks: Vec::new(),
            serial: SerialConfig { log_path: p("serial.log"), max_bytes: 1 << 20 },
            display_socket: Some(p("display.sock")),
            agent_socket: Some(p("agent.sock")),
            control_socket: Some(p("control.sock")),
            start_paused: false,
            snapshot_dir: None,
        };
        Self { dir, config }
    }

    /// Adds a disk file of `sectors` 512-byte sectors starting with `first_bytes`.
    pub fn disk(
        mut self,
        name: &str,
        first_bytes: &[u8],
        sectors: usize,
        read_only: bool,
    ) -> anyhow::Result<Self> {
        let path = self.dir.path().join(name);
        let mut content = vec![0u8; sectors * 512];
        content[..first_bytes.len()].copy_from_slice(first_bytes);
        std::fs::write(&path, content)?;
        self.config.disks.push(DiskConfig { path, read_only });
        Ok(self)
    }

    /// Writes the configuration and starts `atrium-node vmm`.
    pub fn start(self) -> anyhow::Result<VmmGuest> {
        let config_path = self.dir.path().join("vm.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&self.config)?)?;
        let stderr = File::create(self.dir.path().join("vmm.log"))?;
        let child = Command::new(bin_path("atrium-node"))
            .arg("vmm")
            .arg("--config")
            .arg(&config_path)
            .env("ATRIUM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning atrium-node vmm")?;
        Ok(VmmGuest { dir: self.dir, config: self.config, child: Some(child) })
    }
}

/// A running VMM process, killed on drop.
#[derive(Debug)]
pub struct VmmGuest {
    pub dir: TempDir,
    pub config: VmmConfig,
    child: Option<Child>,
}

impl VmmGuest {
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.config.serial.log_path).unwrap_or_default())
            .into_owned()
    }

    /// The VMM's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmm.log")).unwrap_or_default()
    }

    /// Each thread of the VMM process: its name and its seccomp mode (0 none, 2 filtered),
    /// from `/proc/PID/task/*/status`.
    pub fn thread_seccomp(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let pid = self.child.as_ref().context("the VMM has exited")?.id();
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            let field = |name: &str| {
                status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("")
            };
            let mode = field("Seccomp:").parse().context("the Seccomp: line")?;
            out.push((field("Name:").to_owned(), mode));
        }
        out.sort();
        Ok(out)
    }

    /// Waits until the serial log contains `needle`; fails early if the VMM exits.
    pub fn wait_serial(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            let s = self.serial();
            if s.contains(needle) {
                return Ok(s);
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "the VMM exited ({status}) before {needle:?}\nserial:\n{s}\nlog:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {needle:?} on serial\nserial:\n{s}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn socket(&self, p: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
        p.clone().context("socket not configured")
    }

    /// Waits for a socket path to appear (the VMM binds them before starting vCPUs).
    fn wait_socket(&mut self, path: &Path) -> anyhow::Result<()> {
        let start = Instant::now();
        while !path.exists() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "the VMM exited ({status}) before binding {}\nlog:\n{}",
                    path.display(),
                    self.log()
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("{} never appeared\nlog:\n{}", path.display(), self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn control(&mut self, req: &ControlRequest) -> anyhow::Result<ControlResponse> {
        let p = self.socket(&self.config.control_socket)?;
        self.wait_socket(&p)?;
        Ok(control::request(&p, req)?)
    }

    pub fn display(&mut self) -> anyhow::Result<DisplayClient> {
        let p = self.socket(&self.config.display_socket)?;
        self.wait_socket(&p)?;
        DisplayClient::connect(&p)
    }

    pub fn agent(&mut self) -> anyhow::Result<AgentClient> {
        let p = self.socket(&self.config.agent_socket)?;
        self.wait_socket(&p)?;
        let s = UnixStream::connect(&p)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(AgentClient { writer: s.try_clone()?, reader: BufReader::new(s) })
    }

    /// Asks the VMM to stop and waits for the process; returns its exit status and log.
    pub fn stop(mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let answer = self.control(&ControlRequest::Stop)?;
        anyhow::ensure!(answer == ControlResponse::Ok, "stop answered {answer:?}");
        let mut child = self.child.take().context("already stopped")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, self.log()));
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                bail!("the VMM did not exit after stop\nlog:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VmmGuest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The display proxy's end of the display channel.
#[derive(Debug)]
pub struct DisplayClient {
    stream: UnixStream,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub fb_size: u64,
    pub page_size: u32,
    pub framebuffer: File,
    /// `InputRefused` reasons seen while waiting for other answers.
    pub refused: Vec<String>,
}

impl DisplayClient {
    pub fn connect(path: &Path) -> anyhow::Result<Self> {
        let (stream, info, framebuffer) = atrium_vmm::display_client::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        anyhow::ensure!(info.format == atrium_protocol::vmm_channel::FORMAT_XRGB8888);
        Ok(Self {
            stream,
            width: info.width,
            height: info.height,
            stride: info.stride,
            fb_size: info.fb_size,
            page_size: info.page_size,
            framebuffer,
            refused: Vec::new(),
        })
    }

    pub fn send(&mut self, req: &VmmRequest) -> anyhow::Result<()> {
        self.stream.write_all(&req.encode())?;
        Ok(())
    }

    pub fn read_event(&mut self) -> anyhow::Result<VmmEvent> {
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix)?;
        let mut body = vec![0u8; frame_len(prefix)?];
        self.stream.read_exact(&mut body)?;
        Ok(VmmEvent::decode(&body)?)
    }

    /// The dirty bitmap as a list of page numbers.
    pub fn dirty_pages(&mut self) -> anyhow::Result<Vec<u32>> {
        self.send(&VmmRequest::GetDirty)?;
        loop {
            match self.read_event()? {
                VmmEvent::Dirty { pages, bitmap } => {
                    return Ok((0..pages)
                        .filter(|&p| bitmap[(p / 8) as usize] & (1 << (p % 8)) != 0)
                        .collect());
                }
                VmmEvent::InputRefused { reason } => self.refused.push(reason),
                other => bail!("unexpected {other:?}"),
            }
        }
    }

    /// Waits for the next `InputRefused`.
    pub fn next_refusal(&mut self) -> anyhow::Result<String> {
        if let Some(r) = self.refused.pop() {
            return Ok(r);
        }
        match self.read_event()? {
            VmmEvent::InputRefused { reason } => Ok(reason),
            other => bail!("expected InputRefused, got {other:?}"),
        }
    }

    pub fn pixel(&self, x: u32, y: u32) -> anyhow::Result<u32> {
        let mut b = [0u8; 4];
        self.framebuffer
            .read_exact_at(&mut b, u64::from(y) * u64::from(self.stride) + u64::from(x) * 4)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The pages a byte range of the framebuffer touches.
    pub fn pages_of(&self, ranges: &[(u64, u64)]) -> Vec<u32> {
        let ps = u64::from(self.page_size);
        let mut pages: Vec<u32> = ranges
            .iter()
            .flat_map(|&(start, len)| (start / ps)..=((start + len - 1) / ps))
            .map(|p| u32::try_from(p).expect("few pages"))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        pages
    }
}

/// The node's end of the agent channel.
#[derive(Debug)]
pub struct AgentClient {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl AgentClient {
    pub fn recv(&mut self) -> anyhow::Result<atrium_protocol::agent::AgentMessage> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        anyhow::ensure!(n > 0, "agent channel closed");
        serde_json::from_str(line.trim()).with_context(|| format!("agent line {line:?}"))
    }

    pub fn send(&mut self, msg: &atrium_protocol::agent::HostMessage) -> anyhow::Result<()> {
        self.writer.write_all(&atrium_protocol::agent::encode_line(msg))?;
        Ok(())
    }
}

impl VmmGuestBuilder {
    /// Runs `atrium-node vmm` to completion (for guests that stop by themselves).
    pub fn run_to_exit(self, timeout: Duration) -> anyhow::Result<std::process::Output> {
        let config_path = self.dir.path().join("vm.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&self.config)?)?;
        let mut child = Command::new(bin_path("atrium-node"))
            .arg("vmm")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning atrium-node vmm")?;
        let start = Instant::now();
        while child.try_wait()?.is_none() {
            if start.elapsed() > timeout {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                bail!("the VM did not stop by itself within {timeout:?}: {out:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child.wait_with_output()?)
    }
}

/// The ELF `vmlinux` of Debian's current `linux-image-*-amd64`, extracted from the package's
/// bzImage (its xz stream) and cached under `~/.cache/atrium/vmlinux/`. The `.deb` comes from
/// `~/.cache/atrium/debs` (where the node's image builder keeps it) or `apt-get download`.
pub fn debian_vmlinux() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("ATRIUM_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/atrium")
        },
        PathBuf::from,
    );
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let find = || -> anyhow::Result<Option<PathBuf>> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                n.starts_with("linux-image-")
                    && n.contains("-amd64_")
                    && !n.starts_with("linux-image-amd64_")
                    && n.ends_with(".deb")
            })
            .collect();
        found.sort();
        Ok(found.pop())
    };
    let deb = match find()? {
        Some(d) => d,
        None => {
            let out = Command::new("apt-cache").args(["depends", "linux-image-amd64"]).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let pkg = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
                .context("apt-cache knows no linux-image-*-amd64 (run apt-get update)")?
                .to_owned();
            let st =
                Command::new("apt-get").args(["download", &pkg]).current_dir(&debs).status()?;
            anyhow::ensure!(st.success(), "apt-get download {pkg} failed");
            find()?.context("apt-get download left no .deb")?
        }
    };
    let stem = deb.file_stem().context("deb name")?.to_string_lossy().into_owned();
    let out_dir = cache.join("vmlinux").join(&stem);
    let vmlinux = out_dir.join("vmlinux");
    if vmlinux.exists() {
        return Ok(vmlinux);
    }
    let tmp = TempDir::new("vmlinux");
    let st = Command::new("dpkg").arg("-x").arg(&deb).arg(tmp.path()).status()?;
    anyhow::ensure!(st.success(), "dpkg -x {} failed", deb.display());
    let boot = tmp.path().join("boot");
    let vmlinuz = std::fs::read_dir(&boot)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no boot/vmlinuz-* in the package")?;
    let image = std::fs::read(&vmlinuz)?;
    let at = image
        .windows(6)
        .position(|w| w == b"\xfd7zXZ\x00")
        .context("no xz stream in the bzImage")?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running xz")?;
    let mut stdin = xz.stdin.take().context("xz stdin")?;
    let payload = image[at..].to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&payload));
    let out = xz.wait_with_output()?;
    let _ = feeder.join();
    anyhow::ensure!(out.stdout.starts_with(b"\x7fELF"), "the xz stream is not an ELF vmlinux");
    std::fs::create_dir_all(&out_dir)?;
    let part = out_dir.join(format!("vmlinux.{}", std::process::id()));
    std::fs::write(&part, &out.stdout)?;
    std::fs::rename(&part, &vmlinux)?;
    Ok(vmlinux)
}
