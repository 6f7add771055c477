//! `/healthz` (the node's KVM kind, runtimes and accelerators) and `/metrics` (Prometheus).
//! Neither needs the node token: they say nothing about the VMs' contents.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::kvm;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics))
}

async fn healthz(State(s): State<AppState>) -> Json<Value> {
    let n = &s.node;
    let runtimes: Vec<Value> = n
        .runtimes()
        .iter()
        .map(|r| json!({ "kind": r.kind(), "accel": r.accel(), "accel_reason": r.accel_reason() }))
        .collect();
    Json(json!({
        "status": "ok",
        "node_id": n.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "kvm": n.kvm(),
        "kvm_hardware": n.kvm().is_hardware(),
        "kvm_kind": kvm::kind_name(n.kvm()),
        "default_runtime": n.default_runtime(),
        "runtimes": runtimes,
        "cgroups": n.cgroups().map(crate::cgroup::CgroupManager::describe),
        "vms": n.list().len(),
        "draining": n.draining(),
    }))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.node.metrics.render(&s.node))
}
