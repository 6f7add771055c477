//! Registration and heartbeat with the broker: `POST {broker.url}/api/v1/nodes/heartbeat` with
//! the node token and a `NodeHeartbeat` (capacity, VM states); the broker answers when the next
//! one is due and whether this node is drained. While the broker cannot be reached the node
//! retries with a doubling backoff, up to `broker.max_backoff_secs`.

use std::sync::Arc;
use std::time::Duration;

use atrium_protocol::node::{HeartbeatReply, NodeHeartbeat};

use crate::config::Secret;
use crate::vm::VmManager;

/// The heartbeat this node would send now.
pub fn heartbeat(node: &VmManager) -> NodeHeartbeat {
    let c = node.config();
    NodeHeartbeat {
        node_id: node.node_id().to_owned(),
        api_url: c.api_url(),
        display_url: c.node.display_url.clone().unwrap_or_default(),
        capacity: node.capacity(),
        vms: node.statuses(),
    }
}

async fn send_once(
    client: &reqwest::Client,
    url: &str,
    token: &Secret,
    node: &VmManager,
) -> Result<HeartbeatReply, String> {
    let resp = client
        .post(url)
        .bearer_auth(token.expose())
        .json(&heartbeat(node))
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!(
            "the broker answered {status}: {}",
            body.chars().take(300).collect::<String>()
        ));
    }
    resp.json::<HeartbeatReply>().await.map_err(|e| format!("bad heartbeat reply: {e}"))
}

/// Heartbeats until the task is dropped.
pub async fn run(node: Arc<VmManager>, token: Secret) {
    let cfg = node.config().broker.clone();
    let Some(base) = cfg.url.clone() else { return };
    let url = format!("{}/api/v1/nodes/heartbeat", base.trim_end_matches('/'));
    let client =
        match reqwest::Client::builder().timeout(Duration::from_secs(cfg.timeout_secs)).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot make an HTTP client for the broker: {e}");
                return;
            }
        };
    let max_backoff = Duration::from_secs(cfg.max_backoff_secs);
    let mut backoff = Duration::from_secs(1);
    let mut connected = false;
    loop {
        let wait = match send_once(&client, &url, &token, &node).await {
            Ok(reply) => {
                if !connected {
                    tracing::info!(broker = %base, interval = reply.interval_secs, "registered with the broker");
                    connected = true;
                }
                node.set_draining(reply.draining);
                backoff = Duration::from_secs(1);
                Duration::from_secs(reply.interval_secs.clamp(1, 300))
            }
            Err(e) => {
                if connected {
                    tracing::warn!(broker = %base, "heartbeat failed: {e}; retrying in {backoff:?}");
                } else {
                    tracing::warn!(broker = %base, "cannot reach the broker: {e}; retrying in {backoff:?}");
                }
                connected = false;
                let w = backoff;
                backoff = (backoff * 2).min(max_backoff);
                w
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use atrium_protocol::node::{KvmKind, RuntimeKind};
    use axum::Json;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use tokio::sync::mpsc;

    /// A broker's heartbeat endpoint that records what it receives (the broker's own tests
    /// cover its side).
    async fn broker(
        listener: tokio::net::TcpListener,
        seen: mpsc::UnboundedSender<(Option<String>, NodeHeartbeat)>,
    ) {
        let app = axum::Router::new().route(
            "/api/v1/nodes/heartbeat",
            post(move |headers: HeaderMap, Json(hb): Json<NodeHeartbeat>| {
                let seen = seen.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let _ = seen.send((auth, hb));
                    (StatusCode::OK, Json(HeartbeatReply { interval_secs: 1, draining: true }))
                }
            }),
        );
        axum::serve(listener, app).await.expect("serve");
    }

    #[tokio::test]
    async fn retries_until_the_broker_is_up_then_heartbeats() {
        // Reserve a port, then leave it closed: the broker is down at first.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);

        let dir = std::env::temp_dir().join(format!("atrium-hb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = NodeConfig::default();
        config.node.id = Some("node-7".into());
        config.node.state_dir = dir.join("state");
        config.node.images_dir = dir.join("images");
        config.node.display_url = Some("ws://127.0.0.1:7443".into());
        config.cgroup.enabled = false;
        config.broker.url = Some(format!("http://{addr}"));
        config.broker.max_backoff_secs = 1;
        let node =
            VmManager::new(config, KvmKind::Absent, vec![], RuntimeKind::Qemu).expect("manager");
        let task = tokio::spawn(run(Arc::clone(&node), Secret::new("node-token-0123456789")));

        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!node.draining());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the broker's port");
        let server = tokio::spawn(broker(listener, tx));

        let (auth, hb) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a heartbeat arrives once the broker is up")
            .expect("channel open");
        assert_eq!(auth.as_deref(), Some("Bearer node-token-0123456789"));
        assert_eq!(hb.node_id, "node-7");
        assert_eq!(hb.display_url, "ws://127.0.0.1:7443");
        assert_eq!(hb.capacity.kvm, KvmKind::Absent);
        assert!(hb.vms.is_empty());
        // The next one follows at the interval the broker asked for, and the node is drained.
        tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("second heartbeat");
        assert!(node.draining());
        task.abort();
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
