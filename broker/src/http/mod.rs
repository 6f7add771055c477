//! The HTTP API. One module per resource, each with its own `router()`, merged here. The
//! OpenAPI document is generated from the same declarations (utoipa), so it cannot list a route
//! the router lacks, and a test checks the converse.

mod admin;
mod auth;
mod desktops;
mod extract;
mod meta;
mod nodes;
mod pools;
mod web;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub use extract::JsonBody;

#[derive(OpenApi)]
#[openapi(
    info(title = "Atrium broker API", description = "Sign-in, desktop pools, display tickets and administration."),
    tags(
        (name = "auth", description = "Sign-in and sign-out"),
        (name = "desktops", description = "A user's pools and desktops"),
        (name = "admin", description = "Administration (policy action `administer`)"),
        (name = "nodes", description = "Node agents (bearer node token)"),
        (name = "meta", description = "Health, metrics, keys, this document")
    )
)]
struct ApiDoc;

/// The router with every API route, and the OpenAPI document describing it.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::router())
        .merge(pools::router())
        .merge(desktops::router())
        .merge(admin::router())
        .merge(nodes::router())
        .merge(meta::router())
        .split_for_parts()
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
    .with_state(state)
}
