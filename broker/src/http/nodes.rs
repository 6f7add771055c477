//! `/api/v1/nodes/...`: node agents enrol once with a one-time token, then register and stay
//! alive with heartbeats signed by their own key (see [`crate::enrol`]).

use atrium_protocol::node::{
    EnrolReply, EnrolRequest, HeartbeatReply, MAX_LIBRARY_IMAGES, NodeHeartbeat, validate_name,
};
use atrium_protocol::session::{TransferRecord, validate_sessions, validate_transfers};
use axum::Json;
use axum::extract::{FromRequest, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::JsonBody;
use crate::auth::ClientAddr;
use crate::db::enrolments::NodeCredential;
use crate::db::now_ms;
use crate::enrol;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(heartbeat))
        .routes(routes!(image_file))
        .routes(routes!(enrol_node))
        .routes(routes!(recording_chunk))
        .routes(routes!(recording_end))
}

/// Whether a recording chunk is the last one.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
struct ChunkQuery {
    /// The viewer left: this chunk ends the recording.
    #[serde(default)]
    last: bool,
}

/// Store chunk `n` of a session recording (the recording format of the protocol crate), sent
/// by the display proxy of the node whose VM is recorded, through that node, signed by its
/// key. Chunks come in order; a retry of one already stored is accepted again.
#[utoipa::path(post, path = "/api/v1/nodes/recordings/{id}/chunks/{n}", tag = "nodes", params(("id" = String, Path), ("n" = u64, Path), ChunkQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Stored"), (status = 400, description = "Not a well-formed chunk", body = ErrorResponse),
        (status = 401, description = "Not signed by an enrolled node", body = ErrorResponse),
        (status = 403, description = "Another node's recording", body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "Not the next chunk, or the recording has ended", body = ErrorResponse)))]
async fn recording_chunk(
    State(st): State<AppState>,
    axum::extract::Path((id, n)): axum::extract::Path<(String, u64)>,
    axum::extract::Query(q): axum::extract::Query<ChunkQuery>,
    signed: SignedByNode,
) -> ApiResult<axum::http::StatusCode> {
    crate::recordings::check_id(&id)?;
    crate::recordings::accept_chunk(&st, &signed.node.node_id, &id, n, q.last, &signed.body)
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// End a session recording whose viewer left with nothing more to send.
#[utoipa::path(post, path = "/api/v1/nodes/recordings/{id}/end", tag = "nodes", params(("id" = String, Path)),
    responses((status = 204, description = "Ended (or it had ended)"), (status = 401, body = ErrorResponse),
        (status = 403, description = "Another node's recording", body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn recording_end(
    State(st): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    signed: SignedByNode,
) -> ApiResult<axum::http::StatusCode> {
    crate::recordings::check_id(&id)?;
    crate::recordings::end(&st, &signed.node.node_id, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// An image of the library, for a node to import: the file's bytes (its SHA-256 is in the
/// heartbeat's reply; the node checks it). Any enrolled node may fetch any image.
#[utoipa::path(get, path = "/api/v1/nodes/images/{name}/{version}", tag = "nodes",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn image_file(
    State(st): State<AppState>,
    axum::extract::Path((name, version)): axum::extract::Path<(String, String)>,
    signed: SignedByNode,
) -> ApiResult<axum::response::Response> {
    let found = crate::library::file_for_node(&st, &name, &version).await?;
    let Some((image, resp)) = found else {
        return Err(ApiError::NotFound(format!("the library has no image {name}@{version}")));
    };
    tracing::info!(node = %signed.node.node_id, image = %format!("{}@{}", image.name, image.version),
        size = image.size_bytes, "a node fetches an image of the library");
    Ok(resp)
}

/// Largest heartbeat read (100,000 VMs and as many sessions, of a few dozen bytes each, fit).
const MAX_HEARTBEAT_BYTES: usize = 16 * 1024 * 1024;

/// A request body signed by an enrolled node, and which node that is. The signature is checked
/// over the exact bytes received before any of them is parsed.
struct SignedByNode {
    node: NodeCredential,
    body: axum::body::Bytes,
}

impl FromRequest<AppState> for SignedByNode {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, st: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let auth =
            parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // The signature first: a caller without one gets its 401 before its body is read.
        let (node, claims) =
            enrol::verify_node_request(st, auth, parts.method.as_str(), path).await?;
        // A session recording's chunk may be larger than any other body a node sends.
        let limit = if parts.uri.path().starts_with("/api/v1/nodes/recordings/") {
            atrium_protocol::recording::MAX_CHUNK_BYTES + 1
        } else {
            MAX_HEARTBEAT_BYTES
        };
        let body = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| ApiError::BadRequest(format!("the body exceeds {limit} bytes")))?;
        claims.check_body(&body).map_err(|_| ApiError::Unauthorized)?;
        Ok(Self { node, body })
    }
}

/// Enrol a node: bind its id to its public key with a one-time enrolment token an
/// administrator created. Enrolling again with the same token, id and key is harmless.
#[utoipa::path(post, path = "/api/v1/nodes/enrol", tag = "nodes", request_body(content = Object, description = "EnrolRequest (protocol crate)"),
    responses((status = 200, description = "EnrolReply: the capacity this node is trusted with", body = Object),
        (status = 403, description = "Unknown, expired or used token, or a token for another node", body = ErrorResponse),
        (status = 409, description = "The node id is enrolled with another key", body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
async fn enrol_node(
    State(st): State<AppState>,
    addr: ClientAddr,
    JsonBody(req): JsonBody<EnrolRequest>,
) -> ApiResult<Json<EnrolReply>> {
    let result = enrol::enrol(&st, &req).await;
    let (outcome, detail) = match &result {
        Ok(r) => (
            "success",
            serde_json::json!({ "max_vcpus": r.max_vcpus, "max_memory_mib": r.max_memory_mib }),
        ),
        Err(e) => ("denied", serde_json::json!({ "error": e.to_string() })),
    };
    if validate_name("node_id", &req.node_id, 128).is_ok() {
        service::audit(
            &st,
            &format!("node:{}", req.node_id),
            "node.enrol",
            &req.node_id,
            outcome,
            addr.0,
            detail,
        )
        .await;
    }
    match &result {
        Ok(_) => tracing::info!(node = %req.node_id, "node enrolled"),
        Err(e) => {
            tracing::warn!(node = %req.node_id.chars().take(128).collect::<String>(), error = %e, "enrolment refused")
        }
    }
    result.map(Json)
}

/// Longest VM error text kept from a heartbeat.
const MAX_VM_ERROR: usize = 1024;
/// Most images a node may report.
const MAX_IMAGES: usize = 1000;

/// Checks a heartbeat, and makes the free text in it (VM errors) safe to store: control
/// characters (NUL breaks PostgreSQL text) become spaces and long texts are cut.
/// Node URLs must be TLS (`https://`, `wss://`), or plain to a loopback address when
/// `plain_loopback` allows it.
fn validate(hb: &mut NodeHeartbeat, plain_loopback: bool) -> ApiResult<()> {
    validate_name("node_id", &hb.node_id, 128)?;
    let url_ok = |field: &str, u: &str, schemes: [&str; 2]| -> ApiResult<()> {
        let scheme_ok = u.len() < 2048 && schemes.iter().any(|s| u.starts_with(&format!("{s}://")));
        if !scheme_ok {
            return Err(ApiError::Validation {
                field: field.into(),
                message: format!("{field} must be a {} or {} URL", schemes[0], schemes[1]),
            });
        }
        atrium_door::client::check_url(u, plain_loopback).map_err(|e| ApiError::Validation {
            field: field.into(),
            message: format!("{e} (the broker's nodes.plain_http_loopback)"),
        })
    };
    url_ok("api_url", &hb.api_url, ["https", "http"])?;
    url_ok("display_url", &hb.display_url, ["wss", "ws"])?;
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
        if image
            .sha256
            .as_deref()
            .is_some_and(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ApiError::Validation {
                field: "capacity.images[].sha256".into(),
                message: "must be 64 hex digits".into(),
            });
        }
        if image.firmware.as_deref().is_some_and(|f| f != "uefi" && f != "bios") {
            return Err(ApiError::Validation {
                field: "capacity.images[].firmware".into(),
                message: "must be uefi or bios".into(),
            });
        }
    }
    if hb.capacity.image_fetches.len() > MAX_LIBRARY_IMAGES {
        return Err(ApiError::Validation {
            field: "capacity.image_fetches".into(),
            message: format!("more than {MAX_LIBRARY_IMAGES} images"),
        });
    }
    for fetch in &mut hb.capacity.image_fetches {
        validate_name("capacity.image_fetches[].name", &fetch.name, 64)?;
        validate_name("capacity.image_fetches[].version", &fetch.version, 64)?;
        if !matches!(fetch.state.as_str(), "fetching" | "failed") {
            return Err(ApiError::Validation {
                field: "capacity.image_fetches[].state".into(),
                message: "must be fetching or failed".into(),
            });
        }
        if let Some(e) = &mut fetch.error {
            *e = e
                .chars()
                .take(MAX_VM_ERROR)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
        }
    }
    if let Some(sessions) = &hb.sessions {
        validate_sessions(sessions).map_err(|f| ApiError::Validation {
            field: f.field.into(),
            message: format!("{}: {}", f.field, f.message),
        })?;
    }
    validate_transfers(&hb.transfers).map_err(|f| ApiError::Validation {
        field: f.field.into(),
        message: format!("{}: {}", f.field, f.message),
    })?;
    Ok(())
}

/// Audits the transfers a node's display proxy reported: each as `file.upload`,
/// `file.download`, `clipboard.paste_in` or `clipboard.copy_out` by the session's user, on the session's desktop
/// (clipboard text by its size and hash, never its content). A transfer in a session of another node (or of
/// none) is not this node's to report: it is logged and dropped.
async fn record_transfers(
    st: &AppState,
    node: &str,
    transfers: &[TransferRecord],
) -> Result<(), ApiError> {
    for t in transfers {
        let session = st.db.get_desktop_session(&t.sid).await?;
        let Some(s) = session.filter(|s| s.node_id.as_deref() == Some(node)) else {
            tracing::warn!(node, session = %t.sid, "a node reported a file transfer in a session that is not its own; ignored");
            continue;
        };
        let outcome = if t.verdict == "saved" { "success" } else { t.verdict.as_str() };
        let addr = s.client_addr.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        service::audit(
            st,
            &s.username,
            match t.direction.as_str() {
                "clipboard_in" => "clipboard.paste_in",
                "clipboard_out" => "clipboard.copy_out",
                "download" => "file.download",
                _ => "file.upload",
            },
            &s.desktop_id,
            outcome,
            addr,
            serde_json::json!({
                "name": t.name, "size": t.size, "sha256": t.sha256, "verdict": t.verdict,
                "detail": t.detail, "session": t.sid, "node": node, "pool": s.pool_id,
                "at_proxy_ms": t.at_ms,
            }),
        )
        .await;
    }
    Ok(())
}

/// Register (first call) and heartbeat a node, with its capacity and VM states. Signed by the
/// node's own key (`Authorization: Bearer <signed request>`).
#[utoipa::path(post, path = "/api/v1/nodes/heartbeat", tag = "nodes", request_body(content = Object, description = "NodeHeartbeat (protocol crate)"),
    responses((status = 200, description = "HeartbeatReply: interval and draining flag", body = Object), (status = 401, description = "Not signed by an enrolled node", body = ErrorResponse),
        (status = 403, description = "Signed by another node", body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn heartbeat(
    State(st): State<AppState>,
    signed: SignedByNode,
) -> ApiResult<Json<HeartbeatReply>> {
    let mut hb: NodeHeartbeat = serde_json::from_slice(&signed.body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    if hb.node_id != signed.node.node_id {
        return Err(ApiError::Forbidden(format!(
            "signed by node {}, about node {}",
            signed.node.node_id, hb.node_id
        )));
    }
    validate(&mut hb, st.cfg.nodes.plain_http_loopback)?;
    let capped = enrol::cap_capacity(&mut hb.capacity, &signed.node);
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
        if capped {
            tracing::warn!(node = %hb.node_id, max_vcpus = signed.node.max_vcpus, max_memory_mib = signed.node.max_memory_mib,
                "the node reports more capacity than it enrolled with; placement uses what it enrolled with");
        }
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
    st.db.apply_session_activity(&hb.node_id, hb.sessions.as_deref(), now).await?;
    record_transfers(&st, &hb.node_id, &hb.transfers).await?;
    if !orphans.is_empty() {
        sweep_orphans(&st, &hb.node_id, &hb.api_url, orphans);
    }
    Ok(Json(HeartbeatReply {
        interval_secs: st.cfg.nodes.heartbeat_interval_secs,
        draining,
        broker_keys: st.keys.node_keys(),
        images: st.db.library_images().await?.into_iter().map(|i| i.wire()).collect(),
    }))
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
                if let Err(e) = st
                    .nodes
                    .delete_vm(crate::nodeclient::NodeAt { id: &node, url: &api }, &vm)
                    .await
                {
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

    use atrium_protocol::session::SessionActivity;

    use super::*;

    fn heartbeat() -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: "node-1".into(),
            api_url: "https://10.0.0.5:7070".into(),
            display_url: "wss://10.0.0.5:7443".into(),
            capacity: Capacity {
                vcpus_total: 4,
                vcpus_allocated: 0,
                memory_mib_total: 4096,
                memory_mib_allocated: 0,
                memory_mib_used: 0,
                memory_mib_physical: 0,
                vms: 1,
                kvm: KvmKind::Pvm,
                default_runtime: RuntimeKind::Qemu,
                images: vec![ImageInfo {
                    name: "console".into(),
                    version: "c91ebf8dc804a202".into(),
                    kind: "console".into(),
                    agent: true,
                    firmware: None,
                    sha256: None,
                }],
                image_fetches: Vec::new(),
            },
            vms: vec![VmStatus { id: "vm-1".into(), state: VmState::Failed, error: None }],
            sessions: None,
            transfers: vec![],
        }
    }

    #[test]
    fn vm_errors_are_made_safe_to_store() {
        let mut hb = heartbeat();
        hb.vms[0].error = Some(format!("qemu\0died\u{7}\n{}", "x".repeat(5000)));
        validate(&mut hb, false).unwrap();
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
            assert!(validate(&mut hb, false).is_err(), "VM id {bad:?}");
        }
        let mut hb = heartbeat();
        hb.capacity.images[0].version = "1.0;rm -rf".into();
        assert!(validate(&mut hb, false).is_err());
        let mut hb = heartbeat();
        let mut odd = hb.clone();
        odd.capacity.images[0].firmware = Some("coreboot".into());
        assert!(validate(&mut odd, false).is_err());
        odd.capacity.images[0].firmware = Some("uefi".into());
        validate(&mut odd, false).unwrap();
        hb.capacity.images = vec![hb.capacity.images[0].clone(); MAX_IMAGES + 1];
        assert!(validate(&mut hb, false).is_err());
        validate(&mut heartbeat(), false).unwrap();
        // The sessions' activity: ids that could not be a session's, or a session listed with
        // no viewer, refuse the whole heartbeat.
        for (sid, viewers) in [("", 1), ("s;1", 1), ("s-1", 0)] {
            let mut hb = heartbeat();
            hb.sessions = Some(vec![SessionActivity { sid: sid.into(), viewers, idle_ms: 0 }]);
            match validate(&mut hb, false) {
                Err(ApiError::Validation { field, .. }) => assert!(field.starts_with("sessions")),
                other => panic!("{sid:?} {viewers}: {other:?}"),
            }
        }
        let mut hb = heartbeat();
        hb.sessions = Some(vec![SessionActivity { sid: "s-1".into(), viewers: 1, idle_ms: 0 }]);
        validate(&mut hb, false).unwrap();
    }

    #[test]
    fn node_urls_are_tls_unless_plain_loopback_is_allowed() {
        let with = |api: &str, display: &str, plain: bool| {
            let mut hb = heartbeat();
            api.clone_into(&mut hb.api_url);
            display.clone_into(&mut hb.display_url);
            validate(&mut hb, plain)
        };
        with("https://node-1:7070", "wss://node-1:8090", false).unwrap();
        with("http://127.0.0.1:7070", "ws://127.0.0.1:8090", true).unwrap();
        for (api, display, plain, field) in [
            ("http://127.0.0.1:7070", "wss://n:1", false, "api_url"),
            ("https://n:1", "ws://127.0.0.1:8090", false, "display_url"),
            ("http://10.0.0.5:7070", "wss://n:1", true, "api_url"),
            ("https://n:1", "ws://node-1:8090", true, "display_url"),
            ("wss://n:1", "wss://n:1", false, "api_url"),
            ("https://n:1", "https://n:1", false, "display_url"),
        ] {
            match with(api, display, plain) {
                Err(ApiError::Validation { field: f, .. }) => {
                    assert_eq!(f, field, "{api} {display}")
                }
                other => panic!("{api} {display} {plain}: {other:?}"),
            }
        }
    }
}
