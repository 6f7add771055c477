//! The HTTP API. One module per resource, each with its own `router()`, merged here. The
//! OpenAPI document is generated from the same declarations (utoipa), so it cannot list a route
//! the router lacks, and a test checks the converse.

mod admin;
mod audit;
mod auth;
mod desktops;
mod enrolments;
mod extract;
mod images;
mod meta;
mod mfa;
mod nodes;
mod oidc;
mod pools;
mod recordings;
mod tokens;
mod users;
mod web;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub use extract::JsonBody;

/// Marks a request that came in on the internal listener (a request extension): it serves
/// what monitoring needs and the public listener does not show.
#[derive(Debug, Clone, Copy)]
pub struct InternalListener;

#[derive(OpenApi)]
#[openapi(
    info(title = "Atrium broker API", description = "Sign-in, desktop pools, display tickets and administration."),
    tags(
        (name = "auth", description = "Sign-in and sign-out"),
        (name = "desktops", description = "A user's pools and desktops"),
        (name = "admin", description = "Administration (policy action `administer`)"),
        (name = "recordings", description = "Session recordings (an administrator signed in as a person, with policy action `review_recordings`)"),
        (name = "nodes", description = "Node agents (enrolment, then requests signed by each node's key)"),
        (name = "meta", description = "Health, metrics, keys, this document")
    )
)]
struct ApiDoc;

/// Declares how callers authenticate: the session cookie (with `X-CSRF-Token` on changes) for
/// people, and for the admin API also an API token as `Authorization: Bearer atrium_...`.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "atrium_session",
                "The sign-in session (`__Host-atrium_session` under TLS); state-changing requests also send `X-CSRF-Token`",
            ))),
        );
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("atrium_<id>_<secret>")
                    .description(Some("An API token an administrator created (`read`: GET only; `admin`: all of the admin API); every use is audited under its name"))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete]
                .into_iter()
                .flatten()
            {
                if op.tags.as_ref().is_some_and(|t| t.iter().any(|t| t == "admin")) {
                    op.security = Some(vec![
                        SecurityRequirement::new("session", Vec::<String>::new()),
                        SecurityRequirement::new("api_token", Vec::<String>::new()),
                    ]);
                }
            }
        }
    }
}

/// The router with every API route, and the OpenAPI document describing it.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::router())
        .merge(oidc::router())
        .merge(mfa::router())
        .merge(pools::router())
        .merge(desktops::router())
        .merge(enrolments::router())
        .merge(admin::router())
        .merge(audit::router())
        .merge(recordings::router())
        .merge(users::router())
        .merge(tokens::router())
        .merge(nodes::router())
        .merge(images::router())
        .merge(meta::router())
        .split_for_parts();
    utoipa::Modify::modify(&SecuritySchemes, &mut doc);
    (router, doc)
}

/// The whole application: API, OpenAPI document, web client, session middleware.
pub fn app(state: AppState) -> Router {
    let (api, doc) = api();
    let doc = std::sync::Arc::new(doc);
    api.route(
        "/api/openapi.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc.as_ref().clone()) }
        }),
    )
    .merge(web::router())
    .layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::session_layer))
    .layer(axum::middleware::from_fn_with_state(state.clone(), within_time_limit))
    .with_state(state)
}

/// Longest a request may take, body included, so a client trickling its body cannot hold a
/// connection and a handler for ever: a minute more than twice what its outbound calls (a
/// node, the directory) may take.
fn request_time_limit(st: &AppState) -> std::time::Duration {
    let calls = st.cfg.nodes.request_timeout_secs.saturating_add(st.cfg.ldap.timeout_secs);
    // A single sign-on callback makes up to four calls to the provider.
    let sso = if st.cfg.oidc.enabled() { st.cfg.oidc.timeout_secs.saturating_mul(4) } else { 0 };
    let calls = calls.saturating_add(sso);
    std::time::Duration::from_secs(calls.saturating_mul(2).saturating_add(60))
}

async fn within_time_limit(
    axum::extract::State(st): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // An image upload may take longer than any other request; it ends after a minute without
    // data instead (library::UPLOAD_IDLE).
    if images::is_upload(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    match tokio::time::timeout(request_time_limit(&st), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => crate::error::ApiError::unavailable("the request took too long").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    pub(super) async fn state() -> (AppState, std::path::PathBuf) {
        state_with(|_| {}).await
    }

    async fn state_with(
        tune: impl FnOnce(&mut crate::config::Config),
    ) -> (AppState, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("atrium-http-{}", uuid::Uuid::new_v4()));
        let mut cfg = crate::config::Config::default();
        tune(&mut cfg);
        cfg.broker.data_dir = dir.clone();
        cfg.policies.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        // Nothing listens there: these tests never sign in.
        cfg.ldap.url = "ldap://127.0.0.1:9".into();
        cfg.ldap.timeout_secs = 1;
        (crate::build_state(cfg).await.expect("state"), dir)
    }

    #[test]
    fn the_document_declares_how_to_authenticate() {
        let (_, doc) = api();
        let schemes = &doc.components.as_ref().unwrap().security_schemes;
        assert!(schemes.contains_key("api_token") && schemes.contains_key("session"));
        let users = &doc.paths.paths["/api/v1/admin/users"];
        let json = serde_json::to_value(users.get.as_ref().unwrap()).unwrap();
        assert!(json["security"].to_string().contains("api_token"), "{json}");
        let me = serde_json::to_value(doc.paths.paths["/api/v1/me"].get.as_ref().unwrap()).unwrap();
        assert!(me.get("security").is_none_or(|s| !s.to_string().contains("api_token")));
    }

    /// Every operation in the OpenAPI document is routed (the router answers something other
    /// than "no such route" or "method not allowed"), so the document cannot drift from the code.
    #[tokio::test]
    async fn every_documented_operation_is_routed() {
        let (st, dir) = state().await;
        let (_, doc) = api();
        let app = app(st);
        let mut checked = 0;
        for (path, item) in &doc.paths.paths {
            let concrete = path.replace("{pool}", "general").replace("{id}", "x");
            let ops = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            for (method, present) in ops {
                if !present {
                    continue;
                }
                let req = Request::builder()
                    .method(method)
                    .uri(&concrete)
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap();
                let resp = app.clone().oneshot(req).await.unwrap();
                assert_ne!(
                    resp.status(),
                    StatusCode::NOT_FOUND,
                    "{method} {path} is documented but not routed"
                );
                assert_ne!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} operations documented");
        // The check has teeth: an undocumented path is a 404.
        let resp = app
            .clone()
            .oneshot(Request::builder().uri("/api/v1/nosuch").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        // And the document is served.
        let resp = app
            .oneshot(Request::builder().uri("/api/openapi.json").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Node identities, end to end through the router: a one-time token enrols one node with
    /// its key; heartbeats must be signed by that key, for that node; a token is spent once and
    /// names its node; an id bound to a key cannot be taken by another key; capacity beyond the
    /// enrolment is not believed; a revoked node is refused.
    #[tokio::test]
    async fn nodes_enrol_once_and_heartbeat_only_as_themselves() {
        use atrium_protocol::node::{Capacity, EnrolRequest, KvmKind, NodeHeartbeat, RuntimeKind};
        use atrium_protocol::signed::{self, BROKER_AUDIENCE, NodeKey};

        let (st, dir) = state().await;
        let app = app(st.clone());
        let send = |path: &str, auth: Option<String>, body: Vec<u8>| {
            let mut req = Request::builder()
                .method("POST")
                .uri(path)
                .header("content-type", "application/json");
            if let Some(a) = auth {
                req = req.header("authorization", format!("Bearer {a}"));
            }
            app.clone().oneshot(req.body(Body::from(body)).unwrap())
        };
        let token_for = |node: Option<&str>, valid_for: u64| {
            let st = st.clone();
            let input = crate::enrol::EnrolmentInput {
                node_id: node.map(str::to_owned),
                valid_for_secs: Some(valid_for),
                ..Default::default()
            };
            async move { crate::enrol::create(&st.db, "admin", &input).await.unwrap().token }
        };
        let enrol = |token: &str, node: &str, key: &NodeKey| {
            let req = EnrolRequest {
                token: token.into(),
                node_id: node.into(),
                public_key: key.public().into(),
                vcpus_total: 8,
                memory_mib_total: 16384,
            };
            send("/api/v1/nodes/enrol", None, serde_json::to_vec(&req).unwrap())
        };
        let signed_heartbeat = |node: &str, signer: &str, key: &NodeKey, vcpus: u32| {
            let hb = NodeHeartbeat {
                node_id: node.into(),
                api_url: format!("https://10.0.0.5:7070/{node}"),
                display_url: "wss://10.0.0.5:7443".into(),
                capacity: Capacity {
                    vcpus_total: vcpus,
                    vcpus_allocated: 0,
                    memory_mib_total: 1 << 30,
                    memory_mib_allocated: 0,
                    memory_mib_used: 0,
                    memory_mib_physical: 0,
                    vms: 0,
                    kvm: KvmKind::Pvm,
                    default_runtime: RuntimeKind::Qemu,
                    images: vec![],
                    image_fetches: Vec::new(),
                },
                vms: vec![],
                sessions: None,
                transfers: vec![],
            };
            let body = serde_json::to_vec(&hb).unwrap();
            let req = signed::Request {
                method: "POST",
                path_and_query: "/api/v1/nodes/heartbeat",
                body: &body,
            };
            let token = key.sign(signer, BROKER_AUDIENCE, &req, signed::now_secs()).unwrap();
            (token, body)
        };
        let heartbeat = |node: &str, signer: &str, key: &NodeKey, vcpus: u32| {
            let (token, body) = signed_heartbeat(node, signer, key, vcpus);
            send("/api/v1/nodes/heartbeat", Some(token), body)
        };
        let a = NodeKey::ephemeral();
        let thief = NodeKey::ephemeral();

        // Not enrolled yet: 401, which tells the node to enrol.
        assert_eq!(
            heartbeat("node-a", "node-a", &a, 8).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        let t = token_for(Some("node-a"), 3600).await;
        // The token names its node.
        assert_eq!(enrol(&t, "node-b", &a).await.unwrap().status(), StatusCode::FORBIDDEN);
        assert_eq!(
            enrol("atrium-enrol-forged", "node-a", &a).await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(enrol(&t, "node-a", &a).await.unwrap().status(), StatusCode::OK);
        // Again with the same token and key (a node that missed the answer): harmless.
        assert_eq!(enrol(&t, "node-a", &a).await.unwrap().status(), StatusCode::OK);
        // Spent: nobody else enrols with it, not even as the same node.
        assert_eq!(enrol(&t, "node-a", &thief).await.unwrap().status(), StatusCode::FORBIDDEN);
        // A fresh token does not let another key take an enrolled id.
        let t2 = token_for(None, 3600).await;
        assert_eq!(enrol(&t2, "node-a", &thief).await.unwrap().status(), StatusCode::CONFLICT);

        // Signed by its key, about itself: accepted, capacity capped at what it enrolled with.
        let (token, body) = signed_heartbeat("node-a", "node-a", &a, 4096);
        let first = send("/api/v1/nodes/heartbeat", Some(token.clone()), body.clone());
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        // The same signed heartbeat again (captured on the wire and replayed): spent, refused
        // with a conflict (not a 401, which would send the node enrolling).
        let replay = send("/api/v1/nodes/heartbeat", Some(token), body);
        assert_eq!(replay.await.unwrap().status(), StatusCode::CONFLICT);
        let spent: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM node_request_ids")
            .fetch_one(st.db.pool())
            .await
            .unwrap();
        assert_eq!(spent, 1);
        assert_eq!(st.db.prune_node_requests(i64::MAX).await.unwrap(), 1);
        let n = st.db.get_node("node-a").await.unwrap().unwrap();
        assert_eq!((n.capacity.vcpus_total, n.capacity.memory_mib_total), (8, 16384));
        // Another key claiming to be node-a; node-a's key speaking for another node.
        assert_eq!(
            heartbeat("node-a", "node-a", &thief, 8).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(enrol(&t2, "node-c", &thief).await.unwrap().status(), StatusCode::OK);
        assert_eq!(
            heartbeat("node-a", "node-c", &thief, 8).await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
        // An expired token enrols nobody.
        let old = token_for(None, 60).await;
        sqlx::query("UPDATE node_enrolments SET expires_at = 1 WHERE used_at IS NULL")
            .execute(st.db.pool())
            .await
            .unwrap();
        assert_eq!(
            enrol(&old, "node-d", &NodeKey::ephemeral()).await.unwrap().status(),
            StatusCode::FORBIDDEN
        );

        // Revoked: its key opens nothing, and the node is due to be found lost.
        assert!(st.db.revoke_node("node-a").await.unwrap());
        assert_eq!(
            heartbeat("node-a", "node-a", &a, 8).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(st.db.get_node("node-a").await.unwrap().unwrap().last_heartbeat_at, 0);
        // Listed for administrators without the token itself.
        let listed = st.db.list_enrolments().await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().any(|e| e.used_by.as_deref() == Some("node-a")));
        let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM node_enrolments")
            .fetch_all(st.db.pool())
            .await
            .unwrap();
        assert!(stored.iter().all(|h| !h.contains("enrol") && h.len() == 64));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn with_an_internal_listener_the_public_one_shows_no_internals() {
        let (st, dir) =
            state_with(|c| c.broker.internal_listen = Some(([127, 0, 0, 1], 0).into())).await;
        let app = app(st);
        let get = |uri: &str, internal: bool| {
            let mut req = Request::builder().uri(uri).body(Body::empty()).unwrap();
            if internal {
                req.extensions_mut().insert(InternalListener);
            }
            app.clone().oneshot(req)
        };
        let body = |r: axum::response::Response| async move {
            let b = http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes();
            String::from_utf8(b.to_vec()).unwrap()
        };
        assert_eq!(get("/metrics", false).await.unwrap().status(), StatusCode::NOT_FOUND);
        let h = body(get("/healthz", false).await.unwrap()).await;
        assert!(h.contains("\"status\"") && !h.contains("directory"), "{h}");
        let r = body(get("/readyz", false).await.unwrap()).await;
        assert!(r.contains("\"status\"") && !r.contains("schema"), "{r}");
        // The internal listener shows all.
        let m = get("/metrics", true).await.unwrap();
        assert_eq!(m.status(), StatusCode::OK);
        let m = body(m).await;
        assert!(m.contains("atrium_broker_logins_total"), "{m}");
        assert!(m.contains("atrium_broker_connections_refused_at_door_total 0"), "{m}");
        assert!(body(get("/healthz", true).await.unwrap()).await.contains("directory"));
        assert!(body(get("/readyz", true).await.unwrap()).await.contains("schema"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn admin_and_user_routes_need_a_session() {
        let (st, dir) = state().await;
        let app = app(st);
        for (m, p) in [
            ("GET", "/api/v1/me"),
            ("GET", "/api/v1/pools"),
            ("POST", "/api/v1/pools/x/connect"),
            ("GET", "/api/v1/admin/pools"),
            ("POST", "/api/v1/auth/logout"),
        ] {
            let resp = app
                .clone()
                .oneshot(Request::builder().method(m).uri(p).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{m} {p}");
        }
        // A heartbeat not signed by an enrolled node is refused before its body is parsed: a
        // bearer that is no signed request, and no bearer with a broken body, are both 401.
        let hb = r#"{"node_id":"n","api_url":"http://x","display_url":"ws://x","capacity":{"vcpus_total":1,"vcpus_allocated":0,"memory_mib_total":1,"memory_mib_allocated":0,"vms":0,"kvm":"pvm","default_runtime":"qemu","images":[]},"vms":[]}"#;
        for (auth, body) in [(Some("Bearer wrong"), hb), (None, "{not json")] {
            let mut req = Request::builder()
                .method("POST")
                .uri("/api/v1/nodes/heartbeat")
                .header("content-type", "application/json");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?} {body}");
        }
        // Nor is a body read for a caller without a signature: 9 MiB (over the heartbeat's
        // limit) unsigned is a 401, not a "too large".
        let req = Request::builder()
            .method("POST")
            .uri("/api/v1/nodes/heartbeat")
            .header("authorization", "Bearer not.a.signature")
            .body(Body::from(vec![b'x'; 9 << 20]))
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::UNAUTHORIZED);
        // The web client is served with a strict content security policy.
        let resp =
            app.oneshot(Request::builder().uri("/").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'self'")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
