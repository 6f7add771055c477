//! `bench-transfer` (`scripts/bench-transfer.sh`): a large file into and out of a desktop
//! through Atrium, against the same file through the same guest channel written directly, in
//! one run, with the memory each hop takes.
//!
//! - **Atrium**: a viewer speaking the display protocol as the web client does (chunks of
//!   256 KiB, at most 4 MiB ahead of the proxy's acknowledgements) uploads the file to
//!   `atrium-display serve`, which passes it to `atrium-node serve`, which passes it to the
//!   guest agent over its virtio-serial port; then downloads it back. Unscanned (`@scan("off")`),
//!   since the raw channel has no scanner.
//! - **Raw**: with the node stopped (its VM keeps running), the benchmark itself opens the VM's
//!   agent socket (QEMU's end of the same virtio-serial port) and writes the file as the agent's
//!   data frames as fast as the port takes them, then reads it back the same way: no proxy, no
//!   node, no WebSocket. The agent writes to and reads from the same disk either way.
//! - **Memory**: the display proxy's and the node's resident memory sampled through each
//!   transfer (their peak minus what they held before the first file), and the guest agent's
//!   own peak, which it logs after each file (`VmHWM`) on the serial console.
//! - **The browser** (unless `--skip-browser`): the web client in headless Chromium uploads the
//!   file from disk and downloads it back through the same proxy, node and agent, saved by the
//!   browser as the viewer's download panel saves it; Chromium's memory is the PSS of all its
//!   processes, sampled through each transfer, over what they held before.
//!
//! The guest is the desktop image (graphical, signed in) with a home disk of its own, under
//! QEMU. The last line printed is one JSON object (`upload_ratio`, `download_ratio`, ...).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_protocol::agent::{
    AgentMessage, HostMessage, Line, LineReader, MAX_FILE_CHUNK, MAX_FILE_WINDOW, encode_data,
    encode_line,
};
use atrium_protocol::ticket::Capabilities;
use atrium_tests::TempDir;
use atrium_tests::display::{DisplayProxy, DisplayViewer};
use atrium_tests::node::{NodeProcess, processes_with};
use atrium_tests::procstat::{RssPeaks, descendants, descendants_pss_kib, pss_kib, rss_kib};
use atrium_tests::static_files;
use atrium_tests::util::urlencode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const USER: &str = "bench";
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
const BOOT: Duration = Duration::from_secs(400);

#[derive(Debug, Clone)]
struct Options {
    /// The file's size in MiB.
    mib: u64,
    /// The desktop image folder.
    image: Option<PathBuf>,
    /// Leave out the web client in headless Chromium.
    skip_browser: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { mib: 1024, image: None, skip_browser: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mib" => o.mib = args.next().context("--mib needs a value")?.parse()?,
            "--image" => o.image = Some(args.next().context("--image needs a value")?.into()),
            "--skip-browser" => o.skip_browser = true,
            "-h" | "--help" => {
                println!("bench-transfer [--mib N] [--image DIR] [--skip-browser]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    // Three copies land on the desktop's 4 GiB home disk.
    ensure!((1..=1200).contains(&o.mib), "--mib must be 1 to 1200");
    Ok(o)
}

/// The bench's guest, its QEMU killed when dropped: the node is told to keep its VMs when it
/// stops (the raw phase needs that), so nothing else ends this one.
struct VmGuard(String);

impl Drop for VmGuard {
    fn drop(&mut self) {
        for pid in processes_with(&format!("guest=atrium-{}", self.0)) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill has no memory-safety preconditions; the pid is the guest's QEMU.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Pseudo-random bytes (xorshift), so that nothing on the way compresses them.
fn noise(n: usize) -> Vec<u8> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let mib = bytes as f64 / f64::from(1 << 20);
    round(mib / d.as_secs_f64(), 1)
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// What one transfer cost the host's hops: their peak resident memory over what they held
/// before the first file, in MiB.
#[derive(Debug, Clone, Copy)]
struct Extra {
    proxy_mib: f64,
    node_mib: f64,
}

struct Sampler {
    before: [u64; 2],
    peaks: RssPeaks,
}

impl Sampler {
    /// Samples the proxy and the node from now; `before`: what each held before any file.
    fn start(pids: [u32; 2], before: [u64; 2]) -> Self {
        Self { before, peaks: RssPeaks::start(&pids) }
    }

    fn finish(self) -> Extra {
        let peaks = self.peaks.finish();
        let extra = |i: usize| {
            let kib = peaks.get(i).copied().unwrap_or(0).saturating_sub(self.before[i]);
            #[allow(clippy::cast_precision_loss)]
            round(kib as f64 / 1024.0, 1)
        };
        Extra { proxy_mib: extra(0), node_mib: extra(1) }
    }
}

/// The agent's peak resident memory (KiB) in the last line of the console log that `marker`
/// is in (`agent memory: N KiB now, M KiB at most`).
fn agent_peak(console: &str, marker: &str) -> anyhow::Result<u64> {
    let line = console
        .lines()
        .rev()
        .find(|l| l.contains(marker) && l.contains("agent memory"))
        .with_context(|| format!("no agent log line with {marker:?} and its memory"))?;
    let at_most = line.rsplit_once(", ").context("the memory figures")?.1;
    Ok(at_most.trim_end_matches(" KiB at most").trim().parse()?)
}

/// What the viewers may do: files both ways, unscanned, of any size up to 4 GiB.
fn caps() -> Capabilities {
    Capabilities {
        file_upload: true,
        file_download: true,
        upload_max_bytes: 4 << 30,
        download_max_bytes: 4 << 30,
        scan_files: false,
        scan_downloads: false,
        ..Default::default()
    }
}

/// The Atrium side: a viewer through the display proxy, the node and the agent.
async fn through_atrium(
    proxy: &DisplayProxy,
    issuer: &TicketIssuer,
    node: &NodeProcess,
    vm: &str,
    data: &[u8],
    sha: [u8; 32],
) -> anyhow::Result<Value> {
    let within = Duration::from_secs(3600);
    let mut viewer = DisplayViewer::connect(&proxy.ws_url(vm, &issuer.ticket(vm, caps()))).await?;
    let pids = [proxy.pid(), node.pid()];
    let rss = pids.map(|p| rss_kib(p).unwrap_or(0));
    // A small file first: the agent's peak memory before the large one.
    viewer.upload(1, "warm.txt", b"warm", None, within).await?.map_err(anyhow::Error::msg)?;
    let before = agent_peak(&node.console_log(vm).await?, "warm.txt")?;

    let sampler = Sampler::start(pids, rss);
    let t = Instant::now();
    let (path, got) = viewer
        .upload(2, "atrium.bin", data, None, within)
        .await?
        .map_err(anyhow::Error::msg)
        .context("the upload")?;
    let up = t.elapsed();
    let up_extra = sampler.finish();
    ensure!(got == sha, "the upload's hash is not the file's");
    let up_agent = agent_peak(&node.console_log(vm).await?, &path)?;

    let name = path.rsplit('/').next().context("a file name")?.to_owned();
    let sampler = Sampler::start(pids, rss);
    let t = Instant::now();
    let got = viewer
        .download(3, &name, None, within)
        .await?
        .map_err(anyhow::Error::msg)
        .context("the download")?;
    let down = t.elapsed();
    let down_extra = sampler.finish();
    ensure!(got == sha, "the download's hash is not the file's");
    ensure!(viewer.downloads[&3].data == data, "the download's bytes are not the file's");
    viewer.downloads.clear();
    let down_agent = agent_peak(&node.console_log(vm).await?, "download 3 sent")?;
    #[allow(clippy::cast_precision_loss)]
    let agent_mib = |peak: u64| round(peak.saturating_sub(before) as f64 / 1024.0, 1);
    Ok(json!({
        "upload_mib_s": mib_per_s(data.len(), up),
        "download_mib_s": mib_per_s(data.len(), down),
        "upload_secs": round(up.as_secs_f64(), 1),
        "download_secs": round(down.as_secs_f64(), 1),
        "upload_extra_mib": {
            "proxy": up_extra.proxy_mib, "node": up_extra.node_mib, "agent": agent_mib(up_agent),
        },
        "download_extra_mib": {
            "proxy": down_extra.proxy_mib, "node": down_extra.node_mib,
            "agent": agent_mib(down_agent),
        },
    }))
}

/// Runs tests/browser/bench_transfer.mjs with `cfg`: Chromium's memory (the PSS of all the
/// processes under the script, summed) is read when it says `ready` and sampled until its
/// result. Returns the
/// result and the extra memory in MiB.
async fn browser_run(root: &Path, mut cfg: Value, tmp: &Path) -> anyhow::Result<(Value, f64)> {
    cfg["chromium"] = CHROMIUM.into();
    cfg["tmp"] = tmp.display().to_string().into();
    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/bench_transfer.mjs"))
        .arg(cfg.to_string())
        .current_dir(root.join("tests/browser"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting node (install nodejs)")?;
    let pid = child.id().context("the script's pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut stdin = child.stdin.take().context("stdin")?;
    let first = lines.next_line().await?.unwrap_or_default();
    ensure!(first == "ready", "bench_transfer.mjs said {first:?}, not ready");
    let before = descendants_pss_kib(pid);
    // Each process's own peak too, to see where the memory goes (by Chromium's process type).
    let each: Arc<Mutex<Grown>> = Arc::default();
    for p in descendants(pid) {
        let pss = pss_kib(p).unwrap_or(0);
        lock(&each).insert(p, (chromium_type(p), pss, pss));
    }
    let sampled = Arc::clone(&each);
    let peaks = RssPeaks::sampling(move || {
        let mut total = 0;
        for p in descendants(pid) {
            let pss = pss_kib(p).unwrap_or(0);
            total += pss;
            let mut m = lock(&sampled);
            let e = m.entry(p).or_insert_with(|| (chromium_type(p), 0, 0));
            e.2 = e.2.max(pss);
        }
        vec![total]
    });
    stdin.write_all(b"go\n").await?;
    let last = lines.next_line().await?.unwrap_or_default();
    let peak = peaks.finish().first().copied().unwrap_or(0);
    let status = child.wait().await?;
    ensure!(status.success(), "bench_transfer.mjs failed ({status}); it said {last:?}");
    #[allow(clippy::cast_precision_loss)]
    let extra = round(peak.saturating_sub(before) as f64 / 1024.0, 1);
    let mut by_type = serde_json::Map::new();
    for (kind, first, most) in lock(&each).values() {
        #[allow(clippy::cast_precision_loss)]
        let grew = most.saturating_sub(*first) as f64 / 1024.0;
        let e = by_type.entry(kind.clone()).or_insert(json!(0.0));
        *e = json!(round(e.as_f64().unwrap_or(0.0) + grew, 1));
    }
    eprintln!("bench: the browser's peak growth by process type (MiB): {}", Value::Object(by_type));
    Ok((serde_json::from_str(&last).with_context(|| format!("its result {last:?}"))?, extra))
}

/// Each of the browser's processes: its type, its memory when the transfer began (KiB), its peak.
type Grown = HashMap<u32, (String, u64, u64)>;

/// Chromium's name for a process's role (`--type=renderer`, ...); `browser` for the main one.
fn chromium_type(pid: u32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmd);
    // Chromium rewrites its children's command lines as one string: split on spaces too.
    let args = || cmd.split(['\0', ' ']);
    let kind = args().find_map(|a| a.strip_prefix("--type=")).unwrap_or("browser");
    let sub = args().find_map(|a| a.strip_prefix("--utility-sub-type="));
    sub.map_or_else(|| kind.to_owned(), |s| format!("{kind} {s}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The web client in headless Chromium: the file uploaded from disk through the same proxy,
/// node and agent, then downloaded back and saved by the browser.
async fn through_the_browser(
    pages: SocketAddr,
    proxy: &DisplayProxy,
    issuer: &TicketIssuer,
    vm: &str,
    file: &Path,
    size: usize,
    sha: [u8; 32],
) -> anyhow::Result<Value> {
    let root = atrium_tests::util::workspace_root();
    ensure!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is not installed: (cd tests/browser && npm ci)"
    );
    ensure!(Path::new(CHROMIUM).exists(), "Chromium is missing at {CHROMIUM}");
    let tmp = TempDir::new("bench-transfer-browser");
    let page = || {
        let ws = proxy.ws_url(vm, &issuer.ticket(vm, caps()));
        format!("http://{pages}/atrium/viewer-dev.html?ws={}", urlencode(&ws))
    };
    let hex = hex(&sha);
    let (up, up_extra) =
        browser_run(&root, json!({ "url": page(), "mode": "upload", "file": file }), tmp.path())
            .await
            .context("the upload in Chromium")?;
    ensure!(up["sha256"] == hex.as_str(), "the browser's upload hashed {}", up["sha256"]);
    let path = up["path"].as_str().context("the upload's path")?;
    let name = path.rsplit('/').next().context("a file name")?;
    let cfg = json!({ "url": page(), "mode": "download", "name": name, "size": size });
    let (down, down_extra) =
        browser_run(&root, cfg, tmp.path()).await.context("the download in Chromium")?;
    ensure!(down["sha256"] == hex.as_str(), "the browser saved a file hashed {}", down["sha256"]);
    let secs = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0) / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let rate = |secs: f64| round(size as f64 / f64::from(1 << 20) / secs, 1);
    Ok(json!({
        "upload_mib_s": rate(secs(&up, "ms")),
        "download_mib_s": rate(secs(&down, "ms")),
        "upload_secs": round(secs(&up, "ms"), 1),
        "download_secs": round(secs(&down, "ms"), 1),
        "download_saved_secs": round(secs(&down, "saved_ms"), 1),
        "upload_extra_mib": up_extra,
        "download_extra_mib": down_extra,
        "download_streamed": down["streamed"],
        "download_linked": down["linked"],
        "upload_linked": up["linked"],
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The host's end of the agent's port, spoken to directly.
struct RawPort {
    sock: UnixStream,
    reader: LineReader,
    pending: std::collections::VecDeque<Line>,
}

impl RawPort {
    /// Connects and makes the agent listen: any bytes make it say hello again, with a nonce that
    /// must come back before it reads anything.
    fn connect(path: &std::path::Path) -> anyhow::Result<Self> {
        let sock = UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut port = Self { sock, reader: LineReader::new(), pending: Default::default() };
        port.send(&HostMessage::Ping { id: 1 })?;
        let nonce = loop {
            if let AgentMessage::Hello { nonce: Some(n), .. } = port.message()? {
                break n;
            }
        };
        port.send(&HostMessage::Sync { nonce })?;
        port.send(&HostMessage::Ping { id: 2 })?;
        while !matches!(port.message()?, AgentMessage::Pong { id: 2 }) {}
        Ok(port)
    }

    fn send(&mut self, m: &HostMessage) -> anyhow::Result<()> {
        Ok(self.sock.write_all(&encode_line(m))?)
    }

    fn next(&mut self) -> anyhow::Result<Line> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            if let Some(l) = self.pending.pop_front() {
                return Ok(l);
            }
            let n = self.sock.read(&mut buf).context("reading the agent's port")?;
            ensure!(n > 0, "the agent's port closed");
            self.pending.extend(self.reader.push(&buf[..n]));
        }
    }

    /// The next message (data frames are not expected here).
    fn message(&mut self) -> anyhow::Result<AgentMessage> {
        match self.next()? {
            Line::Complete(l) => Ok(serde_json::from_slice(&l)?),
            other => bail!("expected a message from the agent, got {other:?}"),
        }
    }

    /// The next message about file `id`, skipping others (clipboard, screen, ...); its error
    /// fails.
    fn file_message(&mut self, id: u32) -> anyhow::Result<AgentMessage> {
        loop {
            match self.message()? {
                AgentMessage::FileError { id: i, message } if i == id => bail!("{message}"),
                m @ (AgentMessage::FileReady { id: i }
                | AgentMessage::FileReceived { id: i, .. }
                | AgentMessage::FileSaved { id: i, .. }
                | AgentMessage::FileSending { id: i, .. })
                    if i == id =>
                {
                    return Ok(m);
                }
                _ => {}
            }
        }
    }
}

/// The raw side: the file written into the agent's port as fast as it takes it, and read back.
fn through_the_port(agent_sock: &std::path::Path, data: &[u8]) -> anyhow::Result<Value> {
    let mut port = RawPort::connect(agent_sock)?;
    let id = 1;
    let t = Instant::now();
    port.send(&HostMessage::FileOpen { id, name: "raw.bin".into(), size: data.len() as u64 })?;
    port.file_message(id)?;
    for chunk in data.chunks(MAX_FILE_CHUNK) {
        port.sock.write_all(&encode_data(id, chunk))?;
    }
    port.send(&HostMessage::FileEnd { id })?;
    port.file_message(id)?;
    port.send(&HostMessage::FileCommit { id })?;
    let AgentMessage::FileSaved { path, .. } = port.file_message(id)? else { bail!("not saved") };
    let up = t.elapsed();

    let name = path.rsplit('/').next().context("a file name")?.to_owned();
    let id = 2;
    let t = Instant::now();
    port.send(&HostMessage::FileGet { id, name, window: MAX_FILE_WINDOW })?;
    let AgentMessage::FileSending { size, .. } = port.file_message(id)? else { bail!("no size") };
    ensure!(size == data.len() as u64, "the agent sends {size} bytes");
    let mut got = 0usize;
    while got < data.len() {
        match port.next()? {
            Line::Data { id: i, data: d } if i == id => {
                ensure!(data[got..].starts_with(&d), "the download differs at byte {got}");
                got += d.len();
                port.send(&HostMessage::FileMore { id, bytes: u32::try_from(d.len())? })?;
            }
            Line::Complete(l) => {
                if let Ok(AgentMessage::FileError { id: i, message }) = serde_json::from_slice(&l)
                    && i == id
                {
                    bail!("{message}");
                }
            }
            _ => {}
        }
    }
    let down = t.elapsed();
    Ok(json!({
        "upload_mib_s": mib_per_s(data.len(), up),
        "download_mib_s": mib_per_s(data.len(), down),
        "upload_secs": round(up.as_secs_f64(), 1),
        "download_secs": round(down.as_secs_f64(), 1),
    }))
}

fn desktop_image(opts: &Options) -> anyhow::Result<PathBuf> {
    match &opts.image {
        Some(p) => Ok(p.clone()),
        None => atrium_tests::node::desktop_image(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    atrium_tests::util::install_crypto();
    let opts = options()?;
    let image = desktop_image(&opts)?;
    let size = usize::try_from(opts.mib << 20)?;
    eprintln!("bench: {} MiB of noise", opts.mib);
    let data = noise(size);
    let sha: [u8; 32] = Sha256::digest(&data).into();

    // The node keeps its VM when it stops: the raw phase talks to the VM without it.
    let mut node = NodeProcess::start(&image, "vms_at_stop = \"keep\"\n").await?;
    let spec = json!({
        "image": "desktop", "vcpus": 1, "memory_mib": 512, "display": "1024x768",
        "user": { "username": USER, "display_name": "Bench", "uid": 20001, "gid": 20001 },
        "persistent_disk": USER,
    });
    eprintln!("bench: booting the desktop (TCG: a few minutes)");
    let vm = node.ready_vm(&spec, BOOT).await?;
    let _guard = VmGuard(vm.clone());
    atrium_tests::wait_for("the session", Duration::from_secs(150), || async {
        node.vm(&vm).await.ok().filter(|v| v.user.as_deref() == Some(USER))
    })
    .await?;
    let agent_sock = node.state_dir.join("vms").join(&vm).join("agent.sock");
    ensure!(agent_sock.exists(), "no agent socket at {}", agent_sock.display());

    let issuer = TicketIssuer::generate("bench");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let root = atrium_tests::util::workspace_root();
    let pages = static_files::serve(vec![("atrium".into(), root.join("web-client"))]).await?;
    let origins = format!("allowed_origins = [\"http://{pages}\"]\n");
    let proxy = DisplayProxy::start(&jwks.url(), &node.local_socket(), &origins).await?;

    eprintln!("bench: through Atrium (viewer, display proxy, node, agent)");
    let atrium = through_atrium(&proxy, &issuer, &node, &vm, &data, sha)
        .await
        .with_context(|| format!("proxy log:\n{}\nnode log:\n{}", proxy.log(), node.log()))?;
    eprintln!("bench: {atrium}");

    let browser = if opts.skip_browser {
        Value::Null
    } else {
        eprintln!("bench: the web client in headless Chromium, through the same hops");
        let dir = TempDir::new("bench-transfer");
        let file = dir.path().join("browser.bin");
        std::fs::write(&file, &data)?;
        let b = through_the_browser(pages, &proxy, &issuer, &vm, &file, size, sha)
            .await
            .with_context(|| format!("proxy log:\n{}", proxy.log()))?;
        eprintln!("bench: {b}");
        b
    };

    eprintln!("bench: the agent's port directly (the node stopped, its VM running)");
    node.terminate()?;
    let sock = agent_sock.clone();
    let raw = tokio::task::spawn_blocking(move || through_the_port(&sock, &data)).await??;
    eprintln!("bench: {raw}");
    ensure!(node.restart_if_dead()?.is_some(), "the node had not stopped");
    atrium_tests::wait_for("the node to take its VM back", Duration::from_secs(120), || async {
        node.vm(&vm).await.ok().filter(|v| v.state == atrium_protocol::node::VmState::Ready)
    })
    .await?;
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{vm}"), None).await?;
    ensure!(status == 204, "deleting the VM: {status}");

    let ratio =
        |k: &str| round(atrium[k].as_f64().unwrap_or(0.0) / raw[k].as_f64().unwrap_or(1.0), 2);
    let most = ["upload_extra_mib", "download_extra_mib"]
        .iter()
        .flat_map(|k| {
            let hops = ["proxy", "node", "agent"].map(|h| atrium[k][h].as_f64().unwrap_or(0.0));
            hops.into_iter().chain(browser[k].as_f64())
        })
        .fold(0.0f64, f64::max);
    let out = json!({
        "file_mib": opts.mib,
        "atrium": atrium,
        "browser": browser,
        "raw_port": raw,
        "upload_ratio": ratio("upload_mib_s"),
        "download_ratio": ratio("download_mib_s"),
        "most_extra_mib_on_a_hop": most,
    });
    println!("{out}");
    Ok(())
}
