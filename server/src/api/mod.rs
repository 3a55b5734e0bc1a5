//! What other services, operators and people call: the HTTP probes, push and presence API, the
//! try-it page, the public gRPC `Router` service and the standard gRPC health and reflection
//! services.

pub mod health;
pub mod page;
pub mod presence;
pub mod probes;
pub mod push;
pub mod reflection;
pub mod router;

use actix_web::{HttpRequest, HttpResponse};

use crate::bearer::{self, BearerError};
use crate::delivery::Outcome;
use crate::error::Refusal;
use crate::state::NodeState;

/// Checks `Authorization: Bearer <api-key>` (in constant time) for the HTTP API: the answer to a
/// call refused, `None` for one let through.
pub(crate) fn api_key_refusal(req: &HttpRequest, state: &NodeState) -> Option<HttpResponse> {
    let e = bearer::check_http(req, state.config.api_key.as_deref()).err()?;
    Some(Refusal::Unauthorized.http(match e {
        BearerError::NotConfigured => {
            "the HTTP API (push, presence) is disabled on this node: no --api-key is configured"
        }
        BearerError::Missing => "missing `Authorization: Bearer <api-key>`",
        BearerError::Wrong => "wrong API key",
    }))
}

/// The JSON answer to a push, shared by HTTP (and mirrored by gRPC's `SendResult`).
pub fn outcome_json(id: &str, outcome: &Outcome) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": id,
        "status": outcome.status(),
        "devices": outcome.devices(),
    });
    if let Outcome::Rejected { code, message } = outcome {
        v["error"] = serde_json::json!({ "code": code.as_str(), "message": message });
    }
    v
}
