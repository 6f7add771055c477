//! `atrium-node serve`: detect KVM, set up the runtimes and the VM manager, serve the API, and
//! heartbeat to the broker when one is configured. On SIGINT/SIGTERM the node deletes its VMs.

use std::sync::Arc;
use std::time::Duration;

use atrium_protocol::node::RuntimeKind;
use thiserror::Error;

use crate::api::{self, AppState};
use crate::config::{ConfigError, DefaultRuntime, NodeConfig, VmsAtStop};
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
    let default = kvm::default_runtime(config.node.default_runtime);
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
    let manager = VmManager::new(config, kind, runtimes, default)?;
    manager.take_back_leftovers().await;
    Ok(manager)
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
    let enrolment = config.enrolment_token()?;
    // A CA bundle that cannot be read stops the start, not the heartbeats later.
    atrium_door::client::client_config(config.broker.ca_file.as_deref())
        .map_err(|e| ServeError::Setup(format!("broker.ca_file: {e}")))?;
    let broker_keys = Arc::new(
        api::BrokerKeys::new(config.broker.trusted_keys_file.as_deref())
            .map_err(|e| ServeError::Setup(format!("broker.trusted_keys_file: {e}")))?,
    );
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
    let mut state = AppState::new(Arc::clone(&node), Arc::clone(&broker_keys));
    if let Some(url) = &node.config().broker.url {
        let b = &node.config().broker;
        let uplink = api::Uplink::new(
            url,
            b.ca_file.as_deref(),
            std::time::Duration::from_secs(b.timeout_secs),
            Arc::clone(&key),
            node.node_id(),
        )
        .map_err(|e| ServeError::Setup(format!("a client for the broker: {e}")))?;
        state = state.with_uplink(Arc::new(uplink));
    }
    let app = api::router(state.clone());
    let tls = match (&node.config().node.tls_cert, &node.config().node.tls_key) {
        (Some(cert), Some(key)) => Some(
            atrium_door::tls::TlsFiles::load(cert, key)
                .map_err(|e| ServeError::Setup(format!("node.tls_cert: {e}")))?,
        ),
        _ => None,
    };
    let door = Arc::new(atrium_door::Door::new(DOOR_LIMITS.clone(), tls));
    let tls_fresh = tokio::spawn(atrium_door::keep_tls_fresh(Arc::clone(&door)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen { addr: listen, source })?;
    tracing::info!(%listen, node_id = node.node_id(), tls = door.tls().is_some(), "node API listening");
    let local_path = node.config().local_socket();
    let local = bind_local_socket(&local_path, node.config().node.local_socket_group.as_deref())?;
    tracing::info!(socket = %local_path.display(), "local API for the display proxy listening");
    let library = Arc::new(crate::library::Library::default());
    let fetcher = match &node.config().broker.url {
        Some(url) => Some(
            crate::library::Fetcher::new(
                url,
                node.config().broker.ca_file.as_deref(),
                Arc::clone(&key),
            )
            .map_err(|e| ServeError::Setup(format!("a client for the broker's images: {e}")))?,
        ),
        None => None,
    };
    let fetching = fetcher
        .map(|f| tokio::spawn(crate::library::run(Arc::clone(&library), Arc::clone(&node), f)));
    let beat = node.config().broker.url.is_some().then(|| {
        let activity = Arc::clone(&state.activity);
        tokio::spawn(heartbeat::run(
            Arc::clone(&node),
            key,
            enrolment,
            broker_keys,
            activity,
            library,
        ))
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let local_app = api::local_router(state);
    let local_stop = stopped(stop_rx.clone());
    let local_server = tokio::spawn(async move {
        if let Err(e) = axum::serve(local, local_app).with_graceful_shutdown(local_stop).await {
            tracing::error!("the local API socket: {e}");
        }
    });
    let mut server = tokio::spawn(async move {
        atrium_door::serve(listener, app, door, stopped(stop_rx), || {}).await;
    });
    let served = tokio::select! {
        ended = &mut server => ended,
        () = shutdown_signal() => {
            // Requests in flight (a clipboard long-poll may last 30 s) get a
            // moment to finish; the VMs must not wait for them, or whoever stops this node
            // loses patience first and the VMs outlive it.
            let _ = stop_tx.send(true);
            match tokio::time::timeout(SHUTDOWN_REQUESTS_GRACE, &mut server).await {
                Ok(ended) => ended,
                Err(_) => {
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    if let Some(b) = beat {
        b.abort();
    }
    if let Some(f) = fetching {
        f.abort();
    }
    local_server.abort();
    tls_fresh.abort();
    let _ = std::fs::remove_file(&local_path);
    // All at once: each may take seconds (QEMU is asked to quit, then killed). Again while a
    // creation cut short by the shutdown still adds one. With `vms_at_stop = "keep"`, only the
    // VMs a restarted node could not take back (and creations cut short) go.
    let keep = node.config().node.vms_at_stop == VmsAtStop::Keep;
    for _ in 0..3 {
        let vms: Vec<_> =
            node.list().into_iter().filter(|vm| !keep || !node.can_be_taken_back(&vm.id)).collect();
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
    node.end_templates();
    if keep && !node.list().is_empty() {
        tracing::info!(
            vms = node.list().len(),
            "node stopped; its VMs run on, and its next start takes them back"
        );
    } else {
        tracing::info!("node stopped");
    }
    served.map_err(|e| ServeError::Setup(format!("the API server task: {e}")))
}

/// Binds the local API socket: any stale one removed, mode 0660, its group `group` when set
/// (the display proxy's), so that only root and that group can reach the VMs' displays.
fn bind_local_socket(
    path: &std::path::Path,
    group: Option<&str>,
) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let setup = |what: &str, e: std::io::Error| {
        ServeError::Setup(format!("the local API socket {}: {what}: {e}", path.display()))
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(setup("removing the old one", e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| setup("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| setup("mode 0660", e))?;
    if let Some(name) = group {
        let gid = crate::accounts::group_id(name).ok_or_else(|| {
            ServeError::Setup(format!("node.local_socket_group: no group named {name:?}"))
        })?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| setup("chown", e))?;
        // The group passes through the folder the socket is in (the VMs' display sockets are
        // further down), and lists nothing.
        if let Some(dir) = path.parent() {
            std::os::unix::fs::chown(dir, None, Some(gid)).map_err(|e| setup("chown", e))?;
            let mode = std::fs::metadata(dir).map_err(|e| setup("its folder", e))?.permissions();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode.mode() | 0o010))
                .map_err(|e| setup("its folder's mode", e))?;
        }
    }
    Ok(listener)
}

/// The API's door: the broker (and monitoring) are its only callers, so the limits are wide; a
/// request's head must still come within 10 s.
static DOOR_LIMITS: std::sync::LazyLock<atrium_door::DoorLimits> =
    std::sync::LazyLock::new(|| atrium_door::DoorLimits {
        max_connections: 4096,
        max_per_address: 1024,
        trusted: Vec::new(),
        header_timeout: Duration::from_secs(10),
        max_head: 64 * 1024,
        drain_within: SHUTDOWN_REQUESTS_GRACE,
    });

/// How long requests in flight may run on after a shutdown signal.
const SHUTDOWN_REQUESTS_GRACE: Duration = Duration::from_secs(2);
