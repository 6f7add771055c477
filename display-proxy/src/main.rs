//! `atrium-display`: the display proxy service and the display gateway.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use atrium_display::config::DisplayConfig;
use atrium_display::gateway::{self, config::GatewayConfig};
use atrium_display::http::{AppState, router};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "atrium-display", version, about = "Atrium's display proxy and display gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the display proxy.
    Serve {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the display gateway: the public door that checks tickets and relays viewers to
    /// the display proxy of their desktop's node.
    Gateway {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    atrium_door::client::install_default_provider();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colours only on a terminal: a container's or a service's log is a file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve { config } => {
            let cfg = DisplayConfig::load(&config)?;
            runtime(cfg.io_threads)?.block_on(serve(cfg))
        }
        Command::Gateway { config } => {
            let cfg = GatewayConfig::load(&config)?;
            runtime(cfg.io_threads)?.block_on(gateway::run(cfg))?;
            Ok(())
        }
    }
}

/// One runtime thread (the default) is tokio's current-thread scheduler: this thread runs every
/// task, with no hand-off to a worker and no work-stealing bookkeeping. 0: one per CPU.
fn runtime(io_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut rt = if io_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if io_threads > 0 {
            b.worker_threads(io_threads);
        }
        b
    };
    rt.enable_all().build()
}

async fn serve(cfg: DisplayConfig) -> anyhow::Result<()> {
    let state = AppState::from_config(&cfg).context("tls_cert")?;
    state.warm_up().await;
    let s = state.clone();
    tokio::spawn(async move { s.keep_keys_fresh().await });
    let s = state.clone();
    tokio::spawn(async move { s.keep_reporting_activity().await });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let door = std::sync::Arc::clone(state.door());
    tracing::info!(listen = %listener.local_addr()?, tls = door.tls().is_some(), "display proxy listening");
    tokio::spawn(atrium_door::keep_tls_fresh(std::sync::Arc::clone(&door)));
    atrium_door::serve(listener, router(state), door, atrium_door::stop_signal(), || {}).await;
    Ok(())
}
