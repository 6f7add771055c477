//! `atrium-broker`: Atrium's control plane. Signs users in against the directory, decides with
//! policy what they may use, keeps pools, nodes, desktops, sessions and the audit log in SQL,
//! places desktops on nodes, and mints short-lived display tickets. Stateless apart from its
//! database: any number of replicas may run.

pub mod auth;
pub mod config;
pub mod db;
pub mod enrol;
pub mod error;
pub mod http;
pub mod keys;
pub mod ldap;
pub mod library;
pub mod metrics;
pub mod mfa;
pub mod nodeclient;
pub mod oidc;
pub mod policy;
pub mod reconcile;
pub mod recordings;
pub mod revalidate;
pub mod secret;
pub mod service;
pub mod state;
pub mod tokens;

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
    #[error("{0}")]
    Config(String),
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
    let db = db::Db::connect_with(
        &cfg.database_url(),
        cfg.database.max_connections,
        Duration::from_secs(cfg.database.acquire_timeout_secs),
    )
    .await?;
    let directory = ldap::Directory::new(&cfg.ldap)?;
    let oidc = oidc::Oidc::new(&cfg).map_err(StartError::Config)?;
    let mfa = mfa::Vault::load_or_create(&cfg.mfa_key_file())
        .map_err(|e| StartError::Config(format!("mfa.key_file: {e}")))?;
    let keys = Arc::new(keys);
    let nodes = nodeclient::NodeClient::new(
        Arc::clone(&keys),
        Duration::from_secs(cfg.nodes.request_timeout_secs),
        cfg.nodes.ca_file.as_deref(),
    )
    .map_err(|e| StartError::Config(format!("nodes.ca_file: {e}")))?;
    let tls = match (&cfg.broker.tls_cert, &cfg.broker.tls_key) {
        (Some(cert), Some(key)) => Some(
            atrium_door::tls::TlsFiles::load(cert, key)
                .map_err(|e| StartError::Config(format!("broker.tls_cert: {e}")))?,
        ),
        _ => None,
    };
    Ok(AppState {
        login_writer: db::LoginWriter::start(db.clone()),
        db,
        directory,
        oidc,
        mfa: Arc::new(mfa),
        keys,
        policies: Arc::new(policies),
        nodes,
        metrics: Arc::new(metrics::Metrics::default()),
        login_gate: Arc::new(state::KeyedGate::default()),
        sweeping: Arc::default(),
        instance: instance_name().into(),
        draining: Arc::default(),
        door: Arc::new(atrium_door::Door::new(cfg.door_limits(), tls)),
        cfg: Arc::new(cfg),
    })
}

/// This replica's name: the host name (a pod's name on Kubernetes) and a random suffix, so a
/// restarted replica is a new holder.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_graphic()).take(64).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "broker".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Runs the broker until SIGINT or SIGTERM: HTTP server, reconcile loop, SIGHUP reloads. On
/// SIGTERM it drains: `/readyz` answers 503 for `broker.drain_secs` while every request is
/// still served, then the listener closes, requests in flight finish, and the reconcile lease
/// is given up.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let addr = cfg.broker.listen;
    let st = build_state(cfg).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(listen = %local, tls = st.door.tls().is_some(), db = ?st.db.dialect(), instance = %st.instance, "atrium-broker serving");
    let reconciler = tokio::spawn(reconcile::run(st.clone()));
    tokio::spawn(reload_on_sighup(st.clone()));
    tokio::spawn(atrium_door::keep_tls_fresh(Arc::clone(&st.door)));
    let app = http::app(st.clone());
    let drain = Duration::from_secs(st.cfg.broker.drain_secs);
    let draining = Arc::clone(&st.draining);
    // Both listeners close together, after the drain.
    let (closing, closed) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        atrium_door::stop_signal().await;
        draining.store(true, std::sync::atomic::Ordering::SeqCst);
        if !drain.is_zero() {
            tracing::info!(secs = drain.as_secs(), "draining: /readyz answers 503");
            tokio::time::sleep(drain).await;
        }
        let _ = closing.send(true);
    };
    let internal = match st.cfg.broker.internal_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })?;
            tracing::info!(listen = %addr, "internal listener (metrics, health details)");
            let mut closed = closed.clone();
            let door = Arc::new(atrium_door::Door::new(st.cfg.door_limits(), None));
            Some(tokio::spawn(atrium_door::serve(
                l,
                app.clone().layer(axum::Extension(http::InternalListener)),
                door,
                async move {
                    let _ = closed.wait_for(|c| *c).await;
                },
                || {},
            )))
        }
        None => None,
    };
    atrium_door::serve(listener, app, Arc::clone(&st.door), shutdown, || {}).await;
    if let Some(internal) = internal {
        let _ = internal.await;
    }
    // The loop is stopped (and its last renewal done or dropped) before the lease is given up.
    reconciler.abort();
    let _ = reconciler.await;
    reconcile::release(&st).await;
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
