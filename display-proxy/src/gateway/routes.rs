//! The gateway's routes: `/healthz` (alive), `/readyz` (keys loaded, not draining), `/metrics`,
//! `GET /ws/{vm}?ticket=...`, where everything about the viewer is checked before the node
//! network is touched, and `/files/{vm}/{token}`, a file's one-time link (`GET` a download,
//! `PUT` an upload), passed only to the display proxy this gateway relays a viewer of that
//! desktop to now: the page's origin is checked here (and CORS answered here), the token is the
//! proxy's to check, and neither is logged.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;

use super::Gateway;
use super::metrics::Refusal;
use super::relay::{self, Answer, Backend, Ended, RelayError, Upgrade};
use crate::auth::{WsQuery, check_origin, check_vm, cors_origin, link_preflight, with_cors};
use crate::error::Refused;
use crate::files::links::NO_SUCH_LINK;
use atrium_door::Slot;

/// The routes.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws/{vm}", get(ws))
        .route(
            "/files/{vm}/{token}",
            get(file_link).head(file_link).put(file_link).options(file_link),
        )
        .with_state(gateway)
}

async fn healthz(State(g): State<Gateway>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "connections": g.door().stats.connections.load(Ordering::Relaxed),
        "relays": g.metrics().relays.load(Ordering::Relaxed),
    }))
}

/// 200 once the broker's keys are loaded, 503 before that and while draining.
async fn readyz(State(g): State<Gateway>) -> Response {
    let keys = g.0.verifier.ready().await;
    let draining = g.draining();
    let status = if keys && !draining { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ready" } else { "not ready" },
        "keys": if keys { "loaded" } else { "unavailable" },
        "draining": draining,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(g): State<Gateway>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], g.metrics().render(&g.door().stats))
        .into_response()
}

/// A refusal, counted by its reason.
fn refused(g: &Gateway, why: Refusal, r: Refused) -> Response {
    g.metrics().refuse(why);
    r.into_response()
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`, `Connection: upgrade`,
/// version 13).
fn is_websocket_upgrade(h: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
        && h.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13")
}

async fn ws(
    State(g): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(vm): Path<String>,
    Query(q): Query<WsQuery>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    if !is_websocket_upgrade(headers) {
        return refused(
            &g,
            Refusal::Request,
            Refused::new(StatusCode::BAD_REQUEST, "not a WebSocket upgrade"),
        );
    }
    let Some(key) =
        headers.get(header::SEC_WEBSOCKET_KEY).filter(|k| !k.is_empty() && k.len() <= 64).cloned()
    else {
        return refused(
            &g,
            Refusal::Request,
            Refused::new(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"),
        );
    };
    if let Err(r) =
        check_vm(&vm).and_then(|()| check_origin(&vm, headers, &g.0.cfg.allowed_origins))
    {
        return refused(&g, Refusal::Request, r);
    }
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let client = atrium_protocol::net::client_addr(peer.ip(), hops, g.door().trusted());

    // The ticket, before anything about the node network.
    let claims = match g.0.verifier.check(&q.ticket, &vm).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(vm, client = %client, reason = %e, "display ticket refused at the gateway");
            return refused(&g, Refusal::Ticket, Refused::from(&e));
        }
    };
    let backend = match claims.proxy.as_deref().ok_or(RelayError::NoProxy).and_then(Backend::parse)
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(vm, node = %claims.node, error = %e, "a valid ticket with no usable display proxy");
            return refused(
                &g,
                Refusal::Ticket,
                Refused::new(StatusCode::FORBIDDEN, e.to_string()),
            );
        }
    };
    let Some(slot) = g.0.relays.take(client) else {
        tracing::warn!(client = %client, "relay refused: max_relays_per_address reached");
        return refused(
            &g,
            Refusal::Limit,
            Refused::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many display connections from this address",
            ),
        );
    };
    let Some(permit) = g.door().permit() else {
        return refused(
            &g,
            Refusal::Limit,
            Refused::new(StatusCode::SERVICE_UNAVAILABLE, "the gateway is full; try again"),
        );
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let up = Upgrade { vm: &vm, ticket: &q.ticket, key: &key, client };
    let answer =
        relay::open(&backend, &g.0.proxy_nets, &g.0.proxy_tls, up, g.0.cfg.connect_timeout()).await;
    match answer {
        Err(e @ RelayError::NotAllowed(_)) => {
            // A node registered a display URL outside the display network: never followed.
            tracing::warn!(vm, node = %claims.node, error = %e, "a ticket names a display proxy outside proxy_networks");
            refused(
                &g,
                Refusal::Ticket,
                Refused::new(
                    StatusCode::FORBIDDEN,
                    "the desktop's display service is not in the display network",
                ),
            )
        }
        Err(e) => {
            tracing::warn!(vm, node = %claims.node, proxy = %format!("{}:{}", backend.host, backend.port), error = %e, "cannot relay to the display proxy");
            let status = if matches!(e, RelayError::Timeout) {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            refused(
                &g,
                Refusal::Proxy,
                Refused::new(status, "the desktop's display service cannot be reached"),
            )
        }
        Ok(Answer::Refused { status, message }) => {
            tracing::info!(vm, status = status.as_u16(), "the display proxy refused the viewer");
            // Only error statuses pass; anything else a proxy answers becomes a 502.
            let status = if status.is_client_error() || status.is_server_error() {
                status
            } else {
                StatusCode::BAD_GATEWAY
            };
            refused(&g, Refusal::Proxy, Refused::new(status, message))
        }
        Ok(Answer::Accepted { accept, stream }) => {
            tracing::info!(vm, user = %claims.sub, client = %client, node = %claims.node, "relaying a viewer");
            let g2 = g.clone();
            let relayed = g.relaying(&vm, &backend);
            tokio::spawn(async move {
                let _permit = permit;
                let _relayed = relayed;
                match on_upgrade.await {
                    Ok(viewer) => {
                        relay_until_done(&g2, &vm, slot, TokioIo::new(viewer), TokioIo::new(stream))
                            .await
                    }
                    Err(e) => tracing::debug!(vm, error = %e, "the viewer left before the upgrade"),
                }
            });
            relay::switching(accept)
        }
    }
}

/// `/files/{vm}/{token}`: the link of a file a viewer relayed here moves over (`GET` a
/// download, `PUT` an upload, `OPTIONS` its CORS preflight), passed to that viewer's display
/// proxy; bodies stream both ways as they come.
async fn file_link(
    State(g): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((vm, token)): Path<(String, String)>,
    req: Request,
) -> Response {
    // Whether a desktop has viewers here is nobody's business but theirs: every check that
    // does not need the viewer comes first, and a link that is not there is answered alike
    // whether the desktop has none (here) or the proxy has no such link.
    let no_such_link =
        || refused(&g, Refusal::Request, Refused::new(StatusCode::NOT_FOUND, NO_SUCH_LINK));
    let token_shape =
        token.len() == 32 && token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if check_vm(&vm).is_err() || !token_shape {
        return no_such_link();
    }
    // A page's origin is the gateway's to check, as for viewers; the proxy behind sees none.
    let origin = match cors_origin(req.headers(), &g.0.cfg.allowed_origins) {
        Ok(o) => o,
        Err(r) => return refused(&g, Refusal::Request, r),
    };
    if req.method() == axum::http::Method::OPTIONS {
        return link_preflight(origin);
    }
    if req.method() == axum::http::Method::HEAD {
        let r =
            Refused::new(StatusCode::METHOD_NOT_ALLOWED, "a file link is for GET (or PUT) only");
        return refused(&g, Refusal::Request, r);
    }
    let Some(backend) = g.relayed(&vm) else {
        return with_cors(no_such_link(), origin);
    };
    let hops = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let client = atrium_protocol::net::client_addr(peer.ip(), hops, g.door().trusted());
    let path = format!("/files/{vm}/{token}");
    let answer = relay::forward(
        &backend,
        &g.0.proxy_nets,
        &g.0.proxy_tls,
        &path,
        client,
        req,
        g.0.cfg.connect_timeout(),
    )
    .await;
    match answer {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let mut out = Response::new(axum::body::Body::new(body));
            *out.status_mut() = parts.status;
            // Only the headers of a file, of its refusal and of CORS pass.
            for name in relay::LINK_ANSWER_HEADERS {
                if let Some(v) = parts.headers.get(&name).cloned() {
                    out.headers_mut().insert(name, v);
                }
            }
            with_cors(out, origin)
        }
        Err(e) => {
            tracing::warn!(vm, error = %e, "cannot reach the display proxy for a file link");
            refused(
                &g,
                Refusal::Proxy,
                Refused::new(
                    StatusCode::BAD_GATEWAY,
                    "the desktop's display service cannot be reached",
                ),
            )
        }
    }
}

async fn relay_until_done<V, P>(g: &Gateway, vm: &str, slot: Slot, viewer: V, proxy: P)
where
    V: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    P: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let m = g.metrics();
    m.relays.fetch_add(1, Ordering::Relaxed);
    m.relays_total.fetch_add(1, Ordering::Relaxed);
    let ended = relay::pump(viewer, proxy, g.0.cfg.idle_timeout(), &m.traffic, g.stopped()).await;
    if ended == Ended::Idle {
        m.relays_idle_closed.fetch_add(1, Ordering::Relaxed);
    }
    m.relays.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
    tracing::info!(vm, ended = ?ended, "relay ended");
}
