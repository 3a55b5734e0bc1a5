//! `POST /v1/users/{user}/messages`: other services push a message to a user over HTTP, behind
//! the API key, and learn its outcome like a WebSocket sender does.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::{Envelope, now_ms};
use crate::ids::UserId;
use crate::mesh::secret_matches;
use crate::node::NodeState;
use crate::ws::json_error;

/// `from` when the caller gives none.
pub const DEFAULT_SENDER: &str = "api";

#[derive(Deserialize)]
struct PushBody {
    body: Box<RawValue>,
    from: Option<String>,
}

/// Checks `Authorization: Bearer <api-key>`; the error response says what is wrong.
pub fn check_api_key(req: &HttpRequest, state: &NodeState) -> Result<(), HttpResponse> {
    let Some(expected) = state.config.api_key.as_deref() else {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the push API is disabled on this node: no --api-key is configured",
        ));
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if secret_matches(g.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong API key",
        )),
        None => Err(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <api-key>`",
        )),
    }
}

pub async fn push(
    req: HttpRequest,
    path: web::Path<String>,
    mut payload: web::Payload,
    state: web::Data<Arc<NodeState>>,
) -> HttpResponse {
    if let Err(resp) = check_api_key(&req, &state) {
        return resp;
    }
    let to = match UserId::parse(&path.into_inner()) {
        Ok(u) => u,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_recipient",
                &format!("user id in the path is not valid: {e}"),
            );
        }
    };
    // Read the body up to the frame limit; refuse more without buffering it.
    let max = state.config.max_frame_bytes;
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_body", &e.to_string()),
        };
        if buf.len() + chunk.len() > max {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("body larger than {max} bytes"),
            );
        }
        buf.extend_from_slice(&chunk);
    }
    let parsed: PushBody = match serde_json::from_slice(&buf) {
        Ok(p) => p,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("expected {{\"body\": <JSON>, \"from\": \"<optional label>\"}}: {e}"),
            );
        }
    };
    let from = match parsed.from.as_deref().map(UserId::parse) {
        None => UserId::parse(DEFAULT_SENDER).expect("the default sender is a valid id"),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("`from` must follow the user id rules: {e}"),
            );
        }
    };
    let env = Envelope {
        id: state.ids.msg(),
        from,
        to,
        ts_ms: now_ms(),
        body: parsed.body,
    };
    let id = env.id.to_string();
    let outcome = state.delivery.send(env).await;
    HttpResponse::Ok().json(super::outcome_json(&id, &outcome))
}
