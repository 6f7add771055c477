//! `/api/v1/nodes/heartbeat`: node agents register and stay alive (bearer node token).

use atrium_protocol::node::{HeartbeatReply, NodeHeartbeat, validate_name};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::secret::constant_time_eq;
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(heartbeat))
}

/// A request carrying the node token. As an extractor it runs before the body is read, so a
/// caller without the token gets 401 before anything of its body is parsed.
struct NodeToken;

impl axum::extract::FromRequestParts<AppState> for NodeToken {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, ApiError> {
        check_token(st, &parts.headers)?;
        Ok(Self)
    }
}

fn check_token(st: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let expected = st.cfg.nodes.token.expose();
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if expected.is_empty() || !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

/// Longest VM error text kept from a heartbeat.
const MAX_VM_ERROR: usize = 1024;
/// Most images a node may report.
const MAX_IMAGES: usize = 1000;

/// Checks a heartbeat, and makes the free text in it (VM errors) safe to store: control
/// characters (NUL breaks PostgreSQL text) become spaces and long texts are cut.
fn validate(hb: &mut NodeHeartbeat) -> ApiResult<()> {
    validate_name("node_id", &hb.node_id, 128)?;
    let url_ok = |u: &str, schemes: &[&str]| {
        u.len() < 2048
            && schemes.iter().any(|s| u.starts_with(s))
            && !u.contains(char::is_whitespace)
    };
    if !url_ok(&hb.api_url, &["http://", "https://"]) {
        return Err(ApiError::Validation {
            field: "api_url".into(),
            message: "api_url must be an http(s) URL".into(),
        });
    }
    if !url_ok(&hb.display_url, &["ws://", "wss://"]) {
        return Err(ApiError::Validation {
            field: "display_url".into(),
            message: "display_url must be a ws(s) URL".into(),
        });
    }
    if hb.vms.len() > 100_000 {
        return Err(ApiError::Validation { field: "vms".into(), message: "too many VMs".into() });
    }
    for vm in &mut hb.vms {
        validate_name("vms[].id", &vm.id, 128)?;
        if let Some(e) = &mut vm.error {
            *e = e
                .chars()
                .take(MAX_VM_ERROR)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
        }
    }
    if hb.capacity.images.len() > MAX_IMAGES {
        return Err(ApiError::Validation {
            field: "capacity.images".into(),
            message: format!("more than {MAX_IMAGES} images"),
        });
    }
    for image in &hb.capacity.images {
        validate_name("capacity.images[].name", &image.name, 128)?;
        validate_name("capacity.images[].version", &image.version, 128)?;
        validate_name("capacity.images[].kind", &image.kind, 64)?;
    }
    Ok(())
}

/// Register (first call) and heartbeat a node, with its capacity and VM states.
#[utoipa::path(post, path = "/api/v1/nodes/heartbeat", tag = "nodes", request_body(content = Object, description = "NodeHeartbeat (protocol crate)"),
    responses((status = 200, description = "HeartbeatReply: interval and draining flag", body = Object), (status = 401, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn heartbeat(
    State(st): State<AppState>,
    _token: NodeToken,
    JsonBody(mut hb): JsonBody<NodeHeartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    validate(&mut hb)?;
    let now = now_ms();
    let (draining, came_up) = match st.db.heartbeat_node(&hb, now).await {
        Ok(r) => r,
        Err(crate::db::DbError::Conflict(why)) => {
            tracing::warn!(node = %hb.node_id, api = %hb.api_url, "heartbeat refused: {why}");
            service::audit(
                &st,
                &format!("node:{}", hb.node_id),
                "node.url_conflict",
                &hb.node_id,
                "denied",
                std::net::IpAddr::from([0, 0, 0, 0]),
                serde_json::json!({ "api_url": hb.api_url, "display_url": hb.display_url }),
            )
            .await;
            return Err(ApiError::Conflict(format!(
                "{why}; a node keeps its URLs while it is up (an administrator can forget it)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if came_up {
        tracing::info!(node = %hb.node_id, api = %hb.api_url, "node registered");
        service::audit(
            &st,
            &format!("node:{}", hb.node_id),
            "node.register",
            &hb.node_id,
            "success",
            std::net::IpAddr::from([0, 0, 0, 0]),
            serde_json::json!({ "api_url": hb.api_url }),
        )
        .await;
    }
    let grace = i64::try_from(st.cfg.nodes.heartbeat_interval_secs * 3000).unwrap_or(i64::MAX / 2);
    let orphans = st.db.apply_vm_statuses(&hb.node_id, &hb.vms, now, grace).await?;
    if !orphans.is_empty() {
        sweep_orphans(&st, &hb.node_id, &hb.api_url, orphans);
    }
    Ok(Json(HeartbeatReply { interval_secs: st.cfg.nodes.heartbeat_interval_secs, draining }))
}

/// Removes VMs no desktop owns (a broker crash between create and record, a node back from
/// lost, a dedicated desktop stopped while its node was away), after a grace period and only
/// while no VM creation is in flight on that node. One sweep per node at a time.
fn sweep_orphans(st: &AppState, node: &str, api: &str, orphans: Vec<String>) {
    if !st.sweeping.lock().expect("sweep lock").insert(node.to_owned()) {
        return;
    }
    let st = st.clone();
    let node = node.to_owned();
    let api = api.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(
            st.cfg.nodes.heartbeat_interval_secs * 3,
        ))
        .await;
        let busy = st.db.node_is_provisioning(&node).await.unwrap_or(true);
        if !busy && let Ok(desktops) = st.db.list_desktops().await {
            for vm in orphans {
                let owned = desktops.iter().any(|d| {
                    d.vm_id.as_deref() == Some(vm.as_str())
                        && d.node_id.as_deref() == Some(node.as_str())
                });
                if owned {
                    continue;
                }
                tracing::info!(node = %node, vm = %vm, "removing a VM no desktop owns");
                if let Err(e) = st.nodes.delete_vm(&api, &vm).await {
                    tracing::warn!(error = %e, vm = %vm, "could not remove an orphan VM");
                }
            }
        }
        st.sweeping.lock().expect("sweep lock").remove(&node);
    });
}

#[cfg(test)]
mod tests {
    use atrium_protocol::node::{Capacity, ImageInfo, KvmKind, RuntimeKind, VmState, VmStatus};

    use super::*;

    fn heartbeat() -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: "node-1".into(),
            api_url: "http://10.0.0.5:7070".into(),
            display_url: "ws://10.0.0.5:7443".into(),
            capacity: Capacity {
                vcpus_total: 4,
                vcpus_allocated: 0,
                memory_mib_total: 4096,
                memory_mib_allocated: 0,
                vms: 1,
                kvm: KvmKind::Pvm,
                default_runtime: RuntimeKind::Qemu,
                images: vec![ImageInfo {
                    name: "console".into(),
                    version: "c91ebf8dc804a202".into(),
                    kind: "console".into(),
                }],
            },
            vms: vec![VmStatus { id: "vm-1".into(), state: VmState::Failed, error: None }],
        }
    }

    #[test]
    fn vm_errors_are_made_safe_to_store() {
        let mut hb = heartbeat();
        hb.vms[0].error = Some(format!("qemu\0died\u{7}\n{}", "x".repeat(5000)));
        validate(&mut hb).unwrap();
        let e = hb.vms[0].error.as_deref().unwrap();
        assert!(e.starts_with("qemu died  x"), "{e:.20}");
        assert!(!e.chars().any(char::is_control));
        assert_eq!(e.chars().count(), MAX_VM_ERROR);
    }

    #[test]
    fn ids_and_images_that_could_not_be_names_are_refused() {
        for bad in ["", "../etc", "vm/1", "vm 1", "vm\0x"] {
            let mut hb = heartbeat();
            hb.vms[0].id = bad.into();
            assert!(validate(&mut hb).is_err(), "VM id {bad:?}");
        }
        let mut hb = heartbeat();
        hb.capacity.images[0].version = "1.0;rm -rf".into();
        assert!(validate(&mut hb).is_err());
        let mut hb = heartbeat();
        hb.capacity.images = vec![hb.capacity.images[0].clone(); MAX_IMAGES + 1];
        assert!(validate(&mut hb).is_err());
        validate(&mut heartbeat()).unwrap();
    }
}
