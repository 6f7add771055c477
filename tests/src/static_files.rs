//! A small static file server for the benchmarks' pages (Atrium's web client and Debian's
//! noVNC), on loopback.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Serves `/{prefix}/...` from each folder.
pub async fn serve(mounts: Vec<(String, PathBuf)>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/{*path}", get(file)).with_state(Arc::new(mounts));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn file(
    State(mounts): State<Arc<Vec<(String, PathBuf)>>>,
    UrlPath(path): UrlPath<String>,
) -> Response {
    let Some((prefix, rest)) = path.split_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some((_, root)) = mounts.iter().find(|(p, _)| p == prefix) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let rel = Path::new(rest);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let full = root.join(rel);
    let Ok(body) = tokio::fs::read(&full).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let ty = match full.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    ([(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, "no-store")], body).into_response()
}
