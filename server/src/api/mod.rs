//! What other services, operators and people call: the HTTP probes and push API, the try-it page,
//! the public gRPC `Router` service and the standard gRPC health and reflection services.

pub mod health;
pub mod page;
pub mod probes;
pub mod push;
pub mod reflection;
pub mod router;

use crate::delivery::Outcome;

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
