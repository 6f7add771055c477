//! `atrium-node serve`: detect KVM, set up the runtimes and the VM manager, serve the API, and
//! heartbeat to the broker when one is configured. On SIGINT/SIGTERM the node deletes its VMs.

use std::sync::Arc;
use std::time::Duration;

use atrium_protocol::node::RuntimeKind;
use thiserror::Error;

use crate::api::{self, AppState};
use crate::config::{ConfigError, DefaultRuntime, NodeConfig};
use crate::runtime::qemu::QemuRuntime;
use crate::vm::{VmError, VmManager};
use crate::{heartbeat, kvm, runtime};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{0}")]
    Setup(String),
    #[error("listening on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
}

/// Detects the host and builds the VM manager (shared by `serve` and `run`).
pub async fn build_manager(config: NodeConfig) -> Result<Arc<VmManager>, ServeError> {
    let kind = kvm::detect();
    let runtimes = runtime::available(&config, kind);
    let builtin = runtimes.iter().any(|r| r.kind() == RuntimeKind::Builtin);
    if config.node.default_runtime == DefaultRuntime::Builtin && !builtin {
        return Err(ServeError::Setup(
            "node.default_runtime = builtin, but this build has no builtin runtime".into(),
        ));
    }
    let default = kvm::default_runtime(kind, config.node.default_runtime, builtin);
    tracing::info!(kvm = kvm::kind_name(kind), hardware = kind.is_hardware(), default_runtime = %default, "KVM detected");
    for r in &runtimes {
        tracing::info!(runtime = %r.kind(), accel = ?r.accel(), "{}", r.accel_reason());
    }
    let qemu = QemuRuntime::new(config.qemu.clone(), kind);
    match qemu.version().await {
        Ok(v) => tracing::info!("qemu runtime: {v}"),
        Err(e) => {
            return Err(ServeError::Setup(format!(
                "the qemu runtime needs {} (Debian's qemu-system-x86): {e}",
                config.qemu.binary.display()
            )));
        }
    }
    Ok(VmManager::new(config, kind, runtimes, default)?)
}

/// SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

pub async fn serve(config: NodeConfig) -> Result<(), ServeError> {
    let token = config.token()?;
    let enrolment = config.enrolment_token()?;
    let listen = config.node.listen;
    let node = build_manager(config).await?;
    // Made after the manager, which creates the state folder with the modes it needs.
    let key = Arc::new(
        atrium_protocol::signed::NodeKey::load_or_generate(&node.config().key_path())
            .map_err(|e| ServeError::Setup(format!("this node's key: {e}")))?,
    );
    let (images, errors) = node.images().refresh();
    for e in errors {
        tracing::warn!("image refused: {e}");
    }
    tracing::info!(images = images.len(), dir = %node.images().root().display(), "images found");
    let app = api::router(AppState::new(Arc::clone(&node), &token));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen { addr: listen, source })?;
    tracing::info!(%listen, node_id = node.node_id(), "node API listening");
    let beat = node
        .config()
        .broker
        .url
        .is_some()
        .then(|| tokio::spawn(heartbeat::run(Arc::clone(&node), key, enrolment)));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    let served = tokio::select! {
        ended = &mut server => ended,
        () = shutdown_signal() => {
            // Requests in flight (a clipboard long-poll may last 30 s) get a
            // moment to finish; the VMs must not wait for them, or whoever stops this node
            // loses patience first and the VMs outlive it.
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_REQUESTS_GRACE, &mut server).await {
                Ok(ended) => ended,
                Err(_) => {
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    if let Some(b) = beat {
        b.abort();
    }
    // All at once: each may take seconds (QEMU is asked to quit, then killed). Again while a
    // creation cut short by the shutdown still adds one.
    for _ in 0..3 {
        let vms = node.list();
        if vms.is_empty() {
            break;
        }
        tracing::info!(vms = vms.len(), "shutting down: deleting this node's VMs");
        let mut deletes = tokio::task::JoinSet::new();
        for vm in vms {
            let node = Arc::clone(&node);
            deletes.spawn(async move {
                if let Err(e) = node.delete(&vm.id).await {
                    tracing::error!(vm = %vm.id, "deleting at shutdown: {e}");
                }
            });
        }
        while deletes.join_next().await.is_some() {}
    }
    tracing::info!("node stopped");
    match served {
        Ok(result) => result.map_err(|source| ServeError::Listen { addr: listen, source }),
        Err(e) => Err(ServeError::Setup(format!("the API server task: {e}"))),
    }
}

/// How long requests in flight may run on after a shutdown signal.
const SHUTDOWN_REQUESTS_GRACE: Duration = Duration::from_secs(2);
