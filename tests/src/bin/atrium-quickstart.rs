//! The quick start's orchestrator.
//!
//! - `atrium-quickstart` (run by `scripts/quickstart.sh`): a throwaway directory (slapd)
//!   seeded with demo users, the broker on SQLite, one node agent and the display proxy, all on
//!   loopback ([`atrium_tests::stack::Stack`]).
//! - `atrium-quickstart --containers` (run by `scripts/containers.sh`): the same demo directory
//!   and node, with the service tier as containers on this host — PostgreSQL, three brokers,
//!   two display gateways and the HAProxy edge, played by `podman kube play` from
//!   `deploy/kubernetes/overlays/podman` ([`atrium_tests::stack::TierStack`]).
//!
//! Either way: two demo pools (a graphical `desktop` and a `console`) with a ready desktop
//! each; then it prints the URL and a demo login and waits for Ctrl+C, which stops everything
//! it started.

use anyhow::Context;
use atrium_tests::node::{console_image, desktop_image};
use atrium_tests::slapd::SERVICE_PW;
use atrium_tests::stack::{Stack, TierStack, create_pool};
use atrium_tests::tier::{self, TierOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    atrium_tests::util::install_crypto();
    let containers = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--containers") => true,
        Some(other) => {
            anyhow::bail!("unknown argument {other} (usage: atrium-quickstart [--containers])")
        }
    };
    if containers { run_containers().await } else { run_processes().await }
}

async fn run_processes() -> anyhow::Result<()> {
    eprintln!("quickstart: starting the directory, broker, node and display proxy");
    let mut stack = Stack::start(Some(8080), Some(8090)).await?;
    eprintln!(
        "quickstart: logs in {}, {}, {}",
        stack.broker.dir().join("broker.log").display(),
        stack.node.dir.path().join("node.log").display(),
        stack.display.dir.path().join("display.log").display()
    );
    eprintln!("quickstart: booting desktops for the demo pools (under TCG this takes seconds)…");
    // The broker's default for floating pools: desktops start as clones of a template.
    let admin = stack.admin().await;
    let (desktop, console) = tokio::join!(
        create_pool(&admin, "desktop", "desktop", 1, "1280x800", None),
        create_pool(&admin, "console", "console", 1, "1280x800", None)
    );
    desktop?;
    console?;
    println!("ready: {}", stack.broker.url);
    println!("demo login: alice / alice-pw");
    eprintln!("quickstart: administrator: carol / carol-pw. Ctrl+C stops everything.");
    // A service that dies is started again, as systemd would.
    let stopped = until_stopped();
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            r = &mut stopped => { r?; break; }
            _ = tick.tick() => match stack.restart_dead().await {
                Ok(restarted) => {
                    for what in restarted {
                        eprintln!("quickstart: {what} had ended: started again");
                    }
                }
                Err(e) => eprintln!("quickstart: could not restart a service: {e:#}"),
            },
        }
    }
    eprintln!("quickstart: stopping");
    drop(stack);
    Ok(())
}

async fn run_containers() -> anyhow::Result<()> {
    let console = console_image()?;
    let desktop = desktop_image()?;
    let binaries = std::env::current_exe()?.parent().context("the binary's folder")?.to_owned();
    eprintln!("containers: building the images, then playing the tier with podman");
    let opts = TierOptions {
        state: None,
        binaries,
        ldap_bind_password: SERVICE_PW.into(),
        policies: Vec::new(),
    };
    let stack = TierStack::start(opts, &[&console, &desktop], Some(8090)).await?;
    eprintln!(
        "containers: the tier's files in {}; `podman ps` lists its containers; node and display \
         proxy logs in {}, {}",
        stack.tier.dir.display(),
        stack.node.dir.path().join("node.log").display(),
        stack.display.dir.path().join("display.log").display()
    );
    eprintln!("containers: booting desktops for the demo pools (under TCG this takes seconds)…");
    let admin = stack.admin().await;
    let (d, c) = tokio::join!(
        create_pool(&admin, "desktop", "desktop", 1, "1280x800", None),
        create_pool(&admin, "console", "console", 1, "1280x800", None)
    );
    d?;
    c?;
    println!("ready: {}", tier::PUBLIC_URL);
    println!("demo login: alice / alice-pw");
    eprintln!(
        "containers: administrator: carol / carol-pw. The certificate is from the tier's own CA \
         ({}/kubernetes/base/secrets/ca.crt): accept it in the browser. Ctrl+C stops everything.",
        stack.tier.dir.display()
    );
    until_stopped().await?;
    eprintln!("containers: stopping");
    drop(stack);
    Ok(())
}

async fn until_stopped() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
