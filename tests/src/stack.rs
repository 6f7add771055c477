//! The whole of Atrium on loopback, as the quick start runs it and the end-to-end tests use it:
//! a directory (slapd with the demo users), the broker (SQLite), one real node agent booting
//! console desktops, and the display proxy beside it ([`Stack`]); and the same with the service
//! tier as containers ([`TierStack`]), as `scripts/containers.sh` runs it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::json;

use crate::broker::{ApiClient, Broker, BrokerOptions};
use crate::node::{NodeProcess, console_image, desktop_image};
use crate::slapd::Slapd;
use crate::tier::{self, Tier, TierOptions};
use crate::util::{TempDir, bin_path, free_port, wait_for};

/// The display proxy process; killed on drop.
#[derive(Debug)]
pub struct DisplayService {
    pub dir: TempDir,
    pub port: u16,
    child: Child,
}

/// What a display proxy beside a node is told.
#[derive(Debug, Clone)]
pub struct DisplayOptions {
    pub port: u16,
    /// Where the broker's keys are.
    pub broker_url: String,
    /// The node agent's local socket.
    pub node_socket: std::path::PathBuf,
    pub allowed_origins: Vec<String>,
    /// Peers exempt from the per-address connection limit (the gateways).
    pub trusted_proxies: Vec<String>,
    /// More of its configuration (TOML lines), such as `clamd_socket`.
    pub extra: String,
}

impl DisplayService {
    /// Starts `atrium-display serve` for node `node-1` and waits for its `/healthz`.
    pub async fn start(o: DisplayOptions) -> anyhow::Result<Self> {
        crate::util::install_crypto();
        let dir = TempDir::new("display");
        let config = dir.path().join("display.toml");
        let list = |v: &[String]| v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{}\"\nbroker_url = {:?}\nnode_socket = {:?}\nplain_http_loopback = true\n\
                 allowed_origins = [{}]\ntrusted_proxies = [{}]\nnode_id = \"node-1\"\n{}",
                o.port,
                o.broker_url,
                o.node_socket.display().to_string(),
                list(&o.allowed_origins),
                list(&o.trusted_proxies),
                o.extra,
            ),
        )?;
        let child = Self::spawn(dir.path())?;
        let mut display = Self { dir, port: o.port, child };
        display.wait_healthy().await?;
        Ok(display)
    }

    /// Starts the process on the configuration in `dir`, its log appended to `dir/display.log`.
    fn spawn(dir: &std::path::Path) -> anyhow::Result<Child> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join("display.log"))?;
        Command::new(bin_path("atrium-display"))
            .arg("serve")
            .arg("--config")
            .arg(dir.join("display.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the display proxy")
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let port = self.port;
        wait_for("the display proxy's /healthz", Duration::from_secs(20), || {
            let http = http.clone();
            async move {
                http.get(format!("http://127.0.0.1:{port}/healthz"))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await
        .with_context(|| format!("display proxy log:\n{}", self.log()))?;
        Ok(())
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// When the process has ended (a crash, a kill), starts it again on the same configuration
    /// and port and waits until it answers; returns whether it had to. The quick start does this
    /// every second for each of its services.
    pub async fn restart_if_dead(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(status) = self.child.try_wait()? else { return Ok(None) };
        self.child = Self::spawn(self.dir.path())?;
        self.wait_healthy().await?;
        Ok(Some(status))
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port)).await?.text().await?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("display.log")).unwrap_or_default()
    }
}

impl Drop for DisplayService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything, started in dependency order; dropped in reverse. The node holds both guest
/// images: `console` and the graphical `desktop`.
#[derive(Debug)]
pub struct Stack {
    pub display: DisplayService,
    pub node: NodeProcess,
    pub broker: Broker,
    pub slapd: Slapd,
}

/// `preferred` when it is free, else any free port.
pub fn port_or_free(preferred: u16) -> u16 {
    if TcpListener::bind(("127.0.0.1", preferred)).is_ok() { preferred } else { free_port() }
}

impl Stack {
    /// Starts the stack. `broker_port`/`display_port`: preferred ports (the quick start's
    /// 8080/8090), or `None` for any.
    pub async fn start(
        broker_port: Option<u16>,
        display_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let port = broker_port.map_or_else(free_port, port_or_free);
        Self::start_with(|o| o.port = Some(port), display_port).await
    }

    /// Starts the stack with a broker that `configure` adjusts (its port, more configuration,
    /// its policies); `display_port` as for [`Stack::start`].
    pub async fn start_with(
        configure: impl FnOnce(&mut BrokerOptions),
        display_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        Self::start_full(configure, display_port, "").await
    }

    /// [`Stack::start_with`], with more of the display proxy's configuration (TOML lines).
    pub async fn start_full(
        configure: impl FnOnce(&mut BrokerOptions),
        display_port: Option<u16>,
        display_extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_inner(configure, display_port, display_extra, &[]).await
    }

    /// [`Stack::start`], the node holding `more` image folders beside console and desktop.
    pub async fn start_with_images(more: &[&std::path::Path]) -> anyhow::Result<Self> {
        Self::start_inner(|_| {}, None, "", more).await
    }

    async fn start_inner(
        configure: impl FnOnce(&mut BrokerOptions),
        display_port: Option<u16>,
        display_extra: &str,
        more: &[&std::path::Path],
    ) -> anyhow::Result<Self> {
        let console = console_image()?;
        let desktop = desktop_image()?;
        let mut images = vec![console.as_path(), desktop.as_path()];
        images.extend_from_slice(more);
        let slapd = Slapd::start().context("starting the directory (slapd)")?;
        let mut opts = BrokerOptions::new(&slapd.url());
        configure(&mut opts);
        let broker = Broker::start(opts).await.context("starting the broker")?;
        // The display proxy's port is chosen first: the node announces it to the broker.
        let display_port = display_port.map_or_else(free_port, port_or_free);
        // As an administrator would: a one-time token for the node, from the API.
        let mut admin = broker.client();
        admin.login_ok("carol", "carol-pw").await;
        let enrolment = admin.enrolment_token("node-1").await;
        let node = NodeProcess::start_with_images(
            &images,
            &format!(
                "id = \"node-1\"\ndisplay_url = \"ws://127.0.0.1:{display_port}\"\n\n[broker]\nurl = \"{}\"\nheartbeat_secs = 2\nenrolment_token = {enrolment:?}\n",
                broker.url
            ),
        )
        .await
        .context("starting the node agent")?;
        let display = DisplayService::start(DisplayOptions {
            port: display_port,
            broker_url: broker.url.clone(),
            node_socket: node.local_socket(),
            allowed_origins: vec![broker.url.clone(), format!("http://localhost:{}", broker.port)],
            trusted_proxies: Vec::new(),
            extra: display_extra.to_owned(),
        })
        .await?;
        let me = Self { display, node, broker, slapd };
        let admin = me.admin().await;
        wait_for("the node to register with the broker", Duration::from_secs(30), || async {
            let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
            (n.as_array().is_some_and(|a| !a.is_empty())).then_some(())
        })
        .await?;
        Ok(me)
    }

    /// Starts again any of its services that has ended (a crash, a `kill -9`), on the same
    /// configuration, state and port; says which, and how each had ended. The quick start calls
    /// this every second, as a service manager would (`Restart=always` in `deploy/systemd`).
    pub async fn restart_dead(&mut self) -> anyhow::Result<Vec<String>> {
        let mut restarted = Vec::new();
        if let Some(s) = self.broker.restart_if_dead().await? {
            restarted.push(format!("the broker ({s})"));
        }
        if let Some(s) = self.node.restart_if_dead()? {
            restarted.push(format!("the node agent ({s})"));
        }
        if let Some(s) = self.display.restart_if_dead().await? {
            restarted.push(format!("the display proxy ({s})"));
        }
        Ok(restarted)
    }

    /// Every service's log, for a failure's message.
    pub fn logs(&self) -> String {
        format!(
            "broker log:\n{}\nnode log:\n{}\ndisplay log:\n{}",
            self.broker.log(),
            self.node.log(),
            self.display.log()
        )
    }

    /// A client signed in as the demo administrator (carol).
    pub async fn admin(&self) -> ApiClient {
        let mut c = self.broker.client();
        c.login_ok("carol", "carol-pw").await;
        c
    }

    /// Creates a floating pool of booted (not cloned) desktops of `image` (`console` or
    /// `desktop`) and waits until it has `min_ready` spares. The tests that use it are about
    /// other things than clones, which would boot a template beside their first spare
    /// (clones have tests of their own: qemu_clones.rs, desktop_image.rs).
    pub async fn pool(
        &self,
        name: &str,
        image: &str,
        min_ready: u32,
        display: &str,
    ) -> anyhow::Result<()> {
        create_pool(&self.admin().await, name, image, min_ready, display, Some(false)).await
    }
}

/// Creates a floating pool of `image` (`console` or `desktop`) as an administrator, and waits
/// until it has `min_ready` ready spares. `clone`: whether its desktops start as clones of a
/// template; `None` leaves the broker's default (clones, for a floating pool).
pub async fn create_pool(
    admin: &ApiClient,
    name: &str,
    image: &str,
    min_ready: u32,
    display: &str,
    clone: Option<bool>,
) -> anyhow::Result<()> {
    let description = match image {
        "desktop" => "A graphical Linux desktop (X, JWM, terminal, file manager, editor)",
        _ => "A console desktop (Debian kernel, busybox) for trying Atrium",
    };
    let mut body = json!({"name": name, "description": description,
           "image": image, "vcpus": 1, "memory_mib": 512, "display": display, "kind": "floating",
           "min_ready": min_ready, "max_size": 4, "idle_timeout_secs": 1800, "max_session_secs": 28800});
    if let Some(clone) = clone {
        body["clone"] = clone.into();
    }
    admin.post_json("/api/v1/admin/pools", body, StatusCode::CREATED).await;
    let path = format!("/api/v1/admin/pools/{name}");
    wait_for(
        &format!("{min_ready} ready desktop(s) in pool {name}"),
        Duration::from_secs(300),
        || async {
            let p = admin.get_json(&path, StatusCode::OK).await;
            (p["counts"]["ready"].as_u64().unwrap_or(0) >= u64::from(min_ready)).then_some(())
        },
    )
    .await
}

/// The service tier as containers ([`Tier`]) with what stays on hosts: the demo directory on
/// its fixed port, and one node agent (with the given guest images) and its display proxy,
/// which reach the brokers through the edge's internal door. Dropped in reverse order.
#[derive(Debug)]
pub struct TierStack {
    pub display: DisplayService,
    pub node: NodeProcess,
    pub tier: Tier,
    pub slapd: Slapd,
}

impl TierStack {
    pub async fn start(
        opts: TierOptions,
        images: &[&std::path::Path],
        display_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        Tier::check_ports()?;
        let slapd = Slapd::start_on(tier::DIRECTORY_PORT)
            .context("starting the demo directory (slapd) on its fixed port")?;
        let tier = Tier::start(opts).await.context("starting the container tier")?;
        let display_port = display_port.map_or_else(free_port, port_or_free);
        let mut admin = tier.client();
        admin.login_ok("carol", "carol-pw").await;
        let enrolment = admin.enrolment_token("node-1").await;
        let node = NodeProcess::start_with_images(
            images,
            &format!(
                "id = \"node-1\"\ndisplay_url = \"ws://127.0.0.1:{display_port}\"\n\n[broker]\nurl = \"{}\"\nheartbeat_secs = 2\nenrolment_token = {enrolment:?}\n",
                tier::INTERNAL_URL
            ),
        )
        .await
        .context("starting the node agent")?;
        let display = DisplayService::start(DisplayOptions {
            port: display_port,
            broker_url: tier::INTERNAL_URL.into(),
            node_socket: node.local_socket(),
            // Viewers come through the gateways, which send no Origin, from this host.
            allowed_origins: Vec::new(),
            trusted_proxies: vec!["127.0.0.1".into()],
            extra: String::new(),
        })
        .await?;
        let me = Self { display, node, tier, slapd };
        let admin = me.admin().await;
        wait_for("the node to register through the edge", Duration::from_secs(30), || async {
            let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
            (n.as_array().is_some_and(|a| !a.is_empty())).then_some(())
        })
        .await?;
        Ok(me)
    }

    /// A client signed in as the demo administrator (carol), through the edge.
    pub async fn admin(&self) -> ApiClient {
        let mut c = self.tier.client();
        c.login_ok("carol", "carol-pw").await;
        c
    }
}
