//! The display proxy for tests: `atrium-display serve` in a temporary folder, a stand-in for the
//! broker's JWKS and tickets (`atrium_display_testkit::issuer`), a small node API for a VNC socket the
//! test started itself, and a WebSocket viewer that keeps the image it receives ([`viewer`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use atrium_protocol::node::{
    DisplayEndpoint, DisplaySize, RuntimeKind, ScreenSize, VmInfo, VmState,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};

use crate::util::{TempDir, bin_path, free_port};

mod viewer;
pub use viewer::{DisplayViewer, Download};

/// A running `atrium-display serve`; killed on drop.
#[derive(Debug)]
pub struct DisplayProxy {
    pub dir: TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl DisplayProxy {
    /// Starts the proxy for node `node-1` against a broker (for its JWKS) and the node agent's
    /// local socket.
    pub async fn start(
        broker_url: &str,
        node_socket: &std::path::Path,
        extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_inner(broker_url, node_socket, extra, None, None).await
    }

    /// The same as user and group `id` (a number no account has): not root, reaching the node
    /// only through what its group is given (`node.local_socket_group`).
    pub async fn start_unprivileged(
        broker_url: &str,
        node_socket: &std::path::Path,
        id: u32,
    ) -> anyhow::Result<Self> {
        Self::start_inner(broker_url, node_socket, "", None, Some(id)).await
    }

    /// The same on `https://`/`wss://` at `port` with `tls`'s certificate, trusting it for the
    /// broker.
    pub async fn start_tls(
        broker_url: &str,
        node_socket: &std::path::Path,
        port: u16,
        tls: &crate::pki::TestTls,
    ) -> anyhow::Result<Self> {
        Self::start_inner(broker_url, node_socket, "", Some((port, tls)), None).await
    }

    async fn start_inner(
        broker_url: &str,
        node_socket: &std::path::Path,
        extra: &str,
        tls: Option<(u16, &crate::pki::TestTls)>,
        run_as: Option<u32>,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("display");
        let port = tls.map_or_else(free_port, |(p, _)| p);
        let tls = tls.map(|(_, t)| t);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        // Pages on loopback, unless the caller names its own.
        let origins = if extra.contains("allowed_origins") {
            ""
        } else {
            "allowed_origins = [\"http://127.0.0.1\"]\n"
        };
        let config = format!(
            "listen = \"{addr}\"\nbroker_url = \"{broker_url}\"\nnode_socket = {:?}\n\
             node_id = \"node-1\"\nplain_http_loopback = true\n{origins}{}{extra}",
            node_socket.display().to_string(),
            tls.map(|t| format!(
                "tls_cert = {:?}\ntls_key = {:?}\nca_file = {:?}\n",
                t.cert.display().to_string(),
                t.key.display().to_string(),
                t.ca.display().to_string()
            ))
            .unwrap_or_default(),
        );
        let path = dir.path().join("display.toml");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.path().join("display.log"))?;
        let mut cmd = Command::new(bin_path("atrium-display"));
        if let Some(id) = run_as {
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            // Its configuration must be readable by it.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            // std drops the supplementary groups when it drops root: only `id` is left.
            cmd.uid(id).gid(id);
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,atrium_display=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting atrium-display serve")?;
        let proxy = Self { dir, addr, child };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let health = format!("{scheme}://{addr}/healthz");
        let http = tls.map_or_else(reqwest::Client::new, crate::pki::TestTls::client);
        let up =
            crate::util::wait_for("the display proxy's /healthz", Duration::from_secs(20), || {
                let (h, http) = (health.clone(), http.clone());
                async move { http.get(&h).send().await.ok().filter(|r| r.status().is_success()) }
            })
            .await;
        if let Err(e) = up {
            bail!("{e}; display proxy log:\n{}", proxy.log());
        }
        Ok(proxy)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("display.log")).unwrap_or_default()
    }

    pub fn ws_url(&self, vm: &str, ticket: &str) -> String {
        format!("ws://{}/ws/{vm}?ticket={ticket}", self.addr)
    }

    /// A download's link ([`atrium_protocol::display::ServerMessage::FileLink`]) here.
    pub fn link_url(&self, vm: &str, token: &str) -> String {
        format!("http://{}/files/{vm}/{token}", self.addr)
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.addr)).await?.text().await?)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DisplayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's local API that knows VMs whose displays the test started itself (for example a
/// bare QEMU with a VNC socket), on a socket of its own. It answers `GET /api/v1/vms/{id}`,
/// and, for a node started [`DisplayOnlyNode::resizable`], `PUT /api/v1/vms/{id}/screen` (the
/// sizes asked for are kept in `screen_requests`; no guest changes size).
#[derive(Debug)]
pub struct DisplayOnlyNode {
    pub dir: TempDir,
    pub socket: std::path::PathBuf,
    pub screen_requests: Arc<Mutex<Vec<(String, DisplaySize)>>>,
}

/// What the fake node's routes share.
#[derive(Debug, Clone)]
struct FakeVms {
    vms: Arc<HashMap<String, DisplayEndpoint>>,
    resizable: bool,
    requests: Arc<Mutex<Vec<(String, DisplaySize)>>>,
}

impl DisplayOnlyNode {
    pub async fn start(vms: Vec<(String, DisplayEndpoint)>) -> anyhow::Result<Self> {
        Self::start_with(vms, false).await
    }

    /// A node whose VMs report a screen (of 720x400) that may change size.
    pub async fn resizable(vms: Vec<(String, DisplayEndpoint)>) -> anyhow::Result<Self> {
        Self::start_with(vms, true).await
    }

    async fn start_with(
        vms: Vec<(String, DisplayEndpoint)>,
        resizable: bool,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("display-node");
        let socket = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let state = FakeVms {
            vms: Arc::new(vms.into_iter().collect()),
            resizable,
            requests: Arc::default(),
        };
        let screen_requests = Arc::clone(&state.requests);
        let app = Router::new()
            .route(
                "/api/v1/vms/{id}/screen",
                put(
                    |State(f): State<FakeVms>,
                     Path(id): Path<String>,
                     Json(req): Json<ScreenSize>| async move {
                        if !f.vms.contains_key(&id) {
                            return Err(StatusCode::NOT_FOUND);
                        }
                        if !f.resizable {
                            return Err(StatusCode::CONFLICT);
                        }
                        f.requests.lock().expect("requests").push((id, req.size));
                        Ok(Json(req))
                    },
                ),
            )
            .route(
                "/api/v1/vms/{id}",
                get(|State(f): State<FakeVms>, Path(id): Path<String>| async move {
                    let Some(endpoint) = f.vms.get(&id) else {
                        return Err(StatusCode::NOT_FOUND);
                    };
                    Ok(Json(VmInfo {
                        id,
                        state: VmState::Ready,
                        runtime: RuntimeKind::Qemu,
                        accel: None,
                        image: "none".into(),
                        vcpus: 1,
                        memory_mib: 64,
                        display: DisplaySize::new(720, 400),
                        screen: f.resizable.then_some(DisplaySize::new(720, 400)),
                        sound: false,
                        persistent_disk: None,
                        user: None,
                        created_at_ms: 0,
                        ready_at_ms: None,
                        error: None,
                        display_endpoint: endpoint.clone(),
                        cloned: false,
                        agent: true,
                    }))
                }),
            )
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { dir, socket, screen_requests })
    }
}

/// A bare `qemu-system-x86_64` with no disk whose SeaBIOS draws text on a VGA console, served
/// on a VNC unix socket; killed on drop.
#[derive(Debug)]
pub struct BareQemu {
    pub dir: TempDir,
    pub socket: std::path::PathBuf,
    child: Child,
}

impl BareQemu {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = TempDir::new("bare-qemu");
        let socket = dir.path().join("vnc.sock");
        let child = Command::new("qemu-system-x86_64")
            .args(["-display", "none", "-nodefaults", "-vga", "std", "-m", "64", "-vnc"])
            .arg(format!("unix:{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-system-x86_64 (install qemu-system-x86)")?;
        let q = Self { dir, socket, child };
        crate::util::wait_for("QEMU's VNC socket", Duration::from_secs(20), || async {
            q.socket.exists().then_some(())
        })
        .await?;
        Ok(q)
    }
}

impl Drop for BareQemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts pixels of one colour in an RGB buffer.
pub fn count_color(rgb: &[u8], color: [u8; 3]) -> usize {
    rgb.chunks_exact(3).filter(|p| *p == color).count()
}

/// Keeps a file for a person to look at (`tests/artifacts` under scripts/test.sh).
pub fn keep_artifact(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("ATRIUM_TEST_ARTIFACTS") {
        let _ = std::fs::write(std::path::Path::new(&dir).join(name), bytes);
    }
}
