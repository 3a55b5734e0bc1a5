//! `GET /v1/users/{user}/presence`: another service asks, behind the API key, whether a user is
//! online and on which connections (docs/protocol.md, presence), straight from the route table.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::error::Refusal;
use crate::ids::UserId;
use crate::state::NodeState;

/// Answers `200 {"user","online","devices":[{"conn_id","node","device","connected_at"}]}`, the
/// user's live connections oldest first (one HGETALL). `device` is `null` when the client named
/// none; `connected_at` is unix milliseconds, `null` for a route written without it.
pub async fn presence(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Arc<NodeState>>,
) -> HttpResponse {
    if let Some(refused) = super::api_key_refusal(&req, &state) {
        return refused;
    }
    let user = match UserId::parse(&path.into_inner()) {
        Ok(u) => u,
        Err(e) => {
            return Refusal::BadRequest.http(&format!("user id in the path is not valid: {e}"));
        }
    };
    let routes = match state.routes.lookup(&user).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "presence: cannot read the route table");
            return Refusal::Unavailable.http("route table unavailable; try again");
        }
    };
    let devices: Vec<serde_json::Value> = routes
        .iter()
        .map(|r| {
            json!({
                "conn_id": r.conn.as_str(),
                "node": r.node.as_str(),
                "device": r.device.as_deref(),
                "connected_at": (r.connected_at_ms > 0).then_some(r.connected_at_ms),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "user": user.as_str(),
        "online": !devices.is_empty(),
        "devices": devices,
    }))
}
