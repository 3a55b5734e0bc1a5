//! `/healthz`, `/readyz`, `/metrics` and `/gateway`: what load balancers, Kubernetes, Prometheus
//! and clients looking for a node ask.

use std::sync::Arc;

use actix_web::{HttpResponse, web};

use crate::error::Refusal;
use crate::state::NodeState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(state: web::Data<Arc<NodeState>>) -> HttpResponse {
    if state.accepting() {
        HttpResponse::Ok()
            .json(serde_json::json!({ "status": "ready", "node": state.node.as_str() }))
    } else {
        let why = if state.is_draining() {
            "draining"
        } else if state.is_cut_off() {
            "lease lost: Redis unreachable"
        } else if !state.in_table.load(std::sync::atomic::Ordering::Acquire) {
            "not registered in the route table"
        } else {
            "not subscribed to route events"
        };
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "unavailable", "reason": why }))
    }
}

pub async fn metrics(state: web::Data<Arc<NodeState>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// The live, non-draining node with the fewest connections.
pub async fn gateway(state: web::Data<Arc<NodeState>>) -> HttpResponse {
    match state.pick_node(None).await {
        Ok(Some((node, url))) => {
            HttpResponse::Ok().json(serde_json::json!({ "url": url, "node": node }))
        }
        Ok(None) => Refusal::Unavailable.http("no live node is accepting clients"),
        Err(e) => Refusal::Unavailable.http(&format!("route table unavailable: {e}")),
    }
}

/// Any path this node does not serve.
pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    Refusal::NotFound.http(&format!(
        "this node serves no {} {}",
        req.method(),
        req.path()
    ))
}
