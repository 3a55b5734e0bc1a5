//! `POST /v1/users/{user}/messages`: other services push a message to a user over HTTP, behind
//! the API key, and learn its outcome like a WebSocket sender does.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::Envelope;
use crate::ids::UserId;
use crate::mesh::secret_matches;
use crate::state::NodeState;
use crate::ws::json_error;

/// `from` when the caller gives none.
pub const DEFAULT_SENDER: &str = "api";

#[derive(Deserialize)]
struct PushBody {
    body: Box<RawValue>,
    from: Option<String>,
}

/// Why a call was refused the push API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyError {
    NotConfigured,
    Missing,
    Wrong,
}

impl ApiKeyError {
    pub fn response(self) -> HttpResponse {
        let message = match self {
            Self::NotConfigured => {
                "the push API is disabled on this node: no --api-key is configured"
            }
            Self::Missing => "missing `Authorization: Bearer <api-key>`",
            Self::Wrong => "wrong API key",
        };
        json_error(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

/// Checks `Authorization: Bearer <api-key>` (in constant time).
pub fn check_api_key(req: &HttpRequest, state: &NodeState) -> Result<(), ApiKeyError> {
    let expected = state
        .config
        .api_key
        .as_deref()
        .ok_or(ApiKeyError::NotConfigured)?;
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiKeyError::Missing)?;
    if secret_matches(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiKeyError::Wrong)
    }
}

pub async fn push(
    req: HttpRequest,
    path: web::Path<String>,
    mut payload: web::Payload,
    state: web::Data<Arc<NodeState>>,
) -> HttpResponse {
    if let Err(e) = check_api_key(&req, &state) {
        return e.response();
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
    let env = Envelope::new(state.ids.msg(), from, to, parsed.body);
    let id = env.id.to_string();
    let outcome = state.delivery.send(env).await;
    HttpResponse::Ok().json(super::outcome_json(&id, &outcome))
}
