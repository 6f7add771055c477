//! `GET /ws/{vm}?ticket=...`: a viewer's WebSocket. The VM id, the page's origin and the ticket
//! are checked before anything else happens; then the desktop is joined and the viewer served.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use atrium_protocol::display::MAX_CLIENT_MESSAGE;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use crate::auth::{WsQuery, check_origin, check_vm};
use crate::error::Refused;
use crate::recording::Recorder;
use crate::source::open::OpenError;
use crate::viewer;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/ws/{vm}", get(ws))
}

/// A refusal, counted.
fn refuse(s: &AppState, r: Refused) -> Response {
    s.0.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
    r.into_response()
}

async fn ws(
    State(s): State<AppState>,
    Path(vm): Path<String>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(r) = check_vm(&vm).and_then(|()| check_origin(&vm, &headers, &s.0.allowed_origins)) {
        return refuse(&s, r);
    }
    let claims = match s.0.verifier.verify(&q.ticket, &vm).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(vm, reason = %e, "display ticket refused");
            return refuse(&s, Refused::from(&e));
        }
    };
    // A ticket minted before the broker ended its session (sign-out, an administrator's end).
    if s.0.sessions.has_ended(&claims.sid) {
        tracing::info!(vm, session = %claims.sid, "display ticket refused: its session has ended");
        return refuse(
            &s,
            Refused::new(StatusCode::UNAUTHORIZED, "the session has ended; sign in again"),
        );
    }
    // Policy wants this viewer to see a watermark that cannot be drawn here: no pixels.
    if claims.watermark.is_some() && !s.0.desktops.can_watermark() {
        tracing::warn!(vm, user = %claims.sub, "display ticket refused: it asks for a watermark and this proxy has no font to draw one (watermark_font)");
        return refuse(
            &s,
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this desktop must be watermarked and the display service cannot draw watermarks",
            ),
        );
    }
    // Policy wants this viewer's stream recorded, and there is nowhere to record it.
    let sink = match (&claims.record, &s.0.recordings) {
        (None, _) => None,
        (Some(_), Some(sink)) => Some(Arc::clone(sink)),
        (Some(_), None) => {
            tracing::warn!(vm, user = %claims.sub, "display ticket refused: it asks for a recording and this proxy has nowhere to send one");
            return refuse(
                &s,
                Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this session must be recorded and the display service cannot record it",
                ),
            );
        }
    };
    let slot = match s.0.desktops.join(&vm).await {
        Ok(slot) => slot,
        Err(e) => {
            tracing::warn!(vm, error = %e, "cannot open the desktop");
            return refuse(&s, Refused::from(&e));
        }
    };
    // The viewer's watermark is drawn into the desktop's frames from now on.
    let mark = match claims.watermark.clone().map(|w| slot.desktop().add_watermark(w)).transpose() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(vm, user = %claims.sub, error = %e, "display ticket refused");
            return refuse(&s, Refused::new(StatusCode::SERVICE_UNAVAILABLE, e));
        }
    };
    tracing::info!(vm, user = %claims.sub, session = %claims.sid, shadow = claims.caps.shadow, "display ticket accepted");
    let recorder = claims
        .record
        .clone()
        .zip(sink)
        .map(|(record, sink)| Recorder::new(record, &vm, sink, Arc::clone(&s.0.metrics)));
    let ctx = Arc::clone(&s.0.viewer);
    let sessions = Arc::clone(&s.0.sessions);
    upgrade
        // Client messages are small (input, acknowledgements): the read buffer is zeroed up
        // to its size on every read, so a large one costs a memset per keystroke.
        .read_buffer_size(CLIENT_READ_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE + 1024)
        .max_frame_size(MAX_CLIENT_MESSAGE + 1024)
        .on_upgrade(move |socket| {
            viewer::serve(socket, slot, mark, recorder, claims, ctx, sessions)
        })
}

/// Bytes read from a viewer's socket at a time.
const CLIENT_READ_BUFFER: usize = 4096;

/// A desktop that cannot be opened or joined.
impl From<&OpenError> for Refused {
    fn from(e: &OpenError) -> Self {
        let status = match e {
            OpenError::NotFound(_) => StatusCode::NOT_FOUND,
            OpenError::NotRunning(_) => StatusCode::CONFLICT,
            OpenError::TooManyViewers(_) => StatusCode::TOO_MANY_REQUESTS,
            OpenError::Node(_) | OpenError::Source(_) => StatusCode::BAD_GATEWAY,
        };
        Self::new(status, e.to_string())
    }
}
