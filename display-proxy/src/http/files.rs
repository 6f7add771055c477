//! `/files/{vm}/{token}`: a file's one-time link (see [`crate::files::links`]). `GET` is a
//! download, fetched by the browser's own download; `PUT` an upload, its body the file. The
//! random token is the only credential: it was told to one viewer over its connection, is used
//! once, and is withdrawn when not used within seconds. Atrium never logs it. `HEAD` is refused
//! without using the link.
//!
//! A download's body is the file's bytes as its task feeds them, exactly `Content-Length` of
//! them, or it ends early (and the browser's download fails). An upload's body passes into the
//! upload's task as the viewer's chunks would, at the pace the desktop takes it; more or fewer
//! bytes than announced, or a browser that stops sending, fail the upload. Pages on another
//! origin may `PUT` if the origin is one of `allowed_origins` (CORS).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atrium_protocol::display::MAX_FILE_CHUNK;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;

use super::AppState;
use crate::auth::{cors_origin, link_preflight, with_cors};
use crate::error::Refused;
use crate::files::links::Fetched;
use crate::files::upload::Piece;

/// How long an upload's body may send nothing.
const SILENT_WITHIN: Duration = Duration::from_secs(120);

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/files/{vm}/{token}", get(fetch).head(head).put(put).options(preflight))
}

fn no_such_link() -> Response {
    Refused::new(StatusCode::NOT_FOUND, crate::files::links::NO_SUCH_LINK).into_response()
}

async fn fetch(State(s): State<AppState>, Path((vm, token)): Path<(String, String)>) -> Response {
    match s.0.viewer.links.fetch(&vm, &token, false) {
        Some(Fetched::Download { name, size, body, aborted }) => {
            file_response(&name, size, body, aborted)
        }
        _ => no_such_link(),
    }
}

/// A page on another origin asks whether it may `PUT`.
async fn preflight(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match cors_origin(&headers, &s.0.allowed_origins) {
        Ok(origin) => link_preflight(origin),
        Err(r) => r.into_response(),
    }
}

/// `HEAD` would take a download's link and give nothing: refused, the link left as it is.
async fn head() -> Response {
    Refused::new(StatusCode::METHOD_NOT_ALLOWED, "a file link is for GET (or PUT) only")
        .into_response()
}

async fn put(
    State(s): State<AppState>,
    Path((vm, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let origin = match cors_origin(&headers, &s.0.allowed_origins) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let Some(Fetched::Upload { size, into }) = s.0.viewer.links.fetch(&vm, &token, true) else {
        return with_cors(no_such_link(), origin);
    };
    let mut unfinished = Unfinished(Some(into.clone()));
    let passed = pass_on(body, size, &into).await;
    unfinished.0 = None;
    let (status, message) = match passed {
        Ok(()) => (StatusCode::NO_CONTENT, None),
        Err((status, why)) => (status, Some(why)),
    };
    let r = match message {
        None => status.into_response(),
        Some(m) => Refused::new(status, m).into_response(),
    };
    with_cors(r, origin)
}

/// An upload whose `PUT` went away before it ended (its connection dropped, the proxy
/// stopping): the upload fails rather than wait for bytes that will not come.
struct Unfinished(Option<tokio::sync::mpsc::Sender<Piece>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        let (Some(into), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(async move {
            let why = "the browser's connection went before the file was sent".to_owned();
            let _ = into.send(Piece::Stop("failed", why)).await;
        });
    }
}

/// Passes `size` bytes of `body` on to the upload's task, gathered into chunks of
/// [`MAX_FILE_CHUNK`] (the body comes in pieces of a few KiB: one chunk each would cost the
/// task, the node and the viewer's progress as much again); anything else stops the upload,
/// saying why.
async fn pass_on(
    body: Body,
    size: u64,
    into: &tokio::sync::mpsc::Sender<Piece>,
) -> Result<(), (StatusCode, String)> {
    let mut stream = body.into_data_stream();
    let mut got = 0u64;
    let mut chunk = Vec::new();
    let stop = |verdict, why: String| async move {
        let _ = into.send(Piece::Stop(verdict, why.clone())).await;
        Err((StatusCode::BAD_REQUEST, why))
    };
    let ended = || (StatusCode::CONFLICT, "the upload has ended".to_owned());
    loop {
        let next = match tokio::time::timeout(SILENT_WITHIN, stream.next()).await {
            Ok(n) => n,
            Err(_) => {
                let why = format!("the browser sent nothing for {} s", SILENT_WITHIN.as_secs());
                return stop("failed", why).await;
            }
        };
        match next {
            Some(Ok(mut bytes)) => {
                got += bytes.len() as u64;
                if got > size {
                    return stop("refused", "the browser sent more than the file's size".into())
                        .await;
                }
                while !bytes.is_empty() {
                    let take = bytes.len().min(MAX_FILE_CHUNK - chunk.len());
                    chunk.extend_from_slice(&bytes.split_to(take));
                    // A full chunk, or the last bytes of the file, go on.
                    if chunk.len() == MAX_FILE_CHUNK || got == size && bytes.is_empty() {
                        // Refused: the upload ended (cancelled, refused), and the viewer was
                        // told why.
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(MAX_FILE_CHUNK));
                        let full = Bytes::from(full);
                        into.send(Piece::Data(full)).await.map_err(|_| ended())?;
                    }
                }
            }
            Some(Err(_)) => {
                return stop("failed", "the browser stopped sending the file".into()).await;
            }
            None if got < size => {
                return stop("failed", format!("the browser sent {got} of {size} bytes")).await;
            }
            None => return Ok(()),
        }
    }
}

/// The response that streams a download: an attachment named as the file, never cached, never
/// kept for resuming (no validators), ending in an error when the bytes stop short of its size.
pub fn file_response(
    name: &str,
    size: u64,
    body: tokio::sync::mpsc::Receiver<crate::files::links::Piece>,
    aborted: Arc<AtomicBool>,
) -> Response {
    let stop = |what: &str| std::io::Error::other(what.to_owned());
    let stream = futures_util::stream::unfold((body, 0u64, false), move |(mut rx, got, ended)| {
        let aborted = Arc::clone(&aborted);
        async move {
            if ended {
                return None;
            }
            // Stopped: what is queued does not go either.
            if aborted.load(Ordering::SeqCst) {
                return Some((Err(stop("the download was stopped")), (rx, got, true)));
            }
            match rx.recv().await {
                Some(Ok(_)) if aborted.load(Ordering::SeqCst) => {
                    Some((Err(stop("the download was stopped")), (rx, got, true)))
                }
                Some(Ok(bytes)) => {
                    let got = got + bytes.len() as u64;
                    Some((Ok(bytes), (rx, got, false)))
                }
                Some(Err(e)) => Some((Err(e), (rx, got, true))),
                None if got < size => {
                    Some((Err(stop("the download ended early")), (rx, got, true)))
                }
                None => None,
            }
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    let disposition = format!("attachment; filename*=UTF-8''{}", ext_value(name));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// `name` as an RFC 5987 `ext-value`'s characters: UTF-8, every byte outside `attr-char`
/// percent-encoded.
fn ext_value(name: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        let attr_char = b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b);
        if attr_char {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_rfc_5987_values() {
        assert_eq!(ext_value("Bericht 2026.pdf"), "Bericht%202026.pdf");
        assert_eq!(ext_value("a'(b)*;\"c\""), "a%27%28b%29%2A%3B%22c%22");
        assert_eq!(ext_value("Übersicht.xlsx"), "%C3%9Cbersicht.xlsx");
    }
}
