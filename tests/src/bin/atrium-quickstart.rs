//! The quick start's orchestrator (run by `scripts/quickstart.sh`): a throwaway directory
//! (slapd) seeded with demo users, the broker on SQLite, one node agent and the display proxy,
//! all on loopback; a demo pool with a ready desktop; then it prints the URL and a demo login
//! and waits for Ctrl+C, which stops everything it started.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use atrium_tests::broker::{Broker, BrokerOptions};
use atrium_tests::node::{NODE_TOKEN, NodeProcess, console_image};
use atrium_tests::slapd::Slapd;
use atrium_tests::{TempDir, bin_path, free_port, wait_for};
use reqwest::StatusCode;
use serde_json::json;

/// The display proxy process; killed on drop.
struct Display {
    child: Child,
    _dir: TempDir,
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_or_free(preferred: u16) -> u16 {
    if TcpListener::bind(("127.0.0.1", preferred)).is_ok() { preferred } else { free_port() }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let image = console_image()?;
    eprintln!("quickstart: console image {}", image.display());

    let slapd = Slapd::start().context("starting the demo directory (slapd)")?;
    eprintln!("quickstart: directory at {} (demo users: alice, bob, carol)", slapd.url());

    let mut opts = BrokerOptions::new(&slapd.url());
    opts.port = Some(port_or_free(8080));
    let broker = Broker::start(opts).await.context("starting the broker")?;
    eprintln!(
        "quickstart: broker at {} (log: {})",
        broker.url,
        broker.dir().join("broker.log").display()
    );

    // The display proxy's port is chosen first: the node announces it to the broker.
    let display_port = port_or_free(8090);
    let node = NodeProcess::start(
        &image,
        &format!(
            "id = \"quickstart-node\"\ndisplay_url = \"ws://127.0.0.1:{display_port}\"\n\n[broker]\nurl = \"{}\"\nheartbeat_secs = 2\n",
            broker.url
        ),
    )
    .await
    .context("starting the node agent")?;
    eprintln!(
        "quickstart: node at {} (log: {})",
        node.url,
        node.dir.path().join("node.log").display()
    );

    let dir = TempDir::new("quickstart-display");
    let config = dir.path().join("display.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{display_port}\"\nbroker_url = \"{}\"\nnode_api_url = \"{}\"\nnode_token = \"{NODE_TOKEN}\"\n\
             allowed_origins = [\"{}\", \"http://localhost:{}\"]\nnode_id = \"quickstart-node\"\n",
            broker.url, node.url, broker.url, broker.port
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("display.log"))?;
    let child = Command::new(bin_path("atrium-display"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the display proxy")?;
    let display_log = dir.path().join("display.log");
    let _display = Display { child, _dir: dir };
    let http = reqwest::Client::new();
    wait_for("the display proxy", Duration::from_secs(20), || {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{display_port}/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await?;
    eprintln!(
        "quickstart: display proxy at ws://127.0.0.1:{display_port} (log: {})",
        display_log.display()
    );

    let mut admin = broker.client();
    admin.login_ok("carol", "carol-pw").await;
    wait_for("the node to register with the broker", Duration::from_secs(30), || async {
        let n = admin.get_json("/api/v1/admin/nodes", StatusCode::OK).await;
        (n.as_array().is_some_and(|a| !a.is_empty())).then_some(())
    })
    .await?;
    admin
        .post_json(
            "/api/v1/admin/pools",
            json!({"name": "demo", "description": "A console desktop (Debian kernel, busybox) for trying Atrium",
                   "image": "console", "vcpus": 1, "memory_mib": 512, "display": "1280x800", "kind": "floating",
                   "min_ready": 1, "max_size": 4, "idle_timeout_secs": 1800, "max_session_secs": 28800}),
            StatusCode::CREATED,
        )
        .await;
    eprintln!("quickstart: booting a desktop for the demo pool…");
    wait_for("a ready desktop in the demo pool", Duration::from_secs(300), || async {
        let p = admin.get_json("/api/v1/admin/pools/demo", StatusCode::OK).await;
        (p["counts"]["ready"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await?;
    println!("ready: {}", broker.url);
    println!("demo login: alice / alice-pw");
    eprintln!("quickstart: administrator: carol / carol-pw. Ctrl+C stops everything.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("quickstart: stopping");
    Ok(())
}
