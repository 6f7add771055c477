//! Health, metrics, public keys.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::InternalListener;
use crate::error::ApiError;
use crate::metrics::label;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(jwks))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when the database answers (the broker can serve); `degraded` otherwise.
    pub status: String,
    /// The details are on the internal listener when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `ok` or `unavailable`: sign-ins need the directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
}

/// Whether this request may see what monitoring sees: on the internal listener, or on the only
/// listener when there is no internal one.
fn internal(st: &AppState, on_internal: Option<Extension<InternalListener>>) -> bool {
    st.cfg.broker.internal_listen.is_none() || on_internal.is_some()
}

/// Liveness and health (the database and the directory).
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, body = Health), (status = 503, description = "The database is unreachable", body = Health)))]
async fn healthz(
    State(st): State<AppState>,
    on_internal: Option<Extension<InternalListener>>,
) -> impl IntoResponse {
    let details = internal(&st, on_internal);
    let db_ok = st.db.ping().await.is_ok();
    let dir_ok = if details && st.cfg.uses_directory() {
        Some(st.directory.check().await.is_ok())
    } else {
        None
    };
    let h = Health {
        status: if db_ok { "ok" } else { "degraded" }.into(),
        database: details.then(|| if db_ok { "ok" } else { "unavailable" }.into()),
        directory: dir_ok.map(|ok| if ok { "ok" } else { "unavailable" }.into()),
    };
    (if db_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(h))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: String,
    /// `ok`, `unavailable`, or `behind` (the schema is older than this build needs). The
    /// details are on the internal listener when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Schema version applied / needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// `loaded`: the signing keys are in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
    /// The broker is stopping: a load balancer should send it nothing new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
}

/// How long `/readyz` waits for the database.
const READY_DB_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Readiness, for a load balancer or orchestrator: the database answers with the schema this
/// build needs, the signing keys are loaded, and the broker is not draining.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, body = Readiness), (status = 503, description = "Not ready", body = Readiness)))]
async fn readyz(
    State(st): State<AppState>,
    on_internal: Option<Extension<InternalListener>>,
) -> impl IntoResponse {
    let details = internal(&st, on_internal);
    // A probe answers quickly: a database that does not answer within a second is unavailable
    // (a request would wait `database.acquire_timeout_secs` for it).
    let version =
        tokio::time::timeout(READY_DB_WAIT, st.db.schema_version()).await.ok().and_then(Result::ok);
    let need = crate::db::SCHEMA_VERSION;
    let database = match version {
        Some(v) if v >= need => "ok",
        Some(_) => "behind",
        None => "unavailable",
    };
    let draining = st.draining.load(std::sync::atomic::Ordering::SeqCst);
    let ready = database == "ok" && !draining;
    let r = Readiness {
        status: if ready { "ready" } else { "not ready" }.into(),
        database: details.then(|| database.into()),
        schema: details.then(|| format!("{}/{need}", version.unwrap_or(-1))),
        // A broker runs only with an active signing key (a failed reload keeps the old ones).
        keys: details.then(|| "loaded".into()),
        draining: details.then_some(draining),
    };
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(r))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text format", body = String), (status = 404, description = "Asked on the public listener while an internal one is configured", body = crate::error::ErrorResponse)))]
async fn metrics(
    State(st): State<AppState>,
    on_internal: Option<Extension<InternalListener>>,
) -> Result<impl IntoResponse, ApiError> {
    if !internal(&st, on_internal) {
        return Err(ApiError::NotFound("metrics are served on the internal listener".into()));
    }
    let mut gauges = Vec::new();
    if let Ok(desktops) = st.db.list_desktops().await {
        let mut by: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
        for d in &desktops {
            *by.entry((d.pool_id.clone(), d.state.as_str())).or_default() += 1;
        }
        let pools = st.db.list_pools().await.unwrap_or_default();
        let name = |id: &str| {
            pools
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.name.clone())
                .unwrap_or_else(|| id.to_owned())
        };
        gauges.push((
            "atrium_broker_desktops",
            "Desktops by pool and state.",
            by.into_iter()
                .map(|((p, s), n)| (format!("pool=\"{}\",state=\"{s}\"", label(&name(&p))), n))
                .collect(),
        ));
    }
    if let Ok(nodes) = st.db.list_nodes().await {
        let up = nodes.iter().filter(|n| n.state == crate::db::NodeState::Up).count() as u64;
        gauges.push((
            "atrium_broker_nodes",
            "Nodes by state.",
            vec![("state=\"up\"".into(), up), ("state=\"lost\"".into(), nodes.len() as u64 - up)],
        ));
    }
    if let Ok(s) = st.db.list_open_sessions().await {
        gauges.push((
            "atrium_broker_open_sessions",
            "Open desktop sessions.",
            vec![(String::new(), s.len() as u64)],
        ));
    }
    let mut text = st.metrics.render(&gauges);
    text.push_str(&st.door.stats.render("atrium_broker"));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The public keys that verify session tokens and display tickets (JWKS).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta", responses((status = 200, description = "JSON Web Key Set", body = Object)))]
async fn jwks(State(st): State<AppState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "max-age=60")], Json(st.keys.jwks()))
}
