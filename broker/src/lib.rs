//! `atrium-broker`: Atrium's control plane. Signs users in against the directory, decides with
//! policy what they may use, keeps pools, nodes, desktops, sessions and the audit log in SQL,
//! places desktops on nodes, and mints short-lived display tickets. Stateless apart from its
//! database: any number of replicas may run.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod keys;
pub mod ldap;
pub mod metrics;
pub mod nodeclient;
pub mod policy;
pub mod reconcile;
pub mod secret;
pub mod service;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::config::Config;
use crate::state::AppState;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("database: {0}")]
    Db(#[from] db::DbError),
    #[error("directory: {0}")]
    Ldap(#[from] ldap::LdapError),
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("policies: {0}")]
    Policy(#[from] policy::PolicyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Builds the application state: database (migrated), directory client, keys, policies.
pub async fn build_state(cfg: Config) -> Result<AppState, StartError> {
    // rustls needs a process-wide crypto provider for LDAPS/StartTLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let policies = policy::Policies::load(&cfg.policies.dir, &cfg.policies.utc_offset)?;
    let keys = keys::Keys::load(
        &cfg.keys_dir(),
        Duration::from_secs(cfg.sessions.ttl_secs.max(cfg.tickets.ttl_secs) + 60),
    )?;
    let db = db::Db::connect(&cfg.database_url(), cfg.database.max_connections).await?;
    let directory = ldap::Directory::new(&cfg.ldap)?;
    if cfg.nodes.token.is_empty() {
        tracing::warn!("nodes.token is empty: no node can register");
    }
    let nodes = nodeclient::NodeClient::new(
        cfg.nodes.token.clone(),
        Duration::from_secs(cfg.nodes.request_timeout_secs),
    );
    Ok(AppState {
        cfg: Arc::new(cfg),
        login_writer: db::LoginWriter::start(db.clone()),
        db,
        directory,
        keys: Arc::new(keys),
        policies: Arc::new(policies),
        nodes,
        metrics: Arc::new(metrics::Metrics::default()),
        login_gate: Arc::new(state::KeyedGate::default()),
        sweeping: Arc::default(),
    })
}

/// Runs the broker until SIGINT or SIGTERM: HTTP server, reconcile loop, SIGHUP reloads.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let addr = cfg.broker.listen;
    let st = build_state(cfg).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(listen = %local, db = ?st.db.dialect(), "atrium-broker serving");
    tokio::spawn(reconcile::run(st.clone()));
    tokio::spawn(reload_on_sighup(st.clone()));
    let header_timeout = Duration::from_secs(st.cfg.broker.header_timeout_secs);
    let app = http::app(st);
    http::serve::serve(listener, app, header_timeout, shutdown_signal()).await;
    Ok(())
}

async fn reload_on_sighup(st: AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; policies reload only at restart");
        return;
    };
    while hup.recv().await.is_some() {
        match st.policies.reload() {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; the previous policies stay in force")
            }
        }
        if let Err(e) = st.keys.reload() {
            tracing::error!(error = %e, "key reload failed; the previous keys stay");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
