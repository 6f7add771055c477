//! `/api/v1/admin/images`: the image library. An administrator uploads an operator's own disk
//! image (the request body is the file, streamed to the images folder and hashed on the way);
//! every node that lacks it fetches it with its own signature (`GET /api/v1/nodes/images/...`,
//! in `nodes.rs`), checks it against the SHA-256 kept here and imports it with the settings
//! given at upload (docs/images.md). The list says, per node, where each image is.

use atrium_protocol::node::{MAX_LIBRARY_IMAGE_BYTES, MAX_LIBRARY_IMAGES};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AdminUser, ClientAddr};
use crate::db::{LibraryEntry, now_ms};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::library::{Partial, check_ref, check_room, conflict, keep, receive};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_images)).routes(routes!(upload_image, delete_image))
}

/// Whether a request is an image upload (exempt from the request time limit;
/// [`crate::library::UPLOAD_IDLE`]
/// bounds it instead).
pub fn is_upload(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::PUT && path.starts_with("/api/v1/admin/images/")
}

/// How the nodes import an uploaded image (`atrium-node image import`'s options).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// `uefi` or `bios`.
    pub firmware: String,
    /// UEFI Secure Boot, with Microsoft's keys enrolled.
    #[serde(default)]
    pub secure_boot: bool,
    /// A virtual TPM 2.0 per desktop.
    #[serde(default)]
    pub tpm: bool,
    /// Atrium's guest agent is installed in the image.
    #[serde(default)]
    pub agent: bool,
    /// The least memory a pool may give its desktops, in MiB (default 1024).
    pub min_memory_mib: Option<u32>,
    /// `qcow2`, `vmdk`, `vhdx` or `raw` (default: the nodes read it from the file's first bytes).
    pub format: Option<String>,
    /// The file's SHA-256 as the uploader computed it (hex): when given, an upload whose bytes
    /// hash otherwise is refused and nothing is kept.
    pub sha256: Option<String>,
}

/// Where one node is with an image.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeCopy {
    pub node_id: String,
    /// The node is up (a lost node says nothing until it is back).
    pub node_up: bool,
    /// `ready` (imported, checked, bootable), `fetching`, `failed` (`error` says why) or
    /// `waiting` (the node has not said yet: it learns of new images at its next heartbeat).
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An image of the library, and where each node is with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminImage {
    #[serde(flatten)]
    pub image: LibraryEntry,
    pub nodes: Vec<NodeCopy>,
}

/// The library's images, oldest first by name, each with every node's state.
#[utoipa::path(get, path = "/api/v1/admin/images", tag = "admin",
    responses((status = 200, body = Vec<AdminImage>), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn list_images(
    State(st): State<AppState>,
    _admin: AdminUser,
) -> ApiResult<Json<Vec<AdminImage>>> {
    let nodes = st.db.list_nodes().await?;
    let images = st.db.library_images().await?;
    let out = images
        .into_iter()
        .map(|image| {
            let nodes = nodes
                .iter()
                .map(|n| {
                    let listed = n
                        .capacity
                        .images
                        .iter()
                        .find(|i| i.name == image.name && i.version == image.version);
                    // An imported image from a node too old to report its hash is taken as this
                    // one (it can only have come from the library or a hand import of it).
                    let held = listed.is_some_and(|i| match i.sha256.as_deref() {
                        Some(h) => h == image.sha256,
                        None => i.kind == "imported",
                    });
                    let other = listed.is_some() && !held;
                    let fetch = n
                        .capacity
                        .image_fetches
                        .iter()
                        .find(|f| f.name == image.name && f.version == image.version);
                    // A node that lists the name but holds other bytes under it says so.
                    let (state, error) = match (held, fetch) {
                        (_, Some(f)) if f.state == "failed" => (f.state.clone(), f.error.clone()),
                        _ if other => (
                            "failed".to_owned(),
                            Some(format!(
                                "the node holds another image as {}@{}",
                                image.name, image.version
                            )),
                        ),
                        (true, _) => ("ready".to_owned(), None),
                        (false, Some(f)) => (f.state.clone(), f.error.clone()),
                        (false, None) => ("waiting".to_owned(), None),
                    };
                    NodeCopy {
                        node_id: n.id.clone(),
                        node_up: n.state == crate::db::NodeState::Up,
                        state,
                        error,
                    }
                })
                .collect();
            AdminImage { image, nodes }
        })
        .collect();
    Ok(Json(out))
}

/// Upload a disk image (qcow2, raw, VMDK or VHDX) to the library: the body is the file. Every
/// node fetches it, checks its SHA-256 and imports it with these settings; `GET
/// /api/v1/admin/images` says where each node is (a node refuses a file that is no bootable
/// disk, and says why). A version is uploaded once.
#[utoipa::path(put, path = "/api/v1/admin/images/{name}/{version}", tag = "admin",
    params(("name" = String, Path), ("version" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The disk image"),
    responses((status = 201, body = LibraryEntry), (status = 400, description = "The upload broke off, stalled or is too large", body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 409, description = "This name and version was uploaded before (even if removed since), or the library is full", body = ErrorResponse),
        (status = 422, description = "A setting is invalid, or the bytes' SHA-256 is not `sha256`", body = ErrorResponse),
        (status = 503, description = "The library's volume would keep less than 1 GiB free", body = ErrorResponse)))]
async fn upload_image(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path((name, version)): Path<(String, String)>,
    q: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<LibraryEntry>)> {
    check_ref(&name, &version)?;
    let content_length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let expected = q.sha256.as_deref().map(str::to_ascii_lowercase);
    let mut entry = LibraryEntry {
        name,
        version,
        file: format!("{}.disk", uuid::Uuid::new_v4().simple()),
        // Checked below with a stand-in hash; the real one once the bytes are in.
        sha256: expected.clone().unwrap_or_else(|| "0".repeat(64)),
        size_bytes: 1,
        format: q.format,
        firmware: q.firmware,
        secure_boot: q.secure_boot,
        tpm: q.tpm,
        agent: q.agent,
        min_memory_mib: q.min_memory_mib.unwrap_or(1024),
        uploaded_by: admin.username.clone(),
        uploaded_at: now_ms(),
    };
    // Everything but the bytes is checked before any byte is read.
    entry.clone().wire().validate()?;
    if st.db.library_image_known(&entry.name, &entry.version).await? {
        return Err(conflict(&entry));
    }
    if usize::try_from(st.db.count_library_images().await?).unwrap_or(usize::MAX)
        >= MAX_LIBRARY_IMAGES
    {
        return Err(ApiError::Conflict(format!(
            "the library holds {MAX_LIBRARY_IMAGES} images: delete some first"
        )));
    }
    let dir = st.cfg.images_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal("making the images folder", e))?;
    check_room(&dir, content_length.unwrap_or(0))?;
    // Written as `.part`, named `.disk` when whole and just before its row is written (what a
    // crash leaves of either is swept later, see `library::sweep`).
    let part = dir.join(format!("{}.part", entry.file));
    let partial = Partial(Some(part.clone()));
    let received = receive(body, &part, MAX_LIBRARY_IMAGE_BYTES).await;
    let checked = received.and_then(|(size, sha256)| {
        if size == 0 {
            return Err(ApiError::BadRequest("the upload is empty".into()));
        }
        if expected.as_ref().is_some_and(|e| *e != sha256) {
            return Err(ApiError::Validation {
                field: "sha256".into(),
                message: format!("the bytes received hash to {sha256}, not the sha256 given: the file changed on its way or the hash is of another file"),
            });
        }
        entry.size_bytes = size;
        entry.sha256 = sha256;
        Ok(())
    });
    let actor = admin.username.clone();
    match checked {
        Err(e) => {
            drop(partial);
            audit_upload(&st, &actor, addr.0, &entry, Err(&e)).await;
            Err(e)
        }
        // The file named, its row written and the upload audited by a task of its own, which a
        // client that goes away now cannot stop half way (a row without its file, an image kept
        // and not audited).
        Ok(()) => {
            let file = dir.join(&entry.file);
            let kept = tokio::spawn(async move {
                let result = keep(&st, partial, &part, &file, &entry).await;
                audit_upload(&st, &actor, addr.0, &entry, result.as_ref().map(|_| ())).await;
                result.map(|()| entry)
            });
            let entry = kept
                .await
                .unwrap_or_else(|e| Err(ApiError::internal("keeping an uploaded image", e)))?;
            Ok((StatusCode::CREATED, Json(entry)))
        }
    }
}

/// Audits an upload (`image.upload`) and logs one kept.
async fn audit_upload(
    st: &AppState,
    actor: &str,
    addr: std::net::IpAddr,
    entry: &LibraryEntry,
    result: Result<(), &ApiError>,
) {
    let target = format!("{}@{}", entry.name, entry.version);
    let (outcome, details) = match result {
        Ok(()) => {
            tracing::info!(image = %target, size = entry.size_bytes, sha256 = %entry.sha256, "image uploaded to the library");
            let details = serde_json::json!({
                "firmware": entry.firmware, "secure_boot": entry.secure_boot, "tpm": entry.tpm,
                "agent": entry.agent, "size": entry.size_bytes, "sha256": entry.sha256,
            });
            ("success", details)
        }
        Err(e) => ("failure", serde_json::json!({ "error": e.to_string() })),
    };
    service::audit(st, actor, "image.upload", &target, outcome, addr, details).await;
}

/// Remove an image from the library: its file goes, its name and version stay taken. Nodes keep
/// the copies they imported (pools may run them; an operator removes an image folder from a
/// node), and fetch it no more.
#[utoipa::path(delete, path = "/api/v1/admin/images/{name}/{version}", tag = "admin",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn delete_image(
    State(st): State<AppState>,
    AdminUser(admin): AdminUser,
    addr: ClientAddr,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_ref(&name, &version)?;
    let entry =
        st.db.library_image(&name, &version).await?.ok_or_else(|| {
            ApiError::NotFound(format!("the library has no image {name}@{version}"))
        })?;
    if !st.db.delete_library_image(&name, &version, now_ms()).await? {
        return Err(ApiError::NotFound(format!("the library has no image {name}@{version}")));
    }
    if let Err(e) = tokio::fs::remove_file(st.cfg.images_dir().join(&entry.file)).await {
        tracing::warn!(image = %format!("{name}@{version}"), error = %e, "could not remove a deleted image's file");
    }
    let details = serde_json::json!({ "sha256": entry.sha256, "size": entry.size_bytes });
    service::audit(
        &st,
        &admin.username,
        "image.delete",
        &format!("{name}@{version}"),
        "success",
        addr.0,
        details,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use atrium_protocol::node::{
        Capacity, EnrolRequest, HeartbeatReply, ImageFetch, ImageInfo, KvmKind, NodeHeartbeat,
        RuntimeKind,
    };
    use atrium_protocol::signed::{self, BROKER_AUDIENCE, NodeKey};
    use axum::http::Request;
    use sha2::{Digest, Sha256};
    use std::time::Duration;
    use tower::ServiceExt;

    use super::*;
    use crate::db::{ApiToken, TokenScope};

    async fn admin_token(st: &AppState) -> String {
        let (id, text, secret_hash) = crate::tokens::mint();
        let t = ApiToken {
            id,
            name: "images".into(),
            scope: TokenScope::Admin,
            created_by: "carol".into(),
            created_at: 0,
            expires_at: now_ms() + 600_000,
            last_used_at: None,
            revoked_at: None,
            secret_hash,
        };
        assert!(st.db.insert_api_token(&t).await.unwrap());
        text.expose().to_owned()
    }

    async fn send(
        app: &axum::Router,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let kind = if method == "POST" { "application/json" } else { "application/octet-stream" };
        let mut req = Request::builder().method(method).uri(path).header("content-type", kind);
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        let resp = app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, bytes.to_vec())
    }

    fn heartbeat(images: Vec<ImageInfo>, image_fetches: Vec<ImageFetch>) -> Vec<u8> {
        serde_json::to_vec(&NodeHeartbeat {
            node_id: "node-a".into(),
            api_url: "https://10.0.0.5:7070".into(),
            display_url: "wss://10.0.0.5:7443".into(),
            capacity: Capacity {
                vcpus_total: 4,
                vcpus_allocated: 0,
                memory_mib_total: 8192,
                memory_mib_allocated: 0,
                memory_mib_used: 0,
                memory_mib_physical: 0,
                vms: 0,
                kvm: KvmKind::Pvm,
                default_runtime: RuntimeKind::Qemu,
                images,
                image_fetches,
            },
            vms: vec![],
            sessions: None,
            transfers: vec![],
        })
        .unwrap()
    }

    fn signed_by(key: &NodeKey, method: &'static str, path: &str, body: &[u8]) -> String {
        let req = signed::Request { method, path_and_query: path, body };
        key.sign("node-a", BROKER_AUDIENCE, &req, signed::now_secs()).unwrap()
    }

    /// The library through the router: an upload is checked before its bytes are read, kept
    /// only whole and with the hash the uploader gave; an enrolled node's heartbeat reply lists
    /// it and the node (alone) fetches its bytes with its signature; the list says where each
    /// node is; a removal takes the file and the row, all audited.
    #[tokio::test]
    async fn images_are_uploaded_listed_fetched_by_nodes_and_removed() {
        let (st, dir) = crate::http::tests::state().await;
        let app = crate::http::app(st.clone());
        let admin = admin_token(&st).await;
        let disk: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sha = data_encoding::HEXLOWER.encode(&Sha256::digest(&disk));
        let library = st.cfg.images_dir();
        let files = || std::fs::read_dir(&library).map_or(0, |d| d.count());

        // Settings are checked first; a wrong hash keeps nothing.
        for (query, status) in [
            ("firmware=efi", StatusCode::UNPROCESSABLE_ENTITY),
            ("firmware=bios&secure_boot=true", StatusCode::UNPROCESSABLE_ENTITY),
            ("firmware=uefi&format=vhd", StatusCode::UNPROCESSABLE_ENTITY),
            ("firmware=uefi&min_memory_mib=1", StatusCode::UNPROCESSABLE_ENTITY),
            ("firmware=uefi&colour=blue", StatusCode::BAD_REQUEST),
            (
                &format!("firmware=uefi&sha256={}", "ab".repeat(32)),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ] {
            let path = format!("/api/v1/admin/images/win/1?{query}");
            let (got, body) = send(&app, "PUT", &path, Some(&admin), disk.clone()).await;
            assert_eq!(got, status, "{query}: {}", String::from_utf8_lossy(&body));
        }
        let (got, _) =
            send(&app, "PUT", "/api/v1/admin/images/.x/1?firmware=uefi", Some(&admin), vec![1])
                .await;
        assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY);
        let (got, _) =
            send(&app, "PUT", "/api/v1/admin/images/win/1?firmware=uefi", None, vec![1]).await;
        assert_eq!(got, StatusCode::UNAUTHORIZED);
        let (got, _) =
            send(&app, "PUT", "/api/v1/admin/images/win/1?firmware=uefi", Some(&admin), vec![])
                .await;
        assert_eq!(got, StatusCode::BAD_REQUEST);
        assert_eq!(files(), 0, "a refused upload left a file");
        assert!(st.db.library_images().await.unwrap().is_empty());

        let path = format!(
            "/api/v1/admin/images/win/1?firmware=uefi&tpm=true&agent=true&min_memory_mib=2048&sha256={}",
            sha.to_uppercase()
        );
        let (got, body) = send(&app, "PUT", &path, Some(&admin), disk.clone()).await;
        assert_eq!(got, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
        let entry: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (&entry["sha256"], &entry["size_bytes"]),
            (&sha.clone().into(), &disk.len().into())
        );
        assert!(entry.get("file").is_none(), "{entry}");
        let (got, _) = send(&app, "PUT", &path, Some(&admin), disk.clone()).await;
        assert_eq!(got, StatusCode::CONFLICT);
        assert_eq!(files(), 1);

        // A node: enrolled, its heartbeat's reply lists the image.
        let key = NodeKey::ephemeral();
        let input = crate::enrol::EnrolmentInput {
            node_id: Some("node-a".into()),
            valid_for_secs: Some(600),
            ..Default::default()
        };
        let token = crate::enrol::create(&st.db, "carol", &input).await.unwrap().token;
        let enrol = EnrolRequest {
            token,
            node_id: "node-a".into(),
            public_key: key.public().into(),
            vcpus_total: 4,
            memory_mib_total: 8192,
        };
        let (got, _) =
            send(&app, "POST", "/api/v1/nodes/enrol", None, serde_json::to_vec(&enrol).unwrap())
                .await;
        assert_eq!(got, StatusCode::OK);
        let beat = |images, fetches| {
            let body = heartbeat(images, fetches);
            let auth = signed_by(&key, "POST", "/api/v1/nodes/heartbeat", &body);
            let app = app.clone();
            async move { send(&app, "POST", "/api/v1/nodes/heartbeat", Some(&auth), body).await }
        };
        let (got, body) = beat(vec![], vec![]).await;
        assert_eq!(got, StatusCode::OK);
        let reply: HeartbeatReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply.images.len(), 1);
        let listed = &reply.images[0];
        assert_eq!((listed.sha256.as_str(), listed.size_bytes), (sha.as_str(), disk.len() as u64));
        assert!(listed.tpm && listed.agent && !listed.secure_boot && listed.min_memory_mib == 2048);
        listed.validate().unwrap();

        // The bytes, to the node's signature only.
        let file_path = "/api/v1/nodes/images/win/1";
        let (got, bytes) =
            send(&app, "GET", file_path, Some(&signed_by(&key, "GET", file_path, b"")), vec![])
                .await;
        assert_eq!(got, StatusCode::OK);
        assert!(bytes == disk, "the node got other bytes");
        let (got, _) = send(&app, "GET", file_path, Some(&admin), vec![]).await;
        assert_eq!(got, StatusCode::UNAUTHORIZED);
        let other = NodeKey::ephemeral();
        let (got, _) =
            send(&app, "GET", file_path, Some(&signed_by(&other, "GET", file_path, b"")), vec![])
                .await;
        assert_eq!(got, StatusCode::UNAUTHORIZED);
        let missing = "/api/v1/nodes/images/win/2";
        let (got, _) =
            send(&app, "GET", missing, Some(&signed_by(&key, "GET", missing, b"")), vec![]).await;
        assert_eq!(got, StatusCode::NOT_FOUND);

        // Where the node is, as the list shows it: failed (with its reason), then ready.
        let state_of = || async {
            let (got, body) = send(&app, "GET", "/api/v1/admin/images", Some(&admin), vec![]).await;
            assert_eq!(got, StatusCode::OK);
            let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
            list[0]["nodes"][0].clone()
        };
        assert_eq!(state_of().await["state"], "waiting");
        let fetch = ImageFetch {
            name: "win".into(),
            version: "1".into(),
            state: "failed".into(),
            error: Some("import refused:\u{0} not a disk".into()),
        };
        assert_eq!(beat(vec![], vec![fetch]).await.0, StatusCode::OK);
        let node = state_of().await;
        assert_eq!(
            (&node["state"], &node["error"]),
            (&"failed".into(), &"import refused:  not a disk".into())
        );
        let bad = ImageFetch {
            state: "done".into(),
            ..ImageFetch {
                name: "win".into(),
                version: "1".into(),
                state: String::new(),
                error: None,
            }
        };
        assert_eq!(beat(vec![], vec![bad]).await.0, StatusCode::UNPROCESSABLE_ENTITY);
        let held = ImageInfo {
            name: "win".into(),
            version: "1".into(),
            kind: "imported".into(),
            agent: true,
            firmware: Some("uefi".into()),
            sha256: Some("0".repeat(64)),
        };
        // Another image under that name and version: not this one.
        assert_eq!(beat(vec![held.clone()], vec![]).await.0, StatusCode::OK);
        let node = state_of().await;
        assert_eq!(node["state"], "failed", "{node}");
        assert!(node["error"].as_str().unwrap().contains("another image"), "{node}");
        let held = ImageInfo { sha256: Some(sha.clone()), ..held };
        assert_eq!(beat(vec![held], vec![]).await.0, StatusCode::OK);
        assert_eq!(state_of().await["state"], "ready");

        // Removed: the file and the row; heartbeats list it no more.
        let (got, _) =
            send(&app, "DELETE", "/api/v1/admin/images/win/1", Some(&admin), vec![]).await;
        assert_eq!(got, StatusCode::NO_CONTENT);
        assert_eq!(files(), 0);
        let (_, body) = beat(vec![], vec![]).await;
        assert!(serde_json::from_slice::<HeartbeatReply>(&body).unwrap().images.is_empty());
        let (got, _) =
            send(&app, "DELETE", "/api/v1/admin/images/win/1", Some(&admin), vec![]).await;
        assert_eq!(got, StatusCode::NOT_FOUND);
        // Its name and version stay taken: nodes know an image by them.
        let (got, body) = send(&app, "PUT", &path, Some(&admin), disk.clone()).await;
        assert_eq!(got, StatusCode::CONFLICT);
        assert!(String::from_utf8_lossy(&body).contains("uploaded before"));
        assert_eq!(files(), 0);

        // What a crash leaves (an upload cut off, a file no image names) is swept once an
        // hour has passed over it; a file being written meanwhile is not.
        let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
        for stray in ["cut.disk.part", "orphan.disk"] {
            let f = std::fs::File::create(library.join(stray)).unwrap();
            f.set_modified(old).unwrap();
        }
        std::fs::write(library.join("busy.disk.part"), b"x").unwrap();
        std::fs::write(library.join("notes.txt"), b"x").unwrap();
        crate::library::sweep(&st).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&library)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["busy.disk.part", "notes.txt"]);
        let audit = st
            .db
            .list_audit(&crate::db::AuditFilter { limit: 100, ..Default::default() })
            .await
            .unwrap();
        let actions: Vec<(&str, &str)> = audit
            .iter()
            .filter(|e| e.action.starts_with("image."))
            .map(|e| (e.action.as_str(), e.outcome.as_str()))
            .collect();
        assert!(actions.contains(&("image.upload", "success")), "{actions:?}");
        assert!(actions.contains(&("image.upload", "failure")), "{actions:?}");
        assert!(actions.contains(&("image.delete", "success")), "{actions:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
