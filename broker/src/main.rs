//! `atrium-broker`: parses the command line and configuration, sets up logging, runs the broker.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "atrium-broker", version, about = "Atrium's control plane")]
struct Cli {
    /// Configuration file (TOML). Every key can be overridden with ATRIUM_<SECTION>_<KEY>.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default).
    Serve,
    /// Check the configuration and policies, then exit.
    Check,
    /// Add a new signing key; running brokers pick it up on SIGHUP (or within a minute).
    RotateKey {
        /// Seconds until the new key signs. Until then it is published and accepted only, so
        /// that every replica (and every gateway and display proxy) knows it first. Give brokers
        /// sharing a key folder at least a few minutes.
        #[arg(long, default_value_t = 0)]
        activate_in: u64,
    },
    /// Create a one-time token with which a new node enrols (prints it; the portal's Nodes
    /// page and the admin API do the same).
    EnrolToken {
        /// Only this node id may enrol with it.
        #[arg(long)]
        node: Option<String>,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = atrium_broker::enrol::DEFAULT_VALID_FOR_SECS)]
        valid_for: u64,
        /// The most vCPUs the node is trusted with (else what it reports when it enrols).
        #[arg(long)]
        max_vcpus: Option<i64>,
        /// The most memory, in MiB, the node is trusted with.
        #[arg(long)]
        max_memory_mib: Option<i64>,
    },
}

fn main() -> ExitCode {
    atrium_door::client::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        // Colours only on a terminal: a container's or a service's log is a file.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let cli = Cli::parse();
    let cfg = match atrium_broker::config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("atrium-broker: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            match atrium_broker::policy::Policies::load(&cfg.policies.dir, &cfg.policies.utc_offset)
            {
                Ok(_) => {
                    println!("configuration and policies are valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("atrium-broker: policies: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::RotateKey { activate_in } => match atrium_broker::keys::generate_key_at(
            &cfg.keys_dir(),
            std::time::SystemTime::now() + std::time::Duration::from_secs(activate_in),
        ) {
            Ok(p) => {
                println!(
                    "new signing key: {} (signs in {activate_in} s; send SIGHUP to running brokers)",
                    p.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("atrium-broker: {e}");
                ExitCode::FAILURE
            }
        },
        Command::EnrolToken { node, valid_for, max_vcpus, max_memory_mib } => {
            let input = atrium_broker::enrol::EnrolmentInput {
                node_id: node,
                valid_for_secs: Some(valid_for),
                max_vcpus,
                max_memory_mib,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(atrium_broker::enrol::create_from_cli(&cfg, &input)) {
                Ok(created) => {
                    println!("{}", created.token);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("atrium-broker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(atrium_broker::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("atrium-broker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
