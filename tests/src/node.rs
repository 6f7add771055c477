//! A real `atrium-node serve` for tests, in a temporary folder, with a guest image (console or
//! desktop).
//!
//! The images are built by `scripts/lib/images.sh` (which `scripts/test.sh` runs) into
//! `~/.cache/atrium/images/<kind>-<key>`, with the link `~/.cache/atrium/images/<kind>` to the
//! newest. Tests take `ATRIUM_CONSOLE_IMAGE` / `ATRIUM_DESKTOP_IMAGE` when set, else that link;
//! when neither exists a test of the `qemu` group fails and says how to build it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrium_protocol::node::{ClipboardState, VmInfo, VmState};
use serde_json::Value;

use crate::display::keep_artifact;
use crate::screen::Screen;
use crate::util::{TempDir, bin_path, free_port};

/// The key id of the key tests sign node API calls with (trusted by every test node through
/// `broker.trusted_keys_file`, beside the broker's own keys).
const TEST_SIGNER: &str = "test-signer";

/// The console image folder (see the module documentation).
pub fn console_image() -> anyhow::Result<PathBuf> {
    image_folder("console", "ATRIUM_CONSOLE_IMAGE")
}

/// The desktop image folder: `ATRIUM_DESKTOP_IMAGE`, else `~/.cache/atrium/images/desktop`
/// (built by `scripts/lib/images.sh` like the console image).
pub fn desktop_image() -> anyhow::Result<PathBuf> {
    image_folder("desktop", "ATRIUM_DESKTOP_IMAGE")
}

/// The UEFI disk the tests import as an operator's own image, with Atrium's agent in it:
/// `~/.cache/atrium/images/uefi-disk.raw` (made by `scripts/lib/uefi-disk.sh`, which
/// `scripts/lib/images.sh` runs).
pub fn uefi_disk() -> anyhow::Result<PathBuf> {
    cached_disk("uefi-disk.raw")
}

/// A PC (MBR) disk booted by BIOS firmware through SYSLINUX, with the agent.
pub fn bios_disk() -> anyhow::Result<PathBuf> {
    cached_disk("bios-disk.raw")
}

/// The same disk without the agent: its console shows a login prompt.
pub fn uefi_disk_without_agent() -> anyhow::Result<PathBuf> {
    cached_disk("uefi-disk-noagent.raw")
}

/// A Debian 12 install with systemd (`scripts/lib/debian-disk.sh`), the agent installed as a
/// service by its unit file.
pub fn debian_disk() -> anyhow::Result<PathBuf> {
    cached_disk("debian-disk.raw")
}

/// `atrium-node image import --images-dir IMAGES ARGS... FILE`, as an operator runs it: whether
/// it succeeded, and what it said (standard output, then error).
pub fn import_image(images: &Path, file: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(bin_path("atrium-node"))
        .args(["image", "import", "--images-dir"])
        .arg(images)
        .args(args)
        .arg(file)
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("running atrium-node image import")?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

fn cached_disk(name: &str) -> anyhow::Result<PathBuf> {
    let p = cache_dir().join("images").join(name);
    ensure!(
        p.is_file(),
        "the test disk is missing ({}): make it with scripts/lib/uefi-disk.sh or \
         scripts/lib/debian-disk.sh (scripts/test.sh does)",
        p.display()
    );
    Ok(p)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("ATRIUM_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/atrium")
        },
        PathBuf::from,
    )
}

fn image_folder(kind: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if p.join("manifest.json").is_file() {
            return Ok(p);
        }
        bail!("{env}={} has no manifest.json", p.display());
    }
    let p = cache_dir().join("images").join(kind);
    if p.join("manifest.json").is_file() {
        return Ok(p);
    }
    bail!(
        "the {kind} guest image is missing ({} has no manifest.json): build it with \
         scripts/lib/images.sh (scripts/test.sh does), or set {env}",
        p.display()
    )
}

/// A running node agent; stopped (and its VMs deleted) on drop.
#[derive(Debug)]
pub struct NodeProcess {
    pub dir: TempDir,
    pub url: String,
    pub state_dir: PathBuf,
    /// The node's id (its `node.id`, or its host name).
    pub id: String,
    child: Child,
    client: reqwest::Client,
    /// Signs the calls tests make, as the broker signs its own.
    signer: atrium_display_testkit::issuer::TicketIssuer,
    /// The TLS settings it was started with (as environment variables).
    tls_env: Vec<(&'static str, PathBuf)>,
}

/// Starts `atrium-node serve` on `dir/node.toml`, trusting `dir/trusted-keys.json` beside the
/// broker's keys, its log appended to `dir/node.log`.
fn spawn(dir: &Path, tls_env: &[(&str, PathBuf)]) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log"))?;
    let mut cmd = Command::new(bin_path("atrium-node"));
    for (k, v) in tls_env {
        cmd.env(k, v);
    }
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("node.toml"))
        // Beside any [broker] section the test writes.
        .env("ATRIUM_NODE_BROKER_TRUSTED_KEYS_FILE", dir.join("trusted-keys.json"))
        // Tests run on one host: plain http:// to the broker on loopback.
        .env("ATRIUM_NODE_BROKER_PLAIN_HTTP_LOOPBACK", "true")
        .env("ATRIUM_LOG", "info,atrium_node=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting atrium-node serve")
}

impl NodeProcess {
    /// Starts `atrium-node serve` with `image` as its only image, plus `extra` config lines.
    pub async fn start(image: &Path, extra: &str) -> anyhow::Result<Self> {
        Self::start_with_images(&[image], extra).await
    }

    /// Starts `atrium-node serve` with these images, plus `extra` config lines.
    pub async fn start_with_images(images_in: &[&Path], extra: &str) -> anyhow::Result<Self> {
        Self::start_inner(images_in, extra, None).await
    }

    /// The same, with its API on `https://` (presenting `tls`'s certificate) and trusting `tls`
    /// for the broker.
    pub async fn start_tls(
        images_in: &[&Path],
        extra: &str,
        tls: &crate::pki::TestTls,
    ) -> anyhow::Result<Self> {
        Self::start_inner(images_in, extra, Some(tls)).await
    }

    async fn start_inner(
        images_in: &[&Path],
        extra: &str,
        tls: Option<&crate::pki::TestTls>,
    ) -> anyhow::Result<Self> {
        crate::util::install_crypto();
        let dir = TempDir::new("node");
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images)?;
        for image in images_in {
            let link = image.file_name().map_or_else(|| "image".into(), |n| n.to_owned());
            std::os::unix::fs::symlink(image, images.join(link)).context("linking the image")?;
        }
        let state_dir = dir.path().join("state");
        let port = free_port();
        // A test's node ends its VMs when it is stopped (nothing outlives a test), unless the
        // test says otherwise.
        let at_stop = if extra.contains("vms_at_stop") { "" } else { "vms_at_stop = \"end\"\n" };
        let config = format!(
            "[node]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\
             images_dir = \"{}\"\nready_timeout_secs = 240\nstop_grace_secs = 30\nping_interval_secs = 5\n\
             {at_stop}{extra}",
            state_dir.display(),
            images.display()
        );
        let config_path = dir.path().join("node.toml");
        std::fs::write(&config_path, config)?;
        let signer = atrium_display_testkit::issuer::TicketIssuer::generate(TEST_SIGNER);
        let trusted = dir.path().join("trusted-keys.json");
        std::fs::write(&trusted, serde_json::to_string(&[signer.broker_key()])?)?;
        let tls_env: Vec<(&str, PathBuf)> = tls.map_or_else(Vec::new, |t| {
            vec![
                ("ATRIUM_NODE_TLS_CERT", t.cert.clone()),
                ("ATRIUM_NODE_TLS_KEY", t.key.clone()),
                ("ATRIUM_NODE_BROKER_CA_FILE", t.ca.clone()),
            ]
        });
        let child = spawn(dir.path(), &tls_env)?;
        let url = format!("{}://127.0.0.1:{port}", if tls.is_some() { "https" } else { "http" });
        let client = match tls {
            Some(t) => t.client(),
            None => reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
        };
        let mut node =
            Self { dir, url, state_dir, id: String::new(), child, client, signer, tls_env };
        let health = format!("{}/healthz", node.url);
        let up = crate::util::wait_for("the node's /healthz", Duration::from_secs(20), || {
            let c = node.client.clone();
            let h = health.clone();
            async move {
                let r = c.get(&h).send().await.ok().filter(|r| r.status().is_success())?;
                r.json::<Value>().await.ok()
            }
        })
        .await;
        match up {
            Ok(h) => h["node_id"].as_str().unwrap_or_default().clone_into(&mut node.id),
            Err(e) => bail!("{e}; node log:\n{}", node.log()),
        }
        Ok(node)
    }

    /// When the process has ended (a crash, a kill), starts it again on the same configuration
    /// and state; returns how it had ended. Its key and enrolment are on disk: it heartbeats
    /// again as itself. The quick start does this every second for each of its services.
    pub fn restart_if_dead(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(status) = self.child.try_wait()? else { return Ok(None) };
        self.child = spawn(self.dir.path(), &self.tls_env)?;
        Ok(Some(status))
    }

    /// Kills the node with SIGKILL, as a crash would, and reaps it (its VMs are not told).
    pub fn kill9(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("the killed node is reaped")
    }

    /// Sends SIGTERM and waits (up to a minute) for the node to exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        ensure!(unsafe { libc::kill(pid, libc::SIGTERM) } == 0, "SIGTERM to the node failed");
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the node did not exit within a minute of SIGTERM; log:\n{}", self.log())
    }

    /// The node process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// A call signed as the broker signs them, for this node: `Authorization` for `method`,
    /// `path` and `body`.
    pub fn sign(&self, method: &str, path: &str, body: &[u8]) -> String {
        self.signer.sign_request(&self.id, method, path, body)
    }

    /// What signs the calls tests make (as the broker would).
    pub fn signer(&self) -> &atrium_display_testkit::issuer::TicketIssuer {
        &self.signer
    }

    /// A signed request to the node API; returns the status and body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let bytes = body.map(serde_json::to_vec).transpose()?.unwrap_or_default();
        let mut req = self
            .client
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(self.sign(method, path, &bytes));
        if body.is_some() {
            req = req.header("content-type", "application/json").body(bytes);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    /// [`Self::call`] by a caller that gives up after `after` (and drops the connection).
    pub async fn call_giving_up(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        after: Duration,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let bytes = serde_json::to_vec(body)?;
        let resp = self
            .client
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(self.sign(method, path, &bytes))
            .header("content-type", "application/json")
            .body(bytes)
            .timeout(after)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    pub async fn raw_post(&self, path: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(self.sign("POST", path, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// The node's local socket (what the display proxy beside it reads displays on).
    pub fn local_socket(&self) -> PathBuf {
        self.state_dir.join("api.sock")
    }

    pub async fn vm(&self, id: &str) -> anyhow::Result<VmInfo> {
        let (status, body) = self.call("GET", &format!("/api/v1/vms/{id}"), None).await?;
        if status != 200 {
            bail!("GET vm {id}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// `GET /api/v1/vms`.
    pub async fn list_vms(&self) -> anyhow::Result<Vec<VmInfo>> {
        let (status, body) = self.call("GET", "/api/v1/vms", None).await?;
        if status != 200 {
            bail!("GET vms: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Creates a VM of `spec` and waits up to `within` for it to be ready; returns its id. An
    /// error says why not, with the node's log.
    pub async fn ready_vm(
        &self,
        spec: &serde_json::Value,
        within: Duration,
    ) -> anyhow::Result<String> {
        let (status, body) = self.call("POST", "/api/v1/vms", Some(spec)).await?;
        ensure!(status == 201, "create: {status} {}", String::from_utf8_lossy(&body));
        let id = serde_json::from_slice::<VmInfo>(&body)?.id;
        let ready = self.wait_settled(&id, within).await?;
        ensure!(
            ready.state == VmState::Ready,
            "VM is {:?}: {:?}\n{}",
            ready.state,
            ready.error,
            self.log()
        );
        Ok(id)
    }

    /// Waits until the VM leaves `starting`; returns its info.
    pub async fn wait_settled(&self, id: &str, timeout: Duration) -> anyhow::Result<VmInfo> {
        crate::util::wait_for(&format!("VM {id} to leave starting"), timeout, || async {
            self.vm(id).await.ok().filter(|v| v.state != VmState::Starting)
        })
        .await
    }

    /// The VM's screen (`GET .../screenshot.png`), kept as the artefact `name`.
    pub async fn screenshot(&self, id: &str, name: &str) -> anyhow::Result<Screen> {
        let (status, body) =
            self.call("GET", &format!("/api/v1/vms/{id}/screenshot.png"), None).await?;
        ensure!(status == 200, "screenshot: {status} {}", String::from_utf8_lossy(&body));
        keep_artifact(name, &body);
        Screen::from_png(&body)
    }

    /// The guest's clipboard once it is newer than `after` (waiting up to 10 s).
    pub async fn clipboard(&self, id: &str, after: u64) -> anyhow::Result<ClipboardState> {
        let (status, body) = self
            .call("GET", &format!("/api/v1/vms/{id}/clipboard?after={after}&wait=10"), None)
            .await?;
        ensure!(status == 200, "clipboard: {status} {}", String::from_utf8_lossy(&body));
        Ok(serde_json::from_slice(&body)?)
    }

    /// Waits up to `within` until the guest's clipboard (copied out by the agent) is `text`.
    pub async fn wait_clipboard(
        &self,
        id: &str,
        after: u64,
        text: &str,
        within: Duration,
    ) -> anyhow::Result<ClipboardState> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.clipboard(id, after).await?;
            if c.seq > after && c.text.as_deref() == Some(text) {
                return Ok(c);
            }
            if Instant::now() > deadline {
                let short = |t: &str| -> String {
                    match t.char_indices().nth(80) {
                        Some((end, _)) => format!("{:?}... ({} bytes)", &t[..end], t.len()),
                        None => format!("{t:?}"),
                    }
                };
                bail!(
                    "the guest's clipboard is {} (seq {}), expected {} after seq {after}",
                    c.text.as_deref().map_or_else(|| "empty".to_owned(), short),
                    c.seq,
                    short(text)
                );
            }
        }
    }

    /// The VM's serial console log.
    pub async fn console_log(&self, id: &str) -> anyhow::Result<String> {
        let (status, body) = self.call("GET", &format!("/api/v1/vms/{id}/console"), None).await?;
        ensure!(status == 200, "console: {status}");
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // SIGTERM: the node deletes its VMs and exits.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for _ in 0..600 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose command line contains `needle` (e.g. a VM id: QEMU runs as `-name
/// guest=atrium-<id>`).
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

/// Folders named `name` under the cgroup controllers the node uses.
pub fn cgroups_named(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 8 {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name() == name {
                    out.push(p.clone());
                }
                walk(&p, name, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    for c in ["memory", "cpu", "pids", "unified"] {
        walk(&Path::new("/sys/fs/cgroup").join(c), name, 0, &mut out);
    }
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        walk(Path::new("/sys/fs/cgroup"), name, 0, &mut out);
    }
    out
}
