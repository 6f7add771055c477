//! The rig both clients of the noVNC comparison share: one guest started by `atrium-node serve`
//! from an image (as in production), watched at once by Atrium's web client through
//! `atrium-display serve` and by Debian's noVNC through Debian's websockify, each behind a relay
//! that counts bytes and in its own headless Chromium; the browser script
//! (tests/browser/bench_vs_novnc.mjs) and the counters sampled at each of its marks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrium_protocol::node::{DisplayEndpoint, VmInfo, VmState};
use atrium_protocol::ticket::Capabilities;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::BenchOptions;
use super::relay::Relay;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_tests::procstat::{self, Usage};
use atrium_tests::static_files;
use atrium_tests::util::urlencode;

/// The node's id here (the one the bench's tickets name).
const NODE_ID: &str = "node-1";
pub(super) const CHROMIUM: &str = "/usr/lib/chromium/chromium";
const NOVNC: &str = "/usr/share/novnc";

/// A child process stopped when dropped: SIGTERM, then up to 30 s to exit, then SIGKILL.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for _ in 0..600 {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench: a child did not stop within 30 s of SIGTERM; killing it");
        // The Child's kill_on_drop sends SIGKILL next.
    }
}

/// The bench's guest, its QEMU killed when dropped: a node that stops leaves its VMs running
/// (its next start takes them back), and the bench's must not outlive the bench, whether it
/// ends well or not.
struct VmProcess(String);

impl Drop for VmProcess {
    fn drop(&mut self) {
        for pid in procstat::processes_with(&format!("guest=atrium-{}", self.0)) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill has no memory-safety preconditions; the pid is the guest's QEMU.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn console_image(opts: &BenchOptions) -> anyhow::Result<PathBuf> {
    let p = match (&opts.image, std::env::var_os("ATRIUM_CONSOLE_IMAGE")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            std::env::var_os("ATRIUM_CACHE")
                .map_or_else(|| home.join(".cache/atrium"), PathBuf::from)
                .join("images/console")
        }
    };
    ensure!(
        p.join("manifest.json").is_file(),
        "the console image is missing at {} (build it with scripts/lib/images.sh, or pass --image)",
        p.display()
    );
    Ok(p)
}

/// A workspace binary: beside this one, else in the workspace's debug or release folder.
/// Starts one of the workspace's services (`NAME serve --config CFG`), its log in `log`.
fn serve(root: &Path, name: &str, cfg: &Path, log: &Path) -> anyhow::Result<Guard> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(sibling_binary(root, name)?)
        .args(["serve", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Guard(child))
}

fn sibling_binary(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.parent().context("the executable's folder")?.join(name);
    let candidates =
        [beside, root.join("target/release").join(name), root.join("target/debug").join(name)];
    candidates.iter().find(|p| p.exists()).cloned().with_context(|| {
        format!("{name} is missing: build the workspace's binaries first (cargo build --bins)")
    })
}

async fn wait_http(url: &str, secs: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{url} did not answer in {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Counters at one moment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) at: Instant,
    pub(super) atrium_bytes: u64,
    pub(super) novnc_bytes: u64,
    pub(super) atrium: Usage,
    pub(super) websockify: Usage,
    pub(super) vnc_worker: Usage,
    /// The proxy's video frames, key frames and bytes.
    pub(super) video: [u64; 3],
}

struct Probes {
    relay_a: Relay,
    relay_n: Relay,
    proxy_pid: u32,
    websockify_pid: u32,
    qemu_pid: u32,
}

impl Probes {
    fn sample(&self) -> Sample {
        Sample {
            at: Instant::now(),
            atrium_bytes: self.relay_a.bytes(),
            novnc_bytes: self.relay_n.bytes(),
            atrium: procstat::process_usage(self.proxy_pid),
            websockify: procstat::tree_usage(self.websockify_pid),
            vnc_worker: procstat::threads_named_usage(self.qemu_pid, "vnc_worker"),
            video: [0; 3],
        }
    }
}

/// The guest both clients watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guest {
    /// The console image: the text workload.
    Console,
    /// The graphical desktop image, signed in as a user: a video plays in it.
    Desktop,
}

/// The user the desktop guest is signed in as.
const DESKTOP_USER: &str = "bench";

/// One guest watched at once by Atrium and by noVNC: the node and its VM, the proxy and
/// websockify each behind a relay that counts bytes, and the pages. Fields drop in order: the
/// clients, then the guest's QEMU, then the node, then the temporary folder.
pub(super) struct Rig {
    root: PathBuf,
    tmp: PathBuf,
    proxy: Option<Guard>,
    websockify: Option<Guard>,
    _jwks: JwksServer,
    _vm: VmProcess,
    _node: Guard,
    _cleanup: TmpDir,
    pub(super) vnc: String,
    probes: Probes,
    /// The proxy's Prometheus metrics (its video counters).
    metrics_url: String,
    atrium_page: String,
    novnc_page: String,
}

impl Rig {
    pub(super) async fn start(opts: &BenchOptions, guest: Guest) -> anyhow::Result<Self> {
        let root = match &opts.root {
            Some(r) => r.clone(),
            None => std::env::current_dir()?,
        };
        let script = root.join("tests/browser/bench_vs_novnc.mjs");
        ensure!(
            script.exists(),
            "{} is missing (run from the workspace root or pass --root)",
            script.display()
        );
        ensure!(
            root.join("tests/browser/node_modules/playwright-core").exists(),
            "playwright-core is not installed: (cd tests/browser && npm ci)"
        );
        for (what, p) in
            [("Chromium", CHROMIUM), ("noVNC", NOVNC), ("websockify", "/usr/bin/websockify")]
        {
            ensure!(
                Path::new(p).exists(),
                "{what} is missing at {p} (scripts/lib/deps.sh installs it)"
            );
        }
        let (kind, image) = match guest {
            Guest::Console => ("console", console_image(opts)?),
            Guest::Desktop => ("desktop", atrium_tests::node::desktop_image()?),
        };
        let tmp = std::env::temp_dir().join(format!("atrium-bench-{}-{kind}", std::process::id()));
        std::fs::create_dir_all(tmp.join("images"))?;
        let cleanup = scopeguard(tmp.clone());

        // 1. The node agent and one VM.
        std::os::unix::fs::symlink(&image, tmp.join("images").join(kind))?;
        let node_port = free_port()?;
        let node_cfg = tmp.join("node.toml");
        // The bench stands in for the broker: the node trusts its key and it signs the calls.
        let issuer = TicketIssuer::generate("bench");
        let trusted = tmp.join("trusted-keys.json");
        std::fs::write(&trusted, serde_json::to_string(&[issuer.broker_key()])?)?;
        std::fs::write(
            &node_cfg,
            format!(
                "[node]\nid = \"{NODE_ID}\"\nlisten = \"127.0.0.1:{node_port}\"\nstate_dir = \"{}\"\nimages_dir = \"{}\"\nready_timeout_secs = 240\n\n[broker]\ntrusted_keys_file = \"{}\"\n",
                tmp.join("state").display(),
                tmp.join("images").display(),
                trusted.display(),
            ),
        )?;
        let node = serve(&root, "atrium-node", &node_cfg, &tmp.join("node.log"))?;
        let node_url = format!("http://127.0.0.1:{node_port}");
        wait_http(&format!("{node_url}/healthz"), 30).await.context("atrium-node")?;
        let http = reqwest::Client::new();
        let spec = match guest {
            Guest::Console => {
                json!({ "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768" })
            }
            Guest::Desktop => json!({
                "image": "desktop", "vcpus": 1, "memory_mib": 512, "display": "1024x768",
                "user": { "username": DESKTOP_USER, "display_name": "Bench User" },
            }),
        };
        let body = serde_json::to_vec(&spec)?;
        let resp = http
            .post(format!("{node_url}/api/v1/vms"))
            .bearer_auth(issuer.sign_request(NODE_ID, "POST", "/api/v1/vms", &body))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        ensure!(
            resp.status().as_u16() == 201,
            "creating the VM: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        let vm: VmInfo = resp.json().await?;
        let vm_process = VmProcess(vm.id.clone());
        eprintln!("bench: booting the {kind} guest {} (TCG may take a minute)", vm.id);
        let deadline = Instant::now() + Duration::from_secs(300);
        let vm = loop {
            let path = format!("/api/v1/vms/{}", vm.id);
            let v: VmInfo = http
                .get(format!("{node_url}{path}"))
                .bearer_auth(issuer.sign_request(NODE_ID, "GET", &path, b""))
                .send()
                .await?
                .json()
                .await?;
            // The desktop is watched once its user's session is up, as a user would see it.
            let settled = match guest {
                Guest::Console => true,
                Guest::Desktop => v.user.as_deref() == Some(DESKTOP_USER),
            };
            match v.state {
                VmState::Ready if settled => break v,
                VmState::Ready | VmState::Starting => {}
                other => bail!("the VM is {other:?}: {:?}", v.error),
            }
            ensure!(Instant::now() < deadline, "the VM did not become ready (or its session)");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let DisplayEndpoint::VncUnix { path: vnc } = &vm.display_endpoint else {
            bail!("the VM's display is {:?}, not a VNC socket", vm.display_endpoint)
        };
        let qemu_pid = *procstat::processes_with(&format!("guest=atrium-{}", vm.id))
            .first()
            .context("the QEMU process")?;

        // 2. Atrium: tickets, the proxy process, a relay in front of it.
        let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
        let pages = static_files::serve(vec![
            ("atrium".into(), root.join("web-client")),
            ("novnc".into(), PathBuf::from(NOVNC)),
        ])
        .await?;
        let proxy_port = free_port()?;
        let proxy_cfg = tmp.join("display.toml");
        std::fs::write(
            &proxy_cfg,
            format!(
                "listen = \"127.0.0.1:{proxy_port}\"\nbroker_url = \"{}\"\nnode_socket = \"{}\"\nnode_id = \"{NODE_ID}\"\nplain_http_loopback = true\nallowed_origins = [\"http://{pages}\"]\nkeep_refresh_after_input_ms = {}\n",
                jwks.url(),
                tmp.join("state/api.sock").display(),
                opts.keep_refresh_ms,
            ),
        )?;
        let proxy = serve(&root, "atrium-display", &proxy_cfg, &tmp.join("display.log"))?;
        let proxy_pid = proxy.0.id().context("proxy pid")?;
        wait_http(&format!("http://127.0.0.1:{proxy_port}/healthz"), 30)
            .await
            .context("atrium-display")?;
        let relay_a = Relay::start(format!("127.0.0.1:{proxy_port}").parse()?).await?;

        // 3. noVNC: websockify on the same VNC socket, a relay in front of it.
        let ws_port = free_port()?;
        let websockify = Guard(
            Command::new("websockify")
                .arg(format!("--unix-target={vnc}"))
                .arg(format!("127.0.0.1:{ws_port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(tmp.join("websockify.log"))?)
                .kill_on_drop(true)
                .spawn()
                .context("starting websockify")?,
        );
        let websockify_pid = websockify.0.id().context("websockify pid")?;
        let ws_addr: std::net::SocketAddr = format!("127.0.0.1:{ws_port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(ws_addr).await.is_err() {
            ensure!(Instant::now() < deadline, "websockify did not listen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let relay_n = Relay::start(ws_addr).await?;

        // 4. The pages.
        let claims = if opts.watermark {
            // The broker's default watermark, as policy would ask for it.
            let mark = atrium_protocol::ticket::Watermark {
                text: "bench · 127.0.0.1\n{time}".into(),
                opacity: 15,
                size: 20,
                angle: 30,
                spacing: atrium_protocol::ticket::DEFAULT_WATERMARK_SPACING,
            };
            TicketIssuer::watermarked_claims(&vm.id, Capabilities::default(), 30, mark)
        } else {
            TicketIssuer::claims(&vm.id, Capabilities::default(), 30)
        };
        let ticket = issuer.sign(&claims);
        let ws_url = format!("ws://{}/ws/{}?ticket={ticket}", relay_a.addr, vm.id);
        let atrium_page =
            format!("http://{pages}/atrium/viewer-dev.html?ws={}", urlencode(&ws_url));
        let novnc_page = format!(
            "http://{pages}/novnc/vnc_lite.html?host=127.0.0.1&port={}&path=websockify",
            relay_n.addr.port()
        );
        Ok(Self {
            root,
            tmp,
            proxy: Some(proxy),
            websockify: Some(websockify),
            _jwks: jwks,
            _vm: vm_process,
            _node: node,
            _cleanup: cleanup,
            vnc: vnc.clone(),
            probes: Probes { relay_a, relay_n, proxy_pid, websockify_pid, qemu_pid },
            metrics_url: format!("http://127.0.0.1:{proxy_port}/metrics"),
            atrium_page,
            novnc_page,
        })
    }

    /// Runs the browser script with `workload`: the counters sampled at each of its marks, the
    /// marks themselves, and its result.
    pub(super) async fn run_script(
        &self,
        workload: &str,
    ) -> anyhow::Result<(HashMap<String, Sample>, Map<String, Value>, Value)> {
        let cfg = json!({
            "atrium": self.atrium_page, "novnc": self.novnc_page, "chromium": CHROMIUM,
            "tmp": self.tmp, "workload": workload,
        });
        let mut child = Command::new("node")
            .arg(self.root.join("tests/browser/bench_vs_novnc.mjs"))
            .arg(cfg.to_string())
            .current_dir(self.root.join("tests/browser"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node (install nodejs)")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut marks: Map<String, Value> = Map::new();
        let mut samples: HashMap<String, Sample> = HashMap::new();
        let mut result = None;
        while let Some(line) = lines.next_line().await? {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                eprintln!("bench: {line}");
                continue;
            };
            if let Some(mark) = v.get("mark").and_then(Value::as_str) {
                let mut sample = self.probes.sample();
                sample.video = self.video_counters().await;
                samples.insert(mark.to_owned(), sample);
                eprintln!("bench: {mark}");
            } else if v.get("result").is_some() {
                result = Some(v["result"].clone());
            }
            marks.insert(format!("{}", marks.len()), v);
        }
        let status = child.wait().await?;
        ensure!(
            status.success(),
            "the browser script failed ({status}); logs in {} (kept with ATRIUM_KEEP_TMP=1)",
            self.tmp.display()
        );
        let result = result.context("the browser script printed no result")?;
        Ok((samples, marks, result))
    }

    /// The proxy's video counters now: frames, key frames, bytes (zero if it does not answer).
    async fn video_counters(&self) -> [u64; 3] {
        let text = match reqwest::get(&self.metrics_url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let get = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        [
            get("atrium_display_video_frames_total "),
            get("atrium_display_video_key_frames_total "),
            get("atrium_display_video_bytes_total "),
        ]
    }

    /// Stops the proxy and websockify; the VM stays up.
    pub(super) fn stop_clients(&mut self) {
        self.proxy.take();
        self.websockify.take();
    }
}

/// Removes the benchmark's temporary folder when the run ends (kept with ATRIUM_KEEP_TMP).
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if std::env::var_os("ATRIUM_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scopeguard(p: PathBuf) -> TmpDir {
    TmpDir(p)
}
