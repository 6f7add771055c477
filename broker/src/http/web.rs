//! The web client, served from the copy built into the binary (or `web.dir` in development).
//! Nothing is fetched at run time from anywhere else.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

pub fn router() -> Router<AppState> {
    Router::new().fallback(serve)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

async fn serve(State(st): State<AppState>, req: Request) -> Response {
    let path = req.uri().path();
    if path.starts_with("/api/") {
        return crate::error::ApiError::NotFound(format!("no API route {path}")).into_response();
    }
    // The service worker's downloads (web-client/sw.js) are never the server's: without the
    // worker, such a link is not a page.
    if path.starts_with("/dl/") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let rel = path.trim_start_matches('/');
    // Pages are single files; unknown paths without an extension get the app shell.
    let rel = if rel.is_empty() || !rel.contains('.') { "index.html" } else { rel };
    if rel.split('/').any(|seg| seg == ".." || seg.starts_with('.')) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let body: Option<Vec<u8>> = match &st.cfg.web.dir {
        Some(dir) => tokio::fs::read(dir.join(rel)).await.ok(),
        None => WEB_FILES.iter().find(|(p, _)| *p == rel).map(|(_, b)| b.to_vec()),
    };
    let Some(body) = body else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(rel)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // Scripts and styles only from the broker; the display proxy is reached over WebSocket, an
    // upload's link (its `/files/`) takes a PUT, and a download's opens in a hidden frame,
    // sandboxed but for the download.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self' ws: wss: http: https:; frame-src 'self' http: https:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    resp
}
