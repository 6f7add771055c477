//! What the in-process browser measurements share (audio latency, input-to-pixel with video):
//! the display proxy served in this process from a stand-in desktop, tickets from a test
//! issuer, Atrium's web client on a static server, and a Node script driving headless
//! Chromium that prints its result as its last line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, ensure};
use atrium_protocol::ticket::Capabilities;
use serde_json::Value;
use tokio::process::Command;

use super::BenchOptions;
use super::rig::CHROMIUM;
use atrium_display::config::DisplayConfig;
use atrium_display::http::{AppState, router};
use atrium_display::metrics::Metrics;
use atrium_display::source::open::SourceOpener;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_tests::static_files;
use atrium_tests::util::urlencode;

/// The proxy and the pages, up for one measurement.
pub struct Served {
    root: PathBuf,
    addr: SocketAddr,
    pages: SocketAddr,
    issuer: TicketIssuer,
    _jwks: JwksServer,
    pub metrics: Arc<Metrics>,
}

impl Served {
    /// Serves desktops from `opener`; checks first that `script` (in tests/browser), Chromium
    /// and playwright-core are there.
    pub async fn start(
        opts: &BenchOptions,
        script: &str,
        opener: Arc<dyn SourceOpener>,
    ) -> anyhow::Result<Self> {
        let root = match &opts.root {
            Some(r) => r.clone(),
            None => std::env::current_dir()?,
        };
        let path = root.join("tests/browser").join(script);
        ensure!(path.exists(), "{} is missing (run from the workspace root)", path.display());
        ensure!(
            root.join("tests/browser/node_modules/playwright-core").exists(),
            "playwright-core is not installed: (cd tests/browser && npm ci)"
        );
        ensure!(std::path::Path::new(CHROMIUM).exists(), "Chromium is missing at {CHROMIUM}");
        let issuer = TicketIssuer::generate("bench-browser");
        let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
        let pages = static_files::serve(vec![("atrium".into(), root.join("web-client"))]).await?;
        let cfg = DisplayConfig {
            broker_url: jwks.url(),
            plain_http_loopback: true,
            allowed_origins: vec![format!("http://{pages}")],
            node_id: Some("node-1".into()),
            ..DisplayConfig::default()
        };
        let state = AppState::with_opener(&cfg, opener, None);
        let metrics = Arc::clone(state.metrics());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let door = Arc::clone(state.door());
        tokio::spawn(atrium_door::serve(
            listener,
            router(state),
            door,
            std::future::pending(),
            || {},
        ));
        Ok(Self { root, addr, pages, issuer, _jwks: jwks, metrics })
    }

    /// The viewer page for desktop `vm` with a new ticket, and `query` added to its URL.
    pub fn page(&self, vm: &str, caps: Capabilities, query: &str) -> String {
        let ticket = self.issuer.ticket(vm, caps);
        let ws = format!("ws://{}/ws/{vm}?ticket={ticket}", self.addr);
        format!("http://{}/atrium/viewer-dev.html?{query}ws={}", self.pages, urlencode(&ws))
    }

    /// Runs `script` with `cfg` (plus `chromium` and a scratch `tmp`); its last line of output.
    pub async fn run(&self, script: &str, mut cfg: Value) -> anyhow::Result<Value> {
        let tmp = std::env::temp_dir().join(format!("atrium-bench-browser-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        cfg["chromium"] = CHROMIUM.into();
        cfg["tmp"] = tmp.display().to_string().into();
        let out = Command::new("node")
            .arg(self.root.join("tests/browser").join(script))
            .arg(cfg.to_string())
            .current_dir(self.root.join("tests/browser"))
            .kill_on_drop(true)
            .output()
            .await
            .context("starting node (install nodejs)");
        let _ = std::fs::remove_dir_all(&tmp);
        let out = out?;
        ensure!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .with_context(|| format!("the result of {script}"))
    }
}
